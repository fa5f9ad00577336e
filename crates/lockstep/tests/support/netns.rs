//! Hosts for the multi-host tests: network namespaces, each with an address of its own on a
//! bridge that the test's namespace (where the controller runs) is on too, made by the test and
//! removed when it ends; and the faults injected between them. Root only.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Tells networks of one test process apart.
static NETWORKS: AtomicU32 = AtomicU32::new(0);

pub struct Network {
    bridge: String,
    gateway: Ipv4Addr,
    pub hosts: Vec<Host>,
    /// Whether the test's namespace drops packets from the bridge (`lose`).
    losing: std::sync::atomic::AtomicBool,
}

pub struct Host {
    pub namespace: String,
    pub address: Ipv4Addr,
    /// The veth end on the bridge: down is a partition.
    link: String,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Network {
    /// `count` hosts on a new bridge, or None (said on stderr) when this process may not make
    /// namespaces.
    pub fn create(count: usize) -> Option<Network> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: network namespaces need root");
            return None;
        }
        let id = std::process::id() % 10_000 * 10 + NETWORKS.fetch_add(1, Ordering::Relaxed) % 10;
        let subnet = (id % 250) as u8;
        let gateway = Ipv4Addr::new(10, 213, subnet, 1);
        let bridge = format!("lsb{id}");
        let mut network = Network {
            bridge: bridge.clone(),
            gateway,
            hosts: Vec::new(),
            losing: Default::default(),
        };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for index in 1..=count {
            let namespace = format!("lockstep-{id}-{index}");
            let link = format!("lsv{id}h{index}");
            let inside = format!("lsv{id}n{index}");
            let address = Ipv4Addr::new(10, 213, subnet, 10 + index as u8);
            ip(&["netns", "add", &namespace]);
            network.hosts.push(Host {
                namespace: namespace.clone(),
                address,
                link: link.clone(),
            });
            ip(&[
                "link", "add", &link, "type", "veth", "peer", "name", &inside,
            ]);
            ip(&["link", "set", &inside, "netns", &namespace]);
            ip(&["link", "set", &link, "master", &bridge]);
            ip(&["link", "set", &link, "up"]);
            ip(&["-n", &namespace, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                &inside,
            ]);
            ip(&["-n", &namespace, "link", "set", &inside, "up"]);
        }
        Some(network)
    }

    /// The test's own address on the bridge, where the controller listens.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// `program` run on host `index` (from 0).
    pub fn command(&self, index: usize, program: &str) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.hosts[index].namespace])
            .arg(program);
        command
    }

    /// Cuts host `index` off from every other.
    pub fn partition(&self, index: usize) {
        ip(&["link", "set", &self.hosts[index].link, "down"]);
    }

    pub fn heal(&self, index: usize) {
        ip(&["link", "set", &self.hosts[index].link, "up"]);
    }
}

impl Network {
    /// Drops `percent`% of the packets that reach host `index`, and of those that reach the
    /// test's namespace from the bridge: loss on every link (nftables' random numbers).
    pub fn lose(&self, index: usize, percent: u8) {
        let table = |hook_filter: &str| {
            format!(
                "table inet {} {{\n chain input {{\n  type filter hook input priority 0; \
                 policy accept;\n  {hook_filter} numgen random mod 100 < {percent} drop\n }}\n}}\n",
                self.bridge
            )
        };
        nft(
            Some(&self.hosts[index].namespace),
            &table("iifname != \"lo\""),
        );
        if !self.losing.swap(true, Ordering::Relaxed) {
            nft(None, &table(&format!("iifname \"{}\"", self.bridge)));
        }
    }

    /// A link to host `index`'s `port` through which every byte takes `delay` longer, each
    /// way: a proxy on `port + 1` inside the host's namespace (this kernel has no `tc netem`).
    /// The proxy's address.
    pub fn delay_to(&self, index: usize, port: u16, delay: Duration) -> SocketAddr {
        let host = &self.hosts[index];
        let namespace = std::fs::File::open(format!("/var/run/netns/{}", host.namespace))
            .expect("the namespace exists");
        let listen = SocketAddr::from((host.address, port + 1));
        let upstream = SocketAddr::from((host.address, port));
        let (ready, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("enter the namespace");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
                ready.send(()).unwrap();
                delay_forever(listener, upstream, delay).await;
            });
        });
        listening.recv().expect("the proxy listens");
        listen
    }

    /// The same in the test's own namespace, on the bridge's address, to `upstream`.
    pub async fn delay_from_gateway(&self, upstream: SocketAddr, delay: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind((self.gateway, 0))
            .await
            .unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(delay_forever(listener, upstream, delay));
        address
    }
}

/// Forwards every connection `listener` takes to `upstream`, each chunk `delay` after it came.
async fn delay_forever(listener: tokio::net::TcpListener, upstream: SocketAddr, delay: Duration) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                delayed_copy(client_read, server_write, delay),
                delayed_copy(server_read, client_write, delay)
            );
        });
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read, in order.
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (chunks, mut pending) = tokio::sync::mpsc::unbounded_channel();
    let reader = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read) = from.read(&mut buffer).await {
            if read == 0
                || chunks
                    .send((Instant::now(), buffer[..read].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((read_at, chunk)) = pending.recv().await {
            tokio::time::sleep_until((read_at + delay).into()).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

fn nft(namespace: Option<&str>, rules: &str) {
    use std::io::Write;
    let mut command = match namespace {
        Some(namespace) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", namespace, "nft", "-f", "-"]);
            command
        }
        None => {
            let mut command = Command::new("nft");
            command.args(["-f", "-"]);
            command
        }
    };
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft refused: {rules}");
}

impl Drop for Network {
    fn drop(&mut self) {
        if self.losing.load(Ordering::Relaxed) {
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", &self.bridge])
                .status();
        }
        for host in &self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "del", &host.namespace])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}
