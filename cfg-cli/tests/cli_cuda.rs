//! The CUDA commands on a CUDA device: the real driver on a GPU machine, or
//! the CUDA stand-in (`scripts/cuda-emu.sh`) that `scripts/test.sh` puts on
//! the library path. Elsewhere they print why they skip (and fail instead
//! under `CFG_REQUIRE_CUDA=1`, which `scripts/test.sh` sets for its CUDA run).

use std::process::Command;

fn cfg(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cfg")).args(args).output().expect("run cfg")
}

/// Whether a CUDA device can be used; prints why not.
fn cuda_device() -> bool {
    let present = cfg_runtime::cuda::device_count().is_ok_and(|n| n > 0);
    if !present {
        let required = std::env::var_os("CFG_REQUIRE_CUDA").is_some_and(|v| v == "1");
        assert!(!required, "CFG_REQUIRE_CUDA=1 but no CUDA device (is the stand-in on LD_LIBRARY_PATH?)");
        eprintln!("SKIPPED: no CUDA device; `scripts/test.sh` runs this on the CUDA stand-in");
    }
    present
}

#[test]
fn selftest_passes_every_row_on_the_cuda_device() {
    if !cuda_device() {
        return;
    }
    let out = cfg(&["selftest", "--device", "cuda", "--size", "small"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with("checks, 0 failed"), "{last}");
    for row in ["(2-pass)", "philox words", "sample", "nccl all-reduce"] {
        assert!(stdout.contains(row), "no `{row}` row:\n{stdout}");
    }
}

/// The final samples of `cfg sample` (safetensors, f32), by output name.
fn samples(device: &str, dir: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let path = dir.join(format!("{device}.safetensors"));
    let plot = dir.join(format!("{device}.png"));
    let out = Command::new(env!("CARGO_BIN_EXE_cfg"))
        .args(["sample", "--device", device, "--ranks", "1", "--batch", "256", "--steps", "12", "--seed", "5"])
        .arg("--out")
        .arg(&path)
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("run cfg");
    assert!(out.status.success(), "{device}: {}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut all: Vec<(String, Vec<f32>)> = file
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let values = t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            (name, values)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

#[test]
fn cuda_sample_matches_the_cpu_sample() {
    if !cuda_device() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (gpu, cpu) = (samples("cuda", dir.path()), samples("cpu", dir.path()));
    assert_eq!(gpu.iter().map(|t| &t.0).collect::<Vec<_>>(), cpu.iter().map(|t| &t.0).collect::<Vec<_>>());
    // Bit-identical, as the README states: same arithmetic, portable transcendentals.
    for ((name, g), (_, c)) in gpu.iter().zip(&cpu) {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let differ = g.iter().zip(c).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert!(bits(g) == bits(c), "{name}: {differ} of {} values differ", c.len());
    }
}

#[test]
fn a_failing_gpu_rank_fails_the_run_naming_it_and_writes_nothing() {
    if !cuda_device() || cfg_runtime::cuda::device_count().unwrap_or(0) < 2 {
        eprintln!("SKIPPED: needs 2 CUDA devices");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let run = Command::new(env!("CARGO_BIN_EXE_cfg"))
        .args(["sample", "--device", "cuda", "--ranks", "2", "--batch", "64", "--steps", "4", "--inject-fault", "1:2"])
        .arg("--out")
        .arg(&out)
        .arg("--plot")
        .arg(dir.path().join("x.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rank 1") && stderr.contains("step 2") && stderr.contains("injected fault"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file after a failed run");
}

#[test]
fn torchrun_variables_make_one_process_one_rank() {
    if !cuda_device() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let digest = |out: std::process::Output| {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout.lines().find(|l| l.starts_with("sha256")).map(str::to_string).unwrap_or_else(|| panic!("{stdout}"))
    };
    let args = ["sample", "--device", "cuda", "--batch", "64", "--steps", "4", "--deterministic", "--no-plot"];
    let single = digest(Command::new(env!("CARGO_BIN_EXE_cfg")).args(args).current_dir(dir.path()).output().unwrap());
    let torchrun = Command::new(env!("CARGO_BIN_EXE_cfg"))
        .args(args)
        .current_dir(dir.path())
        .envs([("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")])
        .env("MASTER_PORT", port.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&torchrun.stdout).into_owned();
    assert!(text.contains("rank 0 of 1 processes (torchrun)"), "{text}");
    assert_eq!(digest(torchrun), single);
}
