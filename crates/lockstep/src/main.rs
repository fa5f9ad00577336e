//! The `lockstep` binary: one command line for every role and every user action.
//!
//! Owns: argument parsing, finding the data directory, turning library results into output and
//! exit codes. Must never: hold logic a library could hold; every decision it shows comes from a
//! library crate.

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
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
