//! `cfg combine` end to end: small safetensors files written here, combined by
//! the binary, and compared with the library's own evaluation of the same steps.

use cfg_core::lower::{lower, Overrides};
use cfg_core::schedule::StepContext;
use cfg_core::state::GuidanceState;
use cfg_core::{cpu, DType, Shape, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Seeded values in [-2, 2) (a 64-bit LCG), so every run writes the same file.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
    }
}

fn write_file(path: &Path, tensors: &BTreeMap<String, Tensor>, metadata: Option<HashMap<String, String>>) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, t)| {
            let view = safetensors::tensor::TensorView::new(st_dtype(t.dtype()), t.shape.0.to_vec(), t.as_bytes());
            (n.clone(), view.expect("valid view"))
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, metadata).expect("serialize")).expect("write input");
}

fn read_file(path: &Path) -> BTreeMap<String, Tensor> {
    let bytes = std::fs::read(path).expect("output exists");
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let dtype = match v.dtype() {
                Dtype::F32 => DType::F32,
                Dtype::F16 => DType::F16,
                Dtype::BF16 => DType::BF16,
                other => panic!("unexpected dtype {other:?}"),
            };
            (name, Tensor::from_bytes(dtype, Shape::new(v.shape()), v.data()).expect("sizes agree"))
        })
        .collect()
}

/// Branch predictions for `steps` steps: `<step>/<branch>` or, with an output
/// name, `<step>/<branch>/<output>`.
fn predictions(
    branches: &[&str],
    outputs: &[(&str, &[usize])],
    steps: usize,
    dtype: DType,
    multi: bool,
) -> BTreeMap<String, Tensor> {
    let mut map = BTreeMap::new();
    let mut seed = 1;
    for step in 0..steps {
        for b in branches {
            for (o, dims) in outputs {
                let shape = Shape::new(dims);
                seed += 1;
                let t = Tensor::from_f32(dtype, shape.clone(), &values(seed, shape.numel()));
                let name = if multi { format!("{step}/{b}/{o}") } else { format!("{step}/{b}") };
                map.insert(name, t);
            }
        }
    }
    map
}

/// What the library computes for the same inputs: every step lowered and
/// evaluated on the CPU with state carried across steps.
fn expected(
    policy: &str,
    inputs: &BTreeMap<String, Tensor>,
    steps: usize,
    sigmas: Option<&[f64]>,
    multi: bool,
) -> BTreeMap<String, Tensor> {
    let policy = cfg_policies::resolve(policy).expect("policy loads").policy;
    let mut state = GuidanceState::new();
    state.start();
    let mut out = BTreeMap::new();
    for step in 0..steps {
        let ctx = StepContext {
            step,
            num_steps: steps,
            sigma: sigmas.map(|s| s[step]),
            chunks: cfg_core::schedule::ChunkTimes::NONE,
        };
        let program = lower(&policy, &ctx, &state, &Overrides::none()).expect("lowers");
        for p in &program.outputs {
            let name = |b: &str| if multi { format!("{step}/{b}/{}", p.output) } else { format!("{step}/{b}") };
            let any = &inputs[&name(policy.branches.names().next().expect("a branch"))];
            let refs: Vec<&Tensor> = p.branches.iter().map(|b| &inputs[&name(b)]).collect();
            let t = cpu::evaluate(p, &refs, any.dtype(), &any.shape, &mut state).expect("evaluates");
            out.insert(format!("{step}/{}", p.output), t);
        }
    }
    out
}

fn cfg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cfg")).args(args).output().expect("cfg runs")
}

fn combine(policy: &str, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["combine", "--policy", policy, "--input"];
    let (i, o) = (input.to_str().expect("utf-8 path"), output.to_str().expect("utf-8 path"));
    args.extend([i, "--output", o]);
    args.extend(extra);
    cfg(&args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "cfg failed: {}{}", text(&out.stdout), text(&out.stderr));
}

/// Fails with exit status 1 and a message, never a panic.
fn assert_fails(out: &Output) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stdout: {}\nstderr: {err}", text(&out.stdout));
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// The files in `dir` other than `keep`.
fn others(dir: &Path, keep: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).expect("dir").map(|e| e.expect("entry").path()).filter(|p| p != keep).collect()
}

fn assert_same_bits(got: &BTreeMap<String, Tensor>, want: &BTreeMap<String, Tensor>) {
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (name, w) in want {
        let g = &got[name];
        assert_eq!(g.dtype(), w.dtype(), "{name}");
        assert_eq!(g.shape, w.shape, "{name}");
        assert_eq!(g.bits(), w.bits(), "{name}");
    }
}

fn round_trip(dtype: DType, tolerance: f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    let inputs = predictions(&["cond", "uncond"], &[("sample", &[2, 4, 8])], 3, dtype, false);
    write_file(&input, &inputs, None);
    let out = combine("cfg", &input, &output, &["--reference"]);
    assert_ok(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("combined 3 steps"), "{stdout}");
    assert_eq!(stdout.matches("relative error").count(), 3, "{stdout}");

    let got = read_file(&output);
    assert_same_bits(&got, &expected("cfg", &inputs, 3, None, false));
    // And against the formula u + 7.5·(c − u) computed in f64 from the same inputs.
    for step in 0..3 {
        let (c, u) = (inputs[&format!("{step}/cond")].to_f32(), inputs[&format!("{step}/uncond")].to_f32());
        let g = got[&format!("{step}/sample")].to_f32();
        for i in 0..c.len() {
            let want = u[i] as f64 + 7.5 * (c[i] as f64 - u[i] as f64);
            assert!((g[i] as f64 - want).abs() <= tolerance * want.abs().max(1.0), "step {step} [{i}]");
        }
    }
    assert_eq!(others(dir.path(), &input), vec![output], "no temporary file is left behind");
}

#[test]
fn round_trip_f32() {
    round_trip(DType::F32, 1e-6);
}

#[test]
fn round_trip_bf16() {
    // bf16 keeps 8 significant bits: one rounding of the result is 2^-8 relative.
    round_trip(DType::BF16, 2f64.powi(-8));
}

#[test]
fn multi_output_policy_reads_branch_output_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (input, output) = (dir.path().join("av.safetensors"), dir.path().join("out.safetensors"));
    let branches = ["cond", "uncond", "perturbed", "isolated"];
    let inputs = predictions(&branches, &[("video", &[1, 6, 4]), ("audio", &[1, 3, 2])], 2, DType::F32, true);
    write_file(&input, &inputs, None);
    let out = combine("ltx2", &input, &output, &[]);
    assert_ok(&out);
    let got = read_file(&output);
    assert_eq!(got["1/audio"].shape, Shape::new(vec![1, 3, 2]));
    assert_same_bits(&got, &expected("ltx2", &inputs, 2, None, true));
}

#[test]
fn state_carries_across_steps() {
    // CFG-Zero* outputs zeros for its first step after the start, then guides.
    let dir = tempfile::tempdir().expect("temp dir");
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    let inputs = predictions(&["cond", "uncond"], &[("sample", &[2, 16])], 3, DType::F16, false);
    write_file(&input, &inputs, None);
    assert_ok(&combine("zero_star", &input, &output, &[]));
    let got = read_file(&output);
    assert!(got["0/sample"].to_f32().iter().all(|&v| v == 0.0));
    assert!(got["1/sample"].to_f32().iter().any(|&v| v != 0.0));
    assert_same_bits(&got, &expected("zero_star", &inputs, 3, None, false));

    // APG's momentum runs through every step.
    assert_ok(&combine("apg", &input, &output, &[]));
    assert_same_bits(&read_file(&output), &expected("apg", &inputs, 3, None, false));
}

#[test]
fn sigmas_come_from_the_flag_or_the_metadata() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    let inputs = predictions(&["cond", "uncond"], &[("sample", &[1, 8])], 3, DType::F32, false);
    write_file(&input, &inputs, None);
    let err = assert_fails(&combine("guidance_interval", &input, &output, &[]));
    assert!(err.contains("step 0") && err.contains("sigma"), "{err}");
    assert!(!output.exists());

    let sigmas = [5.0, 1.0, 0.1];
    assert_ok(&combine("guidance_interval", &input, &output, &["--sigmas", "5,1,0.1"]));
    let want = expected("guidance_interval", &inputs, 3, Some(&sigmas), false);
    assert_same_bits(&read_file(&output), &want);

    let meta = HashMap::from([("sigmas".to_string(), "[5.0, 1.0, 0.1]".to_string())]);
    write_file(&input, &inputs, Some(meta));
    std::fs::remove_file(&output).expect("remove");
    assert_ok(&combine("guidance_interval", &input, &output, &[]));
    assert_same_bits(&read_file(&output), &want);
    // Outside the interval (sigma 5 and 0.1) the output is the conditional alone.
    assert_eq!(want["0/sample"].bits(), inputs["0/cond"].bits());
}

#[test]
fn scale_override_replaces_the_policy_scale() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    let inputs = predictions(&["cond", "uncond"], &[("sample", &[4, 4])], 1, DType::F32, false);
    write_file(&input, &inputs, None);
    // With scale 1, u + 1·(c − u) lowers to exactly c.
    assert_ok(&combine("cfg", &input, &output, &["--scale", "scale=1"]));
    assert_eq!(read_file(&output)["0/sample"].bits(), inputs["0/cond"].bits());
    let err = assert_fails(&combine("cfg", &input, &output, &["--scale", "guidance=2"]));
    assert!(err.contains("guidance"), "{err}");
}

#[test]
fn missing_tensor_names_step_and_branch_and_leaves_no_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    let mut inputs = predictions(&["cond", "uncond"], &[("sample", &[2, 4])], 3, DType::F32, false);
    inputs.remove("1/uncond");
    write_file(&input, &inputs, None);
    let err = assert_fails(&combine("cfg", &input, &output, &[]));
    assert!(err.contains("step 1") && err.contains("`uncond`") && err.contains("1/uncond"), "{err}");
    assert!(!output.exists());
    assert!(others(dir.path(), &input).is_empty(), "a failed run leaves no file: {:?}", others(dir.path(), &input));
}

#[test]
fn mismatched_and_unsupported_tensors_are_clear_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    let mut inputs = predictions(&["cond", "uncond"], &[("sample", &[2, 4])], 2, DType::F32, false);
    inputs.insert("1/uncond".into(), Tensor::from_f32(DType::F32, Shape::new(vec![2, 5]), &values(9, 10)));
    write_file(&input, &inputs, None);
    let err = assert_fails(&combine("cfg", &input, &output, &[]));
    assert!(err.contains("1/uncond") && err.contains("[2, 5]") && err.contains("[2, 4]"), "{err}");

    inputs.insert("1/uncond".into(), Tensor::from_f32(DType::F16, Shape::new(vec![2, 4]), &values(9, 8)));
    write_file(&input, &inputs, None);
    let err = assert_fails(&combine("cfg", &input, &output, &[]));
    assert!(err.contains("1/uncond") && err.contains("f16") && err.contains("f32"), "{err}");

    // An f64 tensor: not a prediction dtype.
    let f64_bytes: Vec<u8> = (0..8).flat_map(|i| (i as f64).to_le_bytes()).collect();
    let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = Vec::new();
    views.push((
        "0/cond".into(),
        safetensors::tensor::TensorView::new(Dtype::F64, vec![2, 4], &f64_bytes).expect("view"),
    ));
    let u = &inputs["0/uncond"];
    views.push((
        "0/uncond".into(),
        safetensors::tensor::TensorView::new(Dtype::F32, vec![2, 4], u.as_bytes()).expect("view"),
    ));
    std::fs::write(&input, safetensors::serialize(views, None).expect("serialize")).expect("write");
    let err = assert_fails(&combine("cfg", &input, &output, &[]));
    assert!(err.contains("0/cond") && err.contains("F64"), "{err}");
    assert!(!output.exists());
}

#[test]
fn unreadable_inputs_fail_with_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("out.safetensors");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xfe not a safetensors file at all").expect("write");
    for input in [garbage.clone(), dir.path().join("missing.safetensors"), dir.path().to_path_buf()] {
        let err = assert_fails(&combine("cfg", &input, &output, &[]));
        assert!(err.contains(&input.display().to_string()), "{err}");
    }
    assert!(!output.exists());
}

#[test]
fn cfg_pp_writes_the_renoise_prediction_beside_the_guided_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    let inputs = predictions(&["cond", "uncond"], &[("sample", &[2, 4, 8])], 2, DType::BF16, false);
    write_file(&input, &inputs, None);
    assert_ok(&combine("cfg_pp", &input, &output, &[]));
    let got = read_file(&output);
    let mut want = expected("cfg_pp", &inputs, 2, None, false);
    for step in 0..2 {
        // `renoise: Ref("uncond")`: the uncond prediction, bit for bit.
        want.insert(format!("{step}/sample/renoise"), inputs[&format!("{step}/uncond")].clone());
    }
    assert_same_bits(&got, &want);
}
