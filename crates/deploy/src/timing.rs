//! How long the machine lets a request run, and how often it asks before it gives a node up.
//!
//! A deadline passing only means "unknown whether it happened"; every request is idempotent, so
//! the machine asks again. The deadlines cover the slowest legitimate answer of a live agent, so
//! that a slow node is not taken for a lost one.

use crate::Request;

/// Tries per node and round (the first ask included) before the node is lost.
pub(crate) const TRIES: u32 = 3;

const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

pub(crate) fn timeout_ms(request: &Request) -> u64 {
    match request {
        // The orchestrator streams the image to the node within this request.
        Request::Stage { .. } => 15 * MINUTE,
        // Crons get their `shutdown_timeout` and workers 15 s before SIGKILL.
        Request::Quiesce => 5 * MINUTE,
        // Requests in flight drain for up to the drain timeout (10 s by default).
        Request::Close => 2 * MINUTE,
        // Stopping the old web process, then up to the start timeout (60 s by default).
        Request::Swap { .. } => 5 * MINUTE,
        // Copying every service's data and the storage; the environment is closed meanwhile,
        // its visitors held or served from cache.
        Request::ReplaceData { .. } => HOUR,
        // The agent answers when the hook ends, and kills a hook after 24 hours; asked again,
        // it waits for the running hook and returns the stored outcome.
        Request::RunHook { .. } => 24 * HOUR + 5 * MINUTE,
        Request::Open { .. } => 30 * SECOND,
        Request::StartBackground { .. } => 2 * MINUTE,
    }
}
