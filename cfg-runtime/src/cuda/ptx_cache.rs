//! Compiled PTX kept on disk between processes.
//!
//! NVRTC takes 15–20 s to compile every kernel module for one architecture,
//! so without this each process that starts a CUDA run (`cfg sample`,
//! `cfg selftest`, a Python pipeline) would wait that long. A file is named
//! by the SHA-256 of everything the PTX depends on (source, architecture,
//! compile options, NVRTC version), so a changed kernel or compiler never
//! reads an old file. Files are written to a temporary name and renamed, so
//! processes that compile at once never read a half-written file. The cache
//! is best effort: a file that cannot be read or written is compiled again.
//!
//! The folder is `$CFG_PTX_CACHE` when set (empty, `0` or `off` turns the
//! cache off), else `$XDG_CACHE_HOME/cfg/ptx`, else `~/.cache/cfg/ptx`.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The cache folder, or `None` when the cache is off or there is no home.
pub(crate) fn dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).map(PathBuf::from);
    folder(var("CFG_PTX_CACHE"), var("XDG_CACHE_HOME"), var("HOME"))
}

/// [`dir`] from the values of `CFG_PTX_CACHE`, `XDG_CACHE_HOME` and `HOME`.
fn folder(setting: Option<PathBuf>, xdg_cache: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(v) = setting {
        return (!matches!(v.to_str(), Some("" | "0" | "off"))).then_some(v);
    }
    let set = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
    let base = set(xdg_cache).or_else(|| set(home).map(|h| h.join(".cache")))?;
    Some(base.join("cfg").join("ptx"))
}

/// The file of the PTX whose inputs hash to `digest`.
fn file(dir: &Path, digest: &[u8; 32]) -> PathBuf {
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{hex}.ptx"))
}

/// The PTX kept for `digest`, if a readable file holds it.
pub(crate) fn load(dir: &Path, digest: &[u8; 32]) -> Option<String> {
    std::fs::read_to_string(file(dir, digest)).ok()
}

/// Keeps `ptx` for `digest`; a failure only means the next process compiles again.
pub(crate) fn store(dir: &Path, digest: &[u8; 32], ptx: &str) {
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(ptx.as_bytes())?;
        tmp.persist(file(dir, digest))?;
        Ok(())
    };
    let _ = write();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_ptx_is_loaded_by_its_digest_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(load(dir.path(), &a), None);
        store(dir.path(), &a, ".version 8.0\n");
        assert_eq!(load(dir.path(), &a).as_deref(), Some(".version 8.0\n"));
        assert_eq!(load(dir.path(), &b), None);
        // Only the renamed file remains: no temporary is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_folder_follows_the_setting_then_xdg_then_home() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(folder(p("/c"), p("/x"), p("/h")), p("/c"));
        for off in ["", "0", "off"] {
            assert_eq!(folder(p(off), p("/x"), p("/h")), None, "{off:?}");
        }
        assert_eq!(folder(None, p("/x"), p("/h")), p("/x/cfg/ptx"));
        assert_eq!(folder(None, p(""), p("/h")), p("/h/.cache/cfg/ptx"));
        assert_eq!(folder(None, None, None), None);
    }

    #[test]
    fn a_folder_that_cannot_be_made_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("a-file");
        std::fs::write(&blocked, "").unwrap();
        store(&blocked.join("ptx"), &[0; 32], "x");
        assert_eq!(load(&blocked.join("ptx"), &[0; 32]), None);
    }
}
