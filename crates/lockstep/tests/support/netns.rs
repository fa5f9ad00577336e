//! Hosts for the multi-host tests: network namespaces, each with an address of its own on a
//! bridge that the test's namespace (where the controller runs) is on too, made by the test and
//! removed when it ends; and the faults injected between them. Root only.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Tells networks of one test process apart.
static NETWORKS: AtomicU32 = AtomicU32::new(0);

pub struct Network {
    bridge: String,
    gateway: Ipv4Addr,
    pub hosts: Vec<Host>,
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

impl Drop for Network {
    fn drop(&mut self) {
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
