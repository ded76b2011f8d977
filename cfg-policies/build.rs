//! Embeds every `policies/*.ron` file into the library, sorted by name.
use std::{env, fs, path::Path};

fn main() {
    // Read at run time: a build script compiled once may run for another checkout.
    let manifest = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("../policies");
    println!("cargo:rerun-if-changed={}", dir.display());
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading the policy library {}: {e}", dir.display()));
    let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "ron"));
    // An empty library would make `cfg sample` fail at run time; fail the build instead.
    assert!(!files.is_empty(), "no policies/*.ron in {}", dir.display());
    files.sort();
    let mut out =
        String::from("/// (file stem, RON text) of each built-in policy.\npub static EMBEDDED: &[(&str, &str)] = &[\n");
    for f in files {
        println!("cargo:rerun-if-changed={}", f.display());
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        let abs = fs::canonicalize(&f).unwrap();
        out += &format!("    ({stem:?}, include_str!({:?})),\n", abs.display().to_string());
    }
    out += "];\n";
    let dest = Path::new(&env::var("OUT_DIR").unwrap()).join("embedded.rs");
    fs::write(dest, out).unwrap();
}
