//! Cache-hit throughput and p99 latency of the edge against nginx with `proxy_cache`.
//!
//! One origin process (`tests/origin.py`) serves `OBJECTS` objects of 1 KiB with
//! `Cache-Control: public, max-age=3600`. The edge (in this process, on a Tokio runtime with one
//! worker thread) and nginx (Debian package, `worker_processes 1`) both proxy to it. Both caches
//! are warmed (every object fetched once, then checked to be a hit), then `wrk` loads each in
//! turn with the same requests (a Lua script cycling over the objects), one after the other in
//! the same run. The table gives requests/s, the p99 latency and the requests that reached the
//! origin during the measured load (0 when every request was a hit), then the edge/nginx ratios.
//! The goal is a throughput ratio of at least 1.
//!
//! Run: `cargo bench -p lockstep-edge --bench hit`
//! Needs `python3`, `nginx` and `wrk` (`apt-get install nginx wrk`).
//! Environment: `BENCH_SECS` (measured seconds per peer, default 10), `BENCH_CONNECTIONS`
//! (default 32).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use lockstep_edge::{CACHE_HEADER, CacheRules, Edge, EdgeOptions, EnvironmentRoute};

const OBJECTS: usize = 16;
const OBJECT_BYTES: usize = 1024;
const WARMUP_SECS: u64 = 2;

/// Children and the temp dir, stopped and removed even on panic.
struct Guard {
    dir: PathBuf,
    origin: Option<(Child, ChildStdin)>,
    nginx: Option<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut nginx) = self.nginx.take() {
            // SIGTERM lets the master stop its worker; SIGKILL would orphan it.
            let _ = Command::new("kill")
                .args(["-TERM", &nginx.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = nginx.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = nginx.kill();
            let _ = nginx.wait();
        }
        if let Some((mut origin, stdin)) = self.origin.take() {
            drop(stdin); // origin.py exits when its stdin closes
            let _ = origin.kill();
            let _ = origin.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A one-shot HTTP/1.1 GET: the status, the head (lowercased) and the body.
fn get(port: u16, path: &str) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of head"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head, raw[split + 4..].to_vec()))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        (n.trim() == name).then(|| v.trim())
    })
}

fn paths() -> Vec<String> {
    (1..=OBJECTS)
        .map(|i| format!("/obj/{i}?size={OBJECT_BYTES}&cc=public,max-age=3600"))
        .collect()
}

/// Fetches every object, then checks a second fetch is a hit by `cache_header`'s word.
fn warm(name: &str, port: u16, cache_header: &str, hit: &str) {
    for path in paths() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match get(port, &path) {
                Ok((200, _, body)) if body.len() == OBJECT_BYTES => break,
                other if Instant::now() > deadline => {
                    panic!("{name}: {path} never answered 200: {other:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let (status, head, _) = get(port, &path).expect("second fetch");
        let said = header(&head, cache_header);
        assert!(
            status == 200 && said.is_some_and(|v| v.eq_ignore_ascii_case(hit)),
            "{name}: {path} is not a cache hit on the second fetch ({status}, {cache_header}: {said:?})"
        );
    }
}

/// App requests the origin has seen so far.
fn origin_total(admin_port: u16) -> u64 {
    let (_, _, body) = get(admin_port, "/counts").expect("origin admin answers");
    let counts: serde_json::Value = serde_json::from_slice(&body).expect("JSON counts");
    counts
        .as_object()
        .map(|o| o.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0)
}

struct Load {
    rps: f64,
    p99_us: f64,
    errors: Vec<String>,
}

fn duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        _ => return None,
    };
    Some(number * scale)
}

fn wrk(dir: &Path, port: u16, secs: u64, connections: u32) -> Load {
    let script = dir.join("paths.lua");
    let output = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{secs}s")])
        .args(["--latency", "-H", "Host: localhost", "-s"])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut rps = None;
    let mut p99_us = None;
    let mut errors = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99_us = duration_us(rest.trim());
        } else if line.starts_with("Socket errors") || line.starts_with("Non-2xx") {
            errors.push(line.to_owned());
        }
    }
    Load {
        rps: rps.unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}")),
        p99_us: p99_us.unwrap_or_else(|| panic!("no 99% line in wrk's output:\n{text}")),
        errors,
    }
}

fn nginx_conf(dir: &Path, port: u16, origin_port: u16) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_temp;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=bench:10m max_size=256m inactive=1h use_temp_path=off;
    upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_cache bench;
            proxy_cache_key $host$request_uri;
            proxy_cache_valid 200 1h;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"#
    )
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let missing: Vec<&str> = ["python3", "nginx", "wrk"]
        .into_iter()
        .filter(|p| !have(p))
        .collect();
    if !missing.is_empty() {
        println!(
            "hit bench skipped: {} not found; install them with `apt-get install nginx wrk` (and python3)",
            missing.join(", ")
        );
        return;
    }
    let secs: u64 = env_or("BENCH_SECS", 10);
    let connections: u32 = env_or("BENCH_CONNECTIONS", 32);

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir =
        std::env::temp_dir().join(format!("lockstep-edge-hit-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut guard = Guard {
        dir: dir.clone(),
        origin: None,
        nginx: None,
    };
    {
        // nginx's worker may run as another user (nobody when the master is root).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .expect("chmod temp dir");
    }
    let lua: String = paths()
        .iter()
        .map(|p| format!("  {p:?},\n"))
        .collect::<String>();
    std::fs::write(
        dir.join("paths.lua"),
        format!(
            "local paths = {{\n{lua}}}\nlocal i = 0\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n"
        ),
    )
    .expect("write the wrk script");

    // The origin.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/origin.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the origin");
    let stdin = child.stdin.take().expect("origin stdin");
    let stdout = child.stdout.take().expect("origin stdout");
    guard.origin = Some((child, stdin));
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the origin prints READY");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(
        words.len() == 3 && words[0] == "READY",
        "origin said {line:?}"
    );
    let origin_port: u16 = words[1].parse().expect("origin port");
    let origin_admin: u16 = words[2].parse().expect("origin admin port");
    let origin_url = format!("http://127.0.0.1:{origin_port}");

    // The edge: one worker thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let edge_port = runtime.block_on(async {
        let edge = Edge::new(EdgeOptions {
            domain: "localhost".into(),
            cache_bytes: 256 << 20,
            ..EdgeOptions::default()
        });
        edge.put_environment(
            "production",
            EnvironmentRoute {
                cache: CacheRules {
                    enabled: true,
                    default_ttl: 0,
                    cookies: vec![],
                    headers: vec![],
                },
                ..EnvironmentRoute::new(vec!["localhost".into()], vec![origin_url.clone()])
            },
        )
        .expect("the route is accepted");
        let public = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("edge port");
        let port = public.local_addr().expect("edge address").port();
        tokio::spawn(edge.serve(public, None, async move {
            let _ = stopped.await;
        }));
        port
    });

    // nginx: one worker.
    let nginx_port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&dir, nginx_port, origin_port)).expect("write nginx.conf");
    let nginx = Command::new("nginx")
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .spawn()
        .expect("nginx starts");
    guard.nginx = Some(nginx);

    warm("edge", edge_port, CACHE_HEADER, "HIT");
    warm("nginx", nginx_port, "x-cache", "HIT");

    let mut rows = Vec::new();
    for (name, port) in [
        ("lockstep-edge", edge_port),
        ("nginx proxy_cache", nginx_port),
    ] {
        wrk(&dir, port, WARMUP_SECS, connections);
        let before = origin_total(origin_admin);
        let load = wrk(&dir, port, secs, connections);
        let misses = origin_total(origin_admin) - before;
        rows.push((name, load, misses));
    }

    println!();
    println!(
        "cache hits: {OBJECTS} objects of {OBJECT_BYTES} B, wrk -t1 -c{connections} -d{secs}s, one worker each"
    );
    println!();
    println!("| peer | requests/s | p99 latency | origin requests during load |");
    println!("|---|---:|---:|---:|");
    for (name, load, misses) in &rows {
        println!(
            "| {name} | {:.0} | {:.2} ms | {misses} |",
            load.rps,
            load.p99_us / 1e3
        );
    }
    let (edge, nginx) = (&rows[0].1, &rows[1].1);
    println!();
    println!(
        "edge/nginx: throughput {:.2}x (goal >= 1.00), p99 {:.2}x (lower is better)",
        edge.rps / nginx.rps,
        edge.p99_us / nginx.p99_us
    );
    for (name, load, _) in &rows {
        for error in &load.errors {
            println!("warning: {name}: {error}");
        }
    }

    let _ = stop.send(());
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(guard);
}
