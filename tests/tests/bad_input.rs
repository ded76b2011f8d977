//! The bad-input corpus: every file in `tests/corpus/bad` fails to load, at the
//! line and column its first line states (`// expect: LINE:COL MESSAGE`) and
//! with that message. Files that cannot hold a comment (the empty file) keep
//! their expectation in `tests/corpus/bad/expected.txt`.
//!
//! The warning corpus in `tests/corpus/warn` loads, and each
//! `// expect-warning: LINE:COL MESSAGE` line names one warning, in order.

use cfg_policies::{load_file, LoadError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where an error or warning should be, and a part of its message.
#[derive(Debug, Clone, PartialEq)]
struct Expect {
    line: usize,
    col: usize,
    message: String,
}

/// Reads `LINE:COL MESSAGE`.
fn parse_expect(text: &str) -> Expect {
    let (pos, message) = text.trim().split_once(' ').unwrap_or_else(|| panic!("`{text}`: expected LINE:COL MESSAGE"));
    let (line, col) = pos.split_once(':').unwrap_or_else(|| panic!("`{pos}`: expected LINE:COL"));
    Expect {
        line: line.parse().expect("line is a number"),
        col: col.parse().expect("column is a number"),
        message: message.trim().to_string(),
    }
}

fn corpus(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(dir)
}

fn ron_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("corpus directory exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "ron"))
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name().expect("a file").to_string_lossy().into_owned()
}

/// The side manifest: file name → expectation.
fn manifest(dir: &Path) -> BTreeMap<String, Expect> {
    let text = std::fs::read_to_string(dir.join("expected.txt")).expect("expected.txt exists");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, rest) = l.split_once(' ').expect("NAME LINE:COL MESSAGE");
            (name.to_string(), parse_expect(rest))
        })
        .collect()
}

fn bad_expectation(path: &Path, manifest: &BTreeMap<String, Expect>) -> Expect {
    if let Some(e) = manifest.get(&file_name(path)) {
        return e.clone();
    }
    let text = std::fs::read_to_string(path).expect("corpus files are UTF-8");
    let first = text.lines().next().unwrap_or_default();
    let rest = first
        .strip_prefix("// expect:")
        .unwrap_or_else(|| panic!("{}: first line must be `// expect: LINE:COL MESSAGE`", path.display()));
    parse_expect(rest)
}

#[test]
fn every_bad_policy_fails_where_it_says() {
    let dir = corpus("bad");
    let manifest = manifest(&dir);
    let files = ron_files(&dir);
    assert!(files.len() >= 40, "the corpus holds only {} files", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let name = file_name(path);
        let want = bad_expectation(path, &manifest);
        match load_file(path) {
            Ok(_) => failures.push(format!("{name}: loaded, but should fail at {}:{}", want.line, want.col)),
            Err(LoadError::Policy(e)) => {
                if (e.line, e.col) != (want.line, want.col) || !e.message.contains(&want.message) {
                    failures.push(format!(
                        "{name}: expected {}:{} `{}`, got {}:{} `{}`",
                        want.line, want.col, want.message, e.line, e.col, e.message
                    ));
                }
                let shown = e.to_string();
                let prefix = format!("{}:{}:{}: ", path.display(), e.line, e.col);
                if !shown.starts_with(&prefix) {
                    failures.push(format!("{name}: displayed as `{shown}`, expected it to start with `{prefix}`"));
                }
            }
            Err(other) => failures.push(format!("{name}: expected a policy error, got `{other}`")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files disagree:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn manifest_names_only_existing_files() {
    let dir = corpus("bad");
    for name in manifest(&dir).keys() {
        assert!(dir.join(name).is_file(), "expected.txt names {name}, which is not in the corpus");
    }
}

#[test]
fn warnings_point_at_the_declaration() {
    let files = ron_files(&corpus("warn"));
    assert!(!files.is_empty());
    for path in &files {
        let text = std::fs::read_to_string(path).expect("corpus files are UTF-8");
        let want: Vec<Expect> =
            text.lines().filter_map(|l| l.strip_prefix("// expect-warning:")).map(parse_expect).collect();
        assert!(!want.is_empty(), "{}: no `// expect-warning:` line", path.display());
        let loaded = load_file(path).unwrap_or_else(|e| panic!("{e}"));
        let got = &loaded.warnings;
        assert_eq!(got.len(), want.len(), "{}: {got:?}", path.display());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.line, g.col), (w.line, w.col), "{}: {g}", path.display());
            assert!(
                g.message.contains(&w.message),
                "{}: `{}` does not contain `{}`",
                path.display(),
                g.message,
                w.message
            );
            assert!(g.to_string().contains(": warning: "), "{g}");
        }
    }
}
