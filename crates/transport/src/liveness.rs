//! How roles tell a peer that is gone from one that is slow: the TCP settings every connection
//! between hosts uses (controller to agents, agents to the controller). A live peer's kernel
//! answers keepalive probes however long a request takes (a deploy hook may run for hours);
//! a partitioned or dead host answers nothing, and the connection fails after about
//! `USER_TIMEOUT` instead of waiting for the request's own deadline.

use std::time::Duration;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Silence on a connection before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// Between unanswered probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
pub const KEEPALIVE_RETRIES: u32 = 3;
/// How long sent data or probes may stay unacknowledged before the connection is given up.
pub const USER_TIMEOUT: Duration = Duration::from_secs(12);
