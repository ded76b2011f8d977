//! diffusers compatibility: window boundaries, zero-init counted from an explicit
//! start, APG's order of operations, unbiased std and the eps values.

mod numerics;

use cfg_core::cpu::{std_from_sums, std_of};
use cfg_core::lower::{lower, Overrides};
use cfg_core::reduce::{Groups, Reduce};
use cfg_core::schedule::StepContext;
use cfg_core::state::GuidanceState;
use cfg_core::window::{Window, WindowRule};
use cfg_core::{DType, Shape};
use numerics::{apg_reference, check, dot, library, set_apg, Case};

/// The steps a window holds for `n` steps.
fn on(w: &Window, n: usize) -> Vec<usize> {
    (0..n).filter(|&i| w.contains(&StepContext::new(i, n)).unwrap()).collect()
}

#[test]
fn diffusers_windows_truncate_start_times_n_and_stop_times_n() {
    // (start, stop, N, int(start·N), int(stop·N)), worked out by hand as Python does it.
    let cases = [
        (0.01, 0.2, 28, 0, 5),
        (0.01, 0.2, 50, 0, 10),
        (0.1, 0.3, 20, 2, 6),
        (0.29, 0.71, 100, 28, 71), // 0.29·100 = 28.999999999999996 in f64
        (0.0, 1.0, 7, 0, 7),
        (0.5, 0.55, 9, 4, 4),
    ];
    for (start, stop, n, lo, hi) in cases {
        let loose = Window::Progress { start, stop, rule: WindowRule::Diffusers };
        let strict = Window::Progress { start, stop, rule: WindowRule::DiffusersStrict };
        assert_eq!(on(&loose, n), (lo..hi).collect::<Vec<_>>(), "{start}..{stop} N={n}: lo <= i < hi");
        assert_eq!(on(&strict, n), (lo + 1..hi).collect::<Vec<_>>(), "{start}..{stop} N={n}: lo < i < hi");
    }
}

#[test]
fn half_open_progress_windows_include_start_and_exclude_stop() {
    let w = Window::Progress { start: 0.25, stop: 0.5, rule: WindowRule::HalfOpen };
    assert_eq!(on(&w, 8), vec![2, 3]); // 2/8 = 0.25 in, 4/8 = 0.5 out
    let w = Window::Steps { start: 3, stop: 5 };
    assert_eq!(on(&w, 10), vec![3, 4]);
}

#[test]
fn an_off_window_drops_its_branch_from_the_lowered_program() {
    let p = library("skip_layer");
    for n in [10, 28, 50, 100] {
        let (lo, hi) = ((0.01 * n as f64) as usize, (0.2 * n as f64) as usize);
        for i in 0..n {
            let step = lower(&p, &StepContext::new(i, n), &GuidanceState::new(), &Overrides::none()).unwrap();
            let has_skip = step.branches().contains(&"skip".to_string());
            assert_eq!(has_skip, lo < i && i < hi, "N={n} step {i}");
        }
    }
    // Sigma windows: guidance_interval drops uncond outside (0.28, 2.9].
    let p = library("guidance_interval");
    for (sigma, uncond) in [(0.28, false), (0.2801, true), (2.9, true), (2.9001, false)] {
        let ctx =
            StepContext { step: 0, num_steps: 32, sigma: Some(sigma), chunks: cfg_core::schedule::ChunkTimes::NONE };
        let step = lower(&p, &ctx, &GuidanceState::new(), &Overrides::none()).unwrap();
        assert_eq!(step.branches().contains(&"uncond".to_string()), uncond, "sigma {sigma}");
    }
}

#[test]
fn zero_star_counts_its_zero_steps_from_start_not_from_step_zero() {
    let p = library("zero_star");
    let shape = Shape::new([2, 3, 4]);
    let case = Case::random(&p, DType::F32, shape, 7);
    let mut state = GuidanceState::new();
    let zero = |out: &cfg_core::Tensor| out.to_f32().iter().all(|&v| v == 0.0);
    let run = |state: &mut GuidanceState, i: usize| case.run(&p, &StepContext::new(i, 50), state, &Overrides::none());

    // Sampling resumed at step 5: its first step is still the zero-init step.
    state.start();
    assert!(zero(&run(&mut state, 5)[0].1));
    assert!(!zero(&run(&mut state, 6)[0].1));
    // Step 0 again without a start: not zero, the counter is past K.
    assert!(!zero(&run(&mut state, 0)[0].1));
    // An explicit start resets it.
    state.start();
    assert!(zero(&run(&mut state, 17)[0].1));
    assert!(!zero(&run(&mut state, 18)[0].1));
}

#[test]
fn apg_momentum_is_kept_before_the_clip_and_restarts_with_sampling() {
    // A small threshold clips every step, so storing the clipped value (or
    // clipping before the momentum) would change later steps.
    let mut p = library("apg");
    set_apg(&mut p, -0.5, 0.3, 0.4);
    let shape = Shape::new([2, 4, 6]);
    for run in 0..2 {
        let mut state = GuidanceState::new();
        state.start();
        let mut running = None;
        for i in 0..5 {
            let case = Case::random(&p, DType::F32, shape.clone(), 100 + i as u64 + 1000 * run);
            let out = case.run(&p, &StepContext::new(i, 50), &mut state, &Overrides::none());
            let (c, u) = (case.get("cond"), case.get("uncond"));
            let reference = apg_reference(&c, &u, &shape, 7.5, -0.5, 0.3, 0.4, &mut running);
            check(&out[0].1, &reference).unwrap_or_else(|e| panic!("run {run} step {i}: {e}"));
        }
    }
}

#[test]
fn std_is_unbiased() {
    // [0, 2]: mean 1, Σ(x − mean)² = 2; unbiased std = √(2/1), biased would be 1.
    assert_eq!(std_from_sums(2.0, 4.0, 2), 2f64.sqrt());
    let v = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let g = Groups::new(Reduce::Sample, &Shape::new([1, 2, 3]));
    // Σ(x − 3.5)² = 17.5 over 6 values: unbiased variance 3.5.
    assert!((std_of(&g, 0, &v) - 3.5f64.sqrt()).abs() < 1e-12);
}

#[test]
fn zero_star_adds_1e8_to_the_squared_uncond_norm() {
    let p = library("zero_star");
    let shape = Shape::new([1, 2, 2]);
    let mut case = Case::random(&p, DType::F32, shape, 3);
    // ‖u‖² = 1e-8: α is half of ⟨c,u⟩/‖u‖².
    case.set("uncond", &[5e-5; 4]);
    case.set("cond", &[1.0, 2.0, 3.0, 4.0]);
    let mut state = GuidanceState::new();
    state.start();
    case.run(&p, &StepContext::new(0, 50), &mut state, &Overrides::none()); // the zero-init step
    let out = case.run(&p, &StepContext::new(1, 50), &mut state, &Overrides::none());
    let (c, u) = (case.get("cond"), case.get("uncond"));
    let idx: Vec<usize> = (0..4).collect();
    let alpha = dot(&c, &u, &idx) / (dot(&u, &u, &idx) + 1e-8);
    assert!((alpha - dot(&c, &u, &idx) / dot(&u, &u, &idx) / 2.0).abs() < 1e-3 * alpha);
    let reference: Vec<f64> = (0..4).map(|k| alpha * u[k] + 7.5 * (c[k] - alpha * u[k])).collect();
    check(&out[0].1, &reference).unwrap();
}

#[test]
fn clamped_renorm_adds_1e8_to_the_guided_norm() {
    // u = 0, s = 1: g = c, factor = ‖c‖/(‖c‖ + 1e-8) = 1/2 when ‖c‖ = 1e-8.
    let p = library("cfg_renorm_clamped");
    let shape = Shape::new([1, 1, 2]);
    let mut case = Case::random(&p, DType::F32, shape, 1);
    let c = [6e-9f32, 8e-9]; // ‖c‖ = 1e-8
    case.set("cond", &c);
    case.set("uncond", &[0.0, 0.0]);
    let out = case.run(&p, &StepContext::new(0, 50), &mut GuidanceState::new(), &Overrides::none().with("scale", 1.0));
    let reference: Vec<f64> = case.get("cond").iter().map(|x| x * 0.5).collect();
    check(&out[0].1, &reference).unwrap();
}

#[test]
fn apg_normalizes_cond_with_a_1e12_floor() {
    // ‖c‖ < 1e-12: torch's normalize divides by 1e-12, not by ‖c‖.
    let mut p = library("apg");
    set_apg(&mut p, 0.0, 0.0, 0.0);
    let shape = Shape::new([1, 1, 4]);
    let mut case = Case::random(&p, DType::F32, shape.clone(), 5);
    case.set("cond", &[1e-13, -2e-13, 3e-13, 1e-13]);
    let out = case.run(&p, &StepContext::new(0, 50), &mut GuidanceState::new(), &Overrides::none());
    let (c, u) = (case.get("cond"), case.get("uncond"));
    let reference = apg_reference(&c, &u, &shape, 7.5, 0.0, 0.0, 0.0, &mut None);
    check(&out[0].1, &reference).unwrap();
    // Dividing by ‖c‖² instead would give a visibly different output.
    let idx: Vec<usize> = (0..4).collect();
    let delta: Vec<f64> = c.iter().zip(&u).map(|(c, u)| c - u).collect();
    let k = dot(&delta, &c, &idx) / dot(&c, &c, &idx);
    let wrong: Vec<f64> = (0..4).map(|i| u[i] + 7.5 * (delta[i] - k * c[i])).collect();
    assert!(check(&out[0].1, &wrong).is_err());
}
