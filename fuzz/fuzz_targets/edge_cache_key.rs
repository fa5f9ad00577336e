//! Any `cache` rules and any request: the cache key is the environment's and the host's, only the
//! headers and cookies the rules name change it, and a keyed header always does.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lockstep_edge::fuzzing::cache_key(data);
});
