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
    pub span: Span,
    entries: Vec<(&'n Key, &'n Node)>,
}

impl<'n> Fields<'n> {
    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(key, _)| key.name == name)
            .map(|(_, node)| *node)
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
        span: node.span,
        entries: Vec::new(),
    };
    let Some(entries) = mapping(report, node, path) else {
        return found;
    };
    let place = if path.is_empty() {
        String::new()
    } else {
        format!(" in `{path}`")
    };
    for (key, value) in entries {
        let name = key.name.as_str();
        if keys.supported.contains(&name) {
            found.entries.push((key, value));
        } else if keys.ignored.contains(&name) {
            report.warning(
                key.span,
                format!("`{}` has no effect on Lockstep", join(path, name)),
                Some("Lockstep accepts this Platform.sh key and ignores it".into()),
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
            let help = match suggest(name, keys.all_names()) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!(
                    "valid keys here: {}",
                    keys.supported
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            report.error(key.span, format!("unknown key `{name}`{place}"), Some(help));
        }
    }
    found
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
            report.error(
                node.span,
                format!(
                    "{what} must be a mapping of keys to values, not {}",
                    node.kind()
                ),
                None,
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
            report.error(
                node.span,
                format!("`{path}` must be a string, not {}", node.kind()),
                None,
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

pub(crate) fn required<'n>(
    report: &mut FileReport<'_>,
    fields: &Fields<'n>,
    path: &str,
    name: &str,
    help: &str,
) -> Option<&'n Node> {
    let node = fields.get(name);
    if node.is_none_or(|n| n.value == Value::Null) {
        let span = node.map_or(fields.span, |n| n.span);
        report.error(
            span,
            format!("`{}` is required", join(path, name)),
            Some(help.into()),
        );
        return None;
    }
    node
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
                node.kind()
            ),
            None,
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

pub(crate) fn boolean(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<bool> {
    match node.value {
        Value::Bool(value) => Some(value),
        _ => {
            report.error(
                node.span,
                format!("`{path}` must be true or false, not {}", node.kind()),
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
        report.error(
            node.span,
            format!("`{path}` must be a list of strings, not {}", node.kind()),
            None,
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
    let listed = allowed
        .iter()
        .map(|a| format!("`{a}`"))
        .collect::<Vec<_>>()
        .join(", ");
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
