//! Algebraic properties of lowering + CPU evaluation: zero weights and
//! declaration order change no bit, CFG at scale 1 is cond, the linear part is linear.

mod numerics;

use cfg_core::lower::{lower, Overrides};
use cfg_core::schedule::StepContext;
use cfg_core::state::GuidanceState;
use cfg_core::{DType, Shape, Tensor};
use numerics::{config, library, shape_for, Case};
use proptest::prelude::*;

fn inputs() -> impl Strategy<Value = (Shape, DType, u64)> {
    (1usize..=3, 1usize..=5, 2usize..=8, 0usize..3, any::<u64>())
        .prop_map(|(b, t, d, k, seed)| (Shape::new([b, t, d]), DType::ALL[k], seed))
}

/// Every output's bits at one step, with fresh state.
fn bits_of(policy: &cfg_core::expr::Policy, case: &Case, ctx: &StepContext, o: &Overrides) -> Vec<Vec<u32>> {
    let mut state = GuidanceState::new();
    state.start();
    case.run(policy, ctx, &mut state, o).iter().map(|(_, t, _)| t.bits()).collect()
}

fn parse(text: &str) -> cfg_core::expr::Policy {
    let loaded = cfg_policies::parse(text, "test").unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    loaded.policy
}

/// Standard CFG with std rescale; `extra` (if any) is added to the guided sum and
/// may use a third branch `x`.
fn rescaled_cfg(extra: Option<&str>) -> String {
    let (x, extra) = match extra {
        Some(e) => (r#", "x": (prompt: Empty)"#, format!(", {e}")),
        None => ("", String::new()),
    };
    format!(
        r#"Policy(name: "t", branches: {{"c": (prompt: Positive), "u": (prompt: Negative){x}}},
        outputs: {{"o": (space: Eps, guidance: StdRescale(
            input: Sum([Cfg(cond: Ref("c"), uncond: Ref("u"), scale: 4.5){extra}]),
            reference: Ref("c"), phi: 0.7, over: Sample))}})"#
    )
}

const NAMES: [&str; 29] = [
    "adaptive",
    "apg",
    "apg_mix",
    "autoguidance",
    "bagel",
    "cfg",
    "cfg_norm",
    "cfg_pp",
    "cfg_renorm",
    "cfg_renorm_clamped",
    "dreamid",
    "fdg",
    "guidance_interval",
    "ideogram4",
    "ltx2",
    "magi1",
    "magnitude_aware",
    "nag",
    "norm_cap",
    "pag",
    "perp_neg",
    "pix2pix",
    "seg",
    "skip_layer",
    "std_rescale",
    "tcfg",
    "world_model",
    "z_image",
    "zero_star",
];

#[test]
fn the_library_has_every_scheme_of_the_catalogue() {
    assert_eq!(cfg_policies::library::names(), NAMES.to_vec());
}

proptest! {
    #![proptest_config(config(24))]

    #[test]
    fn zero_weight_branches_change_no_bit((shape, dtype, seed) in inputs()) {
        // Zero by literal scale, by a scale cancelled by its offset, and by x − x.
        let with_zero = [
            r#"Scaled(scale: 0.0, term: Ref("x"))"#,
            r#"Scaled(scale: 2.0, offset: -2.0, term: Ref("x"))"#,
            r#"Scaled(scale: 3.0, term: Diff(Ref("x"), Ref("x")))"#,
        ];
        let plain = parse(&rescaled_cfg(None));
        let case = Case::random(&parse(&rescaled_cfg(Some(with_zero[0]))), dtype, shape, seed);
        let ctx = StepContext::new(0, 10);
        let expected = bits_of(&plain, &case, &ctx, &Overrides::none());
        for extra in with_zero {
            let p = parse(&rescaled_cfg(Some(extra)));
            let step = lower(&p, &ctx, &GuidanceState::new(), &Overrides::none()).unwrap();
            prop_assert!(!step.branches().contains(&"x".to_string()), "{extra}: x stays in the plan");
            prop_assert_eq!(&bits_of(&p, &case, &ctx, &Overrides::none()), &expected, "{}", extra);
        }
    }

    #[test]
    fn permuting_branch_declarations_changes_no_bit((shape, dtype, seed) in inputs(), step in 0usize..30) {
        for name in NAMES {
            let p = library(name);
            let mut reversed = p.clone();
            reversed.branches.0.reverse();
            let n = p.steps.unwrap_or(30);
            let ctx = StepContext { step: step % n, num_steps: n, sigma: Some(1.0 - (step % n) as f64 / n as f64), chunks: cfg_core::schedule::ChunkTimes::NONE };
            let case = Case::random(&p, dtype, shape_for(&p, &shape), seed);
            prop_assert_eq!(
                bits_of(&p, &case, &ctx, &Overrides::none()),
                bits_of(&reversed, &case, &ctx, &Overrides::none()),
                "{}", name
            );
        }
    }

    #[test]
    fn cfg_at_scale_one_is_cond_bit_for_bit((shape, dtype, seed) in inputs()) {
        let p = library("cfg");
        let case = Case::random(&p, dtype, shape, seed);
        let out = bits_of(&p, &case, &StepContext::new(0, 50), &Overrides::none().with("scale", 1.0));
        prop_assert_eq!(&out[0], &case.branches["cond"].bits());
    }

    #[test]
    fn the_linear_part_is_linear(
        (shape, _dtype, seed) in inputs(), a in -3.0f64..3.0, b in -3.0f64..3.0, i in 0usize..28,
    ) {
        // combine(a·x + b·y) = a·combine(x) + b·combine(y), in f32, for every linear scheme.
        for name in [
            "cfg", "pix2pix", "dreamid", "skip_layer", "pag", "seg", "autoguidance", "guidance_interval", "world_model",
        ] {
            let p = library(name);
            let ctx = StepContext { step: i, num_steps: 28, sigma: Some(1.0), chunks: cfg_core::schedule::ChunkTimes::NONE };
            let x = Case::random(&p, DType::F32, shape.clone(), seed);
            let y = Case::random(&p, DType::F32, shape.clone(), seed ^ 0xabc);
            let mut z = Case::random(&p, DType::F32, shape.clone(), 0);
            for b_name in p.branches.names() {
                let v: Vec<f32> =
                    x.get(b_name).iter().zip(y.get(b_name)).map(|(p, q)| (a * p + b * q) as f32).collect();
                z.set(b_name, &v);
            }
            let outs = |c: &Case| -> Vec<Vec<f64>> {
                let mut state = GuidanceState::new();
                c.run(&p, &ctx, &mut state, &Overrides::none())
                    .iter()
                    .map(|(_, t, _)| t.to_f32().into_iter().map(f64::from).collect())
                    .collect()
            };
            let (ox, oy, oz) = (outs(&x), outs(&y), outs(&z));
            for k in 0..oz.len() {
                let sum: Vec<f64> = ox[k].iter().zip(&oy[k]).map(|(p, q)| a * p + b * q).collect();
                let err = oz[k].iter().zip(&sum).map(|(p, q)| (p - q).powi(2)).sum::<f64>().sqrt();
                let scale = ox[k].iter().chain(&oy[k]).map(|v| v * v).sum::<f64>().sqrt() * (a.abs() + b.abs());
                prop_assert!(err <= 1e-5 * scale.max(1e-30), "{}: {} > 1e-5·{}", name, err, scale);
            }
        }
    }
}

#[test]
fn linear_pieces_fold_into_one_weight_per_branch() {
    // pix2pix: u + s_I(img − u) + s_T(full − img) = s_T·full + (s_I − s_T)·img + (1 − s_I)·u.
    let p = library("pix2pix");
    let o = Overrides::none().with("text_scale", 7.3).with("image_scale", 1.7);
    let step = lower(&p, &StepContext::new(0, 100), &GuidanceState::new(), &o).unwrap();
    let prog = &step.outputs[0];
    assert_eq!(prog.branches, ["full", "image", "uncond"]);
    assert!(prog.ops.is_empty() && prog.forms.len() == 1);
    let expected = [(0, 7.3f64 as f32), (1, (1.7f64 - 7.3) as f32), (2, (1.0f64 - 1.7) as f32)];
    assert_eq!(prog.forms[0].terms, expected);

    // ltx2's sum folds to one form per output before the rescale.
    let step = lower(&library("ltx2"), &StepContext::new(0, 40), &GuidanceState::new(), &Overrides::none()).unwrap();
    for prog in &step.outputs {
        assert_eq!(prog.forms.len(), 2, "the guided form and the cond reference");
        let video = prog.output == "video";
        let (s, stg, m) = if video { (3.0, 1.0, 3.0) } else { (7.0, 1.0, 3.0) };
        // branches sorted: cond, isolated, perturbed, uncond.
        let guided = [
            (0, (1.0f64 + (s - 1.0) + stg + (m - 1.0)) as f32),
            (1, (1.0f64 - m) as f32),
            (2, -stg as f32),
            (3, (1.0f64 - s) as f32),
        ];
        assert!(prog.forms.iter().any(|f| f.terms == guided), "{}: {:?}", prog.output, prog.forms);
    }
}

#[test]
fn tensors_round_trip_their_dtype() {
    // The helpers above rely on `Case::get` reading back what evaluation sees.
    let t = Tensor::from_f32(DType::BF16, Shape::new([1, 1, 2]), &[1.0 + 2f32.powi(-9), 3.0]);
    assert_eq!(t.to_f32(), vec![1.0, 3.0]);
}
