//! Pack and unpack throughput of Lockstep images against `tar | zstd` on the same generated
//! 200 MB tree, in the same run. Run with `cargo bench -p lockstep-image --bench pack`.
//!
//! Both sides compress with zstd level 3 on one thread; Lockstep's unpack also verifies the
//! blake3 hash of the image first, as it always does.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lockstep_image::{UnpackLimits, pack, unpack_verified};

const TREE_BYTES: u64 = 200 * 1024 * 1024;
const RUNS: usize = 3;

fn main() {
    let scratch = tempfile::tempdir().expect("scratch folder");
    let tree = scratch.path().join("tree");
    let content = generate_tree(&tree);
    let mb = content as f64 / (1024.0 * 1024.0);
    println!("tree: {mb:.0} MiB of content in {}", tree.display());

    let image = scratch.path().join("image.tar.zst");
    let mut id = None;
    let lockstep_pack = median(|| {
        let started = Instant::now();
        let file = std::io::BufWriter::new(fs::File::create(&image).expect("image file"));
        id = Some(pack(&[], &tree, "app", file).expect("pack").id);
        started.elapsed()
    });
    let id = id.expect("packed at least once");
    let lockstep_unpack = median(|| {
        let dest = scratch.path().join("unpacked-lockstep");
        let _ = fs::remove_dir_all(&dest);
        let started = Instant::now();
        unpack_verified(&image, &id, &dest, UnpackLimits::default()).expect("unpack");
        started.elapsed()
    });

    let peer_image = scratch.path().join("peer.tar.zst");
    let shell = |script: String| {
        let started = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .status()
            .expect("sh");
        assert!(status.success(), "{script}");
        started.elapsed()
    };
    let peer_pack = median(|| {
        shell(format!(
            "tar -C '{}' -cf - . | zstd -3 -q -f -o '{}'",
            tree.display(),
            peer_image.display()
        ))
    });
    let peer_unpack = median(|| {
        let dest = scratch.path().join("unpacked-peer");
        let _ = fs::remove_dir_all(&dest);
        fs::create_dir(&dest).expect("peer destination");
        shell(format!(
            "zstd -dc -q '{}' | tar -C '{}' -xf -",
            peer_image.display(),
            dest.display()
        ))
    });

    let rate = |d: Duration| mb / d.as_secs_f64();
    println!();
    println!("| operation | lockstep (MiB/s) | tar + zstd -3 (MiB/s) | lockstep / peer |");
    println!("|---|---:|---:|---:|");
    for (name, ours, theirs) in [
        ("pack", lockstep_pack, peer_pack),
        ("unpack", lockstep_unpack, peer_unpack),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} |",
            rate(ours),
            rate(theirs),
            rate(ours) / rate(theirs)
        );
    }
    println!();
    println!(
        "image sizes: lockstep {:.1} MiB, tar + zstd {:.1} MiB (median of {RUNS} runs each)",
        fs::metadata(&image).expect("image").len() as f64 / 1048576.0,
        fs::metadata(&peer_image).expect("peer image").len() as f64 / 1048576.0
    );
}

fn median(mut run: impl FnMut() -> Duration) -> Duration {
    let mut times: Vec<Duration> = (0..RUNS).map(|_| run()).collect();
    times.sort();
    times[RUNS / 2]
}

/// An app-like tree: many small text files and a few large, partly compressible blobs. The data
/// comes from a fixed-seed generator so every run measures the same bytes.
fn generate_tree(root: &Path) -> u64 {
    let mut random = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut written = 0u64;
    let mut index = 0u32;
    while written < TREE_BYTES {
        let folder = root.join(format!("pkg{:03}/mod{:02}", index / 100, index % 100 / 10));
        fs::create_dir_all(&folder).expect("folder");
        let size = if index.is_multiple_of(50) {
            4 * 1024 * 1024
        } else {
            4 + random.next() % 48_000
        };
        let mut data = Vec::with_capacity(size as usize);
        while (data.len() as u64) < size {
            // Words from a small vocabulary compress like source code; raw bytes like assets.
            if index.is_multiple_of(50) && random.next().is_multiple_of(4) {
                data.extend_from_slice(&random.next().to_le_bytes());
            } else {
                let word = [
                    "fn ", "let ", "self", ".map(", "return ", "{\n", "}\n", "value", " = ",
                ][(random.next() % 9) as usize];
                data.extend_from_slice(word.as_bytes());
            }
        }
        data.truncate(size as usize);
        fs::write(folder.join(format!("file{index}.txt")), &data).expect("file");
        written += size;
        index += 1;
    }
    written
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
