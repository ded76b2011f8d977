//! Property: for any library policy, scales in range and finite inputs,
//! `cfg combine` either writes only finite outputs or fails with a message
//! naming the step (and writes nothing). Seeded, so every run is the same.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::process::Command;

const STEPS: usize = 3;

/// Writes every branch of `policy` for `STEPS` steps, `[2, 3, 4]` f32, values from `values`.
fn write_dump(path: &std::path::Path, policy: &cfg_core::expr::Policy, values: &[f32]) {
    let multi = policy.outputs.len() > 1;
    let mut tensors: Vec<(String, Vec<u8>)> = Vec::new();
    let mut k = 0;
    for step in 0..STEPS {
        for b in policy.branches.names() {
            for o in policy.outputs.names() {
                let name = if multi { format!("{step}/{b}/{o}") } else { format!("{step}/{b}") };
                let bytes: Vec<u8> = (0..24)
                    .flat_map(|_| {
                        k += 1;
                        values[k % values.len()].to_le_bytes()
                    })
                    .collect();
                tensors.push((name, bytes));
                if !multi {
                    break;
                }
            }
        }
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, b)| (n.clone(), TensorView::new(Dtype::F32, vec![2, 3, 4], b).expect("view")))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).expect("serialize")).expect("write");
}

#[test]
fn combine_output_is_finite_or_the_run_names_the_step() {
    let names = cfg_policies::library::names();
    let strategy = (
        0..names.len(),
        prop::collection::vec(-30i32..=30, 1..4),
        prop::collection::vec(prop_oneof![-1e3f32..1e3, -1e20f32..1e20, Just(0.0f32)], 8..32),
    );
    let config = Config { cases: 24, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let dir = tempfile::tempdir().expect("temp dir");
    let (passed, stopped) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&strategy, |(p, exponents, values)| {
            let name = names[p];
            let policy = cfg_policies::resolve(name).expect("library policy").policy;
            let input = dir.path().join("in.safetensors");
            let output = dir.path().join("out.safetensors");
            let _ = std::fs::remove_file(&output);
            write_dump(&input, &policy, &values);
            // Scales from 1e-30 to 1e30 (folded weights stay within f32 for these policies).
            let mut args: Vec<String> = vec!["combine".into(), name.into(), "--sigmas".into(), "0.9,0.5,0.1".into()];
            for ((scale, _), e) in policy.scales.iter().zip(exponents.iter().cycle()) {
                args.extend(["--scale".into(), format!("{scale}=1e{e}")]);
            }
            let run = Command::new(env!("CARGO_BIN_EXE_cfg"))
                .args(&args)
                .arg("--input")
                .arg(&input)
                .arg("--output")
                .arg(&output)
                .output()
                .expect("run cfg");
            let stderr = String::from_utf8_lossy(&run.stderr);
            if run.status.success() {
                let bytes = std::fs::read(&output).expect("output written");
                let file = SafeTensors::deserialize(&bytes).expect("valid output");
                for (n, t) in file.tensors() {
                    let finite =
                        t.data().chunks_exact(4).all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite());
                    prop_assert!(finite, "{name} {args:?}: tensor {n} is not finite");
                }
                passed.set(passed.get() + 1);
            } else {
                prop_assert_eq!(run.status.code(), Some(1), "{} {:?}: {}", name, args, stderr);
                prop_assert!(stderr.starts_with("error: step "), "{name} {args:?}: {stderr}");
                prop_assert!(!output.exists(), "{name}: a failed run left an output");
                stopped.set(stopped.get() + 1);
            }
            Ok(())
        })
        .expect("property holds");
    // Both outcomes occur, so both halves of the property are exercised.
    assert!(passed.get() > 0 && stopped.get() > 0, "{} finite runs, {} stopped", passed.get(), stopped.get());
}
