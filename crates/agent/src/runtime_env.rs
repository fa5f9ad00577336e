//! What the app's processes and hooks see of their environment on a node (SPEC section 5,
//! "Runtime"): their environment variables, and `/run/config.json`, the same facts as one file,
//! shaped as Platform.sh writes it.

use std::collections::BTreeMap;

use lockstep_image::{ImageInfo, base64_json, variables_env};
use lockstep_proto::agent::{EnvironmentType, InstanceConfig, RuntimeInputs};
use lockstep_supervisor::{APP_ROOT, OperatorEnv, RunAs, app_env};
use serde_json::json;

pub struct RuntimeContext<'a> {
    pub config: &'a InstanceConfig,
    pub image: &'a ImageInfo,
    pub inputs: &'a RuntimeInputs,
    /// `PLATFORM_RELATIONSHIPS` before encoding: this node's endpoints of the services.
    pub relationships: &'a serde_json::Value,
    pub operator: &'a OperatorEnv,
}

/// The app's `.environment` file, sourced before every runtime command as on Platform.sh (web,
/// workers, crons, deploy and post_deploy hooks, `lockstep ssh`), never before the build hook.
pub fn sourcing_environment_file(command: &str) -> String {
    format!("if [ -f {APP_ROOT}/.environment ]; then . {APP_ROOT}/.environment; fi\n{command}")
}

/// The whole environment of a runtime process but `PORT` or `SOCKET`, which say where the web
/// process listens.
pub fn runtime_env(context: &RuntimeContext<'_>) -> BTreeMap<String, String> {
    let app = context.image.app();
    let mut env = app_env(context.operator);
    // Precedence: what the platform provides, then the environment's variables, then the app's.
    let mut variables = app.variables.clone();
    variables.extend(context.inputs.variables.clone());
    env.extend(variables_env(&variables));

    let provided = [
        ("PLATFORM_APPLICATION_NAME", app.name.clone()),
        ("PLATFORM_APPLICATION", base64_json(&app.as_written)),
        ("PLATFORM_PROJECT", context.config.project.clone()),
        (
            "PLATFORM_PROJECT_ENTROPY",
            context.config.project_entropy.clone(),
        ),
        ("PLATFORM_BRANCH", context.config.branch.clone()),
        ("PLATFORM_ENVIRONMENT", context.config.environment.clone()),
        (
            "PLATFORM_ENVIRONMENT_TYPE",
            context.config.environment_type.as_str().to_owned(),
        ),
        ("PLATFORM_TREE_ID", context.image.tree_id.clone()),
        ("PLATFORM_APP_DIR", APP_ROOT.to_owned()),
        ("PLATFORM_RELATIONSHIPS", base64_json(context.relationships)),
        ("PLATFORM_ROUTES", base64_json(&context.inputs.routes)),
        ("LOCKSTEP_NODE", context.config.node.clone()),
    ];
    env.extend(provided.map(|(k, v)| (k.to_owned(), v)));
    if context.config.environment_type != EnvironmentType::Development {
        env.insert("PLATFORM_MODE".into(), "enterprise".into());
        env.insert("PLATFORM_CLUSTER".into(), cluster(context.config));
    }
    env
}

pub fn cluster(config: &InstanceConfig) -> String {
    config
        .cluster
        .clone()
        .unwrap_or_else(|| format!("{}-{}", config.project, config.environment))
}

/// `/run/config.json`: the keys Platform.sh's own containers have that apps read
/// (`info.limits.memory` above all), with the app's configuration and environment.
pub fn config_json(
    context: &RuntimeContext<'_>,
    env: &BTreeMap<String, String>,
    user: RunAs,
) -> serde_json::Value {
    let app = context.image.app();
    let config = context.config;
    let mut configuration = app.as_written.clone();
    if let serde_json::Value::Object(fields) = &mut configuration {
        fields.insert("app_dir".into(), APP_ROOT.into());
        fields.insert("tree_id".into(), context.image.tree_id.clone().into());
        fields.insert("variables".into(), json!(env));
    }
    json!({
        "primary_ip": "127.0.0.1",
        "hostname": config.node,
        "name": config.project,
        "service": app.name,
        "cluster": cluster(config),
        "instance": format!("{}--{}", cluster(config), app.name),
        "web_uid": user.uid,
        "web_gid": user.gid,
        "info": {
            "limits": {
                "memory": memory_megabytes(),
                "cpu": std::thread::available_parallelism().map_or(1, |n| n.get()),
                "disk": app.disk,
            },
        },
        "configuration": {
            "project_info": {
                "name": config.project,
                "settings": {"variables_prefix": "PLATFORM_"},
            },
            "environment_info": {
                "name": config.environment,
                "machine_name": config.environment,
                "reference": format!("refs/heads/{}", config.branch),
                "is_main": config.environment_type == EnvironmentType::Production,
                "is_production": config.environment_type == EnvironmentType::Production,
            },
        },
        "applications": [{
            "name": app.name,
            "configuration": configuration,
            "mounts": app.as_written.get("mounts").cloned().unwrap_or_else(|| json!({})),
            "crons": app.as_written.get("crons").cloned().unwrap_or_else(|| json!({})),
        }],
    })
}

/// The node's memory in megabytes, from `/proc/meminfo`.
fn memory_megabytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kilobytes| kilobytes / 1024)
}
