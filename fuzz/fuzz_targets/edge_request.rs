//! Any bytes, as a client connection to the edge: an HTTP answer or a closed connection, never a
//! panic or a hang, and nothing reaches a node for a host the edge does not serve or with
//! forwarding headers the client made up.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lockstep_edge::fuzzing::request(data);
});
