//! The node agent as the controller drives it: a real `lockstep agent` process, the sample app
//! built into real images, every command over HTTP.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use lockstep_proto::agent::{Gate, HookKind, HookState, RuntimeInputs};
use lockstep_proto::{Generation, ImageId};
use support::*;

const ENV: &str = "production";

fn runtime(variables: &[(&str, &str)]) -> RuntimeInputs {
    RuntimeInputs {
        variables: variables
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect::<BTreeMap<_, _>>(),
        routes: serde_json::json!({}),
    }
}

struct Setup {
    _data: tempfile::TempDir,
    storage: tempfile::TempDir,
    _images: tempfile::TempDir,
    project: Project,
    agent: AgentProcess,
    v1: BuiltImage,
}

async fn setup() -> Setup {
    let data = tempfile::tempdir().unwrap();
    let storage = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    let project = Project::sample();
    let v1 = build_image(&project, images.path());
    let agent = AgentProcess::start(data.path()).await;
    agent
        .client()
        .configure(&instance_config(ENV, storage.path()))
        .await;
    Setup {
        _data: data,
        storage,
        _images: images,
        project,
        agent,
        v1,
    }
}

impl Setup {
    fn images(&self) -> &std::path::Path {
        self._images.path()
    }

    fn read_storage(&self, name: &str) -> String {
        std::fs::read_to_string(self.storage.path().join("storage").join(name)).unwrap_or_default()
    }
}

#[tokio::test]
async fn a_deploy_swaps_releases_and_closed_means_503_while_in_flight_requests_finish() {
    let setup = setup().await;
    let client = setup.agent.client();
    let port = client.status(ENV).await.router_port;

    let (status, _, headers) = get_router(port, "/").await;
    assert_eq!(status, 503, "a new instance is closed");
    assert_eq!(headers["x-lockstep-gate"], "closed");

    client
        .deploy(ENV, &setup.v1, "d1", Generation(1), runtime(&[]))
        .await;
    let (status, release, headers) = get_router(port, "/").await;
    assert_eq!(status, 200);
    assert_eq!(release.as_deref(), Some(setup.v1.tree_id.as_str()));
    assert_eq!(headers["x-lockstep-generation"], "1");

    setup.project.new_version("v2");
    let v2 = build_image(&setup.project, setup.images());
    // Staging happens while the old release serves.
    assert_eq!(client.stage(ENV, &v2).await.ok()["already_staged"], false);
    assert_eq!(get_router(port, "/").await.0, 200);
    assert_eq!(client.stage(ENV, &v2).await.ok()["already_staged"], true);

    client.step(ENV, "quiesce", "d2", Generation(2)).await.ok();
    let in_flight = tokio::spawn(async move { get_router(port, "/slow?ms=1500").await });
    support::eventually(
        Duration::from_secs(10),
        "the slow request to reach the app",
        || async {
            std::fs::read_to_string(setup._data.path().join("instances/production/logs/web.log"))
                .map(|log| log.contains("/slow"))
                .unwrap_or(false)
        },
    )
    .await;
    let closed = client.step(ENV, "close", "d2", Generation(2)).await.ok();
    assert_eq!(closed["abandoned_requests"], 0);
    let (status, release, _) = in_flight.await.unwrap();
    assert_eq!(status, 200, "a request begun before close completes");
    assert_eq!(release.as_deref(), Some(setup.v1.tree_id.as_str()));

    let (status, _, headers) = get_router(port, "/").await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(headers["x-lockstep-gate"], "closed");

    client
        .swap(ENV, "d2", Generation(2), &v2.id, runtime(&[]))
        .await
        .ok();
    assert_eq!(get_router(port, "/").await.0, 503, "swap does not open");
    let outcome = client
        .hook(ENV, "d2", Generation(2), HookKind::Deploy)
        .await;
    assert_eq!(outcome.state, HookState::Succeeded);
    client.step(ENV, "open", "d2", Generation(2)).await.ok();
    let (status, release, _) = get_router(port, "/").await;
    assert_eq!(status, 200);
    assert_eq!(release.as_deref(), Some(v2.tree_id.as_str()));
    let status = client.status(ENV).await;
    assert_eq!(status.active.unwrap().image, v2.id);
    assert_eq!(status.releases, vec![setup.v1.id.clone(), v2.id.clone()]);
}

#[tokio::test]
async fn a_killed_agent_comes_back_closed_and_opens_only_at_the_active_generation() {
    let mut setup = setup().await;
    let client = setup.agent.client();
    client
        .deploy(ENV, &setup.v1, "d1", Generation(1), runtime(&[]))
        .await;
    let port = client.status(ENV).await.router_port;
    assert_eq!(get_router(port, "/").await.0, 200);

    let agent_port = setup.agent.port;
    setup.agent.kill();
    setup.agent = AgentProcess::start_on(&setup.agent.data_dir.clone(), agent_port).await;
    let client = setup.agent.client();
    let status = client.status(ENV).await;
    assert_eq!(status.gate, Gate::Closed);
    assert_eq!(status.router_port, port, "the router keeps its port");
    assert_eq!(status.active.as_ref().unwrap().image, setup.v1.id);
    assert_eq!(status.hooks.len(), 1, "hook outcomes survive");
    assert_eq!(get_router(port, "/").await.0, 503);

    let refused = client.step(ENV, "open", "d1", Generation(2)).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(get_router(port, "/").await.0, 503);
    let gate = |port: u16| async move {
        router_client()
            .get(format!("https://127.0.0.1:{port}/.lockstep/gate"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    assert_eq!(gate(port).await, serde_json::json!({"state": "closed"}));
    client.step(ENV, "open", "d1", Generation(1)).await.ok();
    assert_eq!(get_router(port, "/").await.0, 200);
    assert_eq!(
        gate(port).await,
        serde_json::json!({"state": "open", "generation": 1})
    );
}

#[tokio::test]
async fn the_same_hook_asked_twice_runs_once() {
    let setup = setup().await;
    let client = setup.agent.client();
    client.stage(ENV, &setup.v1).await.ok();
    client.step(ENV, "close", "d1", Generation(1)).await.ok();
    client
        .swap(ENV, "d1", Generation(1), &setup.v1.id, runtime(&[]))
        .await
        .ok();
    let first = client
        .hook(ENV, "d1", Generation(1), HookKind::Deploy)
        .await;
    let second = client
        .hook(ENV, "d1", Generation(1), HookKind::Deploy)
        .await;
    assert_eq!(first, second);
    assert_eq!(first.state, HookState::Succeeded);
    assert_eq!(setup.read_storage("deploy-count").trim(), "1");
    // A new deployment runs it again.
    client
        .hook(ENV, "d2", Generation(1), HookKind::Deploy)
        .await;
    assert_eq!(setup.read_storage("deploy-count").trim(), "2");
}

#[tokio::test]
async fn a_failing_hook_is_recorded_as_failed_with_its_output() {
    let setup = setup().await;
    let client = setup.agent.client();
    client.stage(ENV, &setup.v1).await.ok();
    client.step(ENV, "close", "d1", Generation(1)).await.ok();
    client
        .swap(
            ENV,
            "d1",
            Generation(1),
            &setup.v1.id,
            runtime(&[("env:DEPLOY_HOOK_FAIL", "1")]),
        )
        .await
        .ok();
    let outcome = client
        .hook(ENV, "d1", Generation(1), HookKind::Deploy)
        .await;
    assert_eq!(outcome.state, HookState::Failed);
    assert_eq!(outcome.exit_code, Some(1));
    assert!(!outcome.output.is_empty());
}

/// Timestamps (seconds) of the lines of a JSON-lines log whose `key` matches.
fn times(log: &str, event: Option<&str>) -> Vec<f64> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|record| event.is_none_or(|e| record["event"] == e))
        .filter_map(|record| record["t"].as_f64())
        .collect()
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn no_cron_and_no_worker_runs_between_quiesce_and_open() {
    let setup = setup().await;
    let client = setup.agent.client();
    let slow_cron = runtime(&[("env:CRON_SLEEP", "30")]);
    client
        .deploy(ENV, &setup.v1, "d1", Generation(1), slow_cron.clone())
        .await;
    let worker_log = "worker-production-1.log";
    support::eventually(Duration::from_secs(20), "the worker to write", || async {
        !setup.read_storage(worker_log).is_empty()
    })
    .await;
    let run = client
        .send(
            client
                .http
                .post(client.url("/v1/instances/production/crons/tick/run")),
        )
        .await;
    assert_eq!(run.status, 202, "{}", run.body);
    support::eventually(Duration::from_secs(20), "the cron to start", || async {
        !times(&setup.read_storage("cron.log"), Some("start")).is_empty()
    })
    .await;

    client.step(ENV, "quiesce", "d2", Generation(2)).await.ok();
    let quiesced_at = now();
    let status = client.status(ENV).await;
    assert!(status.background_stopped);
    assert_eq!(status.cron_runs[0].outcome.as_deref(), Some("stopped"));
    client.step(ENV, "close", "d2", Generation(2)).await.ok();
    client
        .swap(ENV, "d2", Generation(2), &setup.v1.id, slow_cron)
        .await
        .ok();
    client
        .hook(ENV, "d2", Generation(2), HookKind::Deploy)
        .await;
    // Long enough for a worker that was left running to write several lines.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let opened_at = now();
    client.step(ENV, "open", "d2", Generation(2)).await.ok();
    client
        .step(ENV, "background", "d2", Generation(2))
        .await
        .ok();
    support::eventually(
        Duration::from_secs(20),
        "the worker to write again",
        || async {
            times(&setup.read_storage(worker_log), None)
                .iter()
                .any(|t| *t > opened_at)
        },
    )
    .await;

    let worker_times = times(&setup.read_storage(worker_log), None);
    let inside: Vec<_> = worker_times
        .iter()
        .filter(|t| **t > quiesced_at && **t < opened_at)
        .collect();
    assert!(
        inside.is_empty(),
        "worker wrote at {inside:?} between quiesce and open"
    );
    assert!(
        worker_times.iter().any(|t| *t < quiesced_at),
        "the worker ran before"
    );
    let cron_log = setup.read_storage("cron.log");
    let cron_inside: Vec<_> = times(&cron_log, None)
        .into_iter()
        .filter(|t| *t > quiesced_at && *t < opened_at)
        .collect();
    assert!(
        cron_inside.is_empty(),
        "cron wrote at {cron_inside:?} between quiesce and open:\n{cron_log}"
    );
    assert!(
        cron_log.contains("stop-command"),
        "the cron's stop command ran:\n{cron_log}"
    );
}

#[tokio::test]
async fn a_crashing_web_process_is_restarted() {
    let setup = setup().await;
    let client = setup.agent.client();
    client
        .deploy(
            ENV,
            &setup.v1,
            "d1",
            Generation(1),
            runtime(&[("env:SERVER_CRASH_AFTER", "1")]),
        )
        .await;
    support::eventually(
        Duration::from_secs(30),
        "a restart of the web process",
        || async {
            let status = client.status(ENV).await;
            status
                .processes
                .iter()
                .any(|p| p.name == "web" && p.restarts >= 1)
        },
    )
    .await;
}

#[tokio::test]
async fn a_web_process_that_never_listens_fails_the_swap_and_the_node_stays_closed() {
    let setup = setup().await;
    let client = setup.agent.client();
    let mut config = instance_config(ENV, setup.storage.path());
    config.gate.start_timeout_ms = 2_000;
    client.configure(&config).await;
    client.stage(ENV, &setup.v1).await.ok();
    client.step(ENV, "close", "d1", Generation(1)).await.ok();
    let failed = client
        .swap(
            ENV,
            "d1",
            Generation(1),
            &setup.v1.id,
            runtime(&[("env:SERVER_NEVER_LISTEN", "1")]),
        )
        .await;
    assert_eq!(failed.status, 500);
    assert!(
        failed.body["error"]
            .as_str()
            .unwrap()
            .contains("did not accept connections"),
        "{}",
        failed.body
    );
    let refused = client.step(ENV, "open", "d1", Generation(1)).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    let port = client.status(ENV).await.router_port;
    assert_eq!(get_router(port, "/").await.0, 503);
}

#[tokio::test]
async fn a_web_process_that_keeps_exiting_fails_the_swap_within_seconds() {
    let setup = setup().await;
    let client = setup.agent.client();
    // A start timeout far longer than the test lets the swap take: the crashes must end it.
    let mut config = instance_config(ENV, setup.storage.path());
    config.gate.start_timeout_ms = 120_000;
    client.configure(&config).await;
    client.stage(ENV, &setup.v1).await.ok();
    client.step(ENV, "close", "d1", Generation(1)).await.ok();
    let started = std::time::Instant::now();
    let failed = client
        .swap(
            ENV,
            "d1",
            Generation(1),
            &setup.v1.id,
            runtime(&[("env:SERVER_EXIT_AT_START", "1")]),
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(failed.status, 500);
    let error = failed.body["error"].as_str().unwrap();
    assert!(
        error.contains("exited 3 times before it accepted connections (last: exited with code 1)"),
        "{error}"
    );
    assert!(
        error.contains("SERVER_EXIT_AT_START"),
        "its output is shown: {error}"
    );
    let port = client.status(ENV).await.router_port;
    assert_eq!(get_router(port, "/").await.0, 503);
}

#[tokio::test]
async fn a_tampered_or_escaping_image_is_rejected_and_nothing_changes() {
    let setup = setup().await;
    let client = setup.agent.client();
    let mut tampered = std::fs::read(&setup.v1.path).unwrap();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xff;
    // The bytes sent do not match the frames the controller listed.
    let source = tempfile::tempdir().unwrap();
    let frames = std::fs::read(setup.v1.path.with_extension("").with_extension("frames")).unwrap();
    let lying = serve_image(source.path(), &setup.v1.id, &tampered, Some(&frames));
    let answer = client.stage_from(ENV, &setup.v1.id, lying).await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert!(
        answer.body["error"]
            .as_str()
            .unwrap()
            .contains("does not match its hash"),
        "{}",
        answer.body
    );
    // The frames listed match the bytes sent, but the whole is not the image asked for.
    let source = tempfile::tempdir().unwrap();
    let one_frame =
        serde_json::json!([{ "length": tampered.len(), "hash": blake3_hex(&tampered) }]);
    let consistent = serve_image(
        source.path(),
        &setup.v1.id,
        &tampered,
        Some(one_frame.to_string().as_bytes()),
    );
    let answer = client.stage_from(ENV, &setup.v1.id, consistent).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(
        answer.body["error"]
            .as_str()
            .unwrap()
            .contains("does not match its id"),
        "{}",
        answer.body
    );

    // A well-formed image whose id matches its bytes, holding a path that leaves its folder.
    let mut archive = tar_header("app/../../escaped").to_vec();
    archive.extend_from_slice(&[0u8; 1024]);
    let compressed = zstd_compress(&archive);
    let id: ImageId = blake3_hex(&compressed).parse().unwrap();
    let source = tempfile::tempdir().unwrap();
    let escaping = serve_image(source.path(), &id, &compressed, None);
    let answer = client.stage_from(ENV, &id, escaping).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(
        answer.body["error"].as_str().unwrap().contains("`..`"),
        "{}",
        answer.body
    );

    let status = client.status(ENV).await;
    assert!(status.releases.is_empty());
    assert!(status.active.is_none());
    let releases = setup.agent.data_dir.join("instances/production/releases");
    assert_eq!(std::fs::read_dir(releases).unwrap().count(), 0);
}

/// A ustar header for an empty regular file at `path`, written by hand since tar libraries
/// refuse such paths.
fn tar_header(path: &str) -> [u8; 512] {
    let mut header = [0u8; 512];
    header[..path.len()].copy_from_slice(path.as_bytes());
    header[100..107].copy_from_slice(b"0000644");
    header[108..115].copy_from_slice(b"0000000");
    header[116..123].copy_from_slice(b"0000000");
    header[124..135].copy_from_slice(b"00000000000");
    header[136..147].copy_from_slice(b"00000000000");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    header
}

fn zstd_compress(data: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new("zstd")
        .args(["-q", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(data).unwrap();
    child.wait_with_output().unwrap().stdout
}

fn blake3_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image");
    std::fs::write(&path, data).unwrap();
    lockstep_image::hash_file(&path).unwrap().to_string()
}

#[tokio::test]
async fn every_endpoint_answers_the_controller_alone() {
    let setup = setup().await;
    let client = setup.agent.client();
    let endpoints: &[(&str, &str)] = &[
        ("GET", "/metrics"),
        ("GET", "/v1/instances"),
        ("PUT", "/v1/instances/production"),
        ("GET", "/v1/instances/production"),
        (
            "PUT",
            &format!("/v1/instances/production/images/{}", setup.v1.id),
        ),
        ("POST", "/v1/instances/production/quiesce"),
        ("POST", "/v1/instances/production/close"),
        ("POST", "/v1/instances/production/swap"),
        ("POST", "/v1/instances/production/hooks"),
        ("GET", "/v1/instances/production/hooks/d1/deploy"),
        ("POST", "/v1/instances/production/open"),
        ("POST", "/v1/instances/production/background"),
        ("POST", "/v1/instances/production/crons/tick/run"),
        ("GET", "/v1/instances/production/logs/web"),
        ("PUT", "/v1/instances/production/users"),
        ("POST", "/v1/instances/production/exec"),
        ("POST", "/v1/certificate-request"),
        ("PUT", "/v1/certificate"),
        ("GET", "/no/such/route"),
    ];
    let authority = test_authority();
    // Another node, or the edge: the same authority's certificates, for other roles.
    let other_roles = [
        client_as(authority, lockstep_transport::Peer::Node("other".into())),
        client_as(authority, lockstep_transport::Peer::Edge("edge".into())),
    ];
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = client_as(
        &lockstep_transport::Authority::load_or_create(stranger_dir.path(), "other").unwrap(),
        lockstep_transport::Peer::Controller,
    );
    let anonymous = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(authority.ca_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    for (method, path) in endpoints {
        let method: reqwest::Method = method.parse().unwrap();
        for http in &other_roles {
            let answer = http.request(method.clone(), client.url(path)).send().await;
            assert_eq!(
                answer.unwrap().status(),
                403,
                "{method} {path} as another role"
            );
        }
        for (who, http) in [
            ("another project's controller", &stranger),
            ("no certificate", &anonymous),
        ] {
            let answer = http.request(method.clone(), client.url(path)).send().await;
            assert!(answer.is_err(), "{method} {path} with {who} got an answer");
        }
        let plain = reqwest::Client::new()
            .request(
                method.clone(),
                client.url(path).replacen("https://", "http://", 1),
            )
            .send()
            .await;
        assert!(plain.is_err(), "{method} {path} answered plain HTTP");
    }
    let metrics = client.send(client.http.get(client.url("/metrics"))).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("lockstep_agent_commands")
    );
}

#[tokio::test]
async fn the_app_sees_platform_variables_and_runs_unprivileged() {
    let setup = setup().await;
    let client = setup.agent.client();
    let mut inputs = runtime(&[
        ("env:GREETING", "hello from the environment"),
        ("theme", "dark"),
    ]);
    inputs.routes =
        serde_json::json!({"https://shop.localhost/": {"type": "upstream", "upstream": "app"}});
    client
        .deploy(ENV, &setup.v1, "d1", Generation(1), inputs.clone())
        .await;
    let port = client.status(ENV).await.router_port;
    let report: serde_json::Value = router_client()
        .get(format!("https://127.0.0.1:{port}/env"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let env = &report["env"];
    assert_eq!(env["PLATFORM_APPLICATION_NAME"], "app");
    assert_eq!(env["PLATFORM_PROJECT"], "shop");
    assert_eq!(env["PLATFORM_PROJECT_ENTROPY"], "entropy-of-shop");
    assert_eq!(env["PLATFORM_BRANCH"], "production");
    assert_eq!(env["PLATFORM_ENVIRONMENT"], "production");
    assert_eq!(env["PLATFORM_ENVIRONMENT_TYPE"], "production");
    assert_eq!(env["PLATFORM_TREE_ID"], setup.v1.tree_id.as_str());
    assert_eq!(env["PLATFORM_MODE"], "enterprise");
    assert_eq!(env["PLATFORM_CLUSTER"], "shop-production");
    assert_eq!(env["LOCKSTEP_NODE"], "production-1");
    assert_eq!(env["SAMPLE_ENVIRONMENT_FILE"], "sourced in production");
    // The deploy hook ran with `.environment` too, and knew where the web process listens.
    let hooks: serde_json::Value = router_client()
        .get(format!("https://127.0.0.1:{port}/hooks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deploy = &hooks["hooks"][0];
    assert_eq!(deploy["environment_file"], "sourced in production");
    assert_eq!(deploy["port"], env["PORT"], "{hooks}");
    // The app is at /app, its home too, as on Platform.sh, whatever folder the node keeps it in.
    assert_eq!(env["PLATFORM_APP_DIR"], "/app");
    assert_eq!(report["home"], "/app");
    assert_eq!(report["cwd"], "/app");
    assert_eq!(report["application"]["name"], "app");
    assert_eq!(report["application"]["type"], "python:3.11");
    assert_eq!(
        report["application"]["web"]["commands"]["start"],
        "python3 server.py"
    );
    // /run/config.json tells the same facts, shaped as Platform.sh writes it.
    let config = &report["config_json"];
    assert_eq!(config["applications"][0]["name"], "app");
    assert_eq!(
        config["configuration"]["environment_info"]["name"],
        "production"
    );
    assert!(config["info"]["limits"]["memory"].as_u64().unwrap() > 0);
    // The environment's value overrides the app config's, and is a real environment variable.
    assert_eq!(
        report["env_variables"]["GREETING"],
        "hello from the environment"
    );
    assert_eq!(report["variables"], serde_json::json!({"theme": "dark"}));
    assert_eq!(
        report["relationships"],
        serde_json::json!({}),
        "the sample app declares no relationship"
    );
    assert_eq!(report["routes"], inputs.routes);

    // As root, the app runs as its environment's user, who owns its mounts.
    if nix::unistd::Uid::effective().is_root() {
        assert_eq!(report["uid"], APP_USER.uid);
        let storage_owner = std::fs::metadata(setup.storage.path().join("storage"))
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap();
        assert_eq!(
            storage_owner, APP_USER.uid,
            "the storage mount belongs to the app's user"
        );
    } else {
        assert_eq!(report["uid"], nix::unistd::Uid::effective().as_raw());
    }
}

/// `GET path` sent as written, `..` and all (clients normalise it away), as an edge: the status
/// code.
async fn get_raw(port: u16, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let identity = test_authority()
        .identity_for(&lockstep_transport::Peer::Edge("tests".into()), &[])
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        lockstep_transport::client_config(&identity).unwrap(),
    ));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let loopback = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = tls.connect(loopback, tcp).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(!answer.contains("name: app"), "the app's config leaked");
    answer.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_router_serves_static_locations_itself_and_passes_the_rest_to_the_app() {
    let setup = setup().await;
    let client = setup.agent.client();
    let config_path = setup.project.path().join(".platform.app.yaml");
    let config = std::fs::read_to_string(&config_path).unwrap().replace(
        "    start: python3 server.py\n",
        "    start: python3 server.py\n  locations:\n    \"/\": {passthru: true}\n    \"/static\": {root: static, expires: 1h, passthru: false}\n",
    );
    assert!(config.contains("/static"));
    std::fs::write(&config_path, config).unwrap();
    std::fs::create_dir_all(setup.project.path().join("static")).unwrap();
    std::fs::write(
        setup.project.path().join("static/hello.txt"),
        "hello, static\n",
    )
    .unwrap();
    setup.project.commit("static files");
    let image = build_image(&setup.project, setup.images());
    client
        .deploy(ENV, &image, "d1", Generation(1), runtime(&[]))
        .await;
    let port = client.status(ENV).await.router_port;

    let response = router_client()
        .get(format!("https://127.0.0.1:{port}/static/hello.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["cache-control"], "max-age=3600");
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(headers["x-lockstep-gate"], "open");
    assert_eq!(headers["x-lockstep-generation"], "1");
    assert!(!headers.contains_key("x-release"), "the app answered");
    assert_eq!(response.text().await.unwrap(), "hello, static\n");

    let (status, release, _) = get_router(port, "/static/missing.txt").await;
    assert_eq!(status, 404);
    assert_eq!(release, None, "the app answered");
    let refused = get_raw(port, "/static/../.platform.app.yaml").await;
    assert_eq!(refused, 403);

    let (status, release, _) = get_router(port, "/").await;
    assert_eq!(status, 200);
    assert_eq!(release.as_deref(), Some(image.tree_id.as_str()));
    let log_path = setup._data.path().join("instances/production/logs/web.log");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    support::eventually(Duration::from_secs(10), "the app to log `/`", || async {
        read_log().contains("GET / ")
    })
    .await;
    let log = read_log();
    assert!(
        !log.contains("/static"),
        "the app saw a static request: {log}"
    );
}

/// An image store at `store` holding `bytes` as image `id`, with `frames` as its frame index
/// (else none: the whole file as one frame); the store's path.
fn serve_image<'a>(store: &'a Path, id: &ImageId, bytes: &[u8], frames: Option<&[u8]>) -> &'a Path {
    lockstep_image::ImageStore::open(store).unwrap();
    std::fs::write(store.join(format!("images/{id}.tar.zst")), bytes).unwrap();
    if let Some(frames) = frames {
        std::fs::write(store.join(format!("images/{id}.frames")), frames).unwrap();
    }
    store
}

#[tokio::test]
async fn a_pull_that_broke_off_resumes_and_a_one_file_change_fetches_a_small_part_of_the_image() {
    let setup = setup().await;
    let client = setup.agent.client();
    setup.project.write_dependencies(3000);
    setup.project.commit("dependencies");
    let v2 = build_image(&setup.project, setup.images());
    let whole = std::fs::read(&v2.path).unwrap();

    // The controller's connection breaks off halfway through the image.
    let source = tempfile::tempdir().unwrap();
    let frames = std::fs::read(v2.path.with_extension("").with_extension("frames")).unwrap();
    let half = serve_image(
        source.path(),
        &v2.id,
        &whole[..whole.len() / 2],
        Some(&frames),
    );
    let answer = client.stage_from(ENV, &v2.id, half).await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert!(
        answer.body["error"].as_str().unwrap().contains("broke off"),
        "{}",
        answer.body
    );
    let resumed = client.stage(ENV, &v2).await.ok();
    let fetched = resumed["fetched_bytes"].as_u64().unwrap();
    let total = whole.len() as u64;
    assert!(
        fetched < total && fetched >= total / 2,
        "{fetched} of {total} bytes fetched after a break at half"
    );

    let changed = setup
        .project
        .path()
        .join("vendor/package-81/module_1627.py");
    let mut text = std::fs::read_to_string(&changed).unwrap();
    text.push_str("added = 1\n");
    std::fs::write(&changed, text).unwrap();
    setup.project.commit("one file changed");
    let v3 = build_image(&setup.project, setup.images());
    let staged = client.stage(ENV, &v3).await.ok();
    let fetched = staged["fetched_bytes"].as_u64().unwrap();
    let reused = staged["reused_bytes"].as_u64().unwrap();
    assert_eq!(fetched + reused, std::fs::metadata(&v3.path).unwrap().len());
    assert!(
        fetched * 20 < fetched + reused,
        "{fetched} bytes fetched, {reused} reused: more than 5% of the image"
    );
    let unpacked = setup.agent.data_dir.join(format!(
        "instances/{ENV}/releases/{}/app/vendor/package-81/module_1627.py",
        v3.id
    ));
    assert!(
        std::fs::read_to_string(unpacked)
            .unwrap()
            .ends_with("added = 1\n")
    );
}

#[tokio::test]
async fn a_renewed_certificate_is_installed_only_for_the_key_the_agent_made() {
    let setup = setup().await;
    let client = setup.agent.client();
    let authority = test_authority();
    let node = lockstep_transport::Peer::Node("test-node".into());
    let loopback = ["127.0.0.1".to_owned()];
    let install = |certificate: String| {
        client.send(
            client
                .http
                .put(client.url("/v1/certificate"))
                .json(&serde_json::json!({ "certificate": certificate })),
        )
    };
    // Nothing asked for yet.
    let unasked = authority.identity_for(&node, &loopback).unwrap();
    assert_eq!(install(unasked.certificate_pem).await.status, 409);

    let request = client
        .send(client.http.post(client.url("/v1/certificate-request")))
        .await
        .ok();
    let csr = request["csr"].as_str().unwrap();
    // A certificate for another key, or naming another node, is refused; the request stays.
    let other_key = authority.identity_for(&node, &loopback).unwrap();
    assert_eq!(install(other_key.certificate_pem).await.status, 422);
    let elsewhere = authority
        .issue(
            csr,
            &lockstep_transport::Peer::Node("other".into()),
            &loopback,
        )
        .unwrap();
    assert_eq!(install(elsewhere).await.status, 409);
    let renewed = authority.issue(csr, &node, &loopback).unwrap();
    assert_eq!(install(renewed.clone()).await.status, 204);
    let kept =
        lockstep_transport::Identity::load(&lockstep_agent::identity_dir(&setup.agent.data_dir))
            .unwrap()
            .unwrap();
    assert_eq!(
        kept.certificate_pem, renewed,
        "the renewed certificate is kept"
    );
    // Served from the next connection on, with no restart.
    let fresh = setup.agent.client();
    let instances = fresh.send(fresh.http.get(fresh.url("/v1/instances"))).await;
    assert_eq!(instances.status, 200);
}

#[tokio::test]
async fn the_router_serves_edges_alone() {
    let setup = setup().await;
    let client = setup.agent.client();
    client
        .deploy(ENV, &setup.v1, "d1", Generation(1), runtime(&[]))
        .await;
    let port = client.status(ENV).await.router_port;
    let url = format!("https://127.0.0.1:{port}/");
    assert_eq!(
        router_client().get(&url).send().await.unwrap().status(),
        200
    );
    let authority = test_authority();
    for peer in [
        lockstep_transport::Peer::Controller,
        lockstep_transport::Peer::Node("other".into()),
    ] {
        let answer = client_as(authority, peer.clone()).get(&url).send().await;
        assert!(answer.is_err(), "the router answered {peer}");
    }
    let plain = reqwest::get(url.replacen("https", "http", 1)).await;
    assert!(plain.is_err(), "the router answered plain HTTP");
}

#[tokio::test]
async fn a_node_without_its_pools_shared_folder_refuses_releases_with_storage_mounts() {
    let setup = setup().await;
    let client = setup.agent.client();
    let shared = setup.storage.path().join("nfs");
    let mut config = instance_config(ENV, &shared.join(ENV));
    config.shared_storage = Some(shared.clone());
    client.configure(&config).await;

    let refused = client.stage(ENV, &setup.v1).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    let said = refused.body.to_string();
    assert!(said.contains(&shared.display().to_string()), "{said}");
    assert!(said.contains("--shared-storage"), "{said}");
    assert!(
        !shared.exists(),
        "the agent never makes the shared folder itself"
    );

    std::fs::create_dir(&shared).unwrap();
    client.stage(ENV, &setup.v1).await.ok();
}
