//! Output files: checked before a run starts (so a long run is never lost at
//! the end), and written through a temporary file renamed into place.

use crate::error::CliError;
use std::path::{Path, PathBuf};

/// What an output file holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A PNG image (the only image format `cfg` writes).
    Png,
    /// A safetensors file.
    Tensors,
}

/// The folder a file goes into (`.` for a bare name).
pub fn folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Checks that `path` (given with `flag`) can be written: not a folder, its
/// folder exists and is writable, and an image has a supported extension.
pub fn check(flag: &str, path: &Path, kind: Kind) -> Result<(), CliError> {
    let shown = path.display();
    if path.is_dir() {
        return Err(CliError(format!("{flag} {shown}: is a folder, expected a file name")));
    }
    if kind == Kind::Png {
        let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase());
        if ext.as_deref() != Some("png") {
            let found = match &ext {
                Some(e) => format!("`.{e}`"),
                None => "no extension".to_string(),
            };
            return Err(CliError(format!("{flag} {shown}: unsupported image format ({found}): expected a .png file")));
        }
    }
    let dir = folder(path);
    if !dir.is_dir() {
        return Err(CliError(format!("{flag} {shown}: the folder {} does not exist", dir.display())));
    }
    tempfile::Builder::new()
        .prefix(".cfg-probe-")
        .tempfile_in(&dir)
        .map(drop)
        .map_err(|e| CliError(format!("{flag} {shown}: cannot write into the folder {}: {}", dir.display(), plain(&e))))
}

/// An OS error without the path tempfile appends to it.
pub fn plain(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => e.kind().to_string(),
    }
}

/// Writes through a temporary file in the same folder, renamed into place
/// only on success (a failure leaves no partial file).
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<(), String>) -> Result<(), CliError> {
    let dir = folder(path);
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(".cfg-")
        .suffix(&ext)
        .tempfile_in(&dir)
        .map_err(|e| CliError(format!("{}: {e}", dir.display())))?;
    write(tmp.path()).map_err(|e| CliError(format!("{}: {e}", path.display())))?;
    let file = tmp.persist(path).map_err(|e| CliError(format!("{}: {}", path.display(), e.error)))?;
    // Temporary files are private; a result is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| CliError(format!("{}: {e}", path.display())))?;
    }
    drop(file);
    Ok(())
}
