//! The environment of the app's processes and hooks on a node (SPEC section 5, "Runtime").

use std::collections::BTreeMap;
use std::path::Path;

use lockstep_image::{ImageInfo, base64_json, variables_env};
use lockstep_proto::agent::{EnvironmentType, InstanceConfig, RuntimeInputs};

pub struct RuntimeContext<'a> {
    pub config: &'a InstanceConfig,
    pub image: &'a ImageInfo,
    pub app_dir: &'a Path,
    pub home: &'a Path,
    pub inputs: &'a RuntimeInputs,
}

/// The whole environment of a runtime process; `PORT` is added for the web process only.
pub fn runtime_env(context: &RuntimeContext<'_>) -> BTreeMap<String, String> {
    let app = &context.image.config.app;
    // Precedence: what the platform provides, then the environment's variables, then the app's.
    let mut variables = app.variables.clone();
    variables.extend(context.inputs.variables.clone());
    let mut env = variables_env(&variables);

    let host_path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let provided = [
        (
            "PATH",
            format!(
                "{}:{host_path}",
                context.app_dir.join(".global/bin").display()
            ),
        ),
        ("HOME", context.home.display().to_string()),
        (
            "PYTHONUSERBASE",
            context.app_dir.join(".global").display().to_string(),
        ),
        ("LANG", "C.UTF-8".to_owned()),
        ("PLATFORM_APPLICATION_NAME", app.name.clone()),
        ("PLATFORM_PROJECT", context.config.project.clone()),
        ("PLATFORM_BRANCH", context.config.branch.clone()),
        ("PLATFORM_ENVIRONMENT", context.config.environment.clone()),
        (
            "PLATFORM_ENVIRONMENT_TYPE",
            context.config.environment_type.as_str().to_owned(),
        ),
        ("PLATFORM_TREE_ID", context.image.tree_id.clone()),
        ("PLATFORM_APP_DIR", context.app_dir.display().to_string()),
        (
            "PLATFORM_RELATIONSHIPS",
            base64_json(&context.inputs.relationships),
        ),
        ("PLATFORM_ROUTES", base64_json(&context.inputs.routes)),
        ("LOCKSTEP_NODE", context.config.node.clone()),
    ];
    env.extend(provided.into_iter().map(|(k, v)| (k.to_owned(), v)));
    if context.config.environment_type != EnvironmentType::Development {
        env.insert("PLATFORM_MODE".into(), "enterprise".into());
        let cluster = context.config.cluster.clone().unwrap_or_else(|| {
            format!("{}-{}", context.config.project, context.config.environment)
        });
        env.insert("PLATFORM_CLUSTER".into(), cluster);
    }
    env
}
