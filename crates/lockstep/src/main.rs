//! The `lockstep` binary: one command line for every role and every user action.
//!
//! Owns: argument parsing, finding the data directory, turning library results into output and
//! exit codes. Must never: hold logic a library could hold; every decision it shows comes from a
//! library crate.

mod client;
mod commands;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lockstep",
    version,
    about = "Git-push deployments to dedicated clusters"
)]
struct Cli {
    /// Where Lockstep keeps its state (images, build caches).
    #[arg(long, global = true, env = "LOCKSTEP_HOME")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read and validate a project's configuration.
    #[command(subcommand)]
    Config(commands::config::ConfigCommand),
    /// Build a git ref of a local repository into an image.
    Build(commands::build::BuildArgs),
    /// Run the node agent: releases, processes, crons, hooks and the router of each instance.
    Agent(commands::agent::AgentArgs),
    /// Run the caching edge in front of the environments.
    Edge(commands::edge::EdgeArgs),
    /// Run the embedded default: a controller and five nodes on this machine.
    Up(commands::up::UpArgs),
    /// Environments, their nodes, releases, gates and running activities.
    Status {
        #[command(flatten)]
        connection: commands::ops::Connection,
        #[arg(long)]
        json: bool,
    },
    /// Environments.
    Env {
        #[command(flatten)]
        connection: commands::ops::Connection,
        #[command(subcommand)]
        command: commands::ops::EnvCommand,
    },
    /// Services of `.platform/services.yaml` across an environment's nodes.
    Service {
        #[command(flatten)]
        connection: commands::ops::Connection,
        #[command(subcommand)]
        command: commands::ops::ServiceCommand,
    },
    /// Backups of an environment's services and storage.
    Backup {
        #[command(flatten)]
        connection: commands::ops::Connection,
        #[command(subcommand)]
        command: commands::ops::BackupCommand,
    },
    /// Activities: pushes, deploys, rollbacks, with their phases and logs.
    Activity {
        #[command(flatten)]
        connection: commands::ops::Connection,
        #[command(subcommand)]
        command: commands::ops::ActivityCommand,
    },
    /// Redeploy an environment's current release through the whole procedure.
    Deploy {
        env: String,
        #[command(flatten)]
        connection: commands::ops::Connection,
        #[command(flatten)]
        wait: commands::ops::WaitArgs,
    },
    /// Deploy the release that served before the current one.
    Rollback {
        env: String,
        #[command(flatten)]
        connection: commands::ops::Connection,
        #[command(flatten)]
        wait: commands::ops::WaitArgs,
    },
    /// An app process's or a service's log on a node.
    Logs {
        env: String,
        #[command(flatten)]
        place: commands::ops::Place,
        /// `web`, `worker-NAME`, `cron-NAME`, `hook-deploy`, `hook-post_deploy` [default: web].
        #[arg(long, conflicts_with = "service")]
        process: Option<String>,
        /// A service of `.platform/services.yaml` instead: its server's log.
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        connection: commands::ops::Connection,
    },
    /// Project and environment variables.
    Var {
        #[command(flatten)]
        connection: commands::ops::Connection,
        #[command(subcommand)]
        command: commands::ops::VarCommand,
    },
    /// The nodes that host environments, in pools; enrolling and removing them.
    Node {
        #[command(flatten)]
        connection: commands::ops::Connection,
        #[command(subcommand)]
        command: commands::node::NodeCommand,
    },
    /// The project's users, their roles, tokens and SSH keys.
    User {
        #[command(flatten)]
        connection: commands::ops::Connection,
        #[command(subcommand)]
        command: commands::ops::UserCommand,
    },
    /// Run a command (or each line of standard input) in the app's runtime environment on a node.
    Ssh {
        env: String,
        #[command(flatten)]
        place: commands::ops::Place,
        #[command(flatten)]
        connection: commands::ops::Connection,
        /// The command, after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// SQL on a database service through the app's relationship (psql or mariadb), on a node.
    Sql {
        env: String,
        /// The relationship [default: the first to a PostgreSQL or MariaDB service].
        #[arg(long)]
        relationship: Option<String>,
        #[command(flatten)]
        place: commands::ops::Place,
        /// The SQL to run [default: standard input, whole].
        #[arg(short = 'c', long = "command")]
        sql: Option<String>,
        #[command(flatten)]
        connection: commands::ops::Connection,
    },
    /// A Redis command through the app's relationship (redis-cli), on a node.
    Redis {
        env: String,
        /// The relationship [default: the first to a Redis service].
        #[arg(long)]
        relationship: Option<String>,
        #[command(flatten)]
        place: commands::ops::Place,
        #[command(flatten)]
        connection: commands::ops::Connection,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// A git credential helper that answers with the token of a running `lockstep up`.
    Credential {
        /// What git asks: `get`, `store` or `erase`.
        operation: String,
    },
    /// Run by the project's git repository on a push; not for direct use.
    #[command(hide = true)]
    GitHook { hook: String },
    /// The first process inside an app process's sandbox; not for direct use.
    #[command(hide = true)]
    SandboxInit {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.command.is_daemon() {
        end_quietly_on_closed_pipe();
    }
    if let Command::SandboxInit { args } = cli.command {
        // Inside the sandbox, before anything else: no log, no data folder.
        std::process::exit(lockstep_supervisor::init::main(args));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let data_dir = cli.data_dir.unwrap_or_else(default_data_dir);
    let result = match cli.command {
        Command::Config(command) => commands::config::run(command),
        Command::Build(args) => commands::build::run(args, &data_dir),
        Command::Agent(args) => commands::agent::run(args, &data_dir),
        Command::Up(args) => commands::up::run(args, &data_dir),
        Command::Edge(args) => commands::edge::run(args, &data_dir),
        Command::GitHook { hook } => commands::git_hook::run(&hook),
        Command::SandboxInit { .. } => unreachable!("handled before the log starts"),
        Command::Credential { operation } => commands::credential::run(&operation, &data_dir),
        Command::Status { connection, json } => {
            remote(connection, &data_dir, |client| async move {
                commands::ops::status(&client, json).await
            })
        }
        Command::Env {
            connection,
            command,
        } => remote(connection, &data_dir, |client| async move {
            commands::ops::env(&client, command).await
        }),
        Command::Service {
            connection,
            command,
        } => remote(connection, &data_dir, |client| async move {
            commands::ops::service(&client, command).await
        }),
        Command::Backup {
            connection,
            command,
        } => remote(connection, &data_dir, |client| async move {
            commands::ops::backup(&client, command).await
        }),
        Command::Activity {
            connection,
            command,
        } => remote(connection, &data_dir, |client| async move {
            commands::ops::activity(&client, command).await
        }),
        Command::Deploy {
            env,
            connection,
            wait,
        } => remote(connection, &data_dir, |client| async move {
            commands::ops::operation(&client, &env, "deploy", &serde_json::json!({}), wait).await
        }),
        Command::Rollback {
            env,
            connection,
            wait,
        } => remote(connection, &data_dir, |client| async move {
            commands::ops::operation(&client, &env, "rollback", &serde_json::json!({}), wait).await
        }),
        Command::Var {
            connection,
            command,
        } => remote(connection, &data_dir, |client| async move {
            commands::ops::var(&client, command).await
        }),
        Command::Node {
            connection,
            command,
        } => remote(connection, &data_dir, |client| async move {
            commands::node::run(&client, command).await
        }),
        Command::User {
            connection,
            command,
        } => remote(connection, &data_dir, |client| async move {
            commands::ops::user(&client, command).await
        }),
        Command::Ssh {
            env,
            place,
            connection,
            command,
        } => remote(connection, &data_dir, |client| async move {
            commands::ops::ssh(&client, &env, place, command).await
        }),
        Command::Sql {
            env,
            relationship,
            place,
            sql,
            connection,
        } => remote(connection, &data_dir, |client| async move {
            let input = match sql {
                Some(sql) => sql,
                None => std::io::read_to_string(std::io::stdin())?,
            };
            let client_kind = lockstep_proto::agent::ServiceClient::Sql { input };
            commands::ops::service_client(&client, &env, place, relationship, client_kind).await
        }),
        Command::Redis {
            env,
            relationship,
            place,
            connection,
            args,
        } => remote(connection, &data_dir, |client| async move {
            let client_kind = lockstep_proto::agent::ServiceClient::Redis { args };
            commands::ops::service_client(&client, &env, place, relationship, client_kind).await
        }),
        Command::Logs {
            env,
            place,
            process,
            service,
            connection,
        } => remote(connection, &data_dir, |client| async move {
            let process = service.map(|name| format!("service-{name}")).or(process);
            commands::ops::logs(&client, &env, place, process).await
        }),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// Whether the command serves until stopped: a peer that goes away must never end it.
    fn is_daemon(&self) -> bool {
        matches!(
            self,
            Command::Up(_) | Command::Agent(_) | Command::Edge(_) | Command::SandboxInit { .. }
        )
    }
}

/// A command whose output goes into a pipe (`lockstep activity list | head`) ends quietly when
/// the reader stops reading, as command-line tools do, instead of panicking on the failed write.
#[allow(unsafe_code)]
fn end_quietly_on_closed_pipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called first thing in `main`, before any other thread exists, with the default
    // disposition, which involves no handler code.
    if let Err(error) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        tracing::debug!(%error, "SIGPIPE keeps its disposition");
    }
}

/// Runs a command against the controller found through `connection` or the data directory.
fn remote<F, Fut>(
    connection: commands::ops::Connection,
    data_dir: &std::path::Path,
    run: F,
) -> anyhow::Result<ExitCode>
where
    F: FnOnce(client::ApiClient) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let client = client::ApiClient::find(connection.api, connection.token, data_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(client))
}

/// Completes on Ctrl-C or SIGTERM, for daemons to stop cleanly.
async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// `$XDG_DATA_HOME/lockstep`, else `~/.local/share/lockstep`.
fn default_data_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("lockstep")
}
