//! `cfg sample` and `cfg plan` end to end.

use std::process::Command;

fn cfg() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cfg"))
}

#[test]
fn a_rank_failure_fails_the_run_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let plot = dir.path().join("x.png");
    let run = cfg()
        .args([
            "sample",
            "--policy",
            "ltx2",
            "--ranks",
            "4",
            "--batch",
            "64",
            "--steps",
            "8",
            "--timeout",
            "5",
            "--inject-fault",
            "2:5",
        ])
        .arg("--out")
        .arg(&out)
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("4 of 4 ranks failed") && stderr.contains("rank 2, step 5"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file, not even a temporary one");
}

#[test]
fn sample_writes_tensors_plot_and_a_summary_identical_across_world_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mut hashes = Vec::new();
    for ranks in ["1", "3"] {
        let out = dir.path().join(format!("s{ranks}.safetensors"));
        let plot = dir.path().join(format!("s{ranks}.png"));
        let run = cfg()
            .args([
                "sample",
                "--deterministic",
                "--batch",
                "96",
                "--steps",
                "6",
                "--ranks",
                ranks,
                "--scale",
                "scale=3",
            ])
            .arg("--out")
            .arg(&out)
            .arg("--plot")
            .arg(&plot)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        for needle in ["time per step", "on the requested class", "mean log-likelihood", "cov err"] {
            assert!(stdout.contains(needle), "{needle}: {stdout}");
        }
        hashes.push(stdout.lines().find(|l| l.starts_with("sha256 ")).unwrap().to_string());
        assert!(std::fs::read(&plot).unwrap().starts_with(b"\x89PNG"));
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("sample").unwrap().shape(), [96, 2]);
    }
    assert_eq!(hashes[0], hashes[1]);
}

#[test]
fn grid_makes_one_plot_with_a_panel_per_value() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("grid.png");
    let run = cfg()
        .args(["sample", "--batch", "48", "--steps", "4", "--grid", "scale=1,4"])
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(String::from_utf8_lossy(&run.stdout).matches("sha256 ").count(), 2);
    assert!(std::fs::metadata(&plot).unwrap().len() > 0);
}

#[test]
fn plan_prints_every_step_with_ranks_idle_and_collective() {
    let run = cfg().args(["plan", "--policy", "skip_layer", "--ranks", "4", "--steps", "20"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let is_row = |l: &&str| {
        let mut words = l.split_whitespace();
        words.next().is_some_and(|w| w.parse::<usize>().is_ok())
            && words.next().is_some_and(|w| w.parse::<f64>().is_ok())
    };
    let rows: Vec<&str> = stdout.lines().filter(is_row).collect();
    assert_eq!(rows.len(), 20, "{stdout}");
    assert!(rows[1].contains("1:[skip]") && rows[1].contains(" 3 "), "{}", rows[1]);
    assert!(rows[10].ends_with("skip"), "{}", rows[10]);
    assert!(stdout.contains("model calls: 43 of 60 (17 saved by windows)"), "{stdout}");
}

#[test]
fn sample_on_cuda_says_when_there_is_no_driver() {
    if cfg_runtime::cuda::driver_available() {
        eprintln!("SKIPPED: libcuda is present; the no-driver message is checked on machines without it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = cfg()
        .args(["sample", "--device", "cuda", "--batch", "16", "--steps", "2"])
        .arg("--plot")
        .arg(dir.path().join("x.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no CUDA driver found"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file without a device");
}

fn png_size(path: &std::path::Path) -> (u32, u32) {
    let b = std::fs::read(path).expect("png written");
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

#[test]
fn set_reaches_operator_parameters_and_changes_the_result() {
    let sha = |extra: &[&str]| {
        let run = cfg()
            .args(["sample", "--policy", "apg", "--steps", "4", "--batch", "32", "--no-plot", "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let doc: serde_json::Value = serde_json::from_slice(&run.stdout).expect("JSON on stdout");
        doc["runs"][0]["sha256"].as_str().expect("a hash").to_string()
    };
    let base = sha(&[]);
    assert_eq!(base, sha(&["--set", "sample.Apg[0].momentum=-0.5"]), "the policy's own value changes nothing");
    assert_ne!(base, sha(&["--set", "Apg.momentum=0"]));
    assert_ne!(base, sha(&["--set", "Apg.eta=1"]));
}

#[test]
fn grid_over_several_axes_prints_a_table_and_plots_every_run_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("grid.png");
    let run = cfg()
        .args(["sample", "--policy", "world_model", "--steps", "3", "--batch", "48", "--grid", "seed=0,1"])
        .args(["--grid", "scale=1,3", "--plot"])
        .arg(&plot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // The table: one row per run, each output's scores.
    assert!(stdout.contains("seed  scale  video on-class %"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("1     3 ")).count(), 1, "{stdout}");
    // 4 runs × 2 outputs, one row per run.
    assert_eq!(png_size(&plot), (2 * 560, 4 * 560));
    // A grid over the policy itself.
    let run = cfg()
        .args(["sample", "--steps", "2", "--batch", "16", "--no-plot", "--grid", "policy=cfg,apg,zero_star"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success() && stdout.contains("== policy=zero_star =="), "{stdout}");
}

#[test]
fn plan_json_shows_each_steps_scales_windows_and_ranks() {
    let run = cfg().args(["plan", "skip_layer", "--json", "--ranks", "5", "--steps", "28"]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&run.stdout).expect("JSON");
    let plan = doc["plan"].as_array().expect("per-step plan");
    assert_eq!(plan.len(), 28);
    let on: Vec<u64> = plan
        .iter()
        .filter(|s| !s["windows_on"].as_array().unwrap().is_empty())
        .map(|s| s["step"].as_u64().unwrap())
        .collect();
    assert_eq!(on, vec![1, 2, 3, 4], "SD3.5's strict window at 28 steps");
    assert_eq!(plan[1]["scales"]["skip_scale"], 2.8);
    assert_eq!(plan[0]["idle"], serde_json::json!([2, 3, 4]));
    assert!(plan[0]["sigma"].as_f64().unwrap() > plan[1]["sigma"].as_f64().unwrap());
    assert_eq!(doc["model_calls"], 60);
}
