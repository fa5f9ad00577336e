//! Branching an environment with data: a new branch of the services sample app whose parent,
//! production, holds `BRANCH_BENCH_MB` (default 1024) MB of PostgreSQL data and as many MB of
//! files in a shared storage mount. Measured: the branch push, the storage clone and each
//! service's clone (as the push's log reports them), and production's write latency
//! (sequential `POST /notes` to one of its routers, an insert in PostgreSQL each) while idle
//! and while the branch is cloned from it. Peers on the same data in the same run, each timed
//! while production takes the same writes: `pg_dump -Fc | pg_restore` of production's database
//! into a fresh PostgreSQL 15 cluster, and `cp -a` of the mount's folder; and, to tell where a
//! service clone's time goes, `pg_basebackup` alone as Lockstep's snapshot takes it. Run with
//! `cargo bench -p lockstep --bench branch` (as root, or as a user who may run PostgreSQL's
//! `initdb`).
//!
//! Goals (the issue's): the service clone at least 5x faster than dump and restore; the p99 of
//! production's writes during the clones within 2x of idle. The table says what was measured,
//! goal met or not.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, Read, Write as _};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{Platform, Project};

/// One MB, as Lockstep's log counts them.
const MB: u64 = 1_000_000;
/// How long production's write latency is measured while nothing else happens.
const IDLE: Duration = Duration::from_secs(10);
/// A write that takes longer than this counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this much data per `INSERT`, well within the CLI's 600 s for one command.
const FILL_CHUNK_BYTES: u64 = 256 * MB;
/// MD5 digests in each `bulk` row's body: 960 hexadecimal characters, which PostgreSQL keeps
/// inline and uncompressed. Each digest is another, so that the data compresses about as text
/// does (2x), not 30x as one digest repeated would, which would flatter the dump.
const DIGESTS_PER_ROW: u64 = 30;
/// PostgreSQL 15's programs, for the dump-and-restore peer.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The branch measured.
const BRANCH: &str = "bench";
/// A line of the push reaches git a little after the log has it (the controller polls the log
/// every 100 ms): a clone's window starts this much earlier than its line says.
const LINE_SLACK: Duration = Duration::from_millis(200);

fn target_mb() -> u64 {
    match std::env::var("BRANCH_BENCH_MB") {
        Ok(value) => match value.trim().parse::<u64>() {
            Ok(mb) if mb > 0 => mb,
            _ => panic!("BRANCH_BENCH_MB must be a positive number of MB, not {value:?}"),
        },
        Err(_) => 1024,
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

/// Runs `command` to its end; panics with its output, saying `what`, unless it succeeded.
fn run(what: &str, command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what}: {command:?} failed ({}):\n{}",
        output.status,
        support::text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `lockstep sql ENV -c SQL`: psql's output; panics with it unless psql succeeded.
fn sql(platform: &Platform, env: &str, statement: &str) -> String {
    let output = platform.cli(&["sql", env, "-c", statement]);
    assert!(
        output.status.success(),
        "lockstep sql {env} -c {statement:?} failed ({}):\n{}",
        output.status,
        support::text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The one number in psql's aligned output of a one-value query.
fn number_in(output: &str, what: &str) -> u64 {
    output
        .lines()
        .find_map(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("no number for {what} in psql's output:\n{output}"))
}

fn sql_number(platform: &Platform, env: &str, query: &str) -> u64 {
    number_in(&sql(platform, env, query), &format!("`{query}` on {env}"))
}

fn database_bytes(platform: &Platform, env: &str) -> u64 {
    sql_number(platform, env, "SELECT pg_database_size('main')")
}

fn bulk_rows(platform: &Platform, env: &str) -> u64 {
    sql_number(platform, env, "SELECT count(*) FROM bulk")
}

// ---------------------------------------------------------------------------------------------
// The parent's data

/// Fills production's `main` database to at least `target` bytes with a `bulk` table, one
/// `INSERT ... SELECT generate_series` per chunk, sized from a first small insert; returns
/// its rows.
fn fill_database(platform: &Platform, target: u64) -> u64 {
    sql(
        platform,
        "production",
        "CREATE TABLE bulk (id bigint NOT NULL, body text NOT NULL)",
    );
    let body = (0..DIGESTS_PER_ROW)
        .map(|k| format!("md5((g * {DIGESTS_PER_ROW} + {k})::text)"))
        .collect::<Vec<_>>()
        .join(" || ");
    let insert = |from: u64, to: u64| {
        sql(
            platform,
            "production",
            &format!("INSERT INTO bulk SELECT g, {body} FROM generate_series({from}, {to}) g"),
        );
    };
    let before = database_bytes(platform, "production");
    const SAMPLE: u64 = 10_000;
    insert(1, SAMPLE);
    let mut rows = SAMPLE;
    let mut size = database_bytes(platform, "production");
    let per_row = (size.saturating_sub(before) / SAMPLE).max(1);
    for _ in 0..1_000 {
        if size >= target {
            // Settled, as autovacuum would leave it: hint bits set, statistics known, so that
            // neither copy below pays for what the fill left.
            sql(platform, "production", "VACUUM (ANALYZE) bulk");
            return rows;
        }
        let missing = (target - size).div_ceil(per_row);
        let chunk = missing.clamp(1, FILL_CHUNK_BYTES / per_row);
        insert(rows + 1, rows + chunk);
        rows += chunk;
        size = database_bytes(platform, "production");
    }
    panic!("the database stays at {size} bytes, short of {target}, after {rows} rows");
}

/// A fast generator of incompressible bytes (xorshift64*), so that no layer can shrink the
/// files.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buffer: &mut [u8]) {
        for chunk in buffer.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// Writes `count` files of 1 MB of random bytes into `dir`, given to `dir`'s owner.
fn fill_storage(dir: &Path, count: u64) {
    let owner =
        std::fs::metadata(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let mut buffer = vec![0; MB as usize];
    for n in 0..count {
        let path = dir.join(format!("bulk-{n:05}.bin"));
        noise.fill(&mut buffer);
        std::fs::write(&path, &buffer)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap_or_else(|e| {
            panic!("cannot give {} to its folder's owner: {e}", path.display())
        });
    }
}

/// Files and bytes under `dir` (regular files; links not followed).
fn tree_size(dir: &Path) -> (u64, u64) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut total = (0, 0);
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        let kind = entry.file_type().expect("a file type");
        let (files, bytes) = if kind.is_dir() {
            tree_size(&entry.path())
        } else if kind.is_file() {
            (1, entry.metadata().expect("metadata").len())
        } else {
            (0, 0)
        };
        total = (total.0 + files, total.1 + bytes);
    }
    total
}

/// Where production's primary of `service` listens (the engine's own port) and the password
/// of its app user, from the services file of the agent that runs it.
fn primary_of(platform: &Platform, service: &str) -> (u16, String) {
    let agents = platform.data_dir.join("agents");
    let mut seen = Vec::new();
    for node in std::fs::read_dir(&agents)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", agents.display()))
    {
        let path = node
            .expect("an agent's folder")
            .path()
            .join("instances/production/services/services.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let file: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is unreadable: {e}", path.display()));
        let kept = &file["services"][service];
        seen.push(format!("{}: {kept}", path.display()));
        if kept["spec"]["role"]["role"] == "primary" {
            let port = kept["port"].as_u64().and_then(|p| u16::try_from(p).ok());
            let password = kept["spec"]["password"].as_str();
            if let (Some(port), Some(password)) = (port, password) {
                return (port, password.to_owned());
            }
        }
    }
    panic!(
        "no agent runs production's primary of {service} with a port and password:\n{}",
        seen.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Writes to the parent

struct Write {
    started: Instant,
    ended: Instant,
    ok: bool,
}

/// Sequential `POST /notes` to `router` until `stop` is set: each one an insert in production's
/// PostgreSQL.
fn write_loop(router: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Write>> {
    tokio::spawn(async move {
        let http = support::router_client();
        let url = format!("{router}/notes?body=x");
        let mut writes = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let ok = match http.post(&url).timeout(WRITE_TIMEOUT).send().await {
                Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                Err(_) => false,
            };
            writes.push(Write {
                started,
                ended: Instant::now(),
                ok,
            });
            if !ok {
                // Keeps a refusing router from turning the loop into a spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        writes
    })
}

struct Latency {
    writes: usize,
    failed: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Milliseconds of the successful writes, and how many failed.
fn latency<'a>(writes: impl IntoIterator<Item = &'a Write>) -> Latency {
    let (mut millis, mut failed, mut count) = (Vec::new(), 0, 0);
    for write in writes {
        count += 1;
        if write.ok {
            millis.push((write.ended - write.started).as_secs_f64() * 1000.0);
        } else {
            failed += 1;
        }
    }
    millis.sort_by(f64::total_cmp);
    let at = |fraction: f64| {
        if millis.is_empty() {
            return f64::NAN;
        }
        millis[((millis.len() as f64 - 1.0) * fraction).round() as usize]
    };
    Latency {
        writes: count,
        failed,
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
    }
}

// ---------------------------------------------------------------------------------------------
// The branch push

struct Push {
    status: ExitStatus,
    took: Duration,
    /// Each line of git's standard error, with when it arrived.
    lines: Vec<(Instant, String)>,
    stdout: String,
}

impl Push {
    fn text(&self) -> String {
        let lines: Vec<&str> = self.lines.iter().map(|(_, line)| line.as_str()).collect();
        format!("{}{}", self.stdout, lines.join("\n"))
    }
}

/// Runs `command` (a `git push`) to its end, timing each line of its standard error.
fn push_streaming(mut command: Command) -> Push {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let mut lines = Vec::new();
    let stderr = std::io::BufReader::new(child.stderr.take().expect("piped"));
    for line in stderr.split(b'\n') {
        let line = line.expect("git's standard error");
        for part in String::from_utf8_lossy(&line).split('\r') {
            if !part.trim().is_empty() {
                lines.push((Instant::now(), part.to_owned()));
            }
        }
    }
    let status = child.wait().expect("git push ends");
    Push {
        status,
        took: started.elapsed(),
        lines,
        stdout: reader.join().expect("the reader ends"),
    }
}

/// A copy the push's log reports: `Storage cloned from production: 1.0 GB in 3.2 s`, `Service
/// db cloned from production on production-1: 1.1 GB in 4.2 s`.
struct Clone {
    what: String,
    bytes: u64,
    seconds: f64,
    /// When git said it: the copy ended just before.
    said: Instant,
}

impl Clone {
    /// The time the copy ran, as well as the line tells it.
    fn window(&self) -> (Instant, Instant) {
        let took = Duration::from_secs_f64(self.seconds) + LINE_SLACK;
        (self.said.checked_sub(took).unwrap_or(self.said), self.said)
    }
}

/// `1.0 GB`, `1073.7 MB`, `512 kB`, `840 B` as bytes.
fn parse_bytes(text: &str) -> Option<u64> {
    let (number, unit) = text.trim().split_once(' ')?;
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return None,
    };
    Some((number * scale) as u64)
}

/// The clones of a push's output: `... cloned from PARENT[ on NODE]: SIZE in SECONDS s`.
fn clones(push: &Push) -> Vec<Clone> {
    let mut found = Vec::new();
    for (said, line) in &push.lines {
        let line = line.trim().trim_start_matches("remote:").trim();
        let what = if line.starts_with("Storage cloned from ") {
            "storage".to_owned()
        } else if let Some(rest) = line.strip_prefix("Service ")
            && let Some((name, _)) = rest.split_once(" cloned from ")
        {
            name.to_owned()
        } else {
            continue;
        };
        let parsed = line.rsplit_once(": ").and_then(|(_, figures)| {
            let (size, time) = figures.split_once(" in ")?;
            let seconds = time.trim().strip_suffix(" s")?.trim().parse().ok()?;
            Some((parse_bytes(size)?, seconds))
        });
        let (bytes, seconds) =
            parsed.unwrap_or_else(|| panic!("cannot read the size and time of: {line}"));
        found.push(Clone {
            what,
            bytes,
            seconds,
            said: *said,
        });
    }
    found
}

fn seconds_between(start: &str, end: &str) -> Option<f64> {
    let start = chrono::DateTime::parse_from_rfc3339(start).ok()?;
    let end = chrono::DateTime::parse_from_rfc3339(end).ok()?;
    Some((end - start).num_milliseconds() as f64 / 1000.0)
}

// ---------------------------------------------------------------------------------------------
// The peers

/// A fresh PostgreSQL 15 cluster in a temporary folder, run by an unprivileged user when this
/// runs as root (`initdb` refuses root); stopped and removed when dropped.
struct ScratchPostgres {
    dir: tempfile::TempDir,
    port: u16,
    /// `nobody`, when running as root.
    user: Option<nix::unistd::User>,
}

impl ScratchPostgres {
    fn start() -> ScratchPostgres {
        let user = nix::unistd::geteuid().is_root().then(|| {
            nix::unistd::User::from_name("nobody")
                .expect("the user database")
                .expect("a user `nobody` to run PostgreSQL as")
        });
        let dir = tempfile::Builder::new()
            .prefix("branch-bench-postgres.")
            .tempdir()
            .expect("a temporary folder");
        if let Some(user) = &user {
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))
                .expect("the temporary folder given to nobody");
        }
        let scratch = ScratchPostgres {
            dir,
            port: support::free_port(),
            user,
        };
        let data = scratch.data();
        run(
            "initdb of the scratch cluster",
            scratch
                .as_owner(&format!("{PG_BIN}/initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
                .args(["--locale=C.UTF-8", "--no-instructions", "--no-sync"]),
        );
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            scratch.port,
            scratch.dir.path().display()
        );
        run(
            "start of the scratch cluster",
            scratch
                .as_owner(&format!("{PG_BIN}/pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(scratch.dir.path().join("postgres.log"))
                .args(["-w", "-t", "120", "-o", &options, "start"]),
        );
        run(
            "createdb in the scratch cluster",
            scratch.client("createdb").arg("main"),
        );
        scratch
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `program`, as the cluster's owner.
    fn as_owner(&self, program: &str) -> Command {
        match &self.user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", &user.name, "--", program]);
                command
            }
            None => Command::new(program),
        }
    }

    /// A client `program` connected to the cluster as its superuser.
    fn client(&self, program: &str) -> Command {
        let mut command = Command::new(format!("{PG_BIN}/{program}"));
        command.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]);
        command
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        let stopped = self
            .as_owner(&format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "fast", "stop"])
            .output();
        if !stopped.is_ok_and(|o| o.status.success()) {
            eprintln!(
                "the scratch PostgreSQL in {} did not stop",
                self.dir.path().display()
            );
        }
    }
}

struct DumpRestore {
    took: Duration,
    dump_bytes: u64,
    rows: u64,
}

/// `pg_dump -Fc` of the `main` database of the server on `port` (as its user `main`) piped
/// into `pg_restore` into `scratch`'s empty `main`: the time of both together, the dump's size,
/// and the rows of `bulk` the copy has.
fn dump_and_restore(scratch: &ScratchPostgres, port: u16, password: &str) -> DumpRestore {
    let started = Instant::now();
    let mut dump = Command::new(format!("{PG_BIN}/pg_dump"))
        .args(["-Fc", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "main", "-d", "main"])
        .env("PGPASSWORD", password)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pg_dump starts");
    let mut restore = scratch
        .client("pg_restore")
        .args([
            "-d",
            "main",
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pg_restore starts");
    let (mut from, mut to) = (
        dump.stdout.take().expect("piped"),
        restore.stdin.take().expect("piped"),
    );
    // Through this process, to count the dump's bytes: a copy of what the pipe would carry.
    let mut buffer = vec![0; 1 << 16];
    let mut dump_bytes = 0;
    loop {
        let read = from.read(&mut buffer).expect("pg_dump's output");
        if read == 0 {
            break;
        }
        if let Err(error) = to.write_all(&buffer[..read]) {
            let _ = dump.kill();
            let output = restore.wait_with_output().expect("pg_restore ends");
            panic!(
                "pg_restore stopped reading ({error}; {}):\n{}",
                output.status,
                support::text(&output)
            );
        }
        dump_bytes += read as u64;
    }
    drop(to);
    let dumped = dump.wait_with_output().expect("pg_dump ends");
    let restored = restore.wait_with_output().expect("pg_restore ends");
    let took = started.elapsed();
    assert!(
        dumped.status.success(),
        "pg_dump failed ({}):\n{}",
        dumped.status,
        support::text(&dumped)
    );
    assert!(
        restored.status.success(),
        "pg_restore failed ({}):\n{}",
        restored.status,
        support::text(&restored)
    );
    let counted = run(
        "count of the restored rows",
        scratch
            .client("psql")
            .args(["-d", "main", "-tA", "-c", "SELECT count(*) FROM bulk"]),
    );
    DumpRestore {
        took,
        dump_bytes,
        rows: number_in(&counted, "the restored rows"),
    }
}

/// The snapshot step of a service clone alone: `pg_basebackup` of the server on `port` as
/// Lockstep's snapshot takes it (tar, WAL fetched, fast checkpoint), as the replication user
/// its replicas use, into a file in a temporary folder; its time and size. The file is removed.
fn basebackup_alone(port: u16, password: &str) -> (Duration, u64) {
    let into = tempfile::Builder::new()
        .prefix("branch-bench-basebackup.")
        .tempdir()
        .expect("a temporary folder");
    let path = into.path().join("base.tar");
    let file = std::fs::File::create(&path).expect("the snapshot file");
    let started = Instant::now();
    run(
        "pg_basebackup of production's db",
        Command::new(format!("{PG_BIN}/pg_basebackup"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "replicator",
            ])
            .args(["-D", "-", "-F", "tar", "-X", "fetch", "-c", "fast"])
            .env("PGPASSWORD", password)
            .stdout(file),
    );
    let took = started.elapsed();
    let bytes = std::fs::metadata(&path).expect("the snapshot file").len();
    (took, bytes)
}

/// Runs `work` on this thread while production takes the sequential writes of
/// [`write_loop`] on `router`; its result and those writes.
async fn under_writes<T>(router: &str, work: impl FnOnce() -> T) -> (T, Vec<Write>) {
    let stop = Arc::new(AtomicBool::new(false));
    let writes = write_loop(router.to_owned(), stop.clone());
    let result = tokio::task::block_in_place(work);
    stop.store(true, Ordering::Relaxed);
    (result, writes.await.expect("the write loop"))
}

/// `cp -a` of `from` to a temporary folder: its time; the copy is removed.
fn copy_folder(from: &Path) -> Duration {
    let into = tempfile::Builder::new()
        .prefix("branch-bench-cp.")
        .tempdir()
        .expect("a temporary folder");
    let to = into.path().join("files");
    let started = Instant::now();
    run(
        "cp -a of the mount",
        Command::new("cp").arg("-a").arg(from).arg(&to),
    );
    let took = started.elapsed();
    assert_eq!(
        tree_size(&to),
        tree_size(from),
        "cp -a copied something else"
    );
    took
}

// ---------------------------------------------------------------------------------------------

fn human(bytes: u64) -> String {
    if bytes >= 1_000 * MB {
        format!("{:.2} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

/// How a peer's `peer` seconds compare with Lockstep's `lockstep`, which its log gives to a
/// tenth of a second.
fn versus(peer: f64, lockstep: f64) -> String {
    if lockstep < 0.05 {
        return "(Lockstep's log says 0.0 s)".into();
    }
    let ratio = peer / lockstep;
    if ratio >= 1.0 {
        format!("Lockstep {ratio:.2}x faster")
    } else {
        format!("Lockstep {:.2}x slower", 1.0 / ratio)
    }
}

fn sync_disks() {
    run("sync", &mut Command::new("sync"));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mb = target_mb();
    let target = mb * MB;
    let platform = Platform::start().await;

    // The services sample with a shared storage mount, in production.
    let project = Project::example("services-app");
    let config = project.path().join(".platform.app.yaml");
    let mut yaml = std::fs::read_to_string(&config).expect("the sample's .platform.app.yaml");
    if !yaml.ends_with('\n') {
        yaml.push('\n');
    }
    yaml.push_str("mounts:\n  files:\n    source: storage\n    source_path: files\n");
    std::fs::write(&config, yaml).expect("the sample's .platform.app.yaml written");
    project.commit("a storage mount");
    let pushed = platform.push(&project, "HEAD:production");
    assert!(
        pushed.status.success(),
        "the push to production failed:\n{}",
        support::text(&pushed)
    );
    let storage = platform.data_dir.join("controller/storage");
    let parent_files = storage.join("production/files");
    support::eventually(
        Duration::from_secs(60),
        "production's storage mount folder",
        || {
            let exists = parent_files.is_dir();
            async move { exists }
        },
    )
    .await;

    // The parent's data.
    let started = Instant::now();
    let rows = fill_database(&platform, target);
    let db_bytes = database_bytes(&platform, "production");
    println!(
        "  PostgreSQL filled: {rows} rows, {} in {:.1} s",
        human(db_bytes),
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    fill_storage(&parent_files, mb);
    let (files, file_bytes) = tree_size(&parent_files);
    println!(
        "  storage filled: {files} files, {} in {:.1} s",
        human(file_bytes),
        started.elapsed().as_secs_f64()
    );
    // The fill's dirty pages written out now, not during what is measured.
    sync_disks();

    // Production's writes while nothing else happens.
    let router = platform
        .routers("production")
        .await
        .into_iter()
        .next()
        .expect("production has a router");
    let stop = Arc::new(AtomicBool::new(false));
    let writes = write_loop(router.clone(), stop.clone());
    tokio::time::sleep(IDLE).await;
    stop.store(true, Ordering::Relaxed);
    let idle_writes = writes.await.expect("the write loop");
    let idle = latency(&idle_writes);
    assert!(idle.writes > 0, "no write to production ended in {IDLE:?}");
    println!("  idle: {} writes ({} failed)", idle.writes, idle.failed);

    // The branch, while the same writes go on.
    let command = platform.push_command(&project, &format!("HEAD:refs/heads/{BRANCH}"));
    let (push, push_writes) = under_writes(&router, || push_streaming(command)).await;
    assert!(
        push.status.success(),
        "the push of branch {BRANCH} failed ({}):\n{}",
        push.status,
        push.text()
    );
    let clones = clones(&push);
    let storage_clone = clones
        .iter()
        .find(|c| c.what == "storage")
        .unwrap_or_else(|| panic!("the push says no storage clone:\n{}", push.text()));
    let db_clone = clones
        .iter()
        .find(|c| c.what == "db")
        .unwrap_or_else(|| panic!("the push says no clone of service db:\n{}", push.text()));
    let during_push = latency(&push_writes);
    let windows: Vec<_> = clones.iter().map(Clone::window).collect();
    let overlapping = |(start, end): (Instant, Instant)| {
        latency(
            push_writes
                .iter()
                .filter(move |w| w.started < end && w.ended > start),
        )
    };
    let during_clones = latency(push_writes.iter().filter(|w| {
        windows
            .iter()
            .any(|(start, end)| w.started < *end && w.ended > *start)
    }));
    println!(
        "  branch pushed in {:.1} s; {} writes during it ({} failed)",
        push.took.as_secs_f64(),
        during_push.writes,
        during_push.failed
    );

    // Where the push's time went, by the activity's phases.
    let activity = platform.latest_activity().await;
    assert_eq!(
        activity["environment"], BRANCH,
        "the latest activity is not the branch's: {activity}"
    );
    let mut phases = Vec::new();
    for phase in activity["phases"].as_array().into_iter().flatten() {
        let name = phase["name"].as_str().unwrap_or("?");
        match (phase["started_at"].as_str(), phase["ended_at"].as_str()) {
            (Some(start), Some(end)) => match seconds_between(start, end) {
                Some(seconds) => phases.push(format!("{name} {seconds:.1} s")),
                None => phases.push(format!("{name} ?")),
            },
            _ => phases.push(format!("{name} (unfinished)")),
        }
    }

    // The branch has the parent's data.
    let branch_rows = bulk_rows(&platform, BRANCH);
    let parent_rows = bulk_rows(&platform, "production");
    assert_eq!(
        branch_rows, parent_rows,
        "{BRANCH} has {branch_rows} rows of bulk, production {parent_rows}"
    );
    let branch_files = tree_size(&storage.join(BRANCH).join("files"));
    assert_eq!(
        branch_files,
        (files, file_bytes),
        "{BRANCH}'s storage mount (files, bytes) differs from production's"
    );

    // The peers, on the same data, under the same writes.
    let (port, password) = primary_of(&platform, "db");
    let scratch = ScratchPostgres::start();
    sync_disks();
    let (peer, dump_writes) =
        under_writes(&router, || dump_and_restore(&scratch, port, &password)).await;
    drop(scratch);
    assert_eq!(
        peer.rows, parent_rows,
        "pg_restore's copy has {} rows of bulk, production {parent_rows}",
        peer.rows
    );
    println!(
        "  pg_dump | pg_restore: {:.1} s, {} dump",
        peer.took.as_secs_f64(),
        human(peer.dump_bytes)
    );
    sync_disks();
    let (cp, cp_writes) = under_writes(&router, || copy_folder(&parent_files)).await;
    println!("  cp -a: {:.1} s", cp.as_secs_f64());
    sync_disks();
    let ((snapshot_took, snapshot_bytes), snapshot_writes) =
        under_writes(&router, || basebackup_alone(port, &password)).await;
    println!(
        "  pg_basebackup alone: {:.1} s, {}",
        snapshot_took.as_secs_f64(),
        human(snapshot_bytes)
    );

    // The report.
    let db_ratio = peer.took.as_secs_f64() / db_clone.seconds;
    let p99_ratio = during_clones.p99 / idle.p99;
    let (clones_p99, idle_p99, clones_failed) = (during_clones.p99, idle.p99, during_clones.failed);
    println!();
    println!(
        "branching production ({} of PostgreSQL in {rows} rows, {files} files of 1 MB in a storage mount) into {BRANCH}, on {} cores; every copy timed while production takes writes",
        human(db_bytes),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| what | size | time | vs Lockstep |");
    println!("|---|---:|---:|---:|");
    println!(
        "| Lockstep service clone (db: snapshot, streamed, restored into {BRANCH}'s primary) | {} | {:.1} s | |",
        human(db_clone.bytes),
        db_clone.seconds
    );
    println!(
        "| `pg_dump -Fc \\| pg_restore` into a fresh PostgreSQL 15 | {} dump | {:.1} s | {} |",
        human(peer.dump_bytes),
        peer.took.as_secs_f64(),
        versus(peer.took.as_secs_f64(), db_clone.seconds)
    );
    println!(
        "| for reference: `pg_basebackup -Ft -X fetch -c fast` to a file (the snapshot step alone) | {} | {:.1} s | |",
        human(snapshot_bytes),
        snapshot_took.as_secs_f64()
    );
    println!(
        "| Lockstep storage clone (`cp -a --reflink=auto`, then given to {BRANCH}'s user) | {} | {:.1} s | |",
        human(storage_clone.bytes),
        storage_clone.seconds
    );
    println!(
        "| `cp -a` | {} | {:.1} s | {} |",
        human(file_bytes),
        cp.as_secs_f64(),
        versus(cp.as_secs_f64(), storage_clone.seconds)
    );
    for other in clones
        .iter()
        .filter(|c| c.what != "storage" && c.what != "db")
    {
        println!(
            "| Lockstep service clone ({}) | {} | {:.1} s | |",
            other.what,
            human(other.bytes),
            other.seconds
        );
    }
    println!(
        "| the whole branch push (accept, clones, rehearsal, deploy) | | {:.1} s | |",
        push.took.as_secs_f64()
    );
    println!();
    println!("production's writes (sequential `POST /notes`, an insert each, to one router):");
    println!();
    println!("| when | writes | failed | p50 | p99 | max | p99 vs idle |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut table = vec![
        (format!("idle, {} s", IDLE.as_secs()), idle),
        (
            "during the clones (storage, services)".to_owned(),
            during_clones,
        ),
    ];
    for clone in &clones {
        table.push((
            format!("during the {} clone only", clone.what),
            overlapping(clone.window()),
        ));
    }
    table.push(("during the whole branch push".to_owned(), during_push));
    table.push((
        "during `pg_dump \\| pg_restore`".to_owned(),
        latency(&dump_writes),
    ));
    table.push(("during `cp -a`".to_owned(), latency(&cp_writes)));
    table.push((
        "during `pg_basebackup` alone".to_owned(),
        latency(&snapshot_writes),
    ));
    for (when, l) in &table {
        println!(
            "| {when} | {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}x |",
            l.writes,
            l.failed,
            l.p50,
            l.p99,
            l.max,
            l.p99 / table[0].1.p99
        );
    }
    println!();
    println!("the branch push's phases: {}", phases.join(", "));
    println!();
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!(
        "goal: service clone at least 5x faster than pg_dump | pg_restore: {db_ratio:.2}x, {}",
        verdict(db_ratio >= 5.0)
    );
    println!(
        "goal: p99 write latency during the clones within 2x of idle: {p99_ratio:.2}x ({clones_p99:.1} ms vs {idle_p99:.1} ms, {clones_failed} failed writes), {}",
        verdict(p99_ratio <= 2.0 && clones_failed == 0)
    );
}
