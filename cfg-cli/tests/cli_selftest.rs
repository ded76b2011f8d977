//! `cfg selftest` and `cfg bench` on a machine without CUDA: the CPU table runs
//! and passes; the CUDA commands fail with the clear no-driver message, exit 1.

use std::process::Command;

fn cfg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cfg")).args(args).output().expect("run cfg")
}

fn cuda_present() -> bool {
    // SAFETY: only checks whether the driver library can be loaded.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

#[test]
fn cpu_selftest_passes_every_check() {
    let out = cfg(&["selftest", "--device", "cpu"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with("checks, 0 failed"), "{last}");
    assert!(stdout.contains("APG"), "{stdout}");
}

#[test]
fn cuda_commands_without_a_driver_say_so_and_exit_1() {
    if cuda_present() {
        println!("SKIPPED: a CUDA driver is present; `cfg selftest --device cuda` is the check there");
        return;
    }
    for args in [&["selftest", "--device", "cuda"][..], &["bench", "--device", "cuda"], &["sample", "--device", "cuda"]]
    {
        let out = cfg(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("no CUDA driver found"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
