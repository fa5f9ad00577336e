//! `lockstep git-hook pre-receive|post-receive`: run by git inside the project's repository,
//! hands the push to the controller and prints its answer as the push's `remote:` lines.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context, bail};
use futures_util::StreamExt;

/// Variables git sets in a receive hook that say where the pushed objects wait.
const QUARANTINE: [&str; 3] = [
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_QUARANTINE_PATH",
];

pub fn run(hook: &str) -> anyhow::Result<ExitCode> {
    if hook != "pre-receive" && hook != "post-receive" {
        bail!("unknown hook `{hook}`");
    }
    let url = std::env::var("LOCKSTEP_HOOK_URL")
        .context("LOCKSTEP_HOOK_URL is not set: this runs inside Lockstep's git server")?;
    let token = std::env::var("LOCKSTEP_HOOK_TOKEN").context("LOCKSTEP_HOOK_TOKEN is not set")?;
    let mut refs = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("cannot read the pushed refs")?;
        let mut parts = line.split_whitespace();
        if let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) {
            refs.push(serde_json::json!({ "old": old, "new": new, "name": name }));
        }
    }
    let git_env: BTreeMap<String, String> = QUARANTINE
        .iter()
        .filter_map(|name| {
            std::env::var(name)
                .ok()
                .map(|value| (name.to_string(), value))
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let response = reqwest::Client::new()
            .post(format!("{url}/internal/hooks/{hook}"))
            .bearer_auth(token)
            .json(&serde_json::json!({
                "refs": refs,
                "git_env": git_env,
                "user": std::env::var("REMOTE_USER").ok(),
            }))
            .send()
            .await
            .context("cannot reach the Lockstep controller")?
            .error_for_status()
            .context("the Lockstep controller refused the push")?;
        let mut stream = response.bytes_stream();
        let mut pending = Vec::new();
        while let Some(chunk) = stream.next().await {
            pending.extend_from_slice(&chunk.context("the controller's answer broke off")?);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let message: serde_json::Value =
                    serde_json::from_slice(&line).context("unreadable answer")?;
                if let Some(text) = message.get("line").and_then(|l| l.as_str()) {
                    println!("{text}");
                } else if let Some(code) = message.get("exit").and_then(|c| c.as_i64()) {
                    return Ok(if code == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    });
                }
            }
        }
        bail!("the controller ended its answer without a verdict")
    })
}
