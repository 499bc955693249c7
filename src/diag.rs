//! Diagnostics: source files, spans, and the one error type every stage returns.
//!
//! Every failure a user can cause ends here as an [`Error`]: a kind (which the CLI maps to an exit
//! code and the reference cases match on), and one or more diagnostics, each a message with
//! optional labelled spans. Rendering (with line:column and carets) is done by
//! `codespan-reporting` against a [`Sources`] table.

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label as CsLabel};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term;
use std::fmt;

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    pub file: u32,
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(file: u32, start: usize, end: usize) -> Span {
        Span {
            file,
            start: start as u32,
            end: end as u32,
        }
    }
    /// The smallest span covering both (same file assumed).
    pub fn to(self, other: Span) -> Span {
        Span {
            file: self.file,
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// The source texts diagnostics point into.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    files: Vec<(String, String)>,
}

impl Sources {
    pub fn new() -> Sources {
        Sources::default()
    }
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> u32 {
        self.files.push((name.into(), text.into()));
        (self.files.len() - 1) as u32
    }
    pub fn name(&self, file: u32) -> &str {
        self.files
            .get(file as usize)
            .map(|f| f.0.as_str())
            .unwrap_or("<unknown>")
    }
    pub fn text(&self, file: u32) -> &str {
        self.files
            .get(file as usize)
            .map(|f| f.1.as_str())
            .unwrap_or("")
    }
    pub fn slice(&self, span: Span) -> &str {
        self.text(span.file)
            .get(span.start as usize..span.end as usize)
            .unwrap_or("")
    }
}

/// What went wrong, coarsely: the CLI's exit code and the reference cases' error substrings
/// are derived from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The source text does not parse.
    Syntax,
    /// Names, types, indices or recurrences are wrong in a loss definition.
    Check,
    /// An input's shape disagrees with the others or with the declaration.
    Shape,
    /// A data-dependent index or length is outside its valid range.
    Range,
    /// A loss, input or parameter that does not exist.
    Unknown,
    /// A required input was not given.
    Missing,
    /// A gradient was asked of something that has none.
    NotDifferentiable,
    /// A reduction that does not apply.
    Reduction,
    /// A value of the wrong type or dtype (an int input holding 0.5, a bool parameter given 3).
    Type,
    /// Malformed input data: JSON, `.npy`, array literals.
    Data,
    /// A file could not be read or written.
    Io,
    /// A resource limit was hit (documented limits, never a crash).
    Limit,
}

/// One labelled span of a diagnostic.
#[derive(Clone, Debug)]
pub struct Label {
    pub span: Span,
    pub message: String,
    pub primary: bool,
}

/// One message, with the places it points at.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub message: String,
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
}

/// The error every stage returns.
#[derive(Clone, Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub diagnostics: Vec<Diagnostic>,
    /// The message already holds its rendered source excerpts (the sources are gone).
    pub pre_rendered: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            labels: vec![],
            notes: vec![],
        }
    }
    pub fn primary(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: true,
        });
        self
    }
    pub fn secondary(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: false,
        });
        self
    }
    pub fn note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            diagnostics: vec![Diagnostic::new(message)],
            pre_rendered: false,
        }
    }
    pub fn from_diag(kind: ErrorKind, d: Diagnostic) -> Error {
        Error {
            kind,
            diagnostics: vec![d],
            pre_rendered: false,
        }
    }
    /// Adds a note to the (last) diagnostic.
    pub fn with_note(mut self, note: impl Into<String>) -> Error {
        if let Some(d) = self.diagnostics.last_mut() {
            d.notes.push(note.into());
        }
        self
    }
    /// Prefixes the first message, e.g. with the case or loss it happened in.
    pub fn context(mut self, prefix: impl fmt::Display) -> Error {
        if let Some(d) = self.diagnostics.first_mut() {
            d.message = format!("{prefix}: {}", d.message);
        }
        self
    }
    /// The messages only, one per line, without source excerpts.
    pub fn message(&self) -> String {
        self.diagnostics
            .iter()
            .map(|d| d.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }
    /// Renders every diagnostic with file:line:column and carets, without colour.
    pub fn render(&self, sources: &Sources) -> String {
        if self.pre_rendered {
            return format!("{}\n", self.message());
        }
        let mut files = SimpleFiles::new();
        for (name, text) in &sources.files {
            files.add(name.as_str(), text.as_str());
        }
        let config = term::Config::default();
        let mut out = String::new();
        for d in &self.diagnostics {
            let labels = d
                .labels
                .iter()
                .filter(|l| (l.span.file as usize) < sources.files.len())
                .map(|l| {
                    let range = l.span.start as usize..l.span.end as usize;
                    let label = if l.primary {
                        CsLabel::primary(l.span.file as usize, range)
                    } else {
                        CsLabel::secondary(l.span.file as usize, range)
                    };
                    label.with_message(l.message.clone())
                })
                .collect();
            let cs = CsDiagnostic::error()
                .with_message(d.message.clone())
                .with_labels(labels)
                .with_notes(d.notes.clone());
            match term::emit_into_string(&config, &files, &cs) {
                Ok(s) => out.push_str(&s),
                Err(_) => out.push_str(&format!("error: {}\n", d.message)),
            }
        }
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", d.message)?;
            for n in &d.notes {
                write!(f, "\n  note: {n}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// The candidate closest to a misspelt `name` (Damerau-Levenshtein), for "did you mean"
/// notes: within `max` edits and fewer edits than the candidate has characters. Ties break by
/// name, so the answer never depends on the candidates' order.
pub fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    max: usize,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, c)| *d <= max && *d < c.len().max(2))
        .min()
        .map(|(_, c)| c)
}

/// Shorthand constructors.
pub fn err<T>(kind: ErrorKind, message: impl Into<String>) -> Result<T> {
    Err(Error::new(kind, message))
}
