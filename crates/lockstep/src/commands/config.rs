//! `lockstep config check`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::output::count;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print every error and warning in a project's configuration; fail if there is an error.
    Check {
        /// The project's folder.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Print the diagnostics as a JSON array.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: ConfigCommand) -> anyhow::Result<ExitCode> {
    let ConfigCommand::Check { path, json } = command;
    let checked = lockstep_config::check_dir(&path, &lockstep_supervisor::HostRuntimes)
        .with_context(|| format!("cannot check {}", path.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&checked.diagnostics)?);
    } else {
        for diagnostic in &checked.diagnostics {
            println!("{diagnostic}");
        }
        let errors = checked.errors().count();
        let warnings = checked.warnings().count();
        match &checked.project {
            Some(project) => println!(
                "{}: the configuration is valid ({} {}, {}, {}, {})",
                path.display(),
                if project.apps.len() == 1 {
                    "app"
                } else {
                    "apps"
                },
                project
                    .apps
                    .iter()
                    .map(|app| format!("`{}`", app.name))
                    .collect::<Vec<_>>()
                    .join(", "),
                count(project.routes.len(), "route"),
                count(project.services.len(), "service"),
                count(warnings, "warning"),
            ),
            None => println!(
                "{}: {} and {}; nothing was changed",
                path.display(),
                count(errors, "error"),
                count(warnings, "warning"),
            ),
        }
    }
    Ok(if checked.project.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
