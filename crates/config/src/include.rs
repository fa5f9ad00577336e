//! Platform.sh's `!include`: which file an include names, and the value it stands for.
//!
//! Owns: resolving an include's path from the folder of the file that holds it, refusing paths
//! that leave the project, cycles, nesting past [`MAX_INCLUDE_DEPTH`] files and more than
//! [`MAX_INCLUDED_BYTES`] included in all, and numbering the YAML files it reads for the report.
//! Must never: read a file itself. Its files come from a [`Library`]: the project folder while
//! `Sources::read_dir` reads the configuration, the `Sources` when they are checked. Both go
//! through the same resolution, so the check finds every file that the reading gathered.

use std::borrow::Cow;
use std::collections::HashMap;

use base64::Engine;

use crate::read::not_utf8;
use crate::yaml::{self, FileId, Include, IncludeType, Includes, MAX_SOURCE_BYTES, Node, Value};
use crate::yaml::{Span, SyntaxProblem};

/// At most this many files included inside each other. Each file is at most
/// [`yaml::MAX_DEPTH`] deep, so this also bounds how deep a configuration is in all.
pub const MAX_INCLUDE_DEPTH: usize = 8;
/// At most this many bytes included by one configuration file, counted each time a file is
/// included: a small file including a large one many times could otherwise fill memory.
pub const MAX_INCLUDED_BYTES: usize = 4 * MAX_SOURCE_BYTES;

/// A file as a [`Library`] has it.
pub(crate) enum Loaded<'a> {
    Missing,
    Bytes(Cow<'a, [u8]>),
    /// It is there but is no configuration (too large, outside the project...): why.
    Unreadable(String),
}

/// Where included files come from.
pub(crate) trait Library<'a> {
    /// The file at `path` from the project root, which resolution keeps inside the project.
    fn load(&mut self, path: &str) -> Loaded<'a>;
}

/// Resolves the `!include`s of one configuration file, and of the files it includes.
pub(crate) struct Includer<'l, 'a> {
    library: &'l mut dyn Library<'a>,
    /// The files being read, outermost first: an include is relative to the folder of the last,
    /// and one of them included again is a cycle.
    chain: Vec<String>,
    /// The YAML files read, in the order of their [`FileId`]s from 1.
    files: Vec<String>,
    /// Each YAML file's value, so that a file included twice is read, and reported, once.
    values: HashMap<String, Option<Node>>,
    included_bytes: usize,
}

impl<'l, 'a> Includer<'l, 'a> {
    /// For the configuration file `file` (its path from the project root).
    pub fn new(file: &str, library: &'l mut dyn Library<'a>) -> Self {
        Includer {
            library,
            chain: vec![file.to_owned()],
            files: Vec::new(),
            values: HashMap::new(),
            included_bytes: 0,
        }
    }

    /// The YAML files read, in the order of their [`FileId`]s from 1.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    fn value_of(&mut self, include: &Include) -> Result<Included, SyntaxProblem> {
        let including = self.chain.last().cloned().unwrap_or_default();
        let path = resolve(&including, &include.path)
            .map_err(|wrong| wrong.problem(include, &including))?;
        if self.chain.contains(&path) {
            return Err(self.cycle(include.span, &path));
        }
        if self.chain.len() > MAX_INCLUDE_DEPTH {
            return Err(SyntaxProblem::new(
                include.span,
                format!("this `!include` is nested more than {MAX_INCLUDE_DEPTH} files deep"),
                "write the content of some of these files in the files that include them",
            ));
        }
        let bytes = match self.library.load(&path) {
            Loaded::Bytes(bytes) => bytes,
            Loaded::Missing => return Err(missing(include, &including, &path)),
            Loaded::Unreadable(why) => {
                let help = format!(
                    "include a file inside the project, of at most {MAX_SOURCE_BYTES} bytes"
                );
                return Err(SyntaxProblem::new(include.span, why, help));
            }
        };
        self.included_bytes += bytes.len();
        if self.included_bytes > MAX_INCLUDED_BYTES {
            return Err(SyntaxProblem::new(
                include.span,
                format!(
                    "with this `!include`, this file includes more than {MAX_INCLUDED_BYTES} bytes"
                ),
                "include fewer files, or smaller ones",
            ));
        }
        match include.kind {
            IncludeType::Yaml => self.yaml(path, &bytes, include.span),
            IncludeType::String => {
                let text = text(&path, &bytes, "a string", include.span)?;
                Ok((Some(string_at(text.to_owned(), include.span)), Vec::new()))
            }
            IncludeType::Binary => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
                Ok((Some(string_at(encoded, include.span)), Vec::new()))
            }
        }
    }

    /// The value of the YAML file `path`, read once however often it is included. An empty
    /// file stands for nothing (`null`).
    fn yaml(&mut self, path: String, bytes: &[u8], span: Span) -> Result<Included, SyntaxProblem> {
        if let Some(value) = self.values.get(&path) {
            return Ok((value.clone(), Vec::new()));
        }
        let text = text(&path, bytes, "YAML", span)?;
        self.files.push(path.clone());
        let file = FileId(self.files.len());
        self.chain.push(path.clone());
        let (root, problems) = yaml::parse(text, file, self);
        self.chain.pop();
        let value = match root {
            None if problems.is_empty() => Some(Node::null(span)),
            root => root,
        };
        self.values.insert(path, value.clone());
        Ok((value, problems))
    }

    fn cycle(&self, span: Span, path: &str) -> SyntaxProblem {
        let start = self
            .chain
            .iter()
            .position(|f| f == path)
            .unwrap_or_default();
        let included: Vec<String> = self.chain[start + 1..]
            .iter()
            .map(String::as_str)
            .chain([path])
            .map(|file| format!("`{file}`"))
            .collect();
        SyntaxProblem::new(
            span,
            format!(
                "this `!include` closes a cycle: `{path}` includes {}",
                included.join(", which includes ")
            ),
            "a file cannot include itself, even through other files: remove one of these includes",
        )
    }
}

/// A value and the problems met reading it, as [`Includes::include`] returns them.
type Included = (Option<Node>, Vec<SyntaxProblem>);

impl Includes for Includer<'_, '_> {
    fn include(&mut self, include: &Include) -> Included {
        match self.value_of(include) {
            Ok(included) => included,
            Err(problem) => (None, vec![problem]),
        }
    }
}

/// Why an include's path names no file of the project.
#[derive(Debug, PartialEq)]
enum WrongPath {
    Absolute,
    Outside,
    NoFile,
}

impl WrongPath {
    fn problem(&self, include: &Include, including: &str) -> SyntaxProblem {
        let written = &include.path;
        let (message, help) = match self {
            WrongPath::Absolute => (
                format!("`!include` path `{written}` is absolute"),
                format!("write the path relative to {}", folder_of(including)),
            ),
            WrongPath::Outside => (
                format!("`!include` path `{written}` leads outside the project"),
                "include a file of the project: Lockstep reads nothing outside it".to_owned(),
            ),
            WrongPath::NoFile => (
                "this `!include` names no file".to_owned(),
                format!(
                    "write the path of a file, relative to {}",
                    folder_of(including)
                ),
            ),
        };
        SyntaxProblem::new(include.span, message, help)
    }
}

/// The path from the project root of the file that `written` names, from the folder of the
/// file `including`.
fn resolve(including: &str, written: &str) -> Result<String, WrongPath> {
    if written.starts_with('/') {
        return Err(WrongPath::Absolute);
    }
    let mut parts: Vec<&str> = including.split('/').collect();
    parts.pop();
    for part in written.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or(WrongPath::Outside)?;
            }
            name => parts.push(name),
        }
    }
    if parts.is_empty() {
        return Err(WrongPath::NoFile);
    }
    Ok(parts.join("/"))
}

/// The folder of `file`, as help text names it.
fn folder_of(file: &str) -> String {
    match file.rsplit_once('/') {
        Some((folder, _)) => format!("`{folder}/`, the folder of this file"),
        None => "the project root, the folder of this file".to_owned(),
    }
}

fn missing(include: &Include, including: &str, path: &str) -> SyntaxProblem {
    SyntaxProblem::new(
        include.span,
        format!("`!include` names `{path}`, which does not exist"),
        format!(
            "commit the file, or correct the path: it is relative to {}",
            folder_of(including)
        ),
    )
}

fn text<'b>(
    path: &str,
    bytes: &'b [u8],
    wanted: &str,
    span: Span,
) -> Result<&'b str, SyntaxProblem> {
    std::str::from_utf8(bytes).map_err(|error| {
        SyntaxProblem::new(
            span,
            not_utf8(path, error.valid_up_to(), wanted),
            "commit it as UTF-8 text, or include its bytes in base64 with `type: binary`",
        )
    })
}

fn string_at(text: String, span: Span) -> Node {
    Node {
        value: Value::Str(text),
        span,
        raw: None,
        owner: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Files in memory, as a corpus case or `Sources` holds them.
    struct Memory(BTreeMap<String, Vec<u8>>);

    impl<'a> Library<'a> for Memory {
        fn load(&mut self, path: &str) -> Loaded<'a> {
            match self.0.get(path) {
                Some(bytes) => Loaded::Bytes(Cow::Owned(bytes.clone())),
                None => Loaded::Missing,
            }
        }
    }

    /// Parses `text` as the file `file` of a project holding `files`: the value, the problems,
    /// and the YAML files read.
    fn parse_in(
        files: &[(&str, &[u8])],
        file: &str,
        text: &str,
    ) -> (Option<Node>, Vec<SyntaxProblem>, Vec<String>) {
        let mut library = Memory(
            files
                .iter()
                .map(|(path, bytes)| (path.to_string(), bytes.to_vec()))
                .collect(),
        );
        let mut includer = Includer::new(file, &mut library);
        let (root, problems) = yaml::parse(text, FileId(0), &mut includer);
        (root, problems, includer.files().to_vec())
    }

    #[test]
    fn paths_are_resolved_from_the_folder_of_the_including_file() {
        let cases = [
            (
                ".platform/applications.yaml",
                "app.yaml",
                Ok(".platform/app.yaml"),
            ),
            (".platform.app.yaml", "build.sh", Ok("build.sh")),
            (
                ".platform/applications.yaml",
                "../scripts/x.sh",
                Ok("scripts/x.sh"),
            ),
            (
                ".platform/a/b.yaml",
                "./c//d.yaml",
                Ok(".platform/a/c/d.yaml"),
            ),
            (
                ".platform.app.yaml",
                "/etc/passwd",
                Err(WrongPath::Absolute),
            ),
            (".platform/x.yaml", "../../y", Err(WrongPath::Outside)),
            (".platform.app.yaml", "a/../../a", Err(WrongPath::Outside)),
            (".platform.app.yaml", "", Err(WrongPath::NoFile)),
            (".platform.app.yaml", ".", Err(WrongPath::NoFile)),
            (".platform/x.yaml", "..", Err(WrongPath::NoFile)),
        ];
        for (including, written, expected) in cases {
            assert_eq!(
                resolve(including, written),
                expected.map(str::to_owned),
                "{written} from {including}"
            );
        }
    }

    #[test]
    fn a_file_included_twice_is_read_and_reported_once() {
        let (root, problems, files) = parse_in(
            &[(".platform/common.yaml", b"a: 1\na: 2\n")],
            ".platform/applications.yaml",
            "x: !include common.yaml\ny: !include common.yaml\n",
        );
        let root = root.expect("a document");
        assert_eq!(
            root.to_json(),
            serde_json::json!({"x": {"a": 1}, "y": {"a": 1}})
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].span.file, FileId(1));
        assert_eq!(files, [".platform/common.yaml"]);
    }

    #[test]
    fn strings_are_the_files_text_and_binaries_its_bytes_in_base64() {
        let files: &[(&str, &[u8])] = &[
            ("hook.sh", "set -e\necho héllo\n".as_bytes()),
            ("logo.bin", &[0xff, 0x00, 0x01]),
            ("empty.yaml", b"# nothing\n"),
        ];
        let (root, problems, yaml_files) = parse_in(
            files,
            ".platform.app.yaml",
            "a: !include {type: string, path: hook.sh}\nb: !include {type: binary, path: logo.bin}\nc: !include empty.yaml\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            root.expect("a document").to_json(),
            serde_json::json!({"a": "set -e\necho héllo\n", "b": "/wAB", "c": null})
        );
        assert_eq!(yaml_files, ["empty.yaml"]);
        let (root, problems, _) = parse_in(
            files,
            ".platform.app.yaml",
            "a: !include {type: string, path: logo.bin}\n",
        );
        assert_eq!(root, None);
        assert_eq!(
            problems[0].message,
            "`logo.bin` is not UTF-8 text (byte 0 is not), so it cannot be a string"
        );
    }

    #[test]
    fn includes_past_the_byte_budget_are_refused() {
        let large = vec![b'x'; MAX_SOURCE_BYTES];
        let text: String = (0..5)
            .map(|i| format!("k{i}: !include {{type: string, path: large.txt}}\n"))
            .collect();
        let (root, problems, _) = parse_in(&[("large.txt", &large)], ".platform.app.yaml", &text);
        assert_eq!(root, None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].span.line, 5);
        assert!(
            problems[0].message.contains("more than 4194304 bytes"),
            "{problems:?}"
        );
    }
}
