//! Messages about a configuration, each tied to a file, line and column, rendered like a
//! compiler's so that a user sees the offending line and what to do about it.

use std::fmt;

use crate::yaml::Span;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file as the user knows it, relative to the project root (`.platform/routes.yaml`).
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub help: Option<String>,
    #[serde(skip)]
    width: usize,
    /// The offending source line, kept so the diagnostic renders without the file at hand.
    #[serde(skip)]
    excerpt: Option<String>,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        writeln!(f, "{label}: {}", self.message)?;
        let gutter = " ".repeat(self.line.to_string().len());
        writeln!(f, "{gutter}--> {}:{}:{}", self.file, self.line, self.column)?;
        if let Some(excerpt) = &self.excerpt {
            writeln!(f, "{gutter} |")?;
            writeln!(f, "{} | {excerpt}", self.line)?;
            let pad = " ".repeat(self.column.saturating_sub(1));
            writeln!(f, "{gutter} | {pad}{}", "^".repeat(self.width.max(1)))?;
        }
        if let Some(help) = &self.help {
            writeln!(f, "{gutter} = help: {help}")?;
        }
        Ok(())
    }
}

/// Collects every diagnostic about one file and the files it includes, so that a check reports
/// all of them at once.
pub struct FileReport<'a> {
    /// The file, then the files it includes, each at the index of its
    /// [`FileId`](crate::yaml::FileId).
    files: Vec<SourceFile<'a>>,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

struct SourceFile<'a> {
    /// The file as the user knows it.
    name: String,
    lines: Vec<&'a str>,
}

impl<'a> SourceFile<'a> {
    fn new(name: String, source: &'a str) -> Self {
        SourceFile {
            name,
            lines: source.lines().collect(),
        }
    }
}

impl<'a> FileReport<'a> {
    pub fn new(file: impl Into<String>, source: &'a str) -> Self {
        FileReport {
            files: vec![SourceFile::new(file.into(), source)],
            diagnostics: Vec::new(),
        }
    }

    /// The file the report is about, as the user knows it.
    pub fn file(&self) -> &str {
        &self.files[0].name
    }

    /// A file that this one includes. Files are added in the order of their
    /// [`FileId`](crate::yaml::FileId)s: spans
    /// in the first added carry `FileId(1)`.
    pub fn include(&mut self, file: impl Into<String>, source: &'a str) {
        self.files.push(SourceFile::new(file.into(), source));
    }

    /// The diagnostics, file by file in the order the files were read, each file's from top to
    /// bottom.
    pub fn into_diagnostics(mut self) -> Vec<Diagnostic> {
        let files = &self.files;
        let order = |d: &Diagnostic| files.iter().position(|f| f.name == d.file);
        self.diagnostics
            .sort_by_key(|d| (order(d), d.line, d.column));
        self.diagnostics
    }

    pub fn error(&mut self, span: Span, message: impl Into<String>, help: Option<String>) {
        self.push(Severity::Error, span, message.into(), help);
    }

    pub fn warning(&mut self, span: Span, message: impl Into<String>, help: Option<String>) {
        self.push(Severity::Warning, span, message.into(), help);
    }

    fn push(&mut self, severity: Severity, span: Span, message: String, help: Option<String>) {
        // Every span is of a file the report was told of; were one not, the problem would still
        // be worth reporting, against the report's own file.
        let file = self.files.get(span.file.0).unwrap_or(&self.files[0]);
        let excerpt = span
            .line
            .checked_sub(1)
            .and_then(|i| file.lines.get(i))
            .map(|line| line.trim_end().to_owned());
        let line = span.line.max(1);
        let column = span.column.max(1);
        let width = excerpt
            .as_ref()
            .map(|text| {
                let available = text.chars().count().saturating_sub(column - 1);
                span.width.min(available).max(1)
            })
            .unwrap_or(1);
        self.diagnostics.push(Diagnostic {
            severity,
            file: file.name.clone(),
            line,
            column,
            message,
            help,
            width,
            excerpt,
        });
    }
}

/// The nearest name among `candidates`, if it is close enough to be a likely misspelling.
pub fn suggest<'c>(name: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let lowered = name.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|candidate| (strsim::damerau_levenshtein(&lowered, candidate), candidate))
        .filter(|(distance, candidate)| {
            *distance <= (candidate.len().max(lowered.len()) / 3).max(1)
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::FileId;

    #[test]
    fn renders_the_line_and_a_caret_under_the_span() {
        let mut report = FileReport::new(".platform.app.yaml", "name: app\nhoks:\n  build: x\n");
        report.error(
            Span {
                line: 2,
                column: 1,
                width: 4,
                file: FileId(0),
            },
            "unknown key `hoks`",
            Some("did you mean `hooks`?".into()),
        );
        let text = report.diagnostics[0].to_string();
        assert_eq!(
            text,
            "error: unknown key `hoks`\n --> .platform.app.yaml:2:1\n  |\n2 | hoks:\n  | ^^^^\n  = help: did you mean `hooks`?\n"
        );
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        let keys = ["hooks", "mounts", "relationships"];
        assert_eq!(suggest("hoks", keys), Some("hooks"));
        assert_eq!(suggest("relationship", keys), Some("relationships"));
        assert_eq!(suggest("Mounts", keys), Some("mounts"));
        assert_eq!(suggest("zzz", keys), None);
    }
}
