//! The built-in policy library, embedded from `policies/*.ron` at build time,
//! so that `cfg` works with no files on disk.

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// The policy `cfg sample` uses when none is given.
pub const DEFAULT: &str = "cfg";

/// The names of the built-in policies, sorted.
pub fn names() -> Vec<&'static str> {
    EMBEDDED.iter().map(|(n, _)| *n).collect()
}

/// The RON text of a built-in policy.
pub fn source(name: &str) -> Option<&'static str> {
    EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}
