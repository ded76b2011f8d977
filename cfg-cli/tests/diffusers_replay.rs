//! Replaying diffusers' own guider outputs through `cfg combine`.
//!
//! `tests/fixtures/diffusers/*.safetensors` were written by `make_fixtures.py`
//! (diffusers 0.42.1, torch 2.15.0, f32): seeded branch predictions for 20 steps
//! and diffusers' guided result of each step. The library policy of the same
//! name must give them back to float32 rounding: per element within 8 f32 ulps
//! of the largest input magnitude at that element's step (torch rounds
//! `u + s·(c − u)` op by op, we fold weights and use fma), and ‖out − ref‖/‖ref‖
//! ≤ 1e-6 per step. Zero-star's zero-init step and APG's momentum carry state.
//! PAG and SEG replay the combine only (their perturbations act inside the
//! model): PAG's strict window 0.01–0.2 is on at steps 1–3 of 20, SEG's strict
//! window 0–1 at steps 1–19.

use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::process::Command;

const STEPS: usize = 20;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/diffusers").join(format!("{name}.safetensors"))
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn replay(policy: &str) {
    let input = fixture(policy);
    let dir = tempfile::tempdir().expect("temp dir");
    let output = dir.path().join("out.safetensors");
    let run = Command::new(env!("CARGO_BIN_EXE_cfg"))
        .args(["combine", "--policy", policy, "--steps", &STEPS.to_string(), "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .expect("run cfg");
    assert!(run.status.success(), "{policy}: {}", String::from_utf8_lossy(&run.stderr));
    let fixture_bytes = std::fs::read(&input).expect("fixture");
    let expected = SafeTensors::deserialize(&fixture_bytes).expect("fixture parses");
    let out_bytes = std::fs::read(&output).expect("output");
    let got = SafeTensors::deserialize(&out_bytes).expect("output parses");
    let branches: Vec<String> =
        expected.names().into_iter().filter_map(|n| n.strip_prefix("0/").map(str::to_string)).collect();
    for step in 0..STEPS {
        let want = f32s(&expected, &format!("expected/{step}/sample"));
        let have = f32s(&got, &format!("{step}/sample"));
        assert_eq!(want.len(), have.len());
        let scale = branches
            .iter()
            .flat_map(|b| f32s(&expected, &format!("{step}/{b}")))
            .chain(want.iter().copied())
            .fold(0f32, |m, x| m.max(x.abs()));
        let tolerance = 8.0 * f32::EPSILON * scale;
        for (i, (w, h)) in want.iter().zip(&have).enumerate() {
            assert!((w - h).abs() <= tolerance, "{policy} step {step} element {i}: diffusers {w}, cfg {h}");
        }
        let num: f64 = want.iter().zip(&have).map(|(w, h)| ((w - h) as f64).powi(2)).sum();
        let den: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
        assert!(num.sqrt() <= 1e-6 * den.sqrt(), "{policy} step {step}: relative error {}", (num / den).sqrt());
    }
}

#[test]
fn cfg_matches_diffusers_classifier_free_guidance() {
    replay("cfg");
}

#[test]
fn std_rescale_matches_diffusers_guidance_rescale() {
    replay("std_rescale");
}

#[test]
fn zero_star_matches_diffusers_including_the_zero_init_step() {
    replay("zero_star");
}

#[test]
fn apg_matches_diffusers_with_momentum_across_steps() {
    replay("apg");
}

#[test]
fn magnitude_aware_matches_diffusers_mambo_g() {
    replay("magnitude_aware");
}

#[test]
fn skip_layer_matches_diffusers_with_its_strict_window() {
    replay("skip_layer");
}

#[test]
fn pag_matches_diffusers_perturbed_attention_guidance() {
    replay("pag");
}

#[test]
fn seg_matches_diffusers_smoothed_energy_guidance() {
    replay("seg");
}
