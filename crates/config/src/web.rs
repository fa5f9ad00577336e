//! `web` in `.platform.app.yaml`: the command that serves the app, and the locations that say
//! which requests are answered with files and which go to the app.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decode::{self, Fields, Keys};
use crate::diagnostic::FileReport;
use crate::yaml::{Node, Value};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Web {
    /// The command that serves HTTP on `$PORT`. `None` for a static site (one whose every
    /// location serves files and passes no request to the app), and for a PHP app that PHP-FPM
    /// serves.
    pub start: Option<String>,
    /// Keyed by URL path prefix (`/`, `/static`); the longest matching prefix applies. Empty
    /// means every request goes to the app, as on Platform.sh for every language but PHP.
    #[serde(default)]
    pub locations: BTreeMap<String, Location>,
    /// How the web process listens: on `$PORT`, or on the unix socket `$SOCKET`.
    #[serde(default)]
    pub socket_family: SocketFamily,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketFamily {
    #[default]
    Tcp,
    Unix,
}

impl Web {
    /// Whether some request can reach the app, so that it needs a web process.
    pub fn passes_to_app(&self) -> bool {
        passes_to_app(&self.locations)
    }
}

fn passes_to_app(locations: &BTreeMap<String, Location>) -> bool {
    locations.is_empty() || locations.values().any(Location::passes_to_app)
}

/// One `web.locations` entry, with Platform.sh's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// The folder whose files are served, relative to the app folder (empty: the app folder
    /// itself). `None`: no file is served here.
    pub root: Option<String>,
    pub passthru: Passthru,
    /// Files served for a request of a folder, in order.
    pub index: Vec<String>,
    pub expires: Expires,
    /// Whether files that no rule matches may be served.
    pub allow: bool,
    /// Whether PHP scripts found in `root` run (PHP-FPM apps only; a passthru target always
    /// runs). Platform.sh's default: true.
    pub scripts: bool,
    /// Added to the responses of files served from `root`.
    pub headers: BTreeMap<String, String>,
    /// Overrides for the requests whose path matches a pattern; the first match wins.
    pub rules: Vec<Rule>,
}

impl Location {
    fn passes_to_app(&self) -> bool {
        self.passthru != Passthru::No
            || self
                .rules
                .iter()
                .any(|r| r.passthru.as_ref().is_some_and(|p| *p != Passthru::No))
    }
}

/// What happens to a request that matches no file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "to", content = "path")]
pub enum Passthru {
    /// It gets a 404.
    No,
    /// It goes to the app as it is.
    App,
    /// It goes to the app as this path (Platform.sh's front controller, such as `/index.php`).
    Path(String),
}

/// How long browsers and the edge may keep a served file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expires {
    /// Platform.sh's `-1`: no caching headers are sent.
    Off,
    Seconds(u64),
}

/// A `rules` entry: its keys replace the location's own for the requests it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// A regular expression matched against the request path.
    pub pattern: String,
    pub allow: Option<bool>,
    pub expires: Option<Expires>,
    pub passthru: Option<Passthru>,
    pub scripts: Option<bool>,
    pub headers: BTreeMap<String, String>,
}

const WEB_KEYS: Keys = Keys::only(&["commands", "upstream", "locations"]);

const WEB_COMMANDS_KEYS: Keys = Keys {
    supported: &["start"],
    ignored: &[],
    unsupported: &[
        (
            "pre_start",
            "run the preparation at the start of `web.commands.start` instead",
        ),
        (
            "post_start",
            "`post_start` is not available on Dedicated Gen 2 either; remove it",
        ),
    ],
};

const UPSTREAM_KEYS: Keys = Keys::only(&["socket_family", "protocol"]);

const LOCATION_KEYS: Keys = Keys {
    supported: &[
        "root", "passthru", "index", "expires", "allow", "scripts", "headers", "rules",
    ],
    // Request buffering only decides whether a chunked upload reaches the app whole or in parts.
    ignored: &["request_buffering"],
    unsupported: &[],
};

const RULE_KEYS: Keys = Keys::only(&["allow", "expires", "passthru", "scripts", "headers"]);

/// Seconds per unit of an `expires` duration, as nginx (and so Platform.sh) reads them.
const DURATION_UNITS: &[(char, u64)] = &[
    ('s', 1),
    ('m', 60),
    ('h', 3_600),
    ('d', 86_400),
    ('w', 604_800),
    ('M', 2_592_000),
    ('y', 31_536_000),
];

const START_HELP: &str = "the web process is started by a command that serves HTTP on $PORT, written `web: {commands: {start: python3 server.py}}`";

/// Why a start command is needed: with locations, the one that passes requests to the app.
fn start_help(locations: Option<&BTreeMap<String, Location>>) -> String {
    let passing = locations
        .into_iter()
        .flatten()
        .find(|(_, location)| location.passes_to_app());
    match passing {
        Some((path, _)) => format!(
            "location `{path}` passes requests to the app, so the app needs a command that serves HTTP on $PORT, such as `commands: {{start: node server.js}}`"
        ),
        None => START_HELP.into(),
    }
}

/// `php`: a PHP app, which PHP-FPM serves when it has no start command.
pub(crate) fn read(report: &mut FileReport<'_>, top: &Fields<'_>, php: bool) -> Option<Web> {
    let web = decode::section(report, top, "", "web", &WEB_KEYS, START_HELP)?;
    let socket_family = match web.get("upstream") {
        Some(upstream) => read_upstream(report, upstream),
        None => Some(SocketFamily::Tcp),
    };
    let locations = web.read_or("locations", BTreeMap::new(), |n| read_locations(report, n));
    let start = if php && web.get("commands").is_none() {
        php_fpm_locations(report, &web, locations.as_ref())
    } else {
        read_start(report, &web, locations.as_ref())
    };
    Some(Web {
        start: start?,
        locations: locations?,
        socket_family: socket_family?,
    })
}

/// A PHP app without a start command runs its scripts under PHP-FPM: it needs locations,
/// which say where the scripts are.
fn php_fpm_locations(
    report: &mut FileReport<'_>,
    web: &Fields<'_>,
    locations: Option<&BTreeMap<String, Location>>,
) -> Option<Option<String>> {
    if locations.is_some_and(BTreeMap::is_empty) {
        report.error(
            web.owner,
            "a PHP app without `web.commands.start` is served by PHP-FPM, which needs `web.locations`",
            Some("add a location such as `\"/\": {root: public, passthru: /index.php}`".into()),
        );
        return None;
    }
    Some(None)
}

/// `Some(None)` when the app needs no web process: its locations only serve files.
fn read_start(
    report: &mut FileReport<'_>,
    web: &Fields<'_>,
    locations: Option<&BTreeMap<String, Location>>,
) -> Option<Option<String>> {
    // With invalid locations it is unknown whether the app must serve; their errors come first.
    let needs_start = locations.is_some_and(passes_to_app);
    if !needs_start && web.get("commands").is_none() {
        return Some(None);
    }
    let help = start_help(locations);
    let commands = decode::section(report, web, "web", "commands", &WEB_COMMANDS_KEYS, &help)?;
    if !needs_start && commands.get("start").is_none() {
        return Some(None);
    }
    decode::required(report, &commands, "web.commands", "start", &help)
        .and_then(|n| decode::text(report, n, "web.commands.start"))
        .map(Some)
}

fn read_upstream(report: &mut FileReport<'_>, node: &Node) -> Option<SocketFamily> {
    let upstream = decode::fields(report, node, "web.upstream", &UPSTREAM_KEYS);
    let family = match upstream.get("socket_family") {
        None => Some(SocketFamily::Tcp),
        Some(family) => {
            match decode::one_of(
                report,
                family,
                "web.upstream.socket_family",
                &["tcp", "unix"],
            )? {
                "unix" => Some(SocketFamily::Unix),
                _ => Some(SocketFamily::Tcp),
            }
        }
    };
    if let Some(protocol) = upstream.get("protocol") {
        let path = "web.upstream.protocol";
        if decode::one_of(report, protocol, path, &["http", "fastcgi"]) == Some("fastcgi") {
            report.error(
                protocol.span,
                format!("`{path}: fastcgi` is not supported by Lockstep yet"),
                Some("serve HTTP on $PORT and set `protocol: http`".into()),
            );
            return None;
        }
    }
    family
}

fn read_locations(report: &mut FileReport<'_>, node: &Node) -> Option<BTreeMap<String, Location>> {
    let mut locations = BTreeMap::new();
    let mut ok = true;
    for (key, body) in decode::mapping(report, node, "web.locations")? {
        let path = format!("web.locations.\"{}\"", key.name);
        if !key.name.starts_with('/') {
            report.error(
                key.span,
                format!("location `{}` must start with `/`", key.name),
                Some(format!(
                    "locations are URL paths, such as `/{}`",
                    key.name.trim_start_matches('.')
                )),
            );
            ok = false;
        }
        match read_location(report, body, &path) {
            Some(location) => {
                locations.insert(key.name.clone(), location);
            }
            None => ok = false,
        }
    }
    ok.then_some(locations)
}

fn read_location(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<Location> {
    let fields = decode::fields(report, node, path, &LOCATION_KEYS);
    let root = fields.read_or("root", None, |n| {
        let root_path = format!("{path}.root");
        match n.value {
            Value::Null => Some(None),
            _ => decode::string(report, n, &root_path)
                .and_then(|r| decode::folder(report, &r, n.span, &format!("`{root_path}`"), true))
                .map(Some),
        }
    });
    let passthru = fields.read_or("passthru", Passthru::No, |n| {
        read_passthru(report, n, &format!("{path}.passthru"))
    });
    let index = fields.read_or("index", Vec::new(), |n| match n.value {
        Value::Null => Some(Vec::new()),
        _ => decode::string_list(report, n, &format!("{path}.index"))
            .map(|files| files.into_iter().map(|(file, _)| file).collect()),
    });
    let expires = fields.read_or("expires", Expires::Off, |n| {
        read_expires(report, n, &format!("{path}.expires"))
    });
    let allow = fields.read_or("allow", true, |n| {
        decode::boolean(report, n, &format!("{path}.allow"))
    });
    let scripts = fields.read_or("scripts", true, |n| {
        decode::boolean(report, n, &format!("{path}.scripts"))
    });
    let headers = fields.read_or("headers", BTreeMap::new(), |n| {
        read_headers(report, n, &format!("{path}.headers"))
    });
    let rules = fields.read_or("rules", Vec::new(), |n| {
        read_rules(report, n, &format!("{path}.rules"))
    });
    Some(Location {
        root: root?,
        passthru: passthru?,
        index: index?,
        expires: expires?,
        allow: allow?,
        scripts: scripts?,
        headers: headers?,
        rules: rules?,
    })
}

fn read_rules(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<Vec<Rule>> {
    let mut rules = Vec::new();
    let mut ok = true;
    for (key, body) in decode::mapping(report, node, path)? {
        if let Err(error) = regex::Regex::new(&key.name) {
            report.error(
                key.span,
                format!(
                    "`{}` in `{path}` is not a regular expression Lockstep can use: {}",
                    key.name,
                    decode::regex_problem(&error)
                ),
                Some(
                    "Lockstep matches rules with Rust's regular expressions, which have no look-around or backreferences"
                        .into(),
                ),
            );
            ok = false;
        }
        let here = format!("{path}.\"{}\"", key.name);
        match read_rule(report, body, &here, &key.name) {
            Some(rule) => rules.push(rule),
            None => ok = false,
        }
    }
    ok.then_some(rules)
}

fn read_rule(report: &mut FileReport<'_>, node: &Node, path: &str, pattern: &str) -> Option<Rule> {
    let fields = decode::fields(report, node, path, &RULE_KEYS);
    let at = |name: &str| format!("{path}.{name}");
    let allow = fields.read_opt("allow", |n| decode::boolean(report, n, &at("allow")));
    let expires = fields.read_opt("expires", |n| read_expires(report, n, &at("expires")));
    let passthru = fields.read_opt("passthru", |n| read_passthru(report, n, &at("passthru")));
    let scripts = fields.read_opt("scripts", |n| decode::boolean(report, n, &at("scripts")));
    let headers = fields.read_or("headers", BTreeMap::new(), |n| {
        read_headers(report, n, &at("headers"))
    });
    Some(Rule {
        pattern: pattern.to_owned(),
        allow: allow?,
        expires: expires?,
        passthru: passthru?,
        scripts: scripts?,
        headers: headers?,
    })
}

fn read_passthru(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<Passthru> {
    match &node.value {
        Value::Bool(true) => Some(Passthru::App),
        Value::Bool(false) => Some(Passthru::No),
        Value::Str(target) if target.starts_with('/') => Some(Passthru::Path(target.clone())),
        _ => {
            report.error(
                node.span,
                format!(
                    "`{path}` must be `true`, `false` or a path starting with `/`, not {}",
                    node.describe()
                ),
                Some(
                    "write `passthru: true` to send the requests that match no file to the app"
                        .into(),
                ),
            );
            None
        }
    }
}

/// Accepted for Platform.sh compatibility; `true` asks for PHP scripts to run from the web
/// root, which Lockstep never does, so it says so.
fn read_headers(
    report: &mut FileReport<'_>,
    node: &Node,
    path: &str,
) -> Option<BTreeMap<String, String>> {
    let mut headers = BTreeMap::new();
    let mut ok = true;
    for (name, value) in decode::mapping(report, node, path)? {
        let valid_name = !name.name.is_empty()
            && name
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
        if !valid_name {
            report.error(
                name.span,
                format!("`{}` in `{path}` is not a valid header name", name.name),
                Some("use letters, digits and `-`, such as `X-Frame-Options`".into()),
            );
            ok = false;
            continue;
        }
        match decode::string(report, value, &format!("{path}.{}", name.name)) {
            Some(value) => {
                headers.insert(name.name.clone(), value);
            }
            None => ok = false,
        }
    }
    ok.then_some(headers)
}

fn read_expires(report: &mut FileReport<'_>, node: &Node, path: &str) -> Option<Expires> {
    let parsed = match &node.value {
        Value::Int(-1) => Some(Expires::Off),
        Value::Int(seconds) => u64::try_from(*seconds).ok().map(Expires::Seconds),
        Value::Str(text) => parse_duration(text),
        _ => None,
    };
    if parsed.is_none() {
        report.error(
            node.span,
            format!(
                "`{path}` must be `-1`, a number of seconds or a duration, not {}",
                node.describe()
            ),
            Some(
                "for example `expires: 1h`, `expires: 7d` or `expires: 300`; `-1` sends no caching headers"
                    .into(),
            ),
        );
    }
    parsed
}

/// `-1`, `300`, `1h`, `1h30m` or `2 d`: numbers each followed by an optional unit.
fn parse_duration(text: &str) -> Option<Expires> {
    let text = text.trim();
    if text == "-1" {
        return Some(Expires::Off);
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut chars = text.chars().filter(|c| !c.is_whitespace()).peekable();
    chars.peek()?;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            if chars.peek().is_some() {
                continue;
            }
        }
        let unit = if c.is_ascii_digit() {
            1
        } else {
            DURATION_UNITS.iter().find(|(u, _)| *u == c)?.1
        };
        let amount: u64 = digits.parse().ok()?;
        total = total.checked_add(amount.checked_mul(unit)?)?;
        digits.clear();
    }
    Some(Expires::Seconds(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_nginx_reads_them() {
        assert_eq!(parse_duration("-1"), Some(Expires::Off));
        assert_eq!(parse_duration("300"), Some(Expires::Seconds(300)));
        assert_eq!(parse_duration("1h"), Some(Expires::Seconds(3_600)));
        assert_eq!(parse_duration("1h30m"), Some(Expires::Seconds(5_400)));
        assert_eq!(parse_duration("2 d"), Some(Expires::Seconds(172_800)));
        assert_eq!(parse_duration("1w"), Some(Expires::Seconds(604_800)));
        assert_eq!(parse_duration("1M"), Some(Expires::Seconds(2_592_000)));
        for bad in ["", "h", "1x", "soon", "-5", "1.5h", "99999999999999999999"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
