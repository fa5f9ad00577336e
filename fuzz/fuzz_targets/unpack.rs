//! Any bytes, as a compressed image, must either unpack inside the destination or be refused
//! leaving nothing behind; never a panic, never a file outside.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_image::{UnpackLimits, unpack};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("scratch folder");
    let sandbox = dir.path().join("sandbox");
    std::fs::create_dir(&sandbox).expect("sandbox");
    let dest = sandbox.join("out");
    let limits = UnpackLimits {
        max_bytes: 1 << 20,
        max_entries: 1_000,
    };
    // Raw bytes rarely decompress; compressed, they reach the tar parser as they are.
    let compressed = zstd::encode_all(data, 1).expect("compress in memory");
    for input in [data, &compressed[..]] {
        let _ = std::fs::remove_dir_all(&dest);
        let expected: &[&str] = match unpack(input, &dest, limits) {
            Ok(_) => &["out"],
            Err(_) => &[],
        };
        let in_sandbox: Vec<_> = std::fs::read_dir(&sandbox)
            .expect("sandbox")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(in_sandbox, expected, "a refused image left files behind");
        let outside: Vec<_> = std::fs::read_dir(dir.path())
            .expect("scratch folder")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(outside, ["sandbox"], "something was written outside the sandbox");
    }
});
