//! Replaying diffusers' own guider outputs through `cfg combine`.
//!
//! `tests/fixtures/diffusers/*.safetensors` were written by `make_fixtures.py`
//! (diffusers 0.42.1, torch 2.15.0; tcfg and apg_mix with torch 2.9.1; f32):
//! seeded branch predictions for 20 steps and diffusers' guided result of each step. The library policy of the same
//! name must give them back to float32 rounding: per element within 8 f32 ulps
//! of the largest input magnitude at that element's step (torch rounds
//! `u + s·(c − u)` op by op, we fold weights and use fma), and ‖out − ref‖/‖ref‖
//! ≤ 1e-6 per step. Zero-star's zero-init step and APG's momentum carry state.
//! PAG and SEG replay the combine only (their perturbations act inside the
//! model): PAG's strict window 0.01–0.2 is on at steps 1–3 of 20, SEG's strict
//! window 0–1 at steps 1–19. APG-Mix crosses its switch: CFG at steps 0–5, APG
//! from step 6 on, the momentum advanced at every step.
//!
//! TCFG: diffusers runs a float32 SVD, about 3e-5 relative from the formula in
//! f64, less accurate than our closed form. Its fixture also holds the formula
//! in f64 (`expected_f64/<step>/sample`): we must be within 1e-6 relative of
//! that, and no farther from diffusers than twice diffusers' own distance to it.
//! diffusers 0.42.1's `TangentialClassifierFreeGuidance.is_conditional` reads
//! `_num_outputs_prepared`, an attribute `BaseGuidance` never sets (it counts
//! `_count_prepared`): a pipeline that asks fails with AttributeError. The
//! fixture calls `forward`, which does not read it; nothing of that bug is
//! copied here.

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

fn f64s(st: &SafeTensors, name: &str) -> Vec<f64> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data().chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()
}

/// ‖a − b‖ / ‖b‖.
fn relative(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// Runs `cfg combine` on the policy's fixture; returns (fixture, output) bytes.
fn combine(policy: &str) -> (Vec<u8>, Vec<u8>) {
    combine_with(policy, policy)
}

/// Runs `cfg combine --policy POLICY` (a library name or a file) on fixture `name`.
fn combine_with(policy: &str, name: &str) -> (Vec<u8>, Vec<u8>) {
    let input = fixture(name);
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
    (std::fs::read(&input).expect("fixture"), std::fs::read(&output).expect("output"))
}

fn replay(policy: &str) {
    let (fixture_bytes, out_bytes) = combine(policy);
    let expected = SafeTensors::deserialize(&fixture_bytes).expect("fixture parses");
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

#[test]
fn apg_mix_matches_diffusers_across_its_switch_step() {
    replay("apg_mix");
}

#[test]
fn tcfg_matches_the_f64_formula_and_diffusers_to_its_own_accuracy() {
    against_f64_and_diffusers(combine("tcfg"));
}

/// FDG on [2, 2, 16, 8] latents with the library defaults (scales 10 and 5,
/// both levels always on): diffusers' own guider, through kornia's pyramid in
/// float32 (its 5 × 5 convolutions round differently from our separable blur),
/// and the same guider on float64 inputs.
#[test]
fn fdg_matches_the_f64_formula_and_diffusers_to_its_own_accuracy() {
    against_f64_and_diffusers(combine("fdg"));
}

/// FDG with a parallel weight and levels switched off by their windows
/// (`tests/fixtures/diffusers/fdg_levels.ron`). diffusers 0.42.1's
/// `FrequencyDecoupledGuidance.forward` cannot run these steps: for a level
/// outside its window it appends `pred_cond_freq`, a variable bound only in
/// the enabled branch (UnboundLocalError when level 0 is off; level 0's cond,
/// of the wrong size, when level 1 is). The fixture states the guider's
/// formula directly with the disabled level's cond, as the guider intends;
/// here a level that is off is c_k, and the bug is not reproduced.
#[test]
fn fdg_levels_off_by_window_are_the_conds_level() {
    let policy = fixture("fdg_levels").with_extension("ron");
    against_f64_and_diffusers(combine_with(policy.to_str().expect("a UTF-8 path"), "fdg_levels"));
}

/// Within 1e-6 relative of the f64 formula, and no farther from diffusers
/// than twice diffusers' own distance to it, at every step.
fn against_f64_and_diffusers((fixture_bytes, out_bytes): (Vec<u8>, Vec<u8>)) {
    let expected = SafeTensors::deserialize(&fixture_bytes).expect("fixture parses");
    let got = SafeTensors::deserialize(&out_bytes).expect("output parses");
    for step in 0..STEPS {
        let exact = f64s(&expected, &format!("expected_f64/{step}/sample"));
        let theirs: Vec<f64> = f32s(&expected, &format!("expected/{step}/sample")).into_iter().map(f64::from).collect();
        let ours: Vec<f64> = f32s(&got, &format!("{step}/sample")).into_iter().map(f64::from).collect();
        let (ours_err, theirs_err) = (relative(&ours, &exact), relative(&theirs, &exact));
        assert!(ours_err <= 1e-6, "step {step}: {ours_err} from the f64 formula");
        let apart = relative(&ours, &theirs);
        assert!(apart <= 2.0 * theirs_err, "step {step}: {apart} from diffusers, whose own error is {theirs_err}");
    }
}
