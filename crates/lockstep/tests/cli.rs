//! The `lockstep` binary as a user runs it, on the sample app.

mod support;

use assert_cmd::cargo::cargo_bin_cmd;
use support::{Project, sample_app};

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn config_check_passes_on_the_sample_app() {
    let output = cargo_bin_cmd!("lockstep")
        .args(["config", "check"])
        .arg(sample_app())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stdout_of(&output));
    assert!(stdout_of(&output).contains("the configuration is valid (app `app`, 2 routes"));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `lockstep activity list | head`: the reader goes away before the writer is done.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = std::process::Command::new(assert_cmd::cargo::cargo_bin!("lockstep"))
        .args(["config", "check"])
        .arg(sample_app())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!output.status.success());
}

#[test]
fn config_check_prints_every_error_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".platform.app.yaml"),
        "name: app\ntype: python\nhoks: {}\nweb:\n  commands: {}\n",
    )
    .unwrap();
    let output = cargo_bin_cmd!("lockstep")
        .args(["config", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = stdout_of(&output);
    assert!(text.contains(".platform.app.yaml:2:7"), "{text}");
    assert!(text.contains("`type` must be `language:version`"), "{text}");
    assert!(text.contains("did you mean `hooks`?"), "{text}");
    assert!(text.contains("`web.commands.start` is required"), "{text}");
    assert!(text.contains("3 errors"), "{text}");
}

#[test]
fn building_the_sample_app_twice_reuses_the_image() {
    let repo = Project::sample();
    let data = tempfile::tempdir().unwrap();
    let run = || {
        cargo_bin_cmd!("lockstep")
            .arg("--data-dir")
            .arg(data.path())
            .arg("build")
            .arg(repo.path())
            .output()
            .unwrap()
    };
    let image_id = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("image       "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no image line in {text}"))
    };
    let first = run();
    assert!(first.status.success(), "{}", stdout_of(&first));
    let first_text = stdout_of(&first);
    assert!(
        first_text.contains("build.py"),
        "the hook's output is shown: {first_text}"
    );
    assert!(first_text.contains("reused      no"), "{first_text}");
    let second = run();
    let second_text = stdout_of(&second);
    assert!(second.status.success(), "{second_text}");
    assert!(
        second_text.contains("Reusing existing build for this tree ID"),
        "{second_text}"
    );
    assert!(second_text.contains("reused      yes"), "{second_text}");
    assert_eq!(image_id(&first_text), image_id(&second_text));
    assert_eq!(image_id(&first_text).len(), 64);
}

#[test]
fn a_failing_build_exits_non_zero_and_shows_the_hook_output() {
    let repo = Project::sample();
    let data = tempfile::tempdir().unwrap();
    let output = cargo_bin_cmd!("lockstep")
        .arg("--data-dir")
        .arg(data.path())
        .arg("build")
        .arg(repo.path())
        .args(["--var", "env:FAIL_BUILD=1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = stdout_of(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("FAIL_BUILD is set"), "{stdout}");
    assert!(
        stderr.contains("the hook failed with exit status: 1"),
        "{stderr}"
    );
    assert!(!stdout.contains("image       "), "{stdout}");
}

#[test]
fn up_refuses_a_shared_storage_folder_that_is_not_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let up = |pool_folder: &str| {
        std::process::Command::new(assert_cmd::cargo::cargo_bin!("lockstep"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "up",
                "--listen",
                &format!("127.0.0.1:{}", support::free_port()),
            ])
            .args(["--shared-storage", pool_folder])
            .output()
            .unwrap()
    };
    let missing = dir.path().join("nfs");
    support::assert_refused(
        &up(&format!("production={}", missing.display())),
        &format!("the production pool's shared storage {}", missing.display()),
    );
    assert!(!missing.exists());
    support::assert_refused(&up("prod=/mnt"), "`prod` is no pool");
}

#[tokio::test]
async fn lockstep_edge_answers_the_controller_alone_refuses_unknown_hosts_and_needs_enrolling() {
    let dir = tempfile::tempdir().unwrap();
    let (public, admin) = (support::free_port(), support::free_port());
    let edge_command = || {
        let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin!("lockstep"));
        command
            .arg("--data-dir")
            .arg(dir.path())
            .args(["edge", "--listen", &format!("127.0.0.1:{public}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")]);
        command
    };
    let unenrolled = edge_command().output().unwrap();
    support::assert_refused(&unenrolled, "lockstep node add NAME --pool edge");

    let authority = support::test_authority();
    authority
        .identity_for(
            &lockstep_transport::Peer::Edge("edge-1".into()),
            &["127.0.0.1".into()],
        )
        .unwrap()
        .save(&dir.path().join("tls"))
        .unwrap();
    let mut edge = edge_command().spawn().unwrap();
    let controller = support::client_as(authority, lockstep_transport::Peer::Controller);
    let admin_url = format!("https://127.0.0.1:{admin}/v1/environments");
    support::eventually(
        std::time::Duration::from_secs(30),
        "the edge to answer",
        || async { controller.get(&admin_url).send().await.is_ok() },
    )
    .await;
    let listed = controller.get(&admin_url).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(
        listed.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!([])
    );
    let node = support::client_as(authority, lockstep_transport::Peer::Node("n1".into()));
    assert_eq!(node.get(&admin_url).send().await.unwrap().status(), 403);
    let http = reqwest::Client::new();
    let unknown = http
        .get(format!("http://127.0.0.1:{public}/"))
        .header("host", "nowhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let _ = edge.kill();
    let _ = edge.wait();
}
