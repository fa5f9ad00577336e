//! A YAML document as a tree of nodes that remember where they came from.
//!
//! Validation needs the line and column of every key and value, and must see duplicate keys,
//! which general-purpose YAML loaders merge silently. So this module builds its own small tree
//! from the parser's events, resolving scalars by the YAML 1.2 core schema, expanding aliases and
//! applying `<<` merge keys (common in Platform.sh files written for YAML 1.1). Platform.sh's
//! `!include` tag is read here too, in both its forms; what it names is for an [`Includes`] to
//! supply, since only the caller knows where files come from.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as ParserSpan, Tag};

use crate::diagnostic::suggest;

/// A configuration file larger than this is refused before it is parsed: Platform.sh files are a
/// few kilobytes.
pub const MAX_SOURCE_BYTES: usize = 1024 * 1024;
/// At most this many values in one document, aliases counted as many times as they are used:
/// an alias repeats what it names, so a file of a kilobyte can otherwise stand for billions.
pub const MAX_NODES: usize = 50_000;
/// At most this many mappings and lists inside each other.
pub const MAX_DEPTH: usize = 64;

/// Which file a span is in, among those read for one configuration file: `FileId(0)` is that
/// file, and the files it includes are numbered from 1 in the order they are first included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileId(pub usize);

/// A place in a source file: 1-based line and column, and the width to underline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub line: usize,
    pub column: usize,
    pub width: usize,
    pub file: FileId,
}

impl Span {
    fn from_parser(span: ParserSpan, file: FileId) -> Self {
        let width = if span.end.line() == span.start.line() {
            span.end.col().saturating_sub(span.start.col())
        } else {
            1
        };
        Span {
            line: span.start.line(),
            column: span.start.col() + 1,
            width: width.max(1),
            file,
        }
    }

    /// The start of `file`, for what is wrong with a file as a whole.
    pub fn file_start(file: FileId) -> Self {
        Span {
            line: 1,
            column: 1,
            width: 1,
            file,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key. Keys are always scalars in Platform.sh files; other keys are rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
    /// The scalar exactly as written, so that `version: 1.10` can be read back as text.
    pub raw: Option<String>,
    /// The key this node is the value of (or its `-` in a list). A key missing from a mapping is
    /// reported there: a mapping's own span is its first key, which is not what is missing.
    pub owner: Option<Span>,
}

impl Node {
    pub fn null(span: Span) -> Node {
        Node {
            value: Value::Null,
            span,
            raw: None,
            owner: None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// What the node is, for messages: scalars are quoted as written (`not \`1.5\``), so the user
    /// sees the value that was read, not only its kind.
    pub fn describe(&self) -> String {
        match (&self.value, self.raw.as_deref()) {
            (Value::Null, _) => "empty".into(),
            (Value::Str(text), _) => format!("the text `{text}`"),
            (Value::Bool(_) | Value::Int(_) | Value::Float(_), Some(raw)) => format!("`{raw}`"),
            _ => self.kind().into(),
        }
    }

    /// The text of a scalar that is not null: strings, and numbers or booleans as written.
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => self.raw.as_deref(),
            _ => None,
        }
    }

    /// How many values the node stands for, keys included, as [`MAX_NODES`] counts them.
    fn count(&self) -> usize {
        let inner: usize = match &self.value {
            Value::Seq(items) => items.iter().map(Node::count).sum(),
            Value::Map(entries) => entries.iter().map(|(_, value)| 1 + value.count()).sum(),
            _ => 0,
        };
        1 + inner
    }

    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Str(s) => s.clone().into(),
            Value::Seq(items) => items.iter().map(Node::to_json).collect(),
            Value::Map(entries) => entries
                .iter()
                .map(|(k, v)| (k.name.clone(), v.to_json()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }
}

/// A problem found while reading the YAML itself, before any meaning is given to it.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxProblem {
    pub span: Span,
    pub message: String,
    pub help: Option<String>,
}

impl SyntaxProblem {
    pub fn new(span: Span, message: impl Into<String>, help: impl Into<String>) -> Self {
        SyntaxProblem {
            span,
            message: message.into(),
            help: Some(help.into()),
        }
    }
}

/// What Platform.sh's `!include` makes of the file it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeType {
    /// The file's YAML, as if written in place.
    Yaml,
    /// The file's text, as a string.
    String,
    /// The file's bytes in base64, as a string.
    Binary,
}

/// One `!include` as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub kind: IncludeType,
    pub path: String,
    /// Where the path is written: what is wrong with the file is reported there.
    pub span: Span,
}

/// Supplies the values that `!include` tags stand for.
pub trait Includes {
    /// The value of the file `include` names, with the problems met reading it (in it, or in
    /// the files it includes in turn). `None` when there is no value: a problem then says why.
    fn include(&mut self, include: &Include) -> (Option<Node>, Vec<SyntaxProblem>);
}

/// Parses one YAML document, the file `file` among those read for one configuration file; its
/// `!include` tags are replaced by what `includes` supplies. An empty document (or one holding
/// only comments) gives `None`. Syntax errors stop the parse; duplicate keys are reported and the
/// first one is kept. A document past [`MAX_SOURCE_BYTES`], [`MAX_NODES`] or [`MAX_DEPTH`] is
/// refused as soon as it is, so that no file can make a check use more than a few megabytes.
pub fn parse(
    source: &str,
    file: FileId,
    includes: &mut dyn Includes,
) -> (Option<Node>, Vec<SyntaxProblem>) {
    if source.len() > MAX_SOURCE_BYTES {
        let problem = SyntaxProblem {
            span: Span::file_start(file),
            message: format!(
                "this file is {} bytes, more than the {MAX_SOURCE_BYTES} bytes a configuration file may hold",
                source.len()
            ),
            help: Some("keep only the configuration in it".into()),
        };
        return (None, vec![problem]);
    }
    let mut builder = TreeBuilder::new(file, includes);
    for item in Parser::new_from_str(source) {
        match item {
            Ok((event, span)) => {
                if builder.on_event(event, span) {
                    break;
                }
            }
            Err(error) => {
                let mark = error.marker();
                let at = Span {
                    line: mark.line(),
                    column: mark.col() + 1,
                    width: 1,
                    file,
                };
                let problem = explain_syntax_error(source, &builder.stack, at, error.info());
                builder.problems.push(problem);
                return (None, builder.problems);
            }
        }
    }
    let root = builder.root.filter(|_| !builder.unreadable);
    (root, builder.problems)
}

/// The parser's own words name the symptom where it noticed it, which is often a line after the
/// mistake. The two mistakes people make most, a tab in the indentation and a bracket left open,
/// are recognised here and reported where they are.
fn explain_syntax_error(source: &str, open: &[Open], at: Span, info: &str) -> SyntaxProblem {
    // The parser's own limit on nested brackets, met before any of them reached this module.
    if info.contains("recursion limit") {
        return too_deep(at);
    }
    let lines: Vec<&str> = source.lines().collect();
    let line_text = at.line.checked_sub(1).and_then(|i| lines.get(i)).copied();
    let indentation = line_text.map_or("", |l| &l[..l.len() - l.trim_start().len()]);
    if let Some(tab) = indentation.chars().position(|c| c == '\t') {
        return SyntaxProblem {
            span: Span {
                column: tab + 1,
                width: 1,
                ..at
            },
            message: "this line is indented with a tab, which YAML does not allow".into(),
            help: Some("indent with spaces only".into()),
        };
    }
    let bracket = open.iter().rev().find_map(|o| {
        let start = match o {
            Open::Seq(_, start, _) | Open::Map(_, start, _) => *start,
        };
        let line = lines.get(start.line.checked_sub(1)?)?;
        match line.chars().nth(start.column.checked_sub(1)?)? {
            '[' => Some((start, '[', ']')),
            '{' => Some((start, '{', '}')),
            _ => None,
        }
    });
    if let Some((start, opening, closing)) = bracket {
        return SyntaxProblem {
            span: Span { width: 1, ..start },
            message: format!("this is not valid YAML: the `{opening}` here is never closed"),
            help: Some(format!(
                "close it with `{closing}` (the parser gave up at line {}, column {}: {info})",
                at.line, at.column
            )),
        };
    }
    SyntaxProblem {
        span: at,
        message: format!("this is not valid YAML: {info}"),
        help: Some("check the indentation and the quotes around this place".into()),
    }
}

/// How many values a finished value holds, and how many of those were not counted yet (a
/// mapping's values were counted as they came; an alias's copies were not).
struct Size {
    holds: usize,
    new: usize,
}

/// The long form of `!include`, for messages about it.
const INCLUDE_EXAMPLE: &str = "`!include {type: string, path: build.sh}`";

fn too_deep(span: Span) -> SyntaxProblem {
    SyntaxProblem {
        span,
        message: format!("this is nested more than {MAX_DEPTH} mappings and lists deep"),
        help: Some("a Platform.sh configuration needs only a few levels".into()),
    }
}

enum Open {
    Seq(Vec<Node>, Span, usize),
    Map(MapBuilder, Span, usize),
}

#[derive(Default)]
struct MapBuilder {
    entries: Vec<(Key, Node)>,
    pending_key: Option<Node>,
    /// Keys that came from `<<`: the mapping's own keys replace them, wherever they stand.
    merged: Vec<String>,
    /// Tagged `!include`: the mapping says which file to include, and is replaced by it.
    is_include: bool,
}

/// What a tag asks of the value it is on.
#[derive(PartialEq)]
enum TagRole {
    /// No tag, a core-schema tag (`!!str`), or one already reported as unsupported.
    None,
    Include,
}

struct TreeBuilder<'i> {
    file: FileId,
    includes: &'i mut dyn Includes,
    stack: Vec<Open>,
    /// For each open mapping or list, how many values the document had when it began.
    starts: Vec<usize>,
    /// Each anchor's value, and how many values it holds.
    anchors: HashMap<usize, (Node, usize)>,
    /// Values so far, aliases and included files counted with everything they repeat.
    nodes: usize,
    root: Option<Node>,
    problems: Vec<SyntaxProblem>,
    documents: usize,
    /// Set by a tag that could not be given its meaning (an unknown tag, an include that failed):
    /// what the file means is then unknown, and reading it anyway would report what is missing
    /// from it as mistakes of its own.
    unreadable: bool,
}

impl<'i> TreeBuilder<'i> {
    fn new(file: FileId, includes: &'i mut dyn Includes) -> Self {
        TreeBuilder {
            file,
            includes,
            stack: Vec::new(),
            starts: Vec::new(),
            anchors: HashMap::new(),
            nodes: 0,
            root: None,
            problems: Vec::new(),
            documents: 0,
            unreadable: false,
        }
    }

    /// Returns true once the first document is complete: Lockstep reads one document per file.
    fn on_event(&mut self, event: Event<'_>, span: ParserSpan) -> bool {
        let span = Span::from_parser(span, self.file);
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    self.problems.push(SyntaxProblem::new(
                        span,
                        "this file holds more than one YAML document",
                        "remove the second `---` and what follows it",
                    ));
                    return true;
                }
            }
            Event::DocumentEnd => {}
            Event::Scalar(text, style, anchor, tag) => {
                if self.tag_role(tag.as_deref(), span) == TagRole::Include {
                    let include = Include {
                        kind: IncludeType::Yaml,
                        path: text.to_string(),
                        span,
                    };
                    return self.splice(include, anchor);
                }
                let forced_string = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let value = if style == ScalarStyle::Plain && !forced_string {
                    resolve_plain(&text)
                } else {
                    Value::Str(text.to_string())
                };
                let node = Node {
                    value,
                    span,
                    raw: Some(text.to_string()),
                    owner: None,
                };
                return self.complete(node, anchor, Size { holds: 1, new: 1 });
            }
            Event::Alias(id) => return self.alias(id, span),
            Event::SequenceStart(anchor, tag) => {
                if self.tag_role(tag.as_deref(), span) == TagRole::Include {
                    self.refuse(SyntaxProblem::new(
                        span,
                        "`!include` is followed by a list",
                        format!("write the file's path after it (`!include app.yaml`), or its type and path ({INCLUDE_EXAMPLE})"),
                    ));
                }
                self.stack.push(Open::Seq(Vec::new(), span, anchor));
                return self.open(span);
            }
            Event::MappingStart(anchor, tag) => {
                let map = MapBuilder {
                    is_include: self.tag_role(tag.as_deref(), span) == TagRole::Include,
                    ..MapBuilder::default()
                };
                self.stack.push(Open::Map(map, span, anchor));
                return self.open(span);
            }
            Event::SequenceEnd => {
                if let Some(Open::Seq(items, start, anchor)) = self.stack.pop() {
                    let node = Node {
                        value: Value::Seq(items),
                        span: start,
                        raw: None,
                        owner: None,
                    };
                    let size = self.closed_size();
                    return self.complete(node, anchor, size);
                }
            }
            Event::MappingEnd => {
                if let Some(Open::Map(map, start, anchor)) = self.stack.pop() {
                    let size = self.closed_size();
                    if map.is_include {
                        return match self.include_of(map.entries, start) {
                            Some(include) => self.splice(include, anchor),
                            None => self.complete(Node::null(start), anchor, size),
                        };
                    }
                    let node = Node {
                        value: Value::Map(map.entries),
                        span: start,
                        raw: None,
                        owner: None,
                    };
                    return self.complete(node, anchor, size);
                }
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
        false
    }

    fn alias(&mut self, id: usize, span: Span) -> bool {
        let (node, size) = match self.anchors.get(&id) {
            Some((target, size)) => {
                // Counted before it is copied: the copy is what would exhaust memory.
                if self.nodes + size > MAX_NODES {
                    return self.refuse_size(span);
                }
                (
                    Node {
                        span,
                        ..target.clone()
                    },
                    *size,
                )
            }
            None => (Node::null(span), 1),
        };
        self.complete(
            node,
            0,
            Size {
                holds: size,
                new: size,
            },
        )
    }

    /// Core-schema tags (`!!str`) are understood, and so is `!include`. Platform.sh's `!archive`
    /// would pack a folder into the configuration, which Lockstep does not do: like any other
    /// tag, it must not pass unnoticed.
    fn tag_role(&mut self, tag: Option<&Tag>, span: Span) -> TagRole {
        let Some(tag) = tag.filter(|t| !t.is_yaml_core_schema() && !t.suffix.is_empty()) else {
            return TagRole::None;
        };
        let problem = match tag.suffix.as_str() {
            "include" => return TagRole::Include,
            "archive" => SyntaxProblem::new(
                span,
                format!(
                    "the YAML tag `{tag}` packs a folder into the configuration, which Lockstep does not support"
                ),
                "write the content of the folder's files here instead",
            ),
            _ => SyntaxProblem::new(span, format!("unknown YAML tag `{tag}`"), "remove the tag"),
        };
        self.refuse(problem);
        TagRole::None
    }

    /// A problem that leaves the meaning of the file unknown.
    fn refuse(&mut self, problem: SyntaxProblem) {
        self.unreadable = true;
        self.problems.push(problem);
    }

    /// The long form, `!include {type: string, path: build.sh}`; `None` when it is wrong (that
    /// is reported).
    fn include_of(&mut self, entries: Vec<(Key, Node)>, span: Span) -> Option<Include> {
        // `None` once a wrong type is reported.
        let mut kind = Some(IncludeType::Yaml);
        // `None` when there is no `path`; `Some(None)` when it is wrong (that is reported).
        let mut path = None;
        // An unknown key is most often the path misspelt: saying it is missing too would repeat.
        let mut unknown_key = false;
        for (key, value) in entries {
            match key.name.as_str() {
                "type" => kind = self.include_type(&value),
                "path" => path = Some(self.include_path(value)),
                other => {
                    let help = match suggest(other, ["type", "path"]) {
                        Some(near) => format!("did you mean `{near}`?"),
                        None => format!(
                            "an `!include` takes `type` and `path`, as in {INCLUDE_EXAMPLE}"
                        ),
                    };
                    unknown_key = true;
                    self.refuse(SyntaxProblem::new(
                        key.span,
                        format!("unknown key `{other}` in `!include`"),
                        help,
                    ));
                }
            }
        }
        if path.is_none() && !unknown_key {
            self.refuse(SyntaxProblem::new(
                span,
                "this `!include` has no `path`",
                format!("name the file to include, as in {INCLUDE_EXAMPLE}"),
            ));
        }
        let (path, span) = path.flatten()?;
        Some(Include {
            kind: kind?,
            path,
            span,
        })
    }

    fn include_type(&mut self, value: &Node) -> Option<IncludeType> {
        let problem = match value.scalar_text() {
            Some("yaml") => return Some(IncludeType::Yaml),
            Some("string") => return Some(IncludeType::String),
            Some("binary") => return Some(IncludeType::Binary),
            Some("archive") => SyntaxProblem::new(
                value.span,
                "`!include` of `type: archive` packs a folder into the configuration, which Lockstep does not support",
                "write the content of the folder's files here instead",
            ),
            _ => SyntaxProblem::new(
                value.span,
                format!("`!include` type is {}", value.describe()),
                "write `yaml` (the default), `string` or `binary`",
            ),
        };
        self.refuse(problem);
        None
    }

    fn include_path(&mut self, value: Node) -> Option<(String, Span)> {
        if let Some(path) = value.scalar_text() {
            return Some((path.to_owned(), value.span));
        }
        self.refuse(SyntaxProblem::new(
            value.span,
            format!("`!include` path is {}", value.describe()),
            "write the path of the file to include",
        ));
        None
    }

    /// Puts what `include` names in place of the tag.
    fn splice(&mut self, include: Include, anchor: usize) -> bool {
        let (value, problems) = self.includes.include(&include);
        self.problems.extend(problems);
        let Some(node) = value else {
            self.unreadable = true;
            return self.complete(Node::null(include.span), anchor, Size { holds: 1, new: 1 });
        };
        let size = node.count();
        // Refused before it is placed, and the parse stops: each further include of a file would
        // copy it again.
        if self.nodes + size > MAX_NODES {
            self.refuse(SyntaxProblem::new(
                include.span,
                format!("with what it includes, this file stands for more than {MAX_NODES} values"),
                "include fewer files, or smaller ones",
            ));
            return true;
        }
        self.complete(
            node,
            anchor,
            Size {
                holds: size,
                new: size,
            },
        )
    }

    /// A mapping or list began; true (stop) when that nests too deep.
    fn open(&mut self, span: Span) -> bool {
        self.starts.push(self.nodes);
        if self.stack.len() <= MAX_DEPTH {
            return false;
        }
        self.unreadable = true;
        self.problems.push(too_deep(span));
        true
    }

    /// The mapping or list that just ended: it holds the values counted since it began, and
    /// itself.
    fn closed_size(&mut self) -> Size {
        let start = self.starts.pop().unwrap_or(self.nodes);
        Size {
            holds: self.nodes - start + 1,
            new: 1,
        }
    }

    /// The document would hold more than [`MAX_NODES`] values: it is refused, and the parse
    /// stops.
    fn refuse_size(&mut self, span: Span) -> bool {
        self.unreadable = true;
        self.problems.push(SyntaxProblem {
            span,
            message: format!(
                "this file stands for more than {MAX_NODES} values: its aliases (`*name`) repeat what they name, again and again"
            ),
            help: Some("write the values out, or use fewer aliases".into()),
        });
        true
    }

    /// Places a finished value in what holds it; true (stop) when the document grows past
    /// [`MAX_NODES`].
    fn complete(&mut self, mut node: Node, anchor: usize, size: Size) -> bool {
        self.nodes += size.new;
        if self.nodes > MAX_NODES {
            return self.refuse_size(node.span);
        }
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), size.holds));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Open::Seq(items, ..)) => {
                node.owner = Some(node.span);
                items.push(node);
            }
            Some(Open::Map(map, ..)) => match map.pending_key.take() {
                None => map.pending_key = Some(node),
                Some(key) => {
                    node.owner = Some(key.span);
                    if let Some(problem) = map.insert(key, node) {
                        self.problems.push(problem);
                    }
                }
            },
        }
        false
    }
}

impl MapBuilder {
    fn insert(&mut self, key: Node, value: Node) -> Option<SyntaxProblem> {
        let Some(name) = key.scalar_text().map(str::to_owned) else {
            return Some(SyntaxProblem {
                span: key.span,
                message: format!("a key must be a plain name, not {}", key.kind()),
                help: None,
            });
        };
        if name == "<<" {
            self.merge(value);
            return None;
        }
        if let Some(at) = self.entries.iter().position(|(k, _)| k.name == name) {
            if let Some(merged) = self.merged.iter().position(|m| *m == name) {
                self.merged.swap_remove(merged);
                self.entries.remove(at);
            } else {
                return Some(SyntaxProblem {
                    span: key.span,
                    message: format!("duplicate key `{name}`"),
                    help: Some(format!(
                        "it is already set on line {}; keep only one of them",
                        self.entries[at].0.span.line
                    )),
                });
            }
        }
        self.entries.push((
            Key {
                name,
                span: key.span,
            },
            value,
        ));
        None
    }

    /// `<<: *base` copies the keys of `base` that the mapping does not set itself.
    fn merge(&mut self, source: Node) {
        let sources = match source.value {
            Value::Seq(items) => items,
            _ => vec![source],
        };
        for source in sources {
            if let Value::Map(merged) = source.value {
                for (key, value) in merged {
                    if !self.entries.iter().any(|(k, _)| k.name == key.name) {
                        self.merged.push(key.name.clone());
                        self.entries.push((key, value));
                    }
                }
            }
        }
    }
}

/// The YAML 1.2 core schema for plain scalars.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Int(i);
    }
    if let Some(octal) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(octal, 8)
    {
        return Value::Int(i);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(i) = text.parse::<i64>()
    {
        return Value::Int(i);
    }
    if looks_like_float(digits)
        && let Ok(f) = text.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::Str(text.to_owned())
}

fn looks_like_float(text: &str) -> bool {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((whole, fraction)) => {
            (!whole.is_empty() || !fraction.is_empty())
                && whole.bytes().all(|b| b.is_ascii_digit())
                && fraction.bytes().all(|b| b.is_ascii_digit())
        }
        None => !mantissa.is_empty() && mantissa.bytes().all(|b| b.is_ascii_digit()),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let digits = e.strip_prefix(['-', '+']).unwrap_or(e);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    });
    mantissa_ok && exponent_ok
}

/// A file read on its own, with no project around it to include from.
#[cfg(test)]
pub(crate) fn parse_alone(source: &str) -> (Option<Node>, Vec<SyntaxProblem>) {
    parse(source, FileId(0), &mut tests::Files::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Supplies included files from a list, the way a check does from `Sources`, and notes what
    /// was asked for. Strings and binaries are named rather than read: reading them is not this
    /// module's.
    #[derive(Default)]
    pub(crate) struct Files {
        texts: Vec<(&'static str, String)>,
        asked: Vec<Include>,
    }

    impl Files {
        fn with(texts: &[(&'static str, &str)]) -> Self {
            Files {
                texts: texts.iter().map(|(p, t)| (*p, t.to_string())).collect(),
                asked: Vec::new(),
            }
        }
    }

    impl Includes for Files {
        fn include(&mut self, include: &Include) -> (Option<Node>, Vec<SyntaxProblem>) {
            self.asked.push(include.clone());
            let named = |what: &str| Node {
                value: Value::Str(format!("{what} of {}", include.path)),
                ..Node::null(include.span)
            };
            match include.kind {
                IncludeType::String => return (Some(named("string")), Vec::new()),
                IncludeType::Binary => return (Some(named("binary")), Vec::new()),
                IncludeType::Yaml => {}
            }
            match self.texts.iter().find(|(path, _)| *path == include.path) {
                Some((_, text)) => parse(&text.clone(), FileId(1), &mut Files::default()),
                None => {
                    let missing = format!("no file `{}`", include.path);
                    (None, vec![SyntaxProblem::new(include.span, missing, "")])
                }
            }
        }
    }

    fn root(source: &str) -> Node {
        let (node, problems) = parse_alone(source);
        assert!(problems.is_empty(), "{problems:?}");
        node.expect("a document")
    }

    /// The "billion laughs": `levels` anchors, each a list of nine aliases of the one before.
    fn alias_bomb(levels: usize) -> String {
        let mut text = String::from("a0: &a0 [\"lol\"]\n");
        for level in 1..=levels {
            let previous = format!("*a{}", level - 1);
            let items = [previous.as_str(); 9].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{items}]\n"));
        }
        text
    }

    #[test]
    fn an_alias_bomb_is_refused_where_it_explodes_before_it_is_expanded() {
        // 12 levels would stand for 9^12 (282 billion) values; it must not be built.
        let text = alias_bomb(12);
        assert!(text.len() < 1400, "{}", text.len());
        let (node, problems) = parse_alone(&text);
        assert!(node.is_none());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .message
                .contains("stands for more than 50000 values"),
            "{problems:?}"
        );
        // The level whose copies pass the budget: 9^5 = 59049 values.
        assert_eq!(problems[0].span.line, 6);
        // A few levels stay well within it.
        assert!(parse_alone(&alias_bomb(3)).0.is_some());
    }

    #[test]
    fn nesting_past_the_limit_is_refused_where_it_passes_it() {
        // In brackets, the parser's own limit meets it first; indented, this module's.
        let brackets = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        let indented: String = (0..100)
            .map(|depth| format!("{}k{depth}:\n", " ".repeat(depth)))
            .collect();
        for (deep, line) in [(brackets, 1), (indented, 65)] {
            let (node, problems) = parse_alone(&deep);
            assert!(node.is_none());
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].message.contains("nested more than 64"),
                "{problems:?}"
            );
            assert_eq!(problems[0].span.line, line);
        }
    }

    #[test]
    fn a_file_past_the_size_limit_is_refused_unread() {
        let big = format!("a: \"{}\"\n", "x".repeat(MAX_SOURCE_BYTES));
        let (node, problems) = parse_alone(&big);
        assert!(node.is_none());
        assert!(problems[0].message.contains("more than the 1048576 bytes"));
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        let node = root("a: 1\nb: 1.5\nc: true\nd: ~\ne: '1'\nf: 1.10\ng: hello\n");
        let Value::Map(entries) = node.value else {
            panic!("not a map")
        };
        let values: Vec<_> = entries.iter().map(|(_, v)| v.value.clone()).collect();
        assert_eq!(
            values,
            vec![
                Value::Int(1),
                Value::Float(1.5),
                Value::Bool(true),
                Value::Null,
                Value::Str("1".into()),
                Value::Float(1.1),
                Value::Str("hello".into()),
            ]
        );
        assert_eq!(entries[5].1.scalar_text(), Some("1.10"));
    }

    #[test]
    fn keys_and_values_know_their_place() {
        let node = root("top:\n  inner: value\n");
        let Value::Map(entries) = node.value else {
            panic!("not a map")
        };
        let (key, value) = &entries[0];
        assert_eq!((key.span.line, key.span.column, key.span.width), (1, 1, 3));
        let Value::Map(inner) = &value.value else {
            panic!("not a map")
        };
        assert_eq!((inner[0].0.span.line, inner[0].0.span.column), (2, 3));
        assert_eq!((inner[0].1.span.line, inner[0].1.span.column), (2, 10));
    }

    #[test]
    fn duplicate_keys_are_reported_with_both_lines() {
        let (_, problems) = parse_alone("a: 1\nb: 2\na: 3\n");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].span.line, 3);
        assert!(problems[0].help.as_deref().unwrap().contains("line 1"));
    }

    #[test]
    fn aliases_and_merge_keys_expand() {
        let node = root("base: &b\n  x: 1\n  y: 2\nderived:\n  <<: *b\n  y: 3\n");
        let derived = &node.to_json()["derived"];
        assert_eq!(derived, &serde_json::json!({"x": 1, "y": 3}));
    }

    #[test]
    fn syntax_errors_name_their_place() {
        let (node, problems) = parse_alone("a: [1, 2\nb: 3\n");
        assert!(node.is_none());
        assert_eq!(problems.len(), 1);
        assert!(problems[0].span.line >= 1);
    }

    #[test]
    fn values_know_the_key_that_holds_them() {
        let node = root("web:\n  commands:\n");
        let Value::Map(entries) = node.value else {
            panic!("not a map")
        };
        let commands = &entries[0].1;
        assert_eq!(commands.owner.map(|s| (s.line, s.column)), Some((1, 1)));
        assert_eq!(node.owner, None);
    }

    #[test]
    fn tabs_and_open_brackets_are_reported_where_they_are() {
        let (_, tab) = parse_alone("web:\n\tcommands: x\n");
        assert_eq!((tab[0].span.line, tab[0].span.column), (2, 1));
        assert!(tab[0].message.contains("tab"));
        let (_, bracket) = parse_alone("a:\n  b: [1, 2\n  c: 3\n");
        assert_eq!((bracket[0].span.line, bracket[0].span.column), (2, 6));
        assert!(bracket[0].message.contains("`[`"));
    }

    #[test]
    fn core_schema_tags_are_understood() {
        let (node, problems) = parse_alone("a: !!str 1\n");
        assert!(problems.is_empty());
        assert_eq!(node.unwrap().to_json()["a"], "1");
    }

    #[test]
    fn both_forms_of_include_are_replaced_by_what_they_name() {
        let mut files = Files::with(&[("app.yaml", "name: x\n")]);
        let source = "app: !include app.yaml\nhooks:\n  build: !include {type: string, path: build.sh}\n  deploy: !include\n    type: binary\n    path: logo.png\n";
        let (node, problems) = parse(source, FileId(0), &mut files);
        assert!(problems.is_empty(), "{problems:?}");
        let node = node.expect("a document");
        assert_eq!(
            node.to_json(),
            serde_json::json!({
                "app": {"name": "x"},
                "hooks": {"build": "string of build.sh", "deploy": "binary of logo.png"},
            })
        );
        let asked: Vec<_> = files
            .asked
            .iter()
            .map(|i| (i.kind, i.path.as_str(), i.span.line, i.span.column))
            .collect();
        assert_eq!(
            asked,
            [
                (IncludeType::Yaml, "app.yaml", 1, 6),
                (IncludeType::String, "build.sh", 3, 40),
                (IncludeType::Binary, "logo.png", 6, 11),
            ]
        );
        // What came from the included file says so, and is held by the key that included it.
        let Value::Map(entries) = &node.value else {
            panic!("not a map")
        };
        let app = &entries[0].1;
        assert_eq!(app.span.file, FileId(1));
        assert_eq!(app.owner.map(|o| (o.file, o.line)), Some((FileId(0), 1)));
    }

    #[test]
    fn a_failed_include_leaves_the_file_unread_with_its_reason() {
        let (node, problems) = parse_alone("name: app\ntype: !include missing.yaml\n");
        assert_eq!(node, None);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].message, "no file `missing.yaml`");
        assert_eq!((problems[0].span.line, problems[0].span.column), (2, 7));
    }

    #[test]
    fn malformed_includes_and_other_tags_are_reported_where_written() {
        let source = "a: !include {type: archive, path: conf}\nb: !include {type: yml, path: x}\nc: !include {type: string, paht: x}\nd: !include {type: string}\ne: !include [x]\nf: !archive conf\ng: !custom 1\nh: !include {path: [x]}\n";
        let mut files = Files::with(&[]);
        let (node, problems) = parse(source, FileId(0), &mut files);
        assert_eq!(node, None);
        assert!(files.asked.is_empty(), "{:?}", files.asked);
        let found: Vec<(usize, &str)> = problems
            .iter()
            .map(|p| (p.span.line, p.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    1,
                    "`!include` of `type: archive` packs a folder into the configuration, which Lockstep does not support"
                ),
                (2, "`!include` type is the text `yml`"),
                (3, "unknown key `paht` in `!include`"),
                (4, "this `!include` has no `path`"),
                (5, "`!include` is followed by a list"),
                (
                    6,
                    "the YAML tag `!archive` packs a folder into the configuration, which Lockstep does not support"
                ),
                (7, "unknown YAML tag `!custom`"),
                (8, "`!include` path is a list"),
            ]
        );
        assert_eq!(problems[2].help.as_deref(), Some("did you mean `path`?"));
    }

    #[test]
    fn what_an_include_adds_counts_against_the_value_budget() {
        let list = format!("[{}]\n", vec!["0"; 30_000].join(", "));
        let mut files = Files::with(&[("big.yaml", list.as_str())]);
        let (node, problems) = parse(
            "a: !include big.yaml\nb: !include big.yaml\n",
            FileId(0),
            &mut files,
        );
        assert_eq!(node, None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].span.line, 2);
        assert!(
            problems[0]
                .message
                .contains("stands for more than 50000 values"),
            "{problems:?}"
        );
    }

    #[test]
    fn empty_and_comment_only_documents_are_none() {
        assert_eq!(parse_alone("").0, None);
        assert_eq!(parse_alone("# nothing here\n").0, None);
    }
}
