//! `cfg check`, `cfg graph` and `cfg list` as a user runs them: exit codes,
//! positioned messages, and no panic on any input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cfg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cfg")).args(args).output().expect("cfg runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit status 1 with a message on stderr, never a panic (status 101).
fn assert_fails(out: &Output) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stdout: {}\nstderr: {err}", text(&out.stdout));
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.trim().is_empty());
    err
}

fn corpus(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus").join(dir)
}

fn library() -> Vec<&'static str> {
    let names = cfg_policies::library::names();
    assert!(!names.is_empty());
    names
}

#[test]
fn the_whole_library_passes() {
    let out = cfg(&["check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), library().len(), "one line per policy:\n{stdout}");
    for (line, name) in lines.iter().zip(library()) {
        assert!(line.starts_with(&format!("ok builtin:{name}:")), "{line}");
    }
    assert!(!text(&out.stderr).contains("warning"), "the library has no warnings: {}", text(&out.stderr));
}

#[test]
fn library_names_and_files_check_one_by_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    for name in library() {
        assert!(cfg(&["check", name]).status.success(), "{name}");
        let file = root.join(format!("{name}.ron"));
        let out = cfg(&["check", file.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

#[test]
fn unreadable_inputs_exit_1_naming_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let garbage = dir.path().join("garbage.ron");
    std::fs::write(&garbage, [0x00, 0xff, 0xfe, 0x28, 0x9f, 0x80, 0x0a, 0xc3]).expect("write");
    let binary_ok_utf8 = dir.path().join("noise.ron");
    std::fs::write(&binary_ok_utf8, "\u{0}\u{1}P\u{7f}olicy(((\u{2}").expect("write");
    let empty = dir.path().join("empty.ron");
    std::fs::write(&empty, "").expect("write");
    let missing = dir.path().join("missing.ron");
    let cases: [(&Path, &str); 5] = [
        (&garbage, "not UTF-8"),
        (&binary_ok_utf8, ""),
        (&empty, "no policy"),
        (dir.path(), "is a directory"),
        (&missing, "cannot read"),
    ];
    for (path, says) in cases {
        let shown = path.to_str().expect("utf-8 path");
        let err = assert_fails(&cfg(&["check", shown]));
        assert!(err.contains(shown), "{err}");
        assert!(err.contains(says), "`{shown}`: expected `{says}` in {err}");
    }
    // An unknown bare name points at the library.
    let err = assert_fails(&cfg(&["check", "no_such_policy"]));
    assert!(err.contains("no_such_policy") && err.contains("cfg list"), "{err}");
}

/// The `// expect: LINE:COL MESSAGE` header of a corpus file.
fn expectation(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = text.lines().next()?.strip_prefix("// expect: ")?;
    let (pos, message) = rest.split_once(' ')?;
    Some((pos.to_string(), message.to_string()))
}

#[test]
fn bad_corpus_files_print_file_line_col_message() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus("bad"))
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .filter(|p| expectation(p).is_some())
        .collect();
    files.sort();
    assert!(files.len() >= 40);
    let args: Vec<&str> = std::iter::once("check").chain(files.iter().map(|p| p.to_str().expect("utf-8"))).collect();
    let err = assert_fails(&cfg(&args));
    for path in &files {
        let (pos, message) = expectation(path).expect("filtered above");
        let prefix = format!("{}:{pos}: ", path.display());
        let line = err.lines().find(|l| l.starts_with(&prefix));
        let line = line.unwrap_or_else(|| panic!("no line starting with `{prefix}` in:\n{err}"));
        assert!(line.contains(&message), "{line}");
    }
    assert!(err.contains(&format!("{} of {} policies failed", files.len(), files.len())), "{err}");
}

#[test]
fn warnings_go_to_stderr_and_do_not_fail() {
    let file = corpus("warn").join("unused_branch.ron");
    let out = cfg(&["check", file.to_str().expect("utf-8")]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{}:9:9: warning: branch `perturbed`", file.display())), "{err}");
}

#[test]
fn graph_dot_is_well_formed_for_every_policy() {
    for name in library() {
        let out = cfg(&["graph", name, "--format", "dot"]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let dot = text(&out.stdout);
        assert!(dot.starts_with(&format!("digraph \"{name}\" {{\n")), "{dot}");
        assert!(dot.trim_end().ends_with('}'), "{dot}");
        let policy = cfg_policies::resolve(name).expect("loads").policy;
        let mut nodes = Vec::new();
        for line in dot.lines().skip(1).filter(|l| l.trim() != "}" && !l.contains("rankdir")) {
            let line = line.trim();
            assert!(line.ends_with(';'), "{name}: `{line}`");
            if let Some((a, b)) = line.trim_end_matches(';').split_once(" -> ") {
                assert!(nodes.contains(&a.to_string()) && nodes.contains(&b.to_string()), "{name}: `{line}`");
            } else {
                let (id, attrs) = line.split_once(' ').expect("node line");
                assert!(attrs.starts_with("[label=\"") && attrs.ends_with("];"), "{name}: `{line}`");
                nodes.push(id.to_string());
            }
        }
        for b in policy.branches.names() {
            assert!(dot.contains(&format!("label=\"branch {b}\"")), "{name}: branch {b} missing");
        }
        for o in policy.outputs.names() {
            assert!(dot.contains(&format!("label=\"output {o}\"")), "{name}: output {o} missing");
        }
    }
}

#[test]
fn graph_of_a_bad_file_fails_with_its_position() {
    let file = corpus("bad").join("unknown_branch.ron");
    let err = assert_fails(&cfg(&["graph", file.to_str().expect("utf-8"), "--format", "dot"]));
    assert!(err.contains(&format!("{}:15:58: unknown branch", file.display())), "{err}");
}

#[test]
fn list_names_every_policy() {
    let out = cfg(&["list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let firsts: Vec<&str> = stdout.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(firsts, library());
}
