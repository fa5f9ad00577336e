//! Reading a project's tree out of git with the system `git`, which also works on bare
//! repositories and on objects still quarantined by a receive hook.

use std::path::Path;
use std::process::Command;

use crate::build::BuildError;

/// Extra environment for every git command: a receive hook passes the quarantine's object
/// directories this way, so that pushed objects are readable before the push is accepted.
pub type GitEnv = [(String, String)];

/// The tree id that `git_ref` points at in `repo`: the key of build reuse, `PLATFORM_TREE_ID`.
pub fn resolve_tree(repo: &Path, git_ref: &str, env: &GitEnv) -> Result<String, BuildError> {
    let spec = format!("{git_ref}^{{tree}}");
    let output = git(repo, env)
        .args([
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &spec,
        ])
        .output()
        .map_err(|e| BuildError::Git(format!("cannot run git: {e}")))?;
    if !output.status.success() {
        return Err(BuildError::Git(format!(
            "`{git_ref}` does not name a commit or tree in {}",
            repo.display()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Writes the files of `tree` into `dest` (an empty folder), leaving the repository untouched.
pub fn checkout(repo: &Path, tree: &str, dest: &Path, env: &GitEnv) -> Result<(), BuildError> {
    let index = tempfile::NamedTempFile::new()
        .map_err(|e| BuildError::Git(format!("cannot create a temporary index: {e}")))?;
    // read-tree refuses to overwrite the empty file it is given, so let it create its own.
    let index_path = index.path().with_extension("index");
    let _remove_index = RemoveOnDrop(&index_path);
    run(git(repo, env)
        .env("GIT_INDEX_FILE", &index_path)
        .args(["read-tree", tree]))?;
    // An explicit work tree lets this work in bare repositories too.
    let mut work_tree = std::ffi::OsString::from("--work-tree=");
    work_tree.push(dest);
    run(git(repo, env)
        .arg(work_tree)
        .env("GIT_INDEX_FILE", &index_path)
        .args(["checkout-index", "--all", "--force"]))
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

fn git(repo: &Path, env: &GitEnv) -> Command {
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(repo)
        .envs(env.iter().map(|(k, v)| (k, v)));
    command
}

fn run(command: &mut Command) -> Result<(), BuildError> {
    let output = command
        .output()
        .map_err(|e| BuildError::Git(format!("cannot run git: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BuildError::Git(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ))
    }
}
