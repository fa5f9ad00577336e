//! The commands that talk to a running controller (SPEC section 7): status, environments,
//! activities, deploy, rollback, logs.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use lockstep_controller::{Activity, Environment};

use crate::client::ApiClient;

#[derive(Args)]
pub struct Connection {
    /// The controller's base URL [default: from endpoints.json].
    #[arg(long, env = "LOCKSTEP_API", global = true)]
    pub api: Option<String>,
    /// The API token [default: from endpoints.json].
    #[arg(long, env = "LOCKSTEP_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Subcommand)]
pub enum EnvCommand {
    /// List the environments.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show an environment: its nodes, release and settings.
    Info {
        env: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a setting: on_hook_failure, closed_status, closed_mode, max_hold, grace,
    /// drain_timeout, build_timeout, web_start_timeout, strict_runtimes, rehearse.
    Set {
        env: String,
        key: String,
        value: String,
    },
    /// Make a development environment on a new branch at its parent's commit, deployed with
    /// its parent's release and a copy of its parent's services and storage.
    Branch {
        /// The new branch; the environment is named after it.
        branch: String,
        #[arg(long, default_value = "production")]
        parent: String,
        /// Start with empty services and storage instead of a copy of the parent's.
        #[arg(long)]
        no_clone_data: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Bring an environment up to its parent: its code (the parent's branch merged into its
    /// own, built and deployed), its data (the parent's services and storage as they are now),
    /// or both. The environment closes as for a deploy (its visitors held or served from cache).
    #[command(group = clap::ArgGroup::new("part").required(true).multiple(true))]
    Sync {
        env: String,
        /// Merge the parent's branch into the environment's, then build and deploy it.
        #[arg(long, group = "part")]
        code: bool,
        /// Put the parent's services' data and storage in place of the environment's.
        #[arg(long, group = "part")]
        data: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Replace an environment's data with another's, as it is now (a production copy for a
    /// development environment, say): the target closes as for a deploy, takes the data, runs
    /// the sanitize command against it, and opens again.
    Replicate {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Needed when the target is production or staging: its live data is replaced.
        #[arg(long)]
        force: bool,
        /// A command run in the target's app runtime against the copy before it opens (e.g.
        /// one that anonymises customers); if it fails, the target stays closed.
        #[arg(long)]
        sanitize: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete a development environment: its apps and services with their data, its storage,
    /// its branch and its route. Its activities stay.
    Delete {
        env: String,
        /// Confirms that the environment's data goes with it.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Take a backup: a consistent snapshot of each service, taken while the environment
    /// serves, and a copy of its shared storage; queued behind the environment's deployments.
    Create {
        env: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// The environment's backups, newest first.
    List {
        env: String,
        #[arg(long)]
        json: bool,
    },
    /// Put a backup's services and storage in place of the environment's: it closes as for a
    /// deploy (its visitors held or served from cache), takes the data, and opens again.
    Restore {
        env: String,
        id: String,
        /// Confirms that the environment's data now is replaced.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// Make a replica the primary of a service whose primary is gone (its node does not answer,
    /// or its server does not run): the one that received the most, unless --node names one.
    /// The old primary becomes a replica of the new one when its node returns.
    Promote {
        env: String,
        service: String,
        /// The node whose replica becomes the primary [default: the one that received the most].
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum ActivityCommand {
    /// List activities, newest first.
    List {
        /// Only this environment's.
        #[arg(long, short)]
        environment: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Print an activity's log.
    Log {
        id: String,
        /// Keep printing until the activity ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a running build (and the push it belongs to) or a deployment still waiting.
    Cancel { id: String },
}

#[derive(Args)]
pub struct WaitArgs {
    /// Return once the operation is queued, without waiting for it.
    #[arg(long)]
    no_wait: bool,
}

pub async fn status(client: &ApiClient, json: bool) -> anyhow::Result<ExitCode> {
    let status: serde_json::Value = client.get("/status").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "project {}   git {}",
        status["project"].as_str().unwrap_or("?"),
        status["git"].as_str().unwrap_or("?")
    );
    for env in status["environments"].as_array().into_iter().flatten() {
        print_environment(env);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_environment(env: &serde_json::Value) {
    let release = match env["serving"].as_object() {
        Some(serving) => format!(
            "release {} at generation {}",
            serving["image"]
                .as_str()
                .map(lockstep_image::short_release)
                .unwrap_or("?".into()),
            serving["generation"]
        ),
        None => "no release yet".to_owned(),
    };
    println!();
    println!(
        "{} ({}, branch {})  {}",
        env["name"].as_str().unwrap_or("?"),
        env["kind"].as_str().unwrap_or("?"),
        env["branch"].as_str().unwrap_or("?"),
        release
    );
    if let Some(running) = env["running"].as_object() {
        println!(
            "  running: {} {}",
            running["id"].as_str().unwrap_or("?"),
            running["description"].as_str().unwrap_or("")
        );
    }
    for node in env["nodes"].as_array().into_iter().flatten() {
        let name = node["name"].as_str().unwrap_or("?");
        let apps = node["apps"].as_array().filter(|apps| !apps.is_empty());
        if apps.is_none() {
            println!(
                "  {name:<14} {:<28} router {}",
                gate_text(node),
                node["router"].as_str().unwrap_or("-")
            );
        } else {
            println!("  {name}");
        }
        for app in apps.into_iter().flatten() {
            println!(
                "    app {:<10} {:<28} router {}",
                app["app"].as_str().unwrap_or("?"),
                gate_text(app),
                app["router"].as_str().unwrap_or("-")
            );
        }
        for service in node["services"].as_array().into_iter().flatten() {
            let replication = node["replication"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["name"] == service["name"]);
            print_service(service, replication);
        }
    }
}

/// `open at generation 3`, `closed`, or why the instance did not say.
fn gate_text(instance: &serde_json::Value) -> String {
    match instance["gate"]["state"].as_str() {
        Some("open") => format!("open at generation {}", instance["gate"]["generation"]),
        Some(state) => state.to_owned(),
        None => instance["error"].as_str().unwrap_or("unknown").to_owned(),
    }
}

/// `    service db (postgresql): primary, running, 45 MB of 1024 MB`, and for a replica how it
/// follows its primary (`streaming, 0 B behind`).
fn print_service(service: &serde_json::Value, replication: Option<&serde_json::Value>) {
    let role = match service["role"]["role"].as_str() {
        Some("primary") => format!(
            "primary, {}",
            service["process"].as_str().unwrap_or("not running")
        ),
        Some("replica") => {
            let follows = match replication {
                Some(r) => match r["lag_bytes"].as_u64() {
                    Some(lag) => {
                        format!(", {} ({lag} B behind)", r["state"].as_str().unwrap_or("?"))
                    }
                    None => format!(", {}", r["state"].as_str().unwrap_or("?")),
                },
                None => String::new(),
            };
            format!(
                "replica of {}, {}{follows}",
                service["role"]["primary"].as_str().unwrap_or("?"),
                service["process"].as_str().unwrap_or("not running")
            )
        }
        _ => format!(
            "endpoint to the primary at {}",
            service["role"]["primary"].as_str().unwrap_or("?")
        ),
    };
    let megabytes = service["data_bytes"].as_u64().unwrap_or(0) / (1024 * 1024);
    let disk = match service["disk_mb"].as_u64() {
        Some(limit) if megabytes > limit => {
            format!(
                ", {megabytes} MB of {limit} MB: over its `disk`, raise it in .platform/services.yaml"
            )
        }
        Some(limit) => format!(", {megabytes} MB of {limit} MB"),
        None => format!(", {megabytes} MB"),
    };
    let disk = if service["port"].as_u64() == Some(0) {
        String::new()
    } else {
        disk
    };
    println!(
        "    service {} ({}): {role}{disk}",
        service["name"].as_str().unwrap_or("?"),
        service["engine"].as_str().unwrap_or("?"),
    );
}

pub async fn env(client: &ApiClient, command: EnvCommand) -> anyhow::Result<ExitCode> {
    match command {
        EnvCommand::List { json } => {
            let environments: Vec<Environment> = client.get("/environments").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&environments)?);
            } else {
                println!(
                    "{:<20} {:<12} {:<20} {:<14} GENERATION",
                    "NAME", "TYPE", "BRANCH", "RELEASE"
                );
                for env in environments {
                    let release = env
                        .serving
                        .as_ref()
                        .map(|r| lockstep_image::short_release(&r.image))
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:<20} {:<12} {:<20} {:<14} {}",
                        env.name,
                        env.kind.as_str(),
                        env.branch,
                        release,
                        env.generation
                    );
                }
            }
        }
        EnvCommand::Info { env, json } => {
            let info: serde_json::Value = client.get(&format!("/environments/{env}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_environment(&info);
                println!("  url {}", info["url"].as_str().unwrap_or("?"));
                println!("  settings:");
                for (key, value) in info["settings"].as_object().into_iter().flatten() {
                    println!("    {key:<20} {value}");
                }
            }
        }
        EnvCommand::Set { env, key, value } => {
            let _: Environment = client
                .post(
                    &format!("/environments/{env}/settings"),
                    &serde_json::json!({ "key": key, "value": value }),
                )
                .await?;
            println!("{env}: {key} = {value}");
        }
        EnvCommand::Branch {
            branch,
            parent,
            no_clone_data,
            wait,
        } => {
            let request = serde_json::json!({ "branch": branch, "clone_data": !no_clone_data });
            return operation(client, &parent, "branch", &request, wait).await;
        }
        EnvCommand::Sync {
            env,
            code,
            data,
            wait,
        } => {
            let request = serde_json::json!({ "code": code, "data": data });
            return operation(client, &env, "sync", &request, wait).await;
        }
        EnvCommand::Replicate {
            from,
            to,
            force,
            sanitize,
            wait,
        } => {
            let request = serde_json::json!({ "from": from, "force": force, "sanitize": sanitize });
            return operation(client, &to, "replicate", &request, wait).await;
        }
        EnvCommand::Delete { env, yes, wait } => {
            if !yes {
                anyhow::bail!(
                    "deleting {env} removes its data, its branch and its storage: add --yes to go ahead"
                );
            }
            let activity: Activity = client.delete(&format!("/environments/{env}")).await?;
            return queued(client, &activity, wait).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn activity(client: &ApiClient, command: ActivityCommand) -> anyhow::Result<ExitCode> {
    match command {
        ActivityCommand::List {
            environment,
            limit,
            json,
        } => {
            let mut path = format!("/activities?limit={limit}");
            if let Some(env) = environment {
                path.push_str(&format!("&environment={env}"));
            }
            let activities: Vec<Activity> = client.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&activities)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<8} {:<9} {:<14} {:<12} {:<11} {:<24} DESCRIPTION",
                "ID", "TYPE", "ENVIRONMENT", "STATE", "RESULT", "CREATED"
            );
            for a in activities {
                println!(
                    "{:<8} {:<9} {:<14} {:<12} {:<11} {:<24} {}",
                    a.id,
                    a.kind,
                    a.environment,
                    a.state,
                    a.result.as_deref().unwrap_or("-"),
                    a.created_at,
                    a.description
                );
                for phase in &a.phases {
                    println!(
                        "         {:<12} {} -> {}",
                        phase.name,
                        phase.started_at,
                        phase.ended_at.as_deref().unwrap_or("...")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ActivityCommand::Log { id, follow } => follow_log(client, &id, follow).await,
        ActivityCommand::Cancel { id } => {
            let activity: Activity = client
                .post(&format!("/activities/{id}/cancel"), &serde_json::json!({}))
                .await?;
            println!(
                "Cancelling activity {}: {}",
                activity.id, activity.description
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints an activity's log (until it ends, with `follow`); the exit code is its result.
pub async fn follow_log(client: &ApiClient, id: &str, follow: bool) -> anyhow::Result<ExitCode> {
    let response = client
        .text(&format!("/activities/{id}/log?follow={follow}"))
        .await?;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        print!(
            "{}",
            String::from_utf8_lossy(&chunk.context("the log stream broke off")?)
        );
    }
    let activity: Activity = client.get(&format!("/activities/{id}")).await?;
    print_phases(&activity);
    Ok(match activity.result.as_deref() {
        Some("success") => ExitCode::SUCCESS,
        None if !follow => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

fn print_phases(activity: &Activity) {
    if activity.phases.is_empty() {
        return;
    }
    println!();
    println!(
        "{} {}: {}",
        activity.id,
        activity.description,
        activity.result.as_deref().unwrap_or(&activity.state)
    );
    for phase in &activity.phases {
        let took = match (
            &phase.ended_at,
            chrono::DateTime::parse_from_rfc3339(&phase.started_at),
        ) {
            (Some(end), Ok(start)) => chrono::DateTime::parse_from_rfc3339(end)
                .map(|end| format!("{} ms", (end - start).num_milliseconds()))
                .unwrap_or_default(),
            _ => "running".into(),
        };
        println!("  {:<12} {took}", phase.name);
    }
}

/// `deploy`, `rollback`, `env branch`: start the operation, then follow it unless told not to.
pub async fn operation(
    client: &ApiClient,
    env: &str,
    kind: &str,
    request: &serde_json::Value,
    wait: WaitArgs,
) -> anyhow::Result<ExitCode> {
    let activity: Activity = client
        .post(&format!("/environments/{env}/{kind}"), request)
        .await?;
    queued(client, &activity, wait).await
}

/// Says a queued activity, and follows its log until it ends unless told not to wait.
async fn queued(
    client: &ApiClient,
    activity: &Activity,
    wait: WaitArgs,
) -> anyhow::Result<ExitCode> {
    println!("Activity {}: {}", activity.id, activity.description);
    if wait.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    follow_log(client, &activity.id, true).await
}

/// Where in an environment a command runs.
#[derive(clap::Args, Clone, Default)]
pub struct Place {
    /// The node [default: the environment's first].
    #[arg(long)]
    pub node: Option<String>,
    /// The app, in a project with several [default: its first].
    #[arg(long)]
    pub app: Option<String>,
}

pub async fn logs(
    client: &ApiClient,
    env: &str,
    place: Place,
    process: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut path = format!(
        "/environments/{env}/logs?process={}",
        process.as_deref().unwrap_or("web")
    );
    if let Some(node) = place.node {
        path.push_str(&format!("&node={node}"));
    }
    if let Some(app) = place.app {
        path.push_str(&format!("&app={app}"));
    }
    let text = client.text(&path).await?.text().await?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum VarCommand {
    /// List the variables of the project, or of one environment.
    List {
        #[arg(long, short)]
        env: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one variable (a sensitive value is never shown again).
    Get {
        name: String,
        #[arg(long, short)]
        env: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Set a variable; `env:NAME` becomes an environment variable of the app.
    Set {
        name: String,
        value: String,
        /// An environment's variable, instead of the project's.
        #[arg(long, short)]
        env: Option<String>,
        /// Encrypted at rest and never shown again.
        #[arg(long)]
        sensitive: bool,
        #[arg(long, value_enum, default_value = "both")]
        visibility: VisibilityArg,
        /// Whether child environments inherit it.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        inheritable: bool,
        /// The value is JSON.
        #[arg(long)]
        json: bool,
        /// Do not redeploy the environment now.
        #[arg(long)]
        no_redeploy: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete a variable.
    Delete {
        name: String,
        #[arg(long, short)]
        env: Option<String>,
        #[arg(long)]
        no_redeploy: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum VisibilityArg {
    Build,
    Runtime,
    Both,
}

fn variable_path(name: &str, env: &Option<String>, extra: &str) -> String {
    let mut path = format!("/variables/{name}?no_redeploy={extra}");
    if let Some(env) = env {
        path.push_str(&format!("&environment={env}"));
    }
    path
}

fn print_variable(variable: &serde_json::Value) {
    let level = variable["environment"].as_str().unwrap_or("project");
    let value = match &variable["value"] {
        serde_json::Value::Null => "(sensitive)".to_owned(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    println!(
        "{:<28} {:<12} {:<8} {:<12} {value}",
        variable["name"].as_str().unwrap_or("?"),
        level,
        variable["visibility"].as_str().unwrap_or("?"),
        if variable["inheritable"] == true {
            "inheritable"
        } else {
            "this only"
        },
    );
}

pub async fn var(client: &ApiClient, command: VarCommand) -> anyhow::Result<ExitCode> {
    match command {
        VarCommand::List { env, json } => {
            let mut path = "/variables".to_owned();
            if let Some(env) = &env {
                path.push_str(&format!("?environment={env}"));
            }
            let variables: Vec<serde_json::Value> = client.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&variables)?);
            } else {
                println!(
                    "{:<28} {:<12} {:<8} {:<12} VALUE",
                    "NAME", "LEVEL", "VISIBLE", "INHERITANCE"
                );
                variables.iter().for_each(print_variable);
            }
            Ok(ExitCode::SUCCESS)
        }
        VarCommand::Get { name, env, json } => {
            let variable: serde_json::Value =
                client.get(&variable_path(&name, &env, "false")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&variable)?);
            } else {
                print_variable(&variable);
            }
            Ok(ExitCode::SUCCESS)
        }
        VarCommand::Set {
            name,
            value,
            env,
            sensitive,
            visibility,
            inheritable,
            json,
            no_redeploy,
            wait,
        } => {
            let visibility = match visibility {
                VisibilityArg::Build => "build",
                VisibilityArg::Runtime => "runtime",
                VisibilityArg::Both => "both",
            };
            let body = serde_json::json!({
                "environment": env, "value": value, "json": json, "sensitive": sensitive,
                "visibility": visibility, "inheritable": inheritable, "no_redeploy": no_redeploy,
            });
            let change: serde_json::Value =
                client.put(&format!("/variables/{name}"), &body).await?;
            println!(
                "{name} set{}",
                env.as_ref().map(|e| format!(" on {e}")).unwrap_or_default()
            );
            report_change(client, &change, wait).await
        }
        VarCommand::Delete {
            name,
            env,
            no_redeploy,
            wait,
        } => {
            let change: serde_json::Value = client
                .delete(&variable_path(&name, &env, &no_redeploy.to_string()))
                .await?;
            println!("{name} deleted");
            report_change(client, &change, wait).await
        }
    }
}

/// Follows the redeploy a variable change started, or says why there is none.
async fn report_change(
    client: &ApiClient,
    change: &serde_json::Value,
    wait: WaitArgs,
) -> anyhow::Result<ExitCode> {
    if let Some(note) = change["note"].as_str() {
        println!("{note}");
    }
    let Some(id) = change["activity"]["id"].as_str() else {
        return Ok(ExitCode::SUCCESS);
    };
    println!(
        "Activity {id}: {}",
        change["activity"]["description"].as_str().unwrap_or("")
    );
    if wait.no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    follow_log(client, id, true).await
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// List the project's users and their roles.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a user; prints their API token, once.
    Add {
        email: String,
        /// Roles per environment type: `production:admin,staging:contributor,development:viewer`.
        #[arg(long, short)]
        role: Option<String>,
        /// Project admin: every action, users and project variables included.
        #[arg(long)]
        project_admin: bool,
        /// An SSH public key (repeat for several).
        #[arg(long = "ssh-key")]
        ssh_keys: Vec<String>,
    },
    /// Change a user's roles, admin status or keys.
    Update {
        email: String,
        #[arg(long, short)]
        role: Option<String>,
        #[arg(long)]
        project_admin: Option<bool>,
        /// Replaces the user's keys (repeat for several).
        #[arg(long = "ssh-key")]
        ssh_keys: Vec<String>,
    },
    /// Remove a user; their token stops working and their keys leave every node.
    Delete { email: String },
    /// Give a user a new token (the old one stops working); prints it, once.
    Token { email: String },
}

fn print_user(user: &serde_json::Value) {
    let roles = &user["roles"];
    let role = |kind: &str| roles[kind].as_str().unwrap_or("-").to_owned();
    println!(
        "{:<32} {:<14} {:<12} {:<12} {:<12} {} key(s)",
        user["email"].as_str().unwrap_or("?"),
        if roles["project_admin"] == true {
            "project admin"
        } else {
            ""
        },
        role("production"),
        role("staging"),
        role("development"),
        user["ssh_keys"].as_array().map_or(0, Vec::len)
    );
}

pub async fn user(client: &ApiClient, command: UserCommand) -> anyhow::Result<ExitCode> {
    match command {
        UserCommand::List { json } => {
            let users: Vec<serde_json::Value> = client.get("/users").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                println!(
                    "{:<32} {:<14} {:<12} {:<12} {:<12} KEYS",
                    "EMAIL", "PROJECT", "PRODUCTION", "STAGING", "DEVELOPMENT"
                );
                users.iter().for_each(print_user);
            }
        }
        UserCommand::Add {
            email,
            role,
            project_admin,
            ssh_keys,
        } => {
            let body = serde_json::json!({ "roles": role, "project_admin": project_admin, "ssh_keys": ssh_keys });
            let user: serde_json::Value = client.post(&format!("/users/{email}"), &body).await?;
            print_user(&user);
            println!("token: {}", user["token"].as_str().unwrap_or("?"));
            println!(
                "(shown once: give it to {email}; `lockstep user token {email}` makes a new one)"
            );
        }
        UserCommand::Update {
            email,
            role,
            project_admin,
            ssh_keys,
        } => {
            let keys = (!ssh_keys.is_empty()).then_some(ssh_keys);
            let body = serde_json::json!({ "roles": role, "project_admin": project_admin, "ssh_keys": keys });
            let user: serde_json::Value = client.patch(&format!("/users/{email}"), &body).await?;
            print_user(&user);
        }
        UserCommand::Delete { email } => {
            let _: serde_json::Value = client.delete(&format!("/users/{email}")).await?;
            println!("{email} deleted");
        }
        UserCommand::Token { email } => {
            let user: serde_json::Value = client
                .post(&format!("/users/{email}/token"), &serde_json::json!({}))
                .await?;
            println!("token: {}", user["token"].as_str().unwrap_or("?"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `lockstep sql`, `lockstep redis`: the service's client on a node, its output printed and
/// its exit status kept.
pub async fn service_client(
    client: &ApiClient,
    env: &str,
    place: Place,
    relationship: Option<String>,
    service_client: lockstep_proto::agent::ServiceClient,
) -> anyhow::Result<ExitCode> {
    let mut body = serde_json::to_value(&service_client)?;
    body["node"] = serde_json::json!(place.node);
    body["app"] = serde_json::json!(place.app);
    body["relationship"] = serde_json::json!(relationship);
    let outcome: lockstep_proto::agent::ExecOutcome = client
        .post(&format!("/environments/{env}/services/client"), &body)
        .await?;
    print!("{}", outcome.output);
    Ok(match outcome.exit_code {
        Some(0) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

pub async fn backup(client: &ApiClient, command: BackupCommand) -> anyhow::Result<ExitCode> {
    match command {
        BackupCommand::Create { env, wait } => {
            operation(client, &env, "backups", &serde_json::json!({}), wait).await
        }
        BackupCommand::Restore { env, id, yes, wait } => {
            if !yes {
                anyhow::bail!(
                    "restoring backup {id} replaces {env}'s data as it is now: add --yes to go ahead"
                );
            }
            operation(
                client,
                &env,
                &format!("backups/{id}/restore"),
                &serde_json::json!({}),
                wait,
            )
            .await
        }
        BackupCommand::List { env, json } => {
            let backups: Vec<lockstep_controller::Backup> =
                client.get(&format!("/environments/{env}/backups")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&backups)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<10} {:<26} {:<28} SERVICES", "ID", "CREATED", "RELEASE");
            for backup in backups {
                let services: Vec<String> = backup
                    .services
                    .iter()
                    .map(|s| format!("{} ({} B)", s.name, s.bytes))
                    .collect();
                println!(
                    "{:<10} {:<26} {:<28} {}",
                    backup.id,
                    backup.created_at,
                    lockstep_image::short_release(&backup.release),
                    services.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn service(client: &ApiClient, command: ServiceCommand) -> anyhow::Result<ExitCode> {
    match command {
        ServiceCommand::Promote { env, service, node } => {
            let outcome: serde_json::Value = client
                .post(
                    &format!("/environments/{env}/services/{service}/promote"),
                    &serde_json::json!({ "node": node }),
                )
                .await?;
            for step in outcome["steps"].as_array().into_iter().flatten() {
                println!("{}", step.as_str().unwrap_or_default());
            }
            println!(
                "The primary of {service} is on {} now (it was on {}).",
                outcome["to"].as_str().unwrap_or("?"),
                outcome["from"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `lockstep ssh`: a command on a node, or, without one, each line of standard input in turn.
pub async fn ssh(
    client: &ApiClient,
    env: &str,
    place: Place,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let run = |command: String| {
        let body = serde_json::json!({ "node": place.node, "app": place.app, "command": command });
        async move {
            client
                .post::<serde_json::Value>(&format!("/environments/{env}/exec"), &body)
                .await
        }
    };
    if !command.is_empty() {
        let outcome = run(command.join(" ")).await?;
        print!("{}", outcome["output"].as_str().unwrap_or(""));
        return Ok(match outcome["exit_code"].as_i64() {
            Some(0) => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        });
    }
    // No terminal is attached to the node: each line runs as a command of its own, in the
    // app's folder with the app's environment.
    let mut last = ExitCode::SUCCESS;
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    loop {
        if interactive {
            eprint!("{env}$ ");
        }
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line)? == 0 {
            return Ok(last);
        }
        if line.trim().is_empty() {
            continue;
        }
        let outcome = run(line.trim().to_owned()).await?;
        print!("{}", outcome["output"].as_str().unwrap_or(""));
        last = if outcome["exit_code"].as_i64() == Some(0) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
}
