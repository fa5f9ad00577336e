//! The sandbox attacked from inside: what pushed code can see, write and leave behind.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{Fixture, env, init, running_with, wait_for};
use lockstep_supervisor::{
    Cancel, HookSpec, RunAs, Sandbox, SandboxError, end_leftovers, give_folder, run_hook,
};

/// Runs `script` to its end in `sandbox`, returning its output; panics if it fails.
fn run(sandbox: &Sandbox, script: &str) -> String {
    let mut output = String::new();
    let spec = HookSpec {
        script: script.into(),
        sandbox: sandbox.clone(),
        env: env(),
        timeout: Duration::from_secs(30),
        cancel: Cancel::default(),
        stdin: None,
        stdout: None,
    };
    let result = run_hook(&spec, &mut |line| {
        output.push_str(line);
        output.push('\n');
    });
    if let Err(error) = result {
        panic!("{script}: {error}\n{output}");
    }
    output
}

/// A sandbox with a read-only app, one mount, and a secret file beside them on the host.
fn runtime_fixture() -> (Fixture, std::path::PathBuf) {
    let mut fx = Fixture::new();
    let user = fx.sandbox.user;
    std::fs::write(fx.path("index.html"), "app file\n").unwrap();
    std::fs::create_dir(fx.path("uploads")).unwrap();
    let uploads = fx.home.path().join("mounts/uploads");
    give_folder(&uploads, user).unwrap();
    fx.sandbox.mounts.push(("/app/uploads".into(), uploads));
    fx.sandbox.app_writable = false;
    let secret = fx.home.path().join("secret.token");
    std::fs::write(&secret, "do not read\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    (fx, secret)
}

#[test]
fn the_sandbox_shows_the_app_its_mounts_and_the_system_only() {
    let (fx, secret) = runtime_fixture();
    let secret_path = secret.display().to_string();
    let home = fx.home.path().display().to_string();
    let output = run(
        &fx.sandbox,
        &format!(
            "cat index.html; \
             echo mounted > uploads/file && echo mount-writable; \
             (echo x > tmp-file) 2>/dev/null || echo app-read-only; \
             echo x > /tmp/scratch && echo tmp-writable; \
             echo x > /run/socket-dir && echo run-writable; \
             touch /usr/x 2>/dev/null || echo usr-read-only; \
             for dir in / /etc /var /opt/runtime/bin; do \
               (echo x > $dir/x) 2>/dev/null && echo wrote $dir; \
             done; \
             for path in {secret_path} {home} /root /etc/shadow /etc/ssh /home /var/lib /proc/1/root/etc/shadow; do \
               if [ -e $path ]; then echo visible $path; fi; \
             done; \
             echo uid=$(id -u) user=$(id -un) home=$HOME"
        ),
    );
    let user = fx.sandbox.user;
    let expected = format!(
        "app file\nmount-writable\napp-read-only\ntmp-writable\nrun-writable\nusr-read-only\n\
         uid={} user=web home=\n",
        user.uid
    );
    assert_eq!(output, expected);
    assert_eq!(
        std::fs::read_to_string(fx.home.path().join("mounts/uploads/file")).unwrap(),
        "mounted\n"
    );
    assert!(fx.home.path().join("tmp/scratch").exists());
    assert!(!fx.path("tmp-file").exists());
}

#[test]
fn nothing_the_sandbox_starts_outlives_it_even_in_a_new_session() {
    let fx = Fixture::new();
    run(
        &fx.sandbox,
        "setsid sleep 1021 & nohup sleep 1022 >/dev/null 2>&1 & echo started",
    );
    assert!(running_with("sleep 1021").is_empty());
    assert!(running_with("sleep 1022").is_empty());
}

#[test]
fn a_sandbox_dies_with_the_thread_that_started_it() {
    // Both kinds: the shell first inside, and the init first inside (which runs as the
    // environment's user, whose change of user clears what bubblewrap set up for it).
    for (with_init, command) in [(false, "exec sleep 1023"), (true, "exec sleep 1026")] {
        let fx = Fixture::new();
        let sandbox = fx.sandbox.clone();
        let mut child = std::thread::spawn(move || {
            let command = if with_init {
                sandbox.command_with_init(command, &env(), &init())
            } else {
                sandbox.command(command, &env())
            };
            let child = command.unwrap().spawn().unwrap();
            wait_until_running(&command_line(with_init));
            child
            // The thread ends here, as a daemon's thread would if it died.
        })
        .join()
        .unwrap();
        wait_until_gone(&command_line(with_init));
        child.wait().unwrap();
    }
}

fn command_line(with_init: bool) -> String {
    if with_init {
        "sleep 1026"
    } else {
        "sleep 1023"
    }
    .to_owned()
}

#[test]
fn leftovers_of_an_owner_are_ended_and_others_are_not() {
    let fx = Fixture::new();
    let mut other = fx.sandbox.clone();
    other.owner = format!("{}-other", fx.sandbox.owner);
    // Spawned from this thread, which stays alive, as an agent's would until it is killed.
    let mut children = Vec::new();
    for (sandbox, command) in [
        (&fx.sandbox, "exec sleep 1024"),
        (&other, "exec sleep 1025"),
    ] {
        children.push(sandbox.command(command, &env()).unwrap().spawn().unwrap());
    }
    wait_until_running("sleep 1024");
    wait_until_running("sleep 1025");

    assert_eq!(end_leftovers(&fx.sandbox.owner), 1);
    wait_until_gone("sleep 1024");
    assert_eq!(
        running_with("sleep 1025").len(),
        1,
        "another owner's sandbox was ended"
    );

    assert_eq!(end_leftovers(&other.owner), 1);
    wait_until_gone("sleep 1025");
    for mut child in children {
        child.wait().unwrap();
    }
}

#[test]
fn pushed_code_never_runs_as_root() {
    let fx = Fixture::new();
    let mut sandbox = fx.sandbox.clone();
    if nix::unistd::geteuid().is_root() {
        sandbox.user = RunAs { uid: 0, gid: 0 };
        assert!(matches!(
            sandbox.command("id", &env()),
            Err(SandboxError::Root)
        ));
    } else {
        // An ordinary user can only run apps as itself.
        sandbox.user.uid += 1;
        assert!(matches!(
            sandbox.command("id", &env()),
            Err(SandboxError::OtherUser { .. })
        ));
    }
}

#[test]
fn the_runtime_and_host_files_appear_where_the_app_looks() {
    let mut fx = Fixture::new();
    fx.sandbox.runtime = BTreeMap::from([("python3".to_owned(), "/bin/echo".into())]);
    // A CA file outside every folder the sandbox shows, as an operator's may be: not under
    // /tmp or /var, which the sandbox has its own of (a checkout may well be there).
    let outside = [
        std::env::var_os("HOME").map(std::path::PathBuf::from),
        Some(env!("CARGO_TARGET_TMPDIR").into()),
    ]
    .into_iter()
    .flatten()
    .find(|dir| {
        dir.is_dir()
            && !["/tmp", "/var", "/run"]
                .iter()
                .any(|own| dir.starts_with(own))
    })
    .expect("a folder outside the sandbox's own");
    let operator = tempfile::tempdir_in(outside).unwrap();
    let ca = operator.path().join("ca.pem");
    std::fs::write(&ca, "CERTIFICATE\n").unwrap();
    std::fs::write(operator.path().join("other.key"), "PRIVATE\n").unwrap();
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    fx.sandbox.host_files.push(ca.clone());
    let output = run(
        &fx.sandbox,
        &format!(
            "PATH=/opt/runtime/bin:$PATH python3 runtime-ok; cat {}; ls {} | wc -l",
            ca.display(),
            operator.path().display()
        ),
    );
    // The CA file's folder is there, holding the CA file alone.
    assert_eq!(output, "runtime-ok\nCERTIFICATE\n1\n");
}

fn wait_until_running(command: &str) {
    block_on_wait(command, true);
}

fn wait_until_gone(command: &str) {
    block_on_wait(command, false);
}

fn block_on_wait(command: &str, present: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(wait_for(command, 10, || {
        (running_with(command).is_empty() != present).then_some(())
    }));
}
