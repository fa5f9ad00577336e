//! What `up` keeps between runs so that it comes back the same: tokens and ports, in `up.json`.
//! (The nodes' certificates are in their own folders, issued by the controller's authority.)

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::NODES;

#[derive(Serialize, Deserialize)]
pub(super) struct Layout {
    pub admin_token: String,
    /// One per node of `NODES`, in that order.
    pub agent_ports: Vec<u16>,
    /// The edge's admin API; 0 in layouts from before the edge ran as a process of its own.
    #[serde(default)]
    pub edge_admin_port: u16,
    /// The controller's cluster port, which agents call; 0 in layouts from before it.
    #[serde(default)]
    pub cluster_port: u16,
}

impl Layout {
    /// The layout of an earlier `up` in `data_dir`, repaired if it needs to be, or a new one.
    pub fn load(data_dir: &Path) -> anyhow::Result<Layout> {
        let path = data_dir.join("up.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            let mut layout: Layout = serde_json::from_str(&text)
                .with_context(|| format!("{} is unreadable", path.display()))?;
            if layout.repair_ports()? {
                tracing::warn!(agents = ?layout.agent_ports, edge = layout.edge_admin_port, "ports repaired: two processes had one port, or one had none");
                write_private(&path, &serde_json::to_string_pretty(&layout)?)?;
            }
            return Ok(layout);
        }
        let mut ports = free_ports(NODES.len() + 2, &[])?;
        let layout = Layout {
            admin_token: random_token()?,
            cluster_port: ports.pop().expect("one port for the cluster"),
            edge_admin_port: ports.pop().expect("one port for the edge"),
            agent_ports: ports,
        };
        write_private(&path, &serde_json::to_string_pretty(&layout)?)?;
        Ok(layout)
    }

    /// Gives `daemon` (a node's name, or `edge`) another free port, and saves the layout.
    pub fn move_to_free_port(&mut self, data_dir: &Path, daemon: &str) -> anyhow::Result<()> {
        let mut taken = self.agent_ports.clone();
        taken.extend([self.edge_admin_port, self.cluster_port]);
        let port = free_ports(1, &taken)?[0];
        match NODES.iter().position(|(node, _)| *node == daemon) {
            Some(index) => self.agent_ports[index] = port,
            None => self.edge_admin_port = port,
        }
        tracing::warn!(daemon, port, "another process took its port; moving it");
        write_private(
            &data_dir.join("up.json"),
            &serde_json::to_string_pretty(self)?,
        )
    }

    /// Gives every node, the edge and the cluster port a port of its own. Whether it changed
    /// anything.
    fn repair_ports(&mut self) -> anyhow::Result<bool> {
        let mut ports = self.agent_ports.clone();
        ports.resize(NODES.len(), 0);
        ports.extend([self.edge_admin_port, self.cluster_port]);
        let changed = give_each_its_own_port(&mut ports)? || self.agent_ports.len() != NODES.len();
        self.cluster_port = ports.pop().expect("the cluster's port");
        self.edge_admin_port = ports.pop().expect("the edge's port");
        self.agent_ports = ports;
        Ok(changed)
    }
}

/// A port shared with an earlier entry, and a missing one (0), is replaced by a free port.
/// Whether it changed anything.
fn give_each_its_own_port(ports: &mut [u16]) -> anyhow::Result<bool> {
    let mut sound = Vec::new();
    let mut broken = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        if *port == 0 || sound.contains(port) {
            broken.push(index);
        } else {
            sound.push(*port);
        }
    }
    let fresh = free_ports(broken.len(), &sound)?;
    for (index, port) in broken.iter().zip(fresh) {
        ports[*index] = port;
    }
    Ok(!broken.is_empty())
}

fn free_ports(count: usize, taken: &[u16]) -> anyhow::Result<Vec<u16>> {
    lockstep_supervisor::free_listen_ports(count, taken).context("cannot find free ports")
}

/// Writes a file readable by its owner only, whole or not at all: tools read `endpoints.json`
/// while `up` starts, and must never see it half written.
pub(super) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    lockstep_durable::replace_private(path, contents.as_bytes(), None)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn random_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(agent_ports: Vec<u16>, edge_admin_port: u16) -> Layout {
        Layout {
            admin_token: String::new(),
            agent_ports,
            edge_admin_port,
            cluster_port: 9,
        }
    }

    #[test]
    fn shared_and_missing_ports_get_free_ones_of_their_own() {
        let mut broken = layout(vec![5, 5, 0, 7], 7);
        assert!(broken.repair_ports().unwrap());
        assert_eq!(broken.agent_ports.len(), NODES.len());
        assert_eq!(
            (broken.agent_ports[0], broken.agent_ports[3]),
            (5, 7),
            "sound ports stay"
        );
        let mut every = broken.agent_ports.clone();
        every.extend([broken.edge_admin_port, broken.cluster_port]);
        every.sort_unstable();
        every.dedup();
        assert_eq!(every.len(), NODES.len() + 2, "{every:?}");
        assert!(!every.contains(&0), "{every:?}");
    }

    #[test]
    fn sound_ports_are_left_alone() {
        let mut sound = layout(vec![11, 12, 13, 14, 15], 16);
        assert!(!sound.repair_ports().unwrap());
        assert_eq!(sound.agent_ports, [11, 12, 13, 14, 15]);
        assert_eq!(sound.edge_admin_port, 16);
    }
}
