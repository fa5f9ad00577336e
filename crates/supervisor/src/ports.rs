//! Ports to listen on that a restart can bind again.
//!
//! The system hands out its ephemeral ports (`ip_local_port_range`) to outgoing connections as
//! well as to `bind(port 0)`. A port found that way and kept for later (an agent's, a router's)
//! may be held by somebody's connection when its owner restarts, and the restart fails with
//! "address in use". Ports found here lie below that range, where only an explicit bind lands.

use std::hash::BuildHasher;
use std::net::TcpListener;

/// Where the search starts: above the ports well-known services are configured with
/// (PostgreSQL, Redis, MariaDB, 8080...).
const LOWEST: u16 = 10_000;

/// `count` different ports free on loopback now, none of `avoid`, below the ephemeral range.
pub fn free_listen_ports(count: usize, avoid: &[u16]) -> std::io::Result<Vec<u16>> {
    let end = ephemeral_range_start();
    // Held until every port is found, so that none is found twice.
    let mut held = Vec::new();
    let mut ports = Vec::new();
    if end > LOWEST {
        let span = u64::from(end - LOWEST);
        let start =
            std::collections::hash_map::RandomState::new().hash_one(std::process::id()) % span;
        for offset in 0..span {
            if ports.len() == count {
                break;
            }
            let port = LOWEST + ((start + offset) % span) as u16;
            if avoid.contains(&port) {
                continue;
            }
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                ports.push(port);
                held.push(listener);
            }
        }
    }
    // A system whose ephemeral range starts low, or whose low ports are all taken.
    while ports.len() < count {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        if !avoid.contains(&port) {
            ports.push(port);
        }
        held.push(listener);
    }
    Ok(ports)
}

pub fn free_listen_port() -> std::io::Result<u16> {
    Ok(free_listen_ports(1, &[])?[0])
}

fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_outside_the_ephemeral_range() {
        let avoid = free_listen_ports(3, &[]).unwrap();
        let ports = free_listen_ports(20, &avoid).unwrap();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 20);
        for port in &ports {
            assert!(!avoid.contains(port));
            assert!(*port < ephemeral_range_start(), "{port} is ephemeral");
            TcpListener::bind(("127.0.0.1", *port)).expect("the port is free");
        }
    }
}
