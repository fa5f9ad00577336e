//! How variables reach a process, at build time and at runtime alike (SPEC section 5): `env:NAME`
//! becomes the environment variable `NAME`, every other variable goes into the base64 JSON of
//! `PLATFORM_VARIABLES`, as on Platform.sh.

use std::collections::BTreeMap;

use base64::Engine;

/// The environment variables that carry `variables` (full names, prefixes included).
pub fn variables_env(variables: &BTreeMap<String, serde_json::Value>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let mut platform_variables = serde_json::Map::new();
    for (name, value) in variables {
        match name.strip_prefix("env:") {
            Some(env_name) => {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                env.insert(env_name.to_owned(), text);
            }
            None => {
                platform_variables.insert(name.clone(), value.clone());
            }
        }
    }
    env.insert(
        "PLATFORM_VARIABLES".into(),
        base64_json(&serde_json::Value::Object(platform_variables)),
    );
    env
}

/// Platform.sh's encoding of structured variables: base64 of compact JSON.
pub fn base64_json(value: &serde_json::Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_prefixed_variables_become_environment_variables_and_the_rest_json() {
        let mut variables = BTreeMap::new();
        variables.insert("env:GREETING".into(), "hello".into());
        variables.insert("env:WORKERS".into(), serde_json::json!(4));
        variables.insert("django:secret".into(), "s3cr3t".into());
        let env = variables_env(&variables);
        assert_eq!(env["GREETING"], "hello");
        assert_eq!(env["WORKERS"], "4");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&env["PLATFORM_VARIABLES"])
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(json, serde_json::json!({"django:secret": "s3cr3t"}));
        assert_eq!(env.len(), 3);
    }
}
