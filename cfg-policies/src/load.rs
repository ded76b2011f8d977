//! Reading policy text: RON with `deny_unknown_fields`, then validation.

use crate::error::{ErrorKind, LoadError, PolicyError, Warning};
use crate::library;
use crate::locate::Locator;
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
    let policy: Policy = options.from_str(source).map_err(|e| syntax_error(source, origin, &e))?;
    let warnings = validate(&policy, source, origin)?;
    Ok(Loaded { policy, origin: origin.to_string(), source: source.to_string(), warnings })
}

const EXPECTED_POLICY: &str = "expected `Policy(name: ..., branches: {...}, outputs: {...})`";

/// Turns RON's error into a positioned message that says what was expected.
fn syntax_error(source: &str, origin: &str, e: &ron::error::SpannedError) -> PolicyError {
    let loc = Locator::new(source);
    let (mut line, mut col) = (e.span.start.line.max(1), e.span.start.col.max(1));
    let unclosed_comment = matches!(e.code, ron::Error::UnclosedBlockComment | ron::Error::UnclosedLineComment);
    let message = if loc.tokens().is_empty() && !unclosed_comment {
        (line, col) = (1, 1);
        format!("the file holds no policy (it is empty or only comments): {EXPECTED_POLICY}")
    } else {
        // RON sometimes points at the blank before the offending token.
        if char_at(source, line, col).is_none_or(|c| c.is_whitespace() || c == '/') {
            (line, col) = loc.next_token(line, col).unwrap_or((line, col));
        }
        let mut message = syntax_message(&e.code, source, line, col);
        // An error on the last token of a text with open brackets: likely cut short.
        let open = loc.unclosed_brackets();
        let after = loc.tokens().iter().filter(|t| (t.line, t.col) >= (line, col)).count();
        if open > 0 && after <= 1 && !matches!(e.code, ron::Error::Eof) && !unclosed_comment {
            message += &format!(" (the file ends with {open} unclosed bracket(s): is it cut short?)");
        }
        if let Some((l, c)) = loc.multiline_string_before(line, col) {
            message +=
                &format!(" (the string opened at {l}:{c} runs over several lines: is its closing quote missing?)");
        }
        message
    };
    PolicyError { origin: origin.to_string(), line, col, message, kind: ErrorKind::Syntax }
}

fn syntax_message(code: &ron::Error, source: &str, line: usize, col: usize) -> String {
    match code {
        ron::Error::Eof => format!("unexpected end of file: the policy is incomplete; {EXPECTED_POLICY}"),
        ron::Error::TrailingCharacters => {
            "unexpected text after the end of the policy: a file holds exactly one `Policy(...)`".into()
        }
        ron::Error::ExpectedComma if starts_fraction(source, line, col) => {
            "expected a whole number here, found a fraction".into()
        }
        ron::Error::ExpectedComma => "expected `,` or a closing bracket".into(),
        ron::Error::ExpectedString => "expected a quoted string (names and map keys are written \"like_this\")".into(),
        ron::Error::IntegerOutOfBounds => {
            "integer out of range for this field (counts and step indices are whole numbers ≥ 0)".into()
        }
        ron::Error::MissingStructField { field, outer } => match outer {
            Some(outer) => format!("missing field `{field}` in `{outer}`"),
            None => format!("missing field `{field}`"),
        },
        _ => code.to_string(),
    }
}

/// The character at a 1-based line and column, if there is one.
fn char_at(source: &str, line: usize, col: usize) -> Option<char> {
    source.split('\n').nth(line - 1)?.chars().nth(col - 1)
}

/// Whether the text at the position continues a number with a fraction or exponent
/// (`0.5` read as the integer `0` followed by `.5`).
fn starts_fraction(source: &str, line: usize, col: usize) -> bool {
    let before = col.checked_sub(2).and_then(|c| source.split('\n').nth(line - 1)?.chars().nth(c));
    let here = char_at(source, line, col);
    before.is_some_and(|c| c.is_ascii_digit()) && matches!(here, Some('.' | 'e' | 'E'))
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

/// Whether `arg` names a policy file rather than a built-in policy: it
/// contains a path separator (`/`, or `\\` on Windows) or ends in `.ron`.
/// Everything else is a library name, whatever the current folder holds, so a
/// file or folder called like a built-in policy never shadows it; write
/// `./NAME` to load a file without the extension.
pub fn is_path(arg: &str) -> bool {
    arg.contains('/') || arg.contains(std::path::MAIN_SEPARATOR) || arg.ends_with(".ron")
}

/// Loads `arg`: a policy file when [`is_path`] says it is a path, else the
/// built-in policy of that name. The same rule holds in every subcommand.
pub fn resolve(arg: &str) -> Result<Loaded, LoadError> {
    if is_path(arg) {
        let path = Path::new(arg);
        if !path.exists() {
            return Err(LoadError::Io {
                path: arg.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        return load_file(path);
    }
    match library::source(arg) {
        Some(source) => Ok(parse(source, &format!("builtin:{arg}"))?),
        None => Err(LoadError::NotFound(arg.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> PolicyError {
        parse(text, "t").expect_err("should fail")
    }

    #[test]
    fn truncated_text_says_brackets_are_open() {
        let e = error(
            "Policy(name: \"x\", branches: {\"c\": (prompt: Positive)}, outputs: {\"o\": (space: Eps, guidance: R",
        );
        assert!(e.message.contains("3 unclosed bracket(s)"), "{e}");
    }

    #[test]
    fn names_and_paths_never_mix() {
        for path in ["./cfg", "my.ron", "dir/apg", "/abs/x"] {
            assert!(is_path(path), "{path}");
        }
        for name in ["cfg", "apg", "skip_layer", "cfg.r"] {
            assert!(!is_path(name), "{name}");
        }
        // A library name resolves to the library whatever the current folder holds.
        assert_eq!(resolve("apg").expect("builtin").origin, "builtin:apg");
        let e = resolve("nosuch").unwrap_err().to_string();
        assert!(e.contains("not a built-in policy") && e.contains("./nosuch.ron"), "{e}");
    }

    #[test]
    fn empty_text_has_no_policy() {
        for text in ["", "  \n", "// only\n/* comments */"] {
            let e = error(text);
            assert_eq!((e.line, e.col), (1, 1));
            assert!(e.message.contains("no policy"), "{e}");
        }
    }
}
