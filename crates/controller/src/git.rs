//! Git over smart HTTP: the system `git http-backend` as a CGI child, after authentication.
//!
//! No Rust library serves receive-pack; git's own backend also runs the repository's hooks,
//! where the controller validates and builds a push (pre-receive), then deploys it and says
//! whether its refs may move (proc-receive, which git runs for every `refs/heads/` ref instead
//! of moving it).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use futures_util::TryStreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

/// What git needs to reach the controller from inside its hooks.
pub struct HookContact {
    pub url: String,
    pub token: String,
    pub lockstep_binary: PathBuf,
}

/// Creates the project's bare repository with Lockstep's hooks, if it does not exist yet.
pub fn ensure_repository(path: &Path, contact: &HookContact) -> std::io::Result<()> {
    if !path.join("HEAD").exists() {
        let status = std::process::Command::new("git")
            .args(["init", "--quiet", "--bare", "--initial-branch=production"])
            .arg(path)
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "git init --bare {} failed",
                path.display()
            )));
        }
    }
    // An earlier Lockstep deployed from post-receive, after the refs had moved.
    match std::fs::remove_file(path.join("hooks/post-receive")) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let status = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(path)
        .args(["config", "receive.procReceiveRefs", "refs/heads/"])
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "git config receive.procReceiveRefs in {} failed",
            path.display()
        )));
    }
    for hook in ["pre-receive", "proc-receive"] {
        let script = format!(
            "#!/bin/sh\n# Installed by Lockstep: hands the push to the controller.\nexec '{}' git-hook {hook}\n",
            contact.lockstep_binary.display()
        );
        let hook_path = path.join("hooks").join(hook);
        std::fs::write(&hook_path, script)?;
        std::fs::set_permissions(
            &hook_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
    }
    Ok(())
}

/// The commit branch `branch` of the repository at `path` points at, if it exists.
pub fn branch_commit(path: &Path, branch: &str) -> std::io::Result<Option<String>> {
    let output = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(path)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("refs/heads/{branch}^{{commit}}"))
        .output()?;
    Ok(output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned()))
}

/// Makes branch `branch` at `commit`; refused if it exists (git's own check, atomic).
pub fn create_branch(path: &Path, branch: &str, commit: &str) -> std::io::Result<()> {
    let status = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(path)
        .args(["update-ref", "--no-deref"])
        .arg(format!("refs/heads/{branch}"))
        .arg(commit)
        .arg("")
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "git could not make branch {branch} at {commit}"
        )))
    }
}

/// Removes branch `branch`, if it exists.
pub fn delete_branch(path: &Path, branch: &str) -> std::io::Result<()> {
    let status = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(path)
        .args(["update-ref", "-d", "--no-deref"])
        .arg(format!("refs/heads/{branch}"))
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "git could not remove branch {branch}"
        )))
    }
}

/// What [`merge_into`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Merged {
    /// The branch has every commit of the other already.
    UpToDate,
    /// The branch moved to this commit: the other's, or a merge of both.
    Moved(String),
    /// Both changed these files; the branch is left as it was.
    Conflicts(Vec<String>),
}

/// Merges branch `from` into branch `branch` as `git merge` would, without a work tree: a
/// fast-forward when it can, else a merge commit by `author`. The branch moves only if no push
/// moved it meanwhile (git's own check, atomic).
pub fn merge_into(path: &Path, branch: &str, from: &str, author: &str) -> std::io::Result<Merged> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("--git-dir")
            .arg(path)
            .args(args)
            .env("GIT_AUTHOR_NAME", author)
            .env("GIT_AUTHOR_EMAIL", "lockstep@localhost")
            .env("GIT_COMMITTER_NAME", "Lockstep")
            .env("GIT_COMMITTER_EMAIL", "lockstep@localhost")
            .output()
    };
    let missing = |name: &str| std::io::Error::other(format!("branch {name} has no commit"));
    let ours = branch_commit(path, branch)?.ok_or_else(|| missing(branch))?;
    let theirs = branch_commit(path, from)?.ok_or_else(|| missing(from))?;
    if git(&["merge-base", "--is-ancestor", &theirs, &ours])?
        .status
        .success()
    {
        return Ok(Merged::UpToDate);
    }
    let commit = if git(&["merge-base", "--is-ancestor", &ours, &theirs])?
        .status
        .success()
    {
        theirs
    } else {
        let merged = git(&[
            "merge-tree",
            "--write-tree",
            "--name-only",
            "--no-messages",
            &ours,
            &theirs,
        ])?;
        let said = String::from_utf8_lossy(&merged.stdout).into_owned();
        let mut lines = said.lines();
        let tree = lines.next().unwrap_or_default().to_owned();
        match merged.status.code() {
            Some(0) => {}
            Some(1) => return Ok(Merged::Conflicts(lines.map(str::to_owned).collect())),
            _ => {
                return Err(std::io::Error::other(format!(
                    "git could not merge {from} into {branch}: {}",
                    String::from_utf8_lossy(&merged.stderr).trim()
                )));
            }
        }
        let message = format!("Merge branch '{from}' into {branch}");
        let made = git(&[
            "commit-tree",
            &tree,
            "-p",
            &ours,
            "-p",
            &theirs,
            "-m",
            &message,
        ])?;
        if !made.status.success() {
            return Err(std::io::Error::other(format!(
                "git could not commit the merge of {from} into {branch}: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            )));
        }
        String::from_utf8_lossy(&made.stdout).trim().to_owned()
    };
    let moved = git(&[
        "update-ref",
        "--no-deref",
        &format!("refs/heads/{branch}"),
        &commit,
        &ours,
    ])?;
    if !moved.status.success() {
        return Err(std::io::Error::other(format!(
            "branch {branch} moved while its sync was prepared: sync again"
        )));
    }
    Ok(Merged::Moved(commit))
}

pub struct CgiRequest<'a> {
    pub repos_root: &'a Path,
    /// The path below the git route, such as `/shop.git/info/refs`.
    pub path_info: &'a str,
    pub method: &'a Method,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub user: &'a str,
    pub contact: &'a HookContact,
}

/// Runs `git http-backend` for one request, streaming the body in and the answer out.
pub async fn serve(request: CgiRequest<'_>, body: Body) -> Response<Body> {
    match run_backend(request, body).await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(%error, "git http-backend failed");
            Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(Body::from(format!("git backend error: {error}\n")))
                .expect("a fixed response builds")
        }
    }
}

async fn run_backend(request: CgiRequest<'_>, body: Body) -> std::io::Result<Response<Body>> {
    let header = |name: header::HeaderName| {
        request
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", request.repos_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", request.path_info)
        .env("REQUEST_METHOD", request.method.as_str())
        .env("QUERY_STRING", request.query)
        .env("CONTENT_TYPE", header(header::CONTENT_TYPE))
        .env("REMOTE_USER", request.user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env(
            "GIT_PROTOCOL",
            request
                .headers
                .get("git-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
        )
        .env("HTTP_CONTENT_ENCODING", header(header::CONTENT_ENCODING))
        .env("LOCKSTEP_HOOK_URL", &request.contact.url)
        .env("LOCKSTEP_HOOK_TOKEN", &request.contact.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let length = header(header::CONTENT_LENGTH);
    if !length.is_empty() {
        command.env("CONTENT_LENGTH", length);
    }
    let mut child = command.spawn()?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    tokio::spawn(async move {
        let mut reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
        let _ = tokio::io::copy(&mut reader, &mut stdin).await;
        let _ = stdin.shutdown().await;
    });
    let mut stdout = BufReader::new(stdout);
    let mut response = Response::builder();
    let mut status = StatusCode::OK;
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).await? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().and_then(|c| c.parse().ok());
            status = code
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
        } else if let Ok(value) = HeaderValue::from_str(value) {
            response = response.header(name, value);
        }
    }
    // The body streams the rest of the output; the child is reaped once it exits.
    let body_stream = ReaderStream::new(stdout);
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(response
        .status(status)
        .body(Body::from_stream(body_stream))
        .expect("CGI headers were checked"))
}
