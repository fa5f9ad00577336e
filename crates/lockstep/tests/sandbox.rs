//! The sandbox end to end, through `lockstep up`: a development contributor's build hook and
//! app hunting for Lockstep's secrets and other environments; an agent killed during a deploy;
//! the README's `up` with its data under a private home; and projects that need `/app` as
//! their home or listen on a unix socket.

mod support;

use std::time::Duration;

use support::*;

/// Looks for what pushed code must never reach and prints a line for each find: `FOUND` for a
/// path or secret it could see, `WROTE` for a place outside its mounts it could write. Its
/// first argument names where it runs (`build`, `web`); `hunt/targets` lists host paths of
/// Lockstep's data, `hunt/needles` the secrets, both written by the test.
const HUNT: &str = r#"#!/bin/sh
label=$1
cd /app
while read -r path; do
  if ls "$path" >/dev/null 2>&1; then echo "FOUND $label: $path"; fi
  if (echo hostile > "$path/hostile-$label") 2>/dev/null; then echo "WROTE $label: $path"; fi
done < hunt/targets
for name in up.json endpoints.json lockstep.db secret.key ca.key key.pem authorized_keys state.json; do
  find / -path /proc -prune -o -path /sys -prune -o -path /usr -prune -o -name "$name" -print 2>/dev/null |
    sed "s/^/FOUND $label: /"
done
env | grep -qF -f hunt/needles && echo "FOUND $label: a secret in its environment"
grep -rlF -f hunt/needles --exclude-dir=proc --exclude-dir=sys --exclude-dir=usr --exclude-dir=dev / 2>/dev/null |
  grep -v '^/app/hunt/' | sed "s/^/FOUND $label: a secret in /"
places="/etc /usr /opt/runtime/bin / /var"
# A build writes its tree; at runtime the tree is read-only.
if [ "$label" != build ]; then places="$places /app"; fi
for dir in $places; do
  if (echo x > "$dir/hostile-$label") 2>/dev/null; then echo "WROTE $label: $dir"; fi
done
echo "DONE $label uid=$(id -u)"
"#;

/// The sample app, hunting in its build hook and before its web process starts.
fn hostile_project(platform: &Platform, needles: &[&str]) -> Project {
    let project = Project::sample();
    let hunt = project.path().join("hunt");
    std::fs::create_dir(&hunt).unwrap();
    std::fs::write(hunt.join("hunt.sh"), HUNT).unwrap();
    std::fs::write(hunt.join("needles"), needles.join("\n") + "\n").unwrap();
    let data = &platform.data_dir;
    let targets = [
        data.clone(),
        data.join("up.json"),
        data.join("controller"),
        data.join("controller/storage/production"),
        data.join("controller/storage/production/storage"),
        data.join("agents/production-1/instances/production"),
        data.join("agents/development-1"),
        "/root".into(),
    ];
    let targets: Vec<String> = targets.iter().map(|t| t.display().to_string()).collect();
    std::fs::write(hunt.join("targets"), targets.join("\n") + "\n").unwrap();
    let config_path = project.path().join(".platform.app.yaml");
    let config = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace(
            "    python3 build.py\n",
            "    python3 build.py\n    sh hunt/hunt.sh build\n",
        )
        .replace(
            "start: python3 server.py",
            "start: sh hunt/hunt.sh web; exec python3 server.py",
        );
    std::fs::write(&config_path, config).unwrap();
    project.commit("a hunt for secrets");
    project
}

fn hunt_findings(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|line| line.contains("FOUND ") || line.contains("WROTE "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_development_contributors_code_finds_no_secret_and_no_other_environment() {
    let platform = Platform::start().await;
    let project = Project::sample();
    assert!(platform.push(&project, "HEAD:production").status.success());
    let sensitive = "production-only-sauce-7f3a";
    let set = platform.cli(&[
        "var",
        "set",
        "sauce",
        sensitive,
        "--env",
        "production",
        "--sensitive",
        "--inheritable",
        "false",
    ]);
    assert!(set.status.success(), "{}", text(&set));

    let dev = platform.add_user("dev@example.com", &["--role", "development:contributor"]);
    // What production's apps derive their secrets from (Django's `SECRET_KEY`).
    let entropy = platform.cli(&[
        "ssh",
        "production",
        "--",
        "printenv",
        "PLATFORM_PROJECT_ENTROPY",
    ]);
    let production_entropy = String::from_utf8_lossy(&entropy.stdout).trim().to_owned();
    assert!(production_entropy.len() >= 32, "{}", text(&entropy));
    // A line from the middle of the authority's key and of a production node's: each is
    // found nowhere else.
    let key_line = |path: &str| {
        let key = std::fs::read_to_string(platform.data_dir.join(path)).unwrap();
        key.lines().nth(1).unwrap().to_owned()
    };
    let authority_key = key_line("controller/authority/ca.key");
    let node_key = key_line("agents/production-1/tls/key.pem");
    let edge_key = key_line("edge/tls/key.pem");
    let secrets = [
        platform.token.as_str(),
        &edge_key,
        &authority_key,
        &node_key,
        sensitive,
        &production_entropy,
    ];
    let hostile = hostile_project(&platform, &secrets);
    let pushed = platform.push_as(&hostile, &dev, "HEAD:feature");
    let push_log = text(&pushed);
    assert!(pushed.status.success(), "{push_log}");
    assert!(
        push_log.contains("DONE build"),
        "the hunt did not run: {push_log}"
    );
    assert_eq!(hunt_findings(&push_log), Vec::<&str>::new(), "{push_log}");

    let logs = platform.cli(&["logs", "feature"]);
    let web_log = text(&logs);
    assert!(
        web_log.contains("DONE web"),
        "the hunt did not run: {web_log}"
    );
    assert_eq!(hunt_findings(&web_log), Vec::<&str>::new(), "{web_log}");

    // Nothing reached production's storage, and the secrets files are Lockstep's alone.
    let production_storage = platform
        .data_dir
        .join("controller/storage/production/storage");
    for entry in std::fs::read_dir(&production_storage).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            !name.to_string_lossy().starts_with("hostile"),
            "{name:?} was written into production's storage"
        );
    }
    for secret_file in [
        "up.json",
        "endpoints.json",
        "edge/tls/key.pem",
        "controller/lockstep.db",
        "controller/authority/ca.key",
        "agents/production-1/tls/key.pem",
    ] {
        let mode = std::fs::metadata(platform.data_dir.join(secret_file))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap();
        assert_eq!(mode, 0o600, "{secret_file} is mode {mode:o}");
    }

    // Each environment runs as its own user, never as root.
    let uid_of = |env: &str| -> u32 {
        let output = platform.cli(&["ssh", env, "--", "id", "-u"]);
        assert!(output.status.success(), "{}", text(&output));
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap()
    };
    let (production, feature) = (uid_of("production"), uid_of("feature"));
    if nix::unistd::geteuid().is_root() {
        assert_ne!(production, feature, "two environments share a user");
        assert!(
            production >= 70001 && feature >= 70001,
            "{production} {feature}"
        );
    } else {
        // An ordinary user's Lockstep runs every app as that user.
        assert_eq!(production, nix::unistd::geteuid().as_raw());
        assert_eq!(feature, production);
    }
}

/// Processes of app code (in sandboxes or not) that run for `node`: those whose environment
/// names it. /proc of other users' processes is readable only by root.
fn app_processes_of(node: &str) -> Vec<i32> {
    let needle = format!("LOCKSTEP_NODE={node}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|b| *b == 0)
                    .any(|var| var == needle.as_bytes())
            })
        })
        .collect()
}

/// Worker and cron records (`t`, seconds since the epoch) in an environment's storage.
fn background_records(platform: &Platform, env: &str) -> Vec<f64> {
    let storage = platform
        .data_dir
        .join("controller/storage")
        .join(env)
        .join("storage");
    let mut times = Vec::new();
    for entry in std::fs::read_dir(storage).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("worker-") || name == "cron.log" {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            times.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter_map(|r| r["t"].as_f64()),
            );
        }
    }
    times
}

fn seconds(rfc3339: &serde_json::Value) -> f64 {
    let at = chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap()).unwrap();
    at.timestamp_micros() as f64 / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_leaves_no_app_process_and_nothing_runs_in_the_next_closed_window() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: reading other processes' environments needs root");
        return;
    }
    let platform = Platform::start().await;
    let project = Project::with_slow_deploy_hook(3);
    assert!(platform.push(&project, "HEAD:production").status.success());
    eventually(
        Duration::from_secs(30),
        "production-2's app processes",
        || async { !app_processes_of("production-2").is_empty() },
    )
    .await;

    // A deploy whose hook runs for 3 s: production-2's agent is killed in the middle of it.
    project.new_version("v2");
    let mut push = platform.push_command(&project, "HEAD:production");
    let pusher = std::thread::spawn(move || push.output().unwrap());
    eventually(
        Duration::from_secs(60),
        "the deploy hook to run",
        || async {
            let activity = platform.latest_activity().await;
            activity["phases"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "deploy_hook" && p["ended_at"].is_null())
        },
    )
    .await;
    let before = app_processes_of("production-2");
    assert!(!before.is_empty(), "production-2 runs its new web process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(platform.agent_pid("production-2")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(
        Duration::from_secs(5),
        "the killed agent's app processes to end",
        || async {
            let now = app_processes_of("production-2");
            before.iter().all(|pid| !now.contains(pid))
        },
    )
    .await;
    let pushed = pusher.join().unwrap();
    assert!(pushed.status.success(), "{}", text(&pushed));

    // The agent comes back (restarted by `up`); the next deploy's closed window has no worker
    // or cron record from any release on any node.
    let deployed = platform.cli(&["deploy", "production"]);
    assert!(deployed.status.success(), "{}", text(&deployed));
    let activity = platform.latest_activity().await;
    let phase = |name: &str| phase_of(&activity, name);
    let closed_from = seconds(&phase("quiesce")["ended_at"]);
    let closed_until = seconds(&phase("open")["started_at"]);
    let inside: Vec<f64> = background_records(&platform, "production")
        .into_iter()
        .filter(|t| *t > closed_from && *t < closed_until)
        .collect();
    assert!(
        inside.is_empty(),
        "background records inside the closed window {closed_from}..{closed_until}: {inside:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_its_data_under_a_private_home_deploys_and_serves() {
    let platform = Platform::start_in_home().await;
    let project = Project::sample();
    let pushed = platform.push(&project, "HEAD:production");
    assert!(pushed.status.success(), "{}", text(&pushed));
    let routers = platform.routers("production").await;
    let (status, release) = release_of(&routers[0]).await;
    assert_eq!(status, 200);
    assert_eq!(release.as_deref(), Some(tree_of(&project).as_str()));
}

/// A project whose build puts a virtualenv in the home, as pipenv does, and whose web process
/// runs from it and listens on the unix socket `$SOCKET`.
fn home_and_socket_project() -> Project {
    let project = Project::sample();
    std::fs::write(
        project.path().join(".platform.app.yaml"),
        r#"name: app
type: "python:3.11"
hooks:
  build: |
    set -e
    python3 -m venv "$HOME/.local/share/virtualenvs/app"
web:
  commands:
    start: ~/.local/share/virtualenvs/app/bin/python socket_server.py
  upstream:
    socket_family: unix
"#,
    )
    .unwrap();
    std::fs::write(
        project.path().join("socket_server.py"),
        r#"import os, socketserver, sys
from http.server import BaseHTTPRequestHandler

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"prefix={sys.prefix} home={os.environ['HOME']}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return "socket"

class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

Server(os.environ["SOCKET"], Handler).serve_forever()
"#,
    )
    .unwrap();
    project.commit("virtualenv in the home, unix socket");
    project
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virtualenv_built_into_the_home_runs_and_serves_on_a_unix_socket() {
    let platform = Platform::start().await;
    let project = home_and_socket_project();
    let pushed = platform.push(&project, "HEAD:feature");
    assert!(pushed.status.success(), "{}", text(&pushed));
    let routers = platform.routers("feature").await;
    let body = router_client()
        .get(format!("{}/", routers[0]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "prefix=/app/.local/share/virtualenvs/app home=/app\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_build_rejects_its_push_and_leaves_nothing_running() {
    let platform = Platform::start().await;
    let project = Project::sample();
    let config_path = project.path().join(".platform.app.yaml");
    let config = std::fs::read_to_string(&config_path).unwrap().replace(
        "    python3 build.py\n",
        "    python3 build.py\n    echo waiting-for-cancel\n    sleep 607\n",
    );
    std::fs::write(&config_path, config).unwrap();
    project.commit("a build that waits");
    let mut push = platform.push_command(&project, "HEAD:production");
    let pusher = std::thread::spawn(move || push.output().unwrap());

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let id = loop {
        let activity = platform.latest_activity().await;
        if let Some(id) = activity["id"].as_str() {
            let log = platform.cli(&["activity", "log", id]);
            if String::from_utf8_lossy(&log.stdout).contains("waiting-for-cancel") {
                break id.to_owned();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the build never waited"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cancelled = platform.cli(&["activity", "cancel", &id]);
    assert!(cancelled.status.success(), "{}", text(&cancelled));

    let pushed = pusher.join().unwrap();
    assert!(!pushed.status.success(), "{}", text(&pushed));
    assert!(
        text(&pushed).contains("the build was cancelled"),
        "{}",
        text(&pushed)
    );
    let activity = platform.get(&format!("/activities/{id}")).await;
    assert_eq!(activity["state"], "cancelled");
    // The build's whole sandbox is gone, and the branch did not move.
    assert!(processes_running("sleep 607").is_empty());
    let refs = std::process::Command::new("git")
        .args(["ls-remote", &platform.git])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&refs.stdout).contains("production"));
    // Nothing is left to cancel.
    let again = platform.cli(&["activity", "cancel", &id]);
    assert!(!again.status.success());
    assert!(text(&again).contains("neither a running build nor a deployment waiting"));
}

/// Pids of processes whose whole command line is `command`.
fn processes_running(command: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let words: Vec<String> = cmdline
                    .split(|b| *b == 0)
                    .filter(|w| !w.is_empty())
                    .map(|w| String::from_utf8_lossy(w).into_owned())
                    .collect();
                words.join(" ") == command
            })
        })
        .collect()
}
