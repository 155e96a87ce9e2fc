//! One TOML file being loaded, and the problems found in it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml_edit::Document;

use crate::locate::{Position, span_of};

/// One thing wrong with one file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, as it was named to the loader.
    pub file: PathBuf,
    /// Where in the file, when known.
    pub position: Option<Position>,
    /// What is wrong, in a sentence.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                p.line,
                p.column,
                self.reason
            ),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

/// Why profiles or a site could not be loaded. Nothing is ever half-loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or folder could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The files were read but are not valid; every problem found is listed.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

fn display_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl LoadError {
    /// The problems, when the files were readable but invalid.
    pub fn problems(&self) -> &[Problem] {
        match self {
            LoadError::Invalid(p) => p,
            LoadError::Io { .. } => &[],
        }
    }
}

/// A TOML file's name and text, with its spans for locating problems. The gateway's config
/// loader uses it too, so every CitySense file reports problems the same way.
#[derive(Debug)]
pub struct TomlFile {
    pub path: PathBuf,
    pub text: String,
    doc: Option<Document<String>>,
}

impl TomlFile {
    /// Reads a file.
    pub fn read(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::from_text(path, text))
    }

    /// Wraps text already read (or compiled in).
    pub fn from_text(path: &Path, text: String) -> Self {
        let doc = Document::parse(text.clone()).ok();
        TomlFile {
            path: path.to_owned(),
            text,
            doc,
        }
    }

    /// Deserializes the whole file; syntax errors, unknown keys and wrong types come back as
    /// one located problem.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Problem> {
        toml::from_str(&self.text).map_err(|e| Problem {
            file: self.path.clone(),
            position: e.span().map(|s| Position::of_offset(&self.text, s.start)),
            reason: e.message().trim_end().to_owned(),
        })
    }

    /// A problem at the value named by `path` (see [`crate::locate`]).
    pub fn problem(&self, path: &str, reason: impl Into<String>) -> Problem {
        let position = self
            .doc
            .as_ref()
            .and_then(|doc| span_of(doc, path))
            .map(|s| Position::of_offset(&self.text, s.start));
        Problem {
            file: self.path.clone(),
            position,
            reason: reason.into(),
        }
    }
}
