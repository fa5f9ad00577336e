//! A service's endpoint on a node: the port its relationship names, forwarding each connection
//! to wherever the service's primary is now. Only the environment's own user (and root) may
//! connect: every environment's apps share the host's loopback, and an engine that Platform.sh
//! runs without a password (Redis) gets its password from the endpoint, not from the app. Who
//! connects is the uid owning the client's socket, which the kernel says (`sock_diag`).

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

/// The uid owning the client end of a loopback TCP connection, asked of the kernel for that
/// one socket (`sock_diag`), as `ss` does: `/proc/net/tcp` lists every socket of the host,
/// which takes tens of milliseconds on a busy one.
fn socket_owner(client: SocketAddrV4, server: SocketAddrV4) -> Option<u32> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        socket,
    };
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const HEADER: usize = 16;
    // struct inet_diag_req_v2: family, protocol, extensions, pad, states, then the socket's id.
    let mut request = Vec::with_capacity(HEADER + 56);
    request.extend_from_slice(&((HEADER + 56) as u32).to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request.extend_from_slice(&[0; 8]);
    request.extend_from_slice(&[nix::libc::AF_INET as u8, nix::libc::IPPROTO_TCP as u8, 0, 0]);
    request.extend_from_slice(&u32::MAX.to_ne_bytes());
    // struct inet_diag_sockid: the socket's own end first (the client's), ports and addresses
    // in network order, no interface, no cookie.
    request.extend_from_slice(&client.port().to_be_bytes());
    request.extend_from_slice(&server.port().to_be_bytes());
    for address in [client.ip(), server.ip()] {
        request.extend_from_slice(&address.octets());
        request.extend_from_slice(&[0; 12]);
    }
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&[0xff; 8]);

    let diag = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .ok()?;
    sendto(
        std::os::fd::AsRawFd::as_raw_fd(&diag),
        &request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .ok()?;
    let mut answer = [0u8; 1024];
    let length = recv(
        std::os::fd::AsRawFd::as_raw_fd(&diag),
        &mut answer,
        MsgFlags::empty(),
    )
    .ok()?;
    let answer = &answer[..length];
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    if kind == NLMSG_ERROR {
        return None;
    }
    // struct inet_diag_msg: 4 bytes, the 48-byte id, expires, rqueue, wqueue, then the uid.
    let uid = answer.get(HEADER + 64..HEADER + 68)?;
    Some(u32::from_ne_bytes(uid.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let nobody = SocketAddrV4::new(Ipv4Addr::LOCALHOST, client.port().wrapping_add(1));
        assert_eq!(socket_owner(nobody, server), None, "no such connection");
    }
}
