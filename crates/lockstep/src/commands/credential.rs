//! `lockstep credential`: a git credential helper, so that no token sits in a remote's URL.
//! git runs it as `credential.helper '!lockstep credential'` and reads `username` and
//! `password` from its output.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::commands::up::Endpoints;

pub fn run(operation: &str, data_dir: &Path) -> anyhow::Result<ExitCode> {
    // git sends what it knows on stdin; it must be read even when unused.
    let mut request = String::new();
    std::io::stdin().read_to_string(&mut request)?;
    if operation != "get" {
        return Ok(ExitCode::SUCCESS);
    }
    let token = match std::env::var("LOCKSTEP_TOKEN") {
        Ok(token) => token,
        Err(_) => {
            let path = data_dir.join("endpoints.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let endpoints: Endpoints = serde_json::from_str(&text)?;
            endpoints.token
        }
    };
    println!("username=lockstep");
    println!("password={token}");
    Ok(ExitCode::SUCCESS)
}
