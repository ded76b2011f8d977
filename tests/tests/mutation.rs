//! Parser robustness: mutated library policies and random text never panic,
//! and every error they produce points inside the text.
//!
//! The seeds are fixed, so a failure reproduces on every run.

use cfg_core::lower::{lower, Overrides};
use cfg_core::schedule::StepContext;
use cfg_core::state::GuidanceState;
use cfg_policies::{graph, library, parse, PolicyError};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed};

fn config(cases: u32, seed: u64) -> Config {
    Config { cases, rng_seed: RngSeed::Fixed(seed), failure_persistence: None, ..Config::default() }
}

/// Pieces of text that steer mutations towards the parser's interesting states.
const SNIPPETS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "\"",
    "'",
    "\\",
    "/",
    "//",
    "/*",
    "*/",
    "\n",
    " ",
    ".",
    "-",
    "+",
    "e",
    "0",
    "1e999",
    "NaN",
    "inf",
    "-inf",
    "_",
    "r#\"",
    "#",
    "Some(",
    "None",
    "true",
    "Ref(\"",
    "Use(\"",
    "Cfg(",
    "Sum([",
    "Windowed(window: Steps(start: 9, stop: 1), term: ",
    "\"cond\": ",
    "Policy(",
    "é",
    "∞",
    "\u{0}",
    "\r\n",
];

/// One edit of a policy's text.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    Insert(Index, String),
    Replace(Index, char),
    Swap(Index, Index),
    Delete(Index, usize),
    Duplicate(Index, usize, Index),
}

fn text_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(SNIPPETS).prop_map(String::from),
        any::<char>().prop_map(String::from),
        prop::collection::vec(any::<u8>(), 1..6).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), text_piece()).prop_map(|(i, s)| Mutation::Insert(i, s)),
        (any::<Index>(), any::<char>()).prop_map(|(i, c)| Mutation::Replace(i, c)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        (any::<Index>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<Index>(), 1usize..40, any::<Index>()).prop_map(|(i, n, at)| Mutation::Duplicate(i, n, at)),
    ]
}

/// Applies `m` to `text` (as characters, so the result stays valid UTF-8).
fn apply(text: &mut Vec<char>, m: &Mutation) {
    let len = text.len();
    // `Index::index(n)` needs n > 0; an empty text can only grow.
    let at = |i: &Index, n: usize| if n == 0 { 0 } else { i.index(n) };
    match m {
        Mutation::Truncate(i) => text.truncate(at(i, len + 1)),
        Mutation::Insert(i, s) => {
            let p = at(i, len + 1);
            text.splice(p..p, s.chars());
        }
        Mutation::Replace(i, c) if len > 0 => text[at(i, len)] = *c,
        Mutation::Swap(a, b) if len > 0 => text.swap(at(a, len), at(b, len)),
        Mutation::Delete(i, n) => {
            let p = at(i, len + 1);
            text.drain(p..(p + n).min(len));
        }
        Mutation::Duplicate(i, n, to) => {
            let p = at(i, len + 1);
            let span: Vec<char> = text[p..(p + n).min(len)].to_vec();
            let q = at(to, len + 1);
            text.splice(q..q, span);
        }
        _ => {}
    }
}

/// The error's position lies inside the text: on one of its lines (or just
/// past the last), at most one column past the end of that line.
fn check_position(text: &str, e: &PolicyError) -> Result<(), TestCaseError> {
    let lines: Vec<&str> = text.split('\n').collect();
    prop_assert!(e.line >= 1 && e.col >= 1, "position {}:{} is not 1-based: {e}", e.line, e.col);
    prop_assert!(e.line <= lines.len() + 1, "line {} is past the text's {} lines: {e}", e.line, lines.len());
    let width = lines.get(e.line - 1).map_or(0, |l| l.chars().count());
    prop_assert!(e.col <= width + 1, "column {} is past the end of line {} ({width} chars): {e}", e.col, e.line);
    prop_assert!(!e.message.is_empty());
    Ok(())
}

/// Parses `text`; a policy that loads must also build its graph and lower at every step.
fn exercise(text: &str) -> Result<(), TestCaseError> {
    match parse(text, "<mutated>") {
        Err(e) => check_position(text, &e),
        Ok(loaded) => {
            let g = graph::build(&loaded.policy);
            prop_assert!(g.to_dot(&loaded.policy.name).starts_with("digraph"));
            let mut state = GuidanceState::new();
            state.start();
            for step in 0..4 {
                let ctx = StepContext {
                    step,
                    num_steps: 4,
                    sigma: Some(1.0 - step as f64 / 4.0),
                    chunks: cfg_core::schedule::ChunkTimes::NONE,
                };
                // Errors are fine (e.g. a scale that overflows); panics are not.
                let _ = lower(&loaded.policy, &ctx, &state, &Overrides::none());
            }
            Ok(())
        }
    }
}

fn library_texts() -> Vec<&'static str> {
    let texts: Vec<&str> = library::names().into_iter().filter_map(library::source).collect();
    assert!(!texts.is_empty(), "the library is empty");
    texts
}

proptest! {
    #![proptest_config(config(20000, 0x5eed_0001))]

    #[test]
    fn mutated_library_policies_never_panic(
        which in any::<Index>(),
        edits in prop::collection::vec(mutation(), 1..5),
    ) {
        let texts = library_texts();
        let mut text: Vec<char> = texts[which.index(texts.len())].chars().collect();
        for m in &edits {
            apply(&mut text, m);
        }
        exercise(&text.into_iter().collect::<String>())?;
    }
}

proptest! {
    #![proptest_config(config(5000, 0x5eed_0002))]

    #[test]
    fn random_text_never_panics(text in any::<String>()) {
        exercise(&text)?;
    }

    #[test]
    fn random_token_soup_never_panics(pieces in prop::collection::vec(text_piece(), 0..60)) {
        exercise(&pieces.concat())?;
    }
}

#[test]
fn every_library_policy_parses_unmutated() {
    for (name, text) in library::names().into_iter().filter_map(|n| Some((n, library::source(n)?))) {
        parse(text, name).unwrap_or_else(|e| panic!("{e}"));
    }
}
