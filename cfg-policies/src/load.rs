//! Reading policy text: RON with `deny_unknown_fields`, then validation.

use crate::error::{ErrorKind, LoadError, PolicyError, Warning};
use crate::library;
use crate::validate::validate;
use cfg_core::expr::Policy;
use ron::extensions::Extensions;
use std::path::Path;

/// A policy that parsed and validated, with its warnings.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The policy.
    pub policy: Policy,
    /// Where it came from (`path` or `builtin:NAME`).
    pub origin: String,
    /// The text it was read from.
    pub source: String,
    /// Non-fatal findings (unused branches...).
    pub warnings: Vec<Warning>,
}

/// Parses and validates policy text. `origin` is used in messages.
pub fn parse(source: &str, origin: &str) -> Result<Loaded, PolicyError> {
    let options = ron::Options::default().with_default_extension(Extensions::IMPLICIT_SOME);
    let policy: Policy = options.from_str(source).map_err(|e| PolicyError {
        origin: origin.to_string(),
        line: e.span.start.line.max(1),
        col: e.span.start.col.max(1),
        message: syntax_message(&e.code),
        kind: ErrorKind::Syntax,
    })?;
    let warnings = validate(&policy, source, origin)?;
    Ok(Loaded { policy, origin: origin.to_string(), source: source.to_string(), warnings })
}

fn syntax_message(code: &ron::Error) -> String {
    let text = code.to_string();
    match code {
        ron::Error::Eof => {
            "unexpected end of file: expected a policy `Policy(name: ..., branches: {...}, outputs: {...})`".into()
        }
        _ => text,
    }
}

/// Reads and parses a policy file.
pub fn load_file(path: &Path) -> Result<Loaded, LoadError> {
    let shown = path.display().to_string();
    if path.is_dir() {
        return Err(LoadError::Directory(shown));
    }
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io { path: shown.clone(), source })?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let good = std::str::from_utf8(good).unwrap_or("");
            let line = good.matches('\n').count() + 1;
            let col = good.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return Err(PolicyError {
                origin: shown,
                line,
                col,
                message: format!(
                    "the file is not UTF-8 text (invalid byte at offset {}); expected a RON policy",
                    good.len()
                ),
                kind: ErrorKind::Syntax,
            }
            .into());
        }
    };
    Ok(parse(&text, &shown)?)
}

/// Loads `arg` as a file path when one exists there, else as a built-in name.
pub fn resolve(arg: &str) -> Result<Loaded, LoadError> {
    let path = Path::new(arg);
    if path.exists() {
        return load_file(path);
    }
    if let Some(source) = library::source(arg) {
        return Ok(parse(source, &format!("builtin:{arg}"))?);
    }
    if arg.ends_with(".ron") || arg.contains('/') || arg.contains('\\') {
        return Err(LoadError::Io {
            path: arg.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    Err(LoadError::NotFound(arg.to_string()))
}
