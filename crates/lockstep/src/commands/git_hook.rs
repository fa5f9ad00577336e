//! `lockstep git-hook pre-receive|proc-receive`: run by git inside the project's repository,
//! hands the push to the controller and prints its answer as the push's `remote:` lines.
//!
//! pre-receive reads the pushed refs as lines and answers with its exit status. proc-receive,
//! which git runs instead of moving the refs itself, speaks git's pkt-line protocol on its
//! standard input and output (so its lines go to standard error) and answers, per ref, `ok`
//! with `fall-through` (git moves the ref) or `ng` with the reason.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
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
    match hook {
        "pre-receive" => pre_receive(),
        "proc-receive" => proc_receive(),
        other => bail!("unknown hook `{other}`"),
    }
}

fn pre_receive() -> anyhow::Result<ExitCode> {
    let mut refs = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.context("cannot read the pushed refs")?;
        if let Some(update) = parse_command(&line) {
            refs.push(update);
        }
    }
    let answer = ask_controller("pre-receive", refs, &mut |line| println!("{line}"))?;
    let code = answer
        .get("exit")
        .and_then(|c| c.as_i64())
        .context("the controller's answer has no exit status")?;
    Ok(if code == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn proc_receive() -> anyhow::Result<ExitCode> {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    // Version negotiation: git offers its version and features; the hook takes none of them,
    // so git sends no push options.
    let offer = read_until_flush(&mut input)?;
    if !offer.first().is_some_and(|l| l.starts_with("version=1")) {
        bail!("git offered an unknown proc-receive protocol: {offer:?}");
    }
    write_packet(&mut output, "version=1\n")?;
    write_flush(&mut output)?;
    let refs: Vec<serde_json::Value> = read_until_flush(&mut input)?
        .iter()
        .filter_map(|line| parse_command(line))
        .collect();
    let answer = ask_controller("proc-receive", refs, &mut |line| eprintln!("{line}"))?;
    let verdicts = answer
        .get("verdicts")
        .and_then(|v| v.as_array())
        .context("the controller's answer has no verdicts")?;
    for verdict in verdicts {
        let name = verdict["name"].as_str().unwrap_or_default();
        match verdict["error"].as_str() {
            None => {
                write_packet(&mut output, &format!("ok {name}\n"))?;
                write_packet(&mut output, "option fall-through\n")?;
            }
            Some(reason) => {
                let reason = reason.replace('\n', " ");
                write_packet(&mut output, &format!("ng {name} {reason}\n"))?;
            }
        }
    }
    write_flush(&mut output)?;
    Ok(ExitCode::SUCCESS)
}

/// `old new ref`, as git gives a pushed ref.
fn parse_command(line: &str) -> Option<serde_json::Value> {
    let mut parts = line.split_whitespace();
    let (old, new, name) = (parts.next()?, parts.next()?, parts.next()?);
    Some(serde_json::json!({ "old": old, "new": new, "name": name }))
}

/// Posts the refs to the controller's hook route, passes each `line` it streams to `on_line`,
/// and returns its last message (the verdict).
fn ask_controller(
    hook: &str,
    refs: Vec<serde_json::Value>,
    on_line: &mut dyn FnMut(&str),
) -> anyhow::Result<serde_json::Value> {
    let url = std::env::var("LOCKSTEP_HOOK_URL")
        .context("LOCKSTEP_HOOK_URL is not set: this runs inside Lockstep's git server")?;
    let token = std::env::var("LOCKSTEP_HOOK_TOKEN").context("LOCKSTEP_HOOK_TOKEN is not set")?;
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
                match message.get("line").and_then(|l| l.as_str()) {
                    Some(text) => on_line(text),
                    None => return Ok(message),
                }
            }
        }
        bail!("the controller ended its answer without a verdict")
    })
}

/// Reads pkt-lines up to a flush packet; each line without its final newline.
fn read_until_flush(input: &mut impl Read) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut length = [0u8; 4];
        input
            .read_exact(&mut length)
            .context("git closed the proc-receive protocol")?;
        let length = usize::from_str_radix(std::str::from_utf8(&length)?, 16)
            .context("git sent a malformed pkt-line length")?;
        if length == 0 {
            return Ok(lines);
        }
        let mut payload = vec![0u8; length.checked_sub(4).context("a pkt-line too short")?];
        input.read_exact(&mut payload)?;
        let text = String::from_utf8_lossy(&payload);
        lines.push(text.trim_end_matches('\n').to_owned());
    }
}

fn write_packet(output: &mut impl Write, payload: &str) -> std::io::Result<()> {
    write!(output, "{:04x}{payload}", payload.len() + 4)?;
    output.flush()
}

fn write_flush(output: &mut impl Write) -> std::io::Result<()> {
    output.write_all(b"0000")?;
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkt_lines_read_back_what_was_written() {
        let mut wire = Vec::new();
        write_packet(&mut wire, "version=1\0push-options atomic\n").unwrap();
        write_packet(&mut wire, "0000 1111 refs/heads/main\n").unwrap();
        write_flush(&mut wire).unwrap();
        assert!(wire.starts_with(b"0022version=1"));
        let lines = read_until_flush(&mut wire.as_slice()).unwrap();
        assert_eq!(
            lines,
            [
                "version=1\0push-options atomic",
                "0000 1111 refs/heads/main"
            ]
        );
        assert!(read_until_flush(&mut &b"00"[..]).is_err());
    }
}
