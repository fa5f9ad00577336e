//! What the operator's own environment passes to pushed code (SPEC section 9): the CA and proxy
//! settings, so that builds and apps work on a network that inspects TLS or needs a proxy, and
//! the names an operator adds (`lockstep up --pass-env NAME`). The files those settings name
//! are shown read-only in the sandbox.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Variables passed whenever the operator's environment has them, each with whether it names
/// files or folders (`SSL_CERT_DIR` may list several, `:`-separated).
const PASSED_BY_DEFAULT: &[(&str, bool)] = &[
    ("SSL_CERT_FILE", true),
    ("SSL_CERT_DIR", true),
    ("NODE_EXTRA_CA_CERTS", true),
    ("REQUESTS_CA_BUNDLE", true),
    ("PIP_CERT", true),
    ("CURL_CA_BUNDLE", true),
    ("GIT_SSL_CAINFO", true),
    ("HTTP_PROXY", false),
    ("HTTPS_PROXY", false),
    ("NO_PROXY", false),
    ("http_proxy", false),
    ("https_proxy", false),
    ("no_proxy", false),
];

fn names_files(name: &str) -> bool {
    PASSED_BY_DEFAULT.contains(&(name, true))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorEnv {
    /// Variables for every build and runtime process; what the platform sets overrides them.
    pub env: BTreeMap<String, String>,
    /// Host files and folders those variables name, to show read-only in the sandbox.
    pub files: Vec<PathBuf>,
}

impl OperatorEnv {
    /// Reads this process's environment: the default names, and `extra`.
    pub fn from_process(extra: &[String]) -> OperatorEnv {
        let names = PASSED_BY_DEFAULT
            .iter()
            .map(|(name, _)| name.to_string())
            .chain(extra.iter().cloned());
        OperatorEnv::from_pairs(names.filter_map(|name| {
            let value = std::env::var(&name).ok()?;
            Some((name, value))
        }))
    }

    fn from_pairs(pairs: impl Iterator<Item = (String, String)>) -> OperatorEnv {
        let env: BTreeMap<String, String> = pairs.collect();
        let mut files: Vec<PathBuf> = env
            .iter()
            .filter(|(name, _)| names_files(name))
            .flat_map(|(_, value)| value.split(':'))
            .map(PathBuf::from)
            .filter(|path| path.is_absolute() && path.exists())
            .collect();
        files.sort();
        files.dedup();
        OperatorEnv { env, files }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_named_by_ca_settings_are_shown_and_others_are_not() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        let pairs = [
            ("SSL_CERT_FILE", ca.path().display().to_string()),
            ("SSL_CERT_DIR", "/nonexistent:/usr/share".to_owned()),
            ("HTTPS_PROXY", "/usr".to_owned()),
            ("MY_SETTING", "on".to_owned()),
        ];
        let passed = OperatorEnv::from_pairs(
            pairs
                .iter()
                .map(|(name, value)| (name.to_string(), value.clone())),
        );
        assert_eq!(passed.env.len(), 4);
        // Only existing paths named by CA settings; a proxy's value is no file.
        assert_eq!(
            passed.files,
            vec![ca.path().to_owned(), "/usr/share".into()]
        );
    }
}
