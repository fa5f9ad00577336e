pub mod agent;
pub mod build;
pub mod config;
pub mod credential;
pub mod edge;
pub mod git_hook;
pub mod node;
pub mod ops;
pub mod up;

/// Reads a bearer token from a file, refusing one too short to be a secret.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?
        .trim()
        .to_owned();
    if token.len() < 16 {
        anyhow::bail!(
            "the token in {} is shorter than 16 characters; use a long random one",
            path.display()
        );
    }
    Ok(token)
}
