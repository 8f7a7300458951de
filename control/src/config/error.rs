//! The one error type of config loading: where in the JSON (or which file) and what is wrong.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a config was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The JSON path of the offending value (`inbounds[1].settings.clients[0].id`), or the
    /// file's name when the file itself could not be read or parsed.
    pub path: String,
    /// What sort of problem it is.
    pub kind: ConfigErrorKind,
    /// What is wrong, in words.
    pub message: String,
    /// The file the error was found in, when it is known to come from one file.
    pub file: Option<PathBuf>,
}

/// The sort of problem a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// A file (the config or a certificate) could not be read.
    Io,
    /// The text is not JSON (comments aside).
    Syntax,
    /// A field is unknown, missing, of the wrong type or has a bad value.
    Invalid,
    /// Upstream accepts it but shardray does not serve it yet.
    Unsupported,
}

impl ConfigError {
    /// An invalid value at `path`.
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { path: path.into(), kind: ConfigErrorKind::Invalid, message: message.into(), file: None }
    }

    /// A feature at `path` that shardray does not serve yet; `what` names it.
    pub(crate) fn unsupported(path: impl Into<String>, what: impl fmt::Display) -> Self {
        ConfigError {
            path: path.into(),
            kind: ConfigErrorKind::Unsupported,
            message: format!("{what} is not supported yet"),
            file: None,
        }
    }

    /// A feature at `path` that shardray does not serve yet, with the whole message given.
    pub(crate) fn unsupported_msg(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { path: path.into(), kind: ConfigErrorKind::Unsupported, message: message.into(), file: None }
    }

    /// A file that could not be read; `path` is the JSON path that named it, if any.
    pub(crate) fn io(path: impl Into<String>, file: &Path, err: &std::io::Error) -> Self {
        let path = path.into();
        let message = format!("cannot read {:?}: {}", file.display().to_string(), io_reason(err));
        ConfigError { path, kind: ConfigErrorKind::Io, message, file: None }
    }

    /// Attaches the file the error was found in (kept if one is already set).
    pub(crate) fn in_file(mut self, file: &Path) -> Self {
        if self.file.is_none() && self.path != file.display().to_string() {
            self.file = Some(file.to_path_buf());
        }
        self
    }
}

/// An IO error's text without the trailing `(os error N)`.
fn io_reason(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)?;
        } else {
            write!(f, "{}: {}", self.path, self.message)?;
        }
        if let Some(file) = &self.file {
            write!(f, " (in {})", file.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
