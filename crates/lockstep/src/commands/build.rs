//! `lockstep build`: the image builder on a local git checkout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use lockstep_image::{BuildError, BuildRequest, Builder, DEFAULT_BUILD_TIMEOUT};
use lockstep_supervisor::{Cancel, OperatorEnv, RunAs};

use crate::output::bytes;

#[derive(Args)]
pub struct BuildArgs {
    /// A git repository (a checkout or a bare repository).
    #[arg(default_value = ".")]
    path: PathBuf,
    /// The commit, branch or tag to build.
    #[arg(long = "ref", default_value = "HEAD")]
    git_ref: String,
    /// The project's name, for `PLATFORM_PROJECT` and its build cache [default: the folder's name].
    #[arg(long)]
    project: Option<String>,
    /// A build-visible variable, `NAME=VALUE`; `env:NAME=VALUE` makes an environment variable.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    variables: Vec<String>,
    /// Seconds the build hook may run before it is stopped.
    #[arg(long, default_value_t = DEFAULT_BUILD_TIMEOUT.as_secs())]
    timeout: u64,
    /// Print the images' manifests (one per app) as a JSON list at the end.
    #[arg(long)]
    json: bool,
    /// Fail when the runtime version of `type` is not installed, instead of building with the
    /// nearest one.
    #[arg(long)]
    strict_runtimes: bool,
    /// Pass this variable of your environment to the build too (CA and proxy settings are
    /// passed already).
    #[arg(long = "pass-env", value_name = "NAME")]
    pass_env: Vec<String>,
}

pub fn run(args: BuildArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let variables = parse_variables(&args.variables)?;
    let project = match &args.project {
        Some(project) => project.clone(),
        None => folder_name(&args.path)?,
    };
    let builder = Builder::new(data_dir)
        .with_context(|| format!("cannot use the data directory {}", data_dir.display()))?;
    let operator = OperatorEnv::from_process(&args.pass_env);
    // A build on its own has no project secrets to keep: the project's name gives a stable value.
    let project_entropy = blake3::hash(format!("lockstep build entropy {project}").as_bytes())
        .to_hex()
        .to_string();
    let request = BuildRequest {
        repo: &args.path,
        git_ref: &args.git_ref,
        project: &project,
        project_entropy: &project_entropy,
        cache: "local",
        variables: &variables,
        timeout: Duration::from_secs(args.timeout),
        git_env: &[],
        user: RunAs::unprivileged(),
        strict_runtimes: args.strict_runtimes,
        operator: &operator,
        cancel: Cancel::default(),
    };
    let outcome = match builder.build(&request, &mut |line| println!("{line}")) {
        Ok(outcome) => outcome,
        Err(BuildError::InvalidConfig(diagnostics)) => {
            for diagnostic in &diagnostics {
                eprintln!("{diagnostic}");
            }
            eprintln!("error: the configuration is invalid; no image was built");
            return Ok(ExitCode::FAILURE);
        }
        Err(BuildError::Hook(failure)) => {
            eprintln!("error: {failure}; no image was built");
            return Ok(ExitCode::FAILURE);
        }
        Err(other) => return Err(other).context("the build failed"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.images)?);
        return Ok(ExitCode::SUCCESS);
    }
    for manifest in &outcome.images {
        println!();
        if outcome.images.len() > 1 {
            println!("app         {}", manifest.info.app().name);
        }
        println!("image       {}", manifest.id);
        println!(
            "size        {} ({} files and folders, {} of content)",
            bytes(manifest.size),
            manifest.entries,
            bytes(manifest.content_bytes)
        );
        println!("tree        {}", manifest.info.tree_id);
        println!(
            "build time  {:.2} s",
            Duration::from_millis(manifest.build_millis).as_secs_f64()
        );
        if outcome.reused {
            println!(
                "reused      yes, built {}",
                manifest
                    .built_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        } else {
            println!("reused      no");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_variables(raw: &[String]) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    let mut variables = BTreeMap::new();
    for item in raw {
        let Some((name, value)) = item.split_once('=') else {
            bail!("`--var {item}` must be NAME=VALUE");
        };
        if name.is_empty() {
            bail!("`--var {item}` has no name");
        }
        variables.insert(name.to_owned(), serde_json::Value::String(value.to_owned()));
    }
    Ok(variables)
}

fn folder_name(path: &Path) -> anyhow::Result<String> {
    let absolute =
        std::fs::canonicalize(path).with_context(|| format!("cannot find {}", path.display()))?;
    let name = absolute
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".git").to_owned())
        .unwrap_or_default();
    Ok(if name.is_empty() {
        "project".into()
    } else {
        name
    })
}
