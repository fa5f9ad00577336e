//! Typed reading of YAML nodes that reports every problem instead of stopping at the first.
//!
//! Each mapping is read against a [`Keys`] table that says which keys Lockstep understands,
//! which Platform.sh keys it accepts without effect (warning), and which Platform.sh keys it does
//! not support yet (error saying so). Anything else is a misspelling or a mistake, and gets the
//! nearest valid key as a suggestion.

use crate::diagnostic::{FileReport, suggest};
use crate::yaml::{Key, Node, Span, Value};

pub(crate) struct Keys {
    pub supported: &'static [&'static str],
    /// Platform.sh keys that do not change how the app runs here.
    pub ignored: &'static [&'static str],
    /// Platform.sh keys that would change how the app runs, with what to do instead.
    pub unsupported: &'static [(&'static str, &'static str)],
}

impl Keys {
    pub const fn only(supported: &'static [&'static str]) -> Self {
        Keys {
            supported,
            ignored: &[],
            unsupported: &[],
        }
    }

    fn all_names(&self) -> impl Iterator<Item = &'static str> {
        self.supported
            .iter()
            .chain(self.ignored)
            .copied()
            .chain(self.unsupported.iter().map(|(name, _)| *name))
    }
}

/// The supported keys of one mapping, found after its unknown keys were reported.
pub(crate) struct Fields<'n> {
    /// Where a missing key is reported: the key that holds this mapping (nothing for a file's
    /// top level, whose first line is not what is missing).
    pub owner: Span,
    entries: Vec<(&'n Key, &'n Node)>,
    /// False when the node was not a mapping: that was reported, so its keys are not "missing".
    is_mapping: bool,
    /// Supported keys offered as the fix for an unknown key: reporting them missing as well
    /// would tell the user the same thing twice.
    suggested: Vec<&'static str>,
}

impl<'n> Fields<'n> {
    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(key, _)| key.name == name)
            .map(|(_, node)| *node)
    }

    /// The supported keys found, in the order written.
    pub fn iter(&self) -> impl Iterator<Item = (&'n Key, &'n Node)> + '_ {
        self.entries.iter().copied()
    }

    /// The value of an optional key read by `read`, or `default` when the key is absent.
    pub fn read_or<T>(
        &self,
        name: &str,
        default: T,
        read: impl FnOnce(&'n Node) -> Option<T>,
    ) -> Option<T> {
        self.get(name).map_or(Some(default), read)
    }

    /// An optional key without a default: `Some(None)` when absent, `None` when it is wrong.
    pub fn read_opt<T>(
        &self,
        name: &str,
        read: impl FnOnce(&'n Node) -> Option<T>,
    ) -> Option<Option<T>> {
        match self.get(name) {
            None => Some(None),
            Some(node) => read(node).map(Some),
        }
    }

    /// Whether a missing key should be reported: not when the mapping itself was wrong, nor when
    /// an unknown key was already reported with this one as its likely fix.
    fn reports_missing(&self, name: &str) -> bool {
        self.is_mapping && !self.suggested.contains(&name)
    }
}

/// `path` names the mapping in messages (`web.commands`); empty for the top level.
pub(crate) fn fields<'n>(
    report: &mut FileReport<'_>,
    node: &'n Node,
    path: &str,
    keys: &Keys,
) -> Fields<'n> {
    let mut found = Fields {
        owner: node.owner.unwrap_or_default(),
        entries: Vec::new(),
        is_mapping: false,
        suggested: Vec::new(),
    };
    let Some(entries) = mapping(report, node, path) else {
        return found;
    };
    found.is_mapping = true;
    for (key, value) in entries {
        let name = key.name.as_str();
        if keys.supported.contains(&name) {
            found.entries.push((key, value));
        } else if keys.ignored.contains(&name) {
            report.warning(
                key.span,
                format!("`{}` has no effect on Lockstep", join(path, name)),
                Some(
                    "Lockstep accepts this Platform.sh key and ignores it; keep it or remove it"
                        .into(),
                ),
            );
        } else if let Some((_, advice)) = keys.unsupported.iter().find(|(n, _)| *n == name) {
            report.error(
                key.span,
                format!(
                    "`{}` is a Platform.sh key that Lockstep does not support yet",
                    join(path, name)
                ),
                Some((*advice).into()),
            );
        } else {
            let near = suggest(name, keys.all_names());
            if let Some(near) = near.filter(|n| keys.supported.contains(n)) {
                found.suggested.push(near);
            }
            report.error(
                key.span,
                format!("unknown key `{name}`{}", place(path)),
                Some(match near {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!("valid keys here: {}", listed(keys.supported)),
                }),
            );
        }
    }
    found
}

/// ` in `web.commands``, or nothing for a file's top level.
fn place(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(" in `{path}`")
    }
}

/// `a`, `b`, `c`: names as a user would write them.
pub(crate) fn listed(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The entries of a mapping; `null` (a key written with nothing after it) counts as empty.
pub(crate) fn mapping<'n>(
    report: &mut FileReport<'_>,
    node: &'n Node,
    path: &str,
) -> Option<&'n [(Key, Node)]> {
    match &node.value {
        Value::Map(entries) => Some(entries),
        Value::Null => Some(&[]),
        _ => {
            let what = if path.is_empty() {
                "this file".to_owned()
            } else {
                format!("`{path}`")
            };
            let help = matches!(node.value, Value::Seq(_))
                .then(|| "write `key: value` lines, without `- ` in front of them".to_owned());
            report.error(
                node.span,
                format!(
                    "{what} must be a mapping of keys to values, not {}",
                    node.describe()
                ),
                help,
            );
            None
        }
    }
}

pub(crate) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

pub(crate) fn string(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<String> {
    match node.scalar_text() {
        Some(text) => Some(text.to_owned()),
        None => {
            let help = matches!(node.value, Value::Seq(_)).then(|| {
                "write one string; for several lines, write `|` after the key and the lines below it"
                    .to_owned()
            });
            report.error(
                node.span,
                format!("`{path}` must be a string, not {}", node.describe()),
                help,
            );
            None
        }
    }
}

/// A string that must be present and not blank, such as a command.
pub(crate) fn text(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<String> {
    let value = string(report, node, path)?;
    if value.trim().is_empty() {
        report.error(node.span, format!("`{path}` is empty"), None);
        return None;
    }
    Some(value)
}

/// A key that must be present and not empty.
pub(crate) fn required<'n>(
    report: &mut FileReport<'_>,
    fields: &Fields<'n>,
    path: &str,
    name: &str,
    help: &str,
) -> Option<&'n Node> {
    match fields.get(name) {
        None => {
            report_missing(report, fields, path, name, help);
            None
        }
        Some(node) if node.value == Value::Null => {
            report.error(
                node.owner.unwrap_or(node.span),
                format!("`{}` has no value", join(path, name)),
                Some(help.into()),
            );
            None
        }
        Some(node) => Some(node),
    }
}

/// A required mapping, such as `web.commands`. Written with nothing after it, it counts as empty,
/// so that what it lacks is reported rather than the mapping itself.
pub(crate) fn section<'n>(
    report: &mut FileReport<'_>,
    fields: &Fields<'n>,
    path: &str,
    name: &str,
    keys: &Keys,
    help: &str,
) -> Option<Fields<'n>> {
    let Some(node) = fields.get(name) else {
        report_missing(report, fields, path, name, help);
        return None;
    };
    Some(self::fields(report, node, &join(path, name), keys))
}

fn report_missing(
    report: &mut FileReport<'_>,
    fields: &Fields<'_>,
    path: &str,
    name: &str,
    help: &str,
) {
    if fields.reports_missing(name) {
        report.error(
            fields.owner,
            format!("`{}` is required", join(path, name)),
            Some(help.into()),
        );
    }
}

pub(crate) fn integer(
    report: &mut FileReport<'_>,
    node: &Node,
    path: &str,
    range: std::ops::RangeInclusive<i64>,
    unit: &str,
) -> Option<i64> {
    let Value::Int(value) = node.value else {
        report.error(
            node.span,
            format!(
                "`{path}` must be a whole number of {unit}, not {}",
                node.describe()
            ),
            Some(match number_with_unit(node) {
                Some(number) => format!("write `{number}`: the unit is always {unit}"),
                None => format!(
                    "write a whole number between {} and {}",
                    range.start(),
                    range.end()
                ),
            }),
        );
        return None;
    };
    if !range.contains(&value) {
        report.error(
            node.span,
            format!(
                "`{path}` must be between {} and {} {unit}, not {value}",
                range.start(),
                range.end()
            ),
            None,
        );
        return None;
    }
    Some(value)
}

/// The number in a string such as `30s`, which users write for a number of seconds.
fn number_with_unit(node: &Node) -> Option<i64> {
    let Value::Str(text) = &node.value else {
        return None;
    };
    let digits = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    digits.trim().parse().ok()
}

pub(crate) fn boolean(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<bool> {
    match node.value {
        Value::Bool(value) => Some(value),
        _ => {
            report.error(
                node.span,
                format!(
                    "`{path}` must be `true` or `false`, not {}",
                    node.describe()
                ),
                None,
            );
            None
        }
    }
}

pub(crate) fn string_list(
    report: &mut FileReport<'_>,
    node: &Node,
    path: &str,
) -> Option<Vec<(String, Span)>> {
    let Value::Seq(items) = &node.value else {
        let help = node
            .scalar_text()
            .map(|text| format!("write a list, such as `[\"{text}\"]`"));
        report.error(
            node.span,
            format!(
                "`{path}` must be a list of strings, not {}",
                node.describe()
            ),
            help,
        );
        return None;
    };
    let mut values = Vec::new();
    for item in items {
        values.push((string(report, item, path)?, item.span));
    }
    Some(values)
}

/// Names of workers, crons, services and relationships: they become file names and variables.
pub(crate) fn check_name(report: &mut FileReport<'_>, key: &Key, what: &str) -> bool {
    let name = key.name.as_str();
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        report.error(
            key.span,
            format!("`{name}` is not a valid {what} name"),
            Some(
                "use up to 64 letters, digits, `-` and `_`, starting with a letter or digit".into(),
            ),
        );
    }
    valid
}

/// A value from a closed set, with the nearest one suggested when it is not in the set.
pub(crate) fn one_of(
    report: &mut FileReport<'_>,
    node: &Node,
    path: &str,
    allowed: &[&'static str],
) -> Option<&'static str> {
    let value = string(report, node, path)?;
    if let Some(found) = allowed.iter().find(|a| **a == value) {
        return Some(found);
    }
    let listed = listed(allowed);
    let help = match suggest(&value, allowed.iter().copied()) {
        Some(near) => format!("did you mean `{near}`? valid values: {listed}"),
        None => format!("valid values: {listed}"),
    };
    report.error(
        node.span,
        format!("`{path}` cannot be `{value}`"),
        Some(help),
    );
    None
}

/// A folder inside the app (a mount, a web root) or inside a mount's storage (`source_path`),
/// normalised without leading or trailing `/`: Platform.sh reads `/web/uploads` and
/// `web/uploads/` as `web/uploads`. `what` names it in messages, such as "mount path `x`".
/// `allow_top` accepts the top folder itself (`/` or `.`), returned as the empty string.
pub(crate) fn folder(
    report: &mut FileReport<'_>,
    raw: &str,
    span: Span,
    what: &str,
    allow_top: bool,
) -> Option<String> {
    let trimmed = raw.trim_matches('/');
    let parts: Vec<&str> = trimmed.split('/').collect();
    let top = trimmed.is_empty() || trimmed == ".";
    let problem = if top && allow_top {
        return Some(String::new());
    } else if top {
        "it names the app folder itself"
    } else if parts.contains(&"..") {
        "it must not contain `..`"
    } else if parts.iter().any(|p| p.is_empty() || *p == ".") {
        "it must not contain empty or `.` parts"
    } else if trimmed.contains('\0') {
        "it must not contain a NUL character"
    } else {
        return Some(trimmed.to_owned());
    };
    report.error(
        span,
        format!("{what} is not a valid path: {problem}"),
        Some("write a relative folder, such as `web/uploads`".into()),
    );
    None
}

/// The last line of a regex error: the earlier ones repeat the pattern with a caret under it,
/// which the diagnostic already shows.
pub(crate) fn regex_problem(error: &regex::Error) -> String {
    error
        .to_string()
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("error: ")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder_of(raw: &str, allow_top: bool) -> Option<String> {
        let mut report = FileReport::new("f", "");
        folder(&mut report, raw, Span::default(), "path", allow_top)
    }

    #[test]
    fn folders_are_normalised_and_kept_inside() {
        assert_eq!(
            folder_of("/web/uploads/", false).as_deref(),
            Some("web/uploads")
        );
        assert_eq!(
            folder_of(".next/cache", false).as_deref(),
            Some(".next/cache")
        );
        assert_eq!(folder_of("/", true).as_deref(), Some(""));
        for bad in ["/", ".", "../x", "a/../b", "a//b", "a/./b"] {
            assert_eq!(folder_of(bad, false), None, "{bad}");
        }
    }

    #[test]
    fn integers_written_with_a_unit_suggest_the_number() {
        let (node, _) = crate::yaml::parse_alone("t: 30s\n");
        let node = node.unwrap();
        let Value::Map(entries) = &node.value else {
            panic!("not a map")
        };
        let mut report = FileReport::new("f", "t: 30s\n");
        assert_eq!(
            integer(&mut report, &entries[0].1, "t", 0..=60, "seconds"),
            None
        );
        let help = report.diagnostics[0].help.as_deref().unwrap();
        assert_eq!(help, "write `30`: the unit is always seconds");
    }
}
