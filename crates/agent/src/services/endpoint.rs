//! A service's endpoint on a node: the port its relationship names, forwarding each connection
//! to wherever the service's primary is now. Only the environment's own user (and root) may
//! connect: every environment's apps share the host's loopback, and an engine that Platform.sh
//! runs without a password (Redis) gets its password from the endpoint, not from the app.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Where connections go, and what to say first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub address: String,
    pub login: Option<(Vec<u8>, &'static [u8])>,
}

pub(super) struct Endpoint {
    target: watch::Sender<Option<Target>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endpoint {
    /// Listens on `port` for connections of `allowed_uids`; none is forwarded until a target is
    /// set.
    pub async fn listen(port: u16, allowed_uids: Vec<u32>) -> std::io::Result<Endpoint> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        let (target, watched) = watch::channel(None);
        let task = tokio::spawn(serve(listener, watched, allowed_uids));
        Ok(Endpoint { target, task })
    }

    pub fn point_at(&self, target: Target) {
        self.target.send_if_modified(|now| {
            let changed = now.as_ref() != Some(&target);
            *now = Some(target);
            changed
        });
    }
}

async fn serve(listener: TcpListener, target: watch::Receiver<Option<Target>>, allowed: Vec<u32>) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            continue;
        };
        let Ok(local) = client.local_addr() else {
            continue;
        };
        let owner = match (peer, local) {
            (SocketAddr::V4(peer), SocketAddr::V4(local)) => socket_owner(peer, local),
            _ => None,
        };
        if !owner.is_some_and(|uid| allowed.contains(&uid)) {
            tracing::warn!(%peer, ?owner, "refused a connection to a service endpoint from another user");
            continue;
        }
        let target = target.borrow().clone();
        tokio::spawn(async move {
            let Some(target) = target else {
                return;
            };
            if let Err(error) = forward(client, &target).await {
                tracing::debug!(%error, address = %target.address, "a service connection ended");
            }
        });
    }
}

async fn forward(mut client: TcpStream, target: &Target) -> std::io::Result<()> {
    let mut server =
        tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&target.address))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    if let Some((hello, expected)) = &target.login {
        server.write_all(hello).await?;
        let mut answer = vec![0; expected.len()];
        server.read_exact(&mut answer).await?;
        if answer != *expected {
            return Err(std::io::Error::other(
                "the service refused the endpoint's login",
            ));
        }
    }
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

/// The uid owning the client end of a loopback TCP connection, from `/proc/net/tcp`: the line
/// whose local address is the client's and remote address ours.
fn socket_owner(client: SocketAddrV4, server: SocketAddrV4) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    owner_in_table(&table, client, server)
}

fn owner_in_table(table: &str, client: SocketAddrV4, server: SocketAddrV4) -> Option<u32> {
    let hex = |address: SocketAddrV4| {
        // The kernel prints the address as the u32 in host order, the port in big endian.
        format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(address.ip().octets()),
            address.port()
        )
    };
    let (local, remote) = (hex(client), hex(server));
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| fields.get(7)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_read_from_the_clients_line() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2710 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1
   1: 0100007F:2710 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 101 1
   2: 0100007F:9C40 0100007F:2710 01 00000000:00000000 00:00000000 00000000 70001        0 102 1
";
        let client = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 40000);
        let server = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10000);
        assert_eq!(owner_in_table(table, client, server), Some(70001));
        assert_eq!(owner_in_table(table, server, client), Some(0));
        let stranger = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 40001);
        assert_eq!(owner_in_table(table, stranger, server), None);
    }

    #[tokio::test]
    async fn a_real_connection_is_owned_by_this_process_user() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (SocketAddr::V4(client), SocketAddr::V4(server)) =
            (client.local_addr().unwrap(), listener.local_addr().unwrap())
        else {
            panic!("loopback is IPv4");
        };
        assert_eq!(
            socket_owner(client, server),
            Some(nix::unistd::getuid().as_raw())
        );
    }
}
