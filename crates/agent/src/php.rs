//! PHP-FPM for a PHP app without a start command, as Platform.sh's PHP containers run it: one
//! pool on the web process's socket, the app's environment passed to its workers, and
//! `variables.php` as the pool's php.ini settings.

use std::collections::BTreeMap;

/// The configuration PHP-FPM reads, listening on `socket` (as the sandbox sees it).
pub fn fpm_config(socket: &str, variables: &BTreeMap<String, serde_json::Value>) -> String {
    let mut config = format!(
        "[global]
; Its messages go to standard error (`--force-stderr`); the file is the sandbox's own.
error_log = /tmp/php-fpm.log
daemonize = no

[web]
listen = {socket}
listen.mode = 0600
pm = dynamic
pm.max_children = 8
pm.start_servers = 2
pm.min_spare_servers = 1
pm.max_spare_servers = 4
clear_env = no
catch_workers_output = yes
decorate_workers_output = no
"
    );
    let settings = variables
        .iter()
        .filter_map(|(name, value)| Some((name.strip_prefix("php:")?, value)));
    for (name, value) in settings {
        let value = match value {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        // One line each: a name or value that would start another line is left out.
        if plain_ini(name) && !value.contains(['\n', '\r']) {
            config.push_str(&format!("php_value[{name}] = {value}\n"));
        }
    }
    config
}

fn plain_ini(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn php_variables_become_the_pools_settings_and_nothing_else() {
        let variables = BTreeMap::from([
            ("php:memory_limit".to_owned(), serde_json::json!("256M")),
            ("php:display_errors".to_owned(), serde_json::json!(false)),
            ("php:bad]\nlisten".to_owned(), serde_json::json!("x")),
            (
                "php:upload_max_filesize".to_owned(),
                serde_json::json!("1M\nlisten = /tmp/other"),
            ),
            ("env:memory_limit".to_owned(), serde_json::json!("1G")),
        ]);
        let config = fpm_config("/run/app.sock", &variables);
        assert!(config.contains("php_value[memory_limit] = 256M\n"));
        assert!(config.contains("php_value[display_errors] = false\n"));
        assert!(!config.contains("/tmp/other"));
        assert!(!config.contains("bad]"));
        assert_eq!(config.matches("listen =").count(), 1);
        assert!(!config.contains("1G"));
    }
}
