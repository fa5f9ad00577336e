//! `mounts` in `.platform.app.yaml`: the only folders an app may write to at runtime.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decode::{self, Keys};
use crate::diagnostic::FileReport;
use crate::yaml::{Key, Node};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub source: MountSource,
    pub source_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountSource {
    /// Per node, kept across deploys.
    Local,
    /// Shared by every node of the environment.
    Storage,
    /// Per node, may be emptied at any time.
    Tmp,
}

const MOUNT_KEYS: Keys = Keys::only(&["source", "source_path", "service"]);

/// Keyed by the mount's path relative to the app folder, without leading or trailing `/`.
pub(crate) fn read(report: &mut FileReport<'_>, node: &Node) -> Option<BTreeMap<String, Mount>> {
    let mut mounts: BTreeMap<String, Mount> = BTreeMap::new();
    let mut ok = true;
    for (key, body) in decode::mapping(report, node, "mounts")? {
        let what = format!("mount path `{}`", key.name);
        let path = decode::folder(report, &key.name, key.span, &what, false);
        // The body is read even when the path is wrong, so that all of its problems show at once.
        let mount = read_mount(report, key, body, path.as_deref());
        let Some(path) = path else {
            ok = false;
            continue;
        };
        if let Some(overlap) = mounts.keys().find_map(|m| overlap(m, &path)) {
            report.error(
                key.span,
                format!("mount `{path}` {overlap}"),
                Some("mounts may not be inside each other; pick separate folders".into()),
            );
            ok = false;
            continue;
        }
        match mount {
            Some(mount) => {
                mounts.insert(path, mount);
            }
            None => ok = false,
        }
    }
    ok.then_some(mounts)
}

/// `path` is the mount's own path, the default `source_path`; `None` when it was invalid.
fn read_mount(
    report: &mut FileReport<'_>,
    key: &Key,
    body: &Node,
    path: Option<&str>,
) -> Option<Mount> {
    if let Some(text) = body.scalar_text() {
        report_legacy_syntax(report, key, body, text);
        return None;
    }
    let here = format!("mounts.{}", key.name);
    let fields = decode::fields(report, body, &here, &MOUNT_KEYS);
    let source = decode::required(
        report,
        &fields,
        &here,
        "source",
        "use `source: local`, `storage` or `tmp`",
    )
    .and_then(|n| read_source(report, n, &format!("{here}.source")));
    let source_path = fields.read_or("source_path", path.map(str::to_owned), |n| {
        let at = format!("{here}.source_path");
        decode::text(report, n, &at)
            .and_then(|p| decode::folder(report, &p, n.span, &format!("`{at}`"), false))
            .map(Some)
    });
    if let Some(service) = fields.get("service")
        && matches!(source, Some(Some(_)))
    {
        report.error(
            service.span,
            format!("`{here}.service` only goes with `source: service`"),
            Some("remove it".into()),
        );
        return None;
    }
    Some(Mount {
        source: source??,
        source_path: source_path??,
    })
}

/// Platform.sh's old `"shared:files/NAME"` form: the fix is known, so it is spelt out.
fn report_legacy_syntax(report: &mut FileReport<'_>, key: &Key, body: &Node, text: &str) {
    let name = text.rsplit('/').next().filter(|n| !n.is_empty());
    let source_path = name.unwrap_or("NAME");
    report.error(
        body.span,
        format!(
            "mount `{}` uses Platform.sh's old string syntax, which Lockstep does not read",
            key.name
        ),
        Some(format!(
            "write `\"{}\": {{source: local, source_path: {source_path}}}`, or `source: storage` for a folder that every node shares",
            key.name
        )),
    );
}

/// `Some(None)` is Platform.sh's `source: service`, reported here as unsupported.
fn read_source(
    report: &mut FileReport<'_>,
    node: &Node,
    path: &str,
) -> Option<Option<MountSource>> {
    let source = decode::one_of(report, node, path, &["local", "storage", "tmp", "service"])?;
    Some(match source {
        "local" => Some(MountSource::Local),
        "storage" => Some(MountSource::Storage),
        "tmp" => Some(MountSource::Tmp),
        _ => {
            report.error(
                node.span,
                format!("`{path}: service` (network storage) is not supported by Lockstep yet"),
                Some("use `source: storage`: it is shared by every node of the environment".into()),
            );
            None
        }
    })
}

/// How mount `path` overlaps the `existing` one, if it does.
fn overlap(existing: &str, path: &str) -> Option<String> {
    if existing == path {
        Some(format!("is the same folder as mount `{existing}`"))
    } else if path.starts_with(&format!("{existing}/")) {
        Some(format!("is inside mount `{existing}`"))
    } else if existing.starts_with(&format!("{path}/")) {
        Some(format!("contains mount `{existing}`"))
    } else {
        None
    }
}
