//! The fast CPU paths against a straightforward canonical evaluation, kept
//! here as the reference implementation: element by element, every statistic
//! through `reduce::dot` with closures, bit for bit, on random shapes
//! (group sizes around the lane and segment boundaries) with signed zeros.

use cfg_core::cpu::{
    apg_clip_factor, apg_projection, evaluate, evaluate_into, magnitude_scale, norm_cap_factor, reject_coefficient,
    renorm_factor, rescale_factor, std_from_sums, zero_star_alpha,
};
use cfg_core::expr::Space;
use cfg_core::fdg::{blur5, down2, fdg_into, fdg_sources, lerp, set_strip_pixels, up_taps, Pyramid, Source};
use cfg_core::program::{FdgBand, Form, Op, Program, Value};
use cfg_core::reduce::{dot_f32, dot_f64, Groups, Reduce};
use cfg_core::simd::{set_limit, Level};
use cfg_core::state::GuidanceState;
use cfg_core::tcfg::tcfg_coefficients;
use cfg_core::{DType, Shape, Tensor};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Runs `f` with each SIMD level as the limit in turn, then lifts the limit.
fn at_every_level(mut f: impl FnMut(Level)) {
    for level in Level::ALL {
        set_limit(level);
        f(level);
    }
    set_limit(Level::Avx512Bf16);
}

/// The reference: one op on forms, f32 values, then rounded to `dtype`.
fn reference(p: &Program, inputs: &[Tensor], shape: &Shape, momentum: &mut Option<Vec<f32>>) -> Vec<f32> {
    let n = shape.numel();
    let x: Vec<Vec<f32>> = inputs.iter().map(Tensor::to_f32).collect();
    let value = |v: Value| -> Vec<f32> {
        let Value::Form(i) = v else { return vec![0.0; n] };
        let terms = &p.forms[i].terms;
        (0..n)
            .map(|e| match terms.split_first() {
                None => 0.0,
                Some((&(b0, w0), rest)) => rest.iter().fold(w0 * x[b0][e], |acc, &(b, w)| w.mul_add(x[b][e], acc)),
            })
            .collect()
    };
    let sq = |v: &[f32], g: &Groups, k: usize| dot_f32(g.len, |j| (v[g.index(k, j)], v[g.index(k, j)]));
    let per_group = |g: &Groups, f: &dyn Fn(usize) -> f32| -> Vec<f32> { (0..g.count).map(f).collect() };
    let std = |v: &[f32], g: &Groups, k: usize| {
        std_from_sums(dot_f32(g.len, |j| (v[g.index(k, j)], 1.0)), sq(v, g, k), g.len)
    };
    let inputs_of = p.ops[0].inputs();
    let (a, b) = (value(inputs_of[0]), value(inputs_of[1]));
    let sample = Groups::new(Reduce::Sample, shape);
    match &p.ops[0] {
        Op::Renorm { over, eps, min, max, .. } => {
            let g = Groups::new(*over, shape);
            let f = per_group(&g, &|k| renorm_factor(sq(&b, &g, k).sqrt(), sq(&a, &g, k).sqrt(), *eps, *min, *max));
            (0..n).map(|i| a[i] * f[g.group_of(i)]).collect()
        }
        Op::NormCap { ratio, .. } => {
            let g = Groups::new(Reduce::Tensor, shape);
            let f = norm_cap_factor(sq(&b, &g, 0).sqrt(), sq(&a, &g, 0).sqrt(), *ratio);
            a.iter().map(|x| x * f).collect()
        }
        Op::StdRescale { phi, over, .. } => {
            let g = Groups::new(*over, shape);
            let f = per_group(&g, &|k| rescale_factor(std(&b, &g, k), std(&a, &g, k), *phi));
            (0..n).map(|i| a[i] * f[g.group_of(i)]).collect()
        }
        Op::ZeroStar { scale, original, .. } => {
            let g = &sample;
            let al = per_group(g, &|k| {
                zero_star_alpha(dot_f32(g.len, |j| (a[g.index(k, j)], b[g.index(k, j)])), sq(&b, g, k))
            });
            (0..n)
                .map(|i| {
                    let ua = al[g.group_of(i)] * b[i];
                    scale.mul_add(a[i] - ua, if *original { a[i] } else { ua })
                })
                .collect()
        }
        Op::MagnitudeAware { scale, alpha, .. } => {
            let g = &sample;
            let d: Vec<f32> = (0..n).map(|i| a[i] - b[i]).collect();
            let s = per_group(g, &|k| magnitude_scale(*scale, *alpha, sq(&d, g, k).sqrt(), sq(&b, g, k).sqrt()));
            (0..n).map(|i| s[g.group_of(i)].mul_add(d[i], b[i])).collect()
        }
        Op::Apg { scale, momentum: beta, norm_threshold, eta, original, .. } => {
            let g = &sample;
            let mut r: Vec<f32> = (0..n).map(|i| a[i] - b[i]).collect();
            if *beta != 0.0 {
                if let Some(prev) = momentum.as_ref() {
                    r = (0..n).map(|i| beta.mul_add(prev[i], r[i])).collect();
                }
                *momentum = Some(r.clone());
            }
            if *norm_threshold > 0.0 {
                let f = per_group(g, &|k| apg_clip_factor(sq(&r, g, k).sqrt(), *norm_threshold));
                r = (0..n).map(|i| r[i] * f[g.group_of(i)]).collect();
            }
            let coef: Vec<f64> = (0..g.count)
                .map(|k| {
                    let dc = dot_f64(g.len, |j| (r[g.index(k, j)] as f64, a[g.index(k, j)] as f64));
                    let cc = dot_f64(g.len, |j| (a[g.index(k, j)] as f64, a[g.index(k, j)] as f64));
                    apg_projection(dc, cc)
                })
                .collect();
            (0..n)
                .map(|i| {
                    let par = coef[g.group_of(i)] * a[i] as f64;
                    let update = eta.mul_add(par as f32, (r[i] as f64 - par) as f32);
                    scale.mul_add(update, if *original { a[i] } else { b[i] })
                })
                .collect()
        }
        Op::Tcfg { scale, original, .. } => {
            let g = &sample;
            let dot = |x: &[f32], y: &[f32], k: usize| dot_f32(g.len, |j| (x[g.index(k, j)], y[g.index(k, j)]));
            let co: Vec<(f32, f32)> =
                (0..g.count).map(|k| tcfg_coefficients(dot(&a, &a, k), dot(&a, &b, k), dot(&b, &b, k))).collect();
            (0..n)
                .map(|i| {
                    let (al, be) = co[g.group_of(i)];
                    let up = al.mul_add(a[i], be * b[i]);
                    scale.mul_add(a[i] - up, if *original { a[i] } else { up })
                })
                .collect()
        }
        Op::Reject { over, .. } => {
            let g = Groups::new(*over, shape);
            let k = per_group(&g, &|k| {
                reject_coefficient(dot_f32(g.len, |j| (a[g.index(k, j)], b[g.index(k, j)])), sq(&b, &g, k))
            });
            (0..n).map(|i| (-k[g.group_of(i)]).mul_add(b[i], a[i])).collect()
        }
        Op::MomentumCfg { scale, momentum: beta, original, .. } => {
            let d: Vec<f32> = (0..n).map(|i| a[i] - b[i]).collect();
            let r = match momentum.as_ref() {
                Some(prev) => (0..n).map(|i| beta.mul_add(prev[i], d[i])).collect(),
                None => d.clone(),
            };
            *momentum = Some(r);
            (0..n).map(|i| scale.mul_add(d[i], if *original { a[i] } else { b[i] })).collect()
        }
        // Not fused: evaluated by the general path (FDG and chunked on dense values; fdg.rs and chunked.rs test them).
        Op::Mix { .. } | Op::Fdg { .. } | Op::Chunked { .. } => unreachable!("not generated"),
    }
}

/// Group sizes around lane and segment boundaries, and a few others.
const WIDTHS: &[usize] = &[1, 2, 63, 64, 65, 255, 256, 257, 3000, 8191, 8192, 8193];

fn case() -> impl Strategy<Value = (Program, Vec<Tensor>, Shape, DType)> {
    case_with(WIDTHS)
}

/// Random single-op cases whose last dim is one of `widths`.
fn case_with(widths: &'static [usize]) -> impl Strategy<Value = (Program, Vec<Tensor>, Shape, DType)> {
    let shape = (1usize..=3, 0usize..widths.len(), 1usize..=4)
        .prop_map(|(batch, w, tokens)| Shape::new([batch, if widths[w] > 4000 { 1 } else { tokens }, widths[w]]));
    let forms = (2usize..=4).prop_flat_map(|branches| {
        // Weight 1 too: a one-term form of weight 1 is widened, not multiplied.
        let weight = prop_oneof![3 => -4.0f32..4.0, 1 => Just(1.0f32)];
        let form = prop::collection::vec((0..branches, weight), 0..=4).prop_map(|mut t| {
            t.sort_by_key(|x| x.0);
            t.dedup_by_key(|x| x.0);
            Form { terms: t }
        });
        (Just(branches), form.clone(), form)
    });
    let over = prop_oneof![Just(Reduce::Token), Just(Reduce::Channel), Just(Reduce::Sample), Just(Reduce::Tensor)];
    let op = (0usize..7, over, -3.0f32..8.0, -0.9f32..0.9, prop::bool::ANY, 0.0f64..2.0);
    let dtype = prop_oneof![Just(DType::F32), Just(DType::BF16), Just(DType::F16)];
    (shape, forms, op, dtype, any::<u64>()).prop_map(
        |(shape, (branches, fa, fb), (kind, over, s, m, orig, t), dtype, seed)| {
            let (a, b) = (Value::Form(0), Value::Form(1));
            let op = match kind {
                0 => Op::Renorm { input: a, reference: b, over, eps: 0.0, min: None, max: None },
                1 => Op::Renorm { input: a, reference: b, over, eps: 1e-8, min: Some(0.0), max: Some(1.0) },
                2 => Op::StdRescale { input: a, reference: b, phi: 0.7, over },
                3 => Op::NormCap { input: a, reference: b, ratio: t },
                4 => Op::ZeroStar { cond: a, uncond: b, scale: s, original: orig },
                5 => Op::MagnitudeAware { cond: a, uncond: b, scale: s as f64, alpha: t * 4.0 },
                _ => Op::Apg {
                    cond: a,
                    uncond: b,
                    scale: s,
                    momentum: m,
                    norm_threshold: t * 10.0,
                    eta: m.abs(),
                    original: orig,
                    slot: "apg".into(),
                },
            };
            let program = Program {
                output: "x".into(),
                space: Space::Eps,
                layout: None,
                branches: (0..branches).map(|k| format!("b{k}")).collect(),
                forms: vec![fa, fb],
                ops: vec![op],
                latches: vec![],
                counters: vec![],
                result: Value::Op(0),
                renoise: None,
            };
            let inputs = random_inputs(branches, dtype, &shape, seed);
            (program, inputs, shape, dtype)
        },
    )
}

/// `branches` inputs of `shape` from `seed`: values in [−2, 2], one in
/// sixteen +0 and one in sixteen −0.
fn random_inputs(branches: usize, dtype: DType, shape: &Shape, seed: u64) -> Vec<Tensor> {
    let mut h = seed | 1;
    (0..branches)
        .map(|_| {
            let v: Vec<f32> = (0..shape.numel())
                .map(|_| {
                    h ^= h << 13;
                    h ^= h >> 7;
                    h ^= h << 17;
                    match h % 16 {
                        0 => 0.0,
                        1 => -0.0,
                        _ => ((h >> 20) % 20001) as f32 / 5000.0 - 2.0,
                    }
                })
                .collect();
            Tensor::from_f32(dtype, shape.clone(), &v)
        })
        .collect()
}

/// The result of `evaluate` (a new output), which must equal `evaluate_into`'s
/// (into a kept output of sevens) bit for bit; `state` advances once.
fn evaluate_both(
    program: &Program,
    refs: &[&Tensor],
    dtype: DType,
    shape: &Shape,
    state: &mut GuidanceState,
) -> Result<Tensor, TestCaseError> {
    let new = evaluate(program, refs, dtype, shape, &mut state.clone()).expect("inputs match");
    let mut kept = Tensor::from_f32(dtype, shape.clone(), &vec![7.0; shape.numel()]);
    evaluate_into(program, refs, dtype, shape, state, &mut kept).expect("inputs match");
    prop_assert_eq!(new.bits(), kept.bits(), "evaluate and evaluate_into differ: {:?}", program.ops);
    Ok(new)
}

/// `steps` consecutive steps from a new state (each reads the state the last
/// left, as APG's momentum), every one equal to the reference bit for bit;
/// returns the state and the reference's momentum after the last.
fn steps_match_reference(
    program: &Program,
    inputs: &[Tensor],
    shape: &Shape,
    dtype: DType,
    steps: usize,
    label: &str,
) -> Result<(GuidanceState, Option<Vec<f32>>), TestCaseError> {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let (mut state, mut momentum) = (GuidanceState::new(), None);
    for step in 0..steps {
        let got = evaluate_both(program, &refs, dtype, shape, &mut state)?;
        let want = reference(program, inputs, shape, &mut momentum);
        let want = Tensor::from_f32(dtype, shape.clone(), &want);
        prop_assert_eq!(got.bits(), want.bits(), "step {} {} {:?}", step, label, program.ops[0]);
    }
    Ok((state, momentum))
}

#[test]
fn fast_paths_match_the_canonical_reference_bit_for_bit() {
    let config = Config { cases: 96, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[13; 32]);
    at_every_level(|level| {
        let mut runner = TestRunner::new_with_rng(config.clone(), rng.clone());
        runner
            .run(&case(), |(program, inputs, shape, dtype)| {
                // Two steps: the second reads APG's momentum from the first.
                steps_match_reference(&program, &inputs, &shape, dtype, 2, &format!("{level:?}"))?;
                Ok(())
            })
            .expect("fast paths match the reference");
    });
}

/// The operators added after the test above, on the same cases (its own test,
/// so that the cases above stay as they were).
#[test]
fn later_operators_match_the_canonical_reference_bit_for_bit() {
    let config = Config { cases: 48, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[17; 32]);
    let over = prop_oneof![
        Just(Reduce::Token),
        Just(Reduce::Channel),
        Just(Reduce::Sample),
        Just(Reduce::Tensor),
        Just(Reduce::Axis(1)),
        Just(Reduce::Axis(2)),
    ];
    let cases = (case(), 0usize..3, over, -3.0f32..8.0, -0.9f32..0.9, prop::bool::ANY).prop_map(
        |((mut program, inputs, shape, dtype), kind, over, s, m, orig)| {
            let (a, b) = (Value::Form(0), Value::Form(1));
            program.ops = vec![match kind {
                0 => Op::Tcfg { cond: a, uncond: b, scale: s, original: orig },
                1 => Op::Reject { input: a, direction: b, over },
                _ => Op::MomentumCfg { cond: a, uncond: b, scale: s, momentum: m, original: orig, slot: "m".into() },
            }];
            (program, inputs, shape, dtype)
        },
    );
    at_every_level(|level| {
        let mut runner = TestRunner::new_with_rng(config.clone(), rng.clone());
        runner
            .run(&cases, |(program, inputs, shape, dtype)| {
                let (state, momentum) =
                    steps_match_reference(&program, &inputs, &shape, dtype, 2, &format!("{level:?}"))?;
                if let Op::MomentumCfg { slot, .. } = &program.ops[0] {
                    let held = state.momentum(slot).expect("a momentum").to_vec();
                    prop_assert_eq!(Some(held), momentum);
                }
                Ok(())
            })
            .expect("later operators match the reference");
    });
}

/// APG on forms 0 and 1, with and without a momentum and a norm clip.
fn apg_op() -> impl Strategy<Value = Op> {
    let knobs = (prop::bool::ANY, prop::bool::ANY, -3.0f32..8.0, -0.9f32..0.9, 0.1f64..20.0, prop::bool::ANY);
    knobs.prop_map(|(beta, clip, s, m, t, orig)| Op::Apg {
        cond: Value::Form(0),
        uncond: Value::Form(1),
        scale: s,
        momentum: if beta { m } else { 0.0 },
        norm_threshold: if clip { t } else { 0.0 },
        eta: m.abs(),
        original: orig,
        slot: "apg".into(),
    })
}

/// APG with and without a momentum and a norm clip (the cases above almost
/// always draw both): each combination reads its update its own way.
#[test]
fn apg_with_and_without_momentum_and_clip_matches_the_canonical_reference_bit_for_bit() {
    let config = Config { cases: 48, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[31; 32]);
    let cases = (case(), apg_op()).prop_map(|((mut program, inputs, shape, dtype), apg)| {
        program.ops = vec![apg];
        (program, inputs, shape, dtype)
    });
    let mut runner = TestRunner::new_with_rng(config, rng);
    runner
        .run(&cases, |(program, inputs, shape, dtype)| {
            steps_match_reference(&program, &inputs, &shape, dtype, 3, "")?;
            Ok(())
        })
        .expect("APG matches the reference");
}

/// APG straight from bf16 cond and uncond that are one input each (weight
/// 1): the apply in split order, with and without a momentum and a clip,
/// on widths with and without a partial chunk of sixteen, one and two
/// parallel tasks.
#[test]
fn apg_on_plain_bf16_inputs_matches_the_canonical_reference_bit_for_bit() {
    let config = Config { cases: 32, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[47; 32]);
    let shape = (1usize..=2, 1usize..=9, prop::sample::select(vec![64usize, 100, 4096, 8191, 8193]))
        .prop_map(|(batch, tokens, width)| Shape::new([batch, tokens, width]));
    let cases = (case(), shape, apg_op(), any::<u64>()).prop_map(|((mut program, _, _, _), shape, apg, seed)| {
        program.forms = vec![Form { terms: vec![(0, 1.0)] }, Form { terms: vec![(1, 1.0)] }];
        program.ops = vec![apg];
        let inputs = random_inputs(program.branches.len(), DType::BF16, &shape, seed);
        (program, inputs, shape)
    });
    cases_match_at_every_level(config, rng, &cases, DType::BF16, "APG on plain bf16 inputs matches the reference");
}

/// APG-Mix's CFG phase straight from bf16 cond and uncond that are one input
/// each (weight 1), sixteen lanes at a time: the output and the momentum it
/// leaves, over two steps, on widths with and without a partial sixteen.
#[test]
fn momentum_cfg_on_plain_bf16_inputs_matches_the_canonical_reference_bit_for_bit() {
    let config = Config { cases: 32, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[59; 32]);
    let shape = (1usize..=2, 1usize..=9, prop::sample::select(vec![16usize, 64, 100, 4096, 8191, 8193]))
        .prop_map(|(batch, tokens, width)| Shape::new([batch, tokens, width]));
    let op = (-3.0f32..8.0, -0.9f32..0.9, prop::bool::ANY).prop_map(|(scale, momentum, original)| Op::MomentumCfg {
        cond: Value::Form(0),
        uncond: Value::Form(1),
        scale,
        momentum,
        original,
        slot: "m".into(),
    });
    let cases = (case(), shape, op, any::<u64>()).prop_map(|((mut program, _, _, _), shape, op, seed)| {
        program.forms = vec![Form { terms: vec![(0, 1.0)] }, Form { terms: vec![(1, 1.0)] }];
        program.ops = vec![op];
        let inputs = random_inputs(program.branches.len(), DType::BF16, &shape, seed);
        (program, inputs, shape)
    });
    at_every_level(|level| {
        let mut runner = TestRunner::new_with_rng(config.clone(), rng.clone());
        runner
            .run(&cases, |(program, inputs, shape)| {
                let (state, momentum) =
                    steps_match_reference(&program, &inputs, &shape, DType::BF16, 2, &format!("{level:?}"))?;
                let held = state.momentum("m").expect("a momentum").to_vec();
                prop_assert_eq!(Some(held), momentum);
                Ok(())
            })
            .expect("momentum CFG on plain bf16 inputs matches the reference");
    });
}

/// Token widths that a group of at most 256 lanes pads differently, and the
/// segment boundaries.
const SHORT_WIDTHS: &[usize] =
    &[1, 3, 7, 8, 9, 16, 17, 31, 33, 63, 64, 65, 100, 128, 129, 200, 255, 256, 8191, 8192, 8193];

/// A group operator followed by a mix of forms and its value (Perp-Neg's
/// shape), on the short widths: the fused path against the reference op
/// followed by the general mix (`w_0·v_0`, then fma, in term order).
#[test]
fn op_then_mix_matches_the_canonical_reference_bit_for_bit() {
    let config = Config { cases: 64, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[19; 32]);
    let over = prop_oneof![Just(Reduce::Token), Just(Reduce::Sample), Just(Reduce::Tensor)];
    let part = prop_oneof![Just(Value::Form(0)), Just(Value::Form(1)), Just(Value::Op(0)), Just(Value::Zero)];
    let mix = prop::collection::vec((part, -9.0f32..9.0), 0..=6);
    let cases = (case_with(SHORT_WIDTHS), 0usize..3, over, mix).prop_map(
        |((mut program, inputs, shape, dtype), kind, over, mix)| {
            let (a, b) = (Value::Form(0), Value::Form(1));
            match kind {
                0 => program.ops[0] = Op::Reject { input: a, direction: b, over },
                1 => {
                    program.ops[0] =
                        Op::Renorm { input: a, reference: b, over, eps: 1e-8, min: Some(0.0), max: Some(1.0) }
                }
                _ => {}
            }
            program.ops.push(Op::Mix { terms: mix });
            program.result = Value::Op(1);
            (program, inputs, shape, dtype)
        },
    );
    op_then_mix_cases_match(config, rng, &cases, "op then mix matches the reference");
}

/// Each case of an op followed by a mix equals the reference op followed by
/// the general mix (`w_0·v_0`, then fma, in term order), at every SIMD level.
fn op_then_mix_cases_match(
    config: Config,
    rng: TestRng,
    cases: &impl Strategy<Value = (Program, Vec<Tensor>, Shape, DType)>,
    what: &str,
) {
    at_every_level(|level| {
        let mut runner = TestRunner::new_with_rng(config.clone(), rng.clone());
        runner
            .run(cases, |(program, inputs, shape, dtype)| {
                let refs: Vec<&Tensor> = inputs.iter().collect();
                let got = evaluate_both(&program, &refs, dtype, &shape, &mut GuidanceState::new())?;
                let op = reference(&program, &inputs, &shape, &mut None);
                let Op::Mix { terms } = &program.ops[1] else { unreachable!("built above") };
                let n = shape.numel();
                let x: Vec<Vec<f32>> = inputs.iter().map(Tensor::to_f32).collect();
                let form = |i: usize, e: usize| match program.forms[i].terms.split_first() {
                    None => 0.0,
                    Some((&(b0, w0), rest)) => rest.iter().fold(w0 * x[b0][e], |acc, &(b, w)| w.mul_add(x[b][e], acc)),
                };
                let want: Vec<f32> = (0..n)
                    .map(|e| {
                        let v = |val: Value| match val {
                            Value::Form(i) => form(i, e),
                            Value::Op(_) => op[e],
                            Value::Zero => 0.0,
                        };
                        match terms.split_first() {
                            None => 0.0,
                            Some((&(v0, w0), rest)) => {
                                rest.iter().fold(w0 * v(v0), |acc, &(val, w)| w.mul_add(v(val), acc))
                            }
                        }
                    })
                    .collect();
                let want = Tensor::from_f32(dtype, shape.clone(), &want);
                prop_assert_eq!(got.bits(), want.bits(), "{:?} {:?}", level, program.ops);
                Ok(())
            })
            .expect(what);
    });
}

/// Perp-Neg's shape on groups long enough for two passes: bf16 forms of one
/// or two inputs (weight 1 too), the mix the operator's value and a third
/// form in either order, so that the apply mixes in split order straight
/// from the inputs (the operators that read one value and both).
#[test]
fn split_order_op_then_mix_matches_the_canonical_reference_bit_for_bit() {
    let config = Config { cases: 24, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[43; 32]);
    let cases = two_pass_op_then_mix(DType::BF16);
    op_then_mix_cases_match(config, rng, &cases, "split-order op then mix matches the reference");
}

/// The same shape on f32 inputs: the apply computes the forms and the mix
/// in registers, sixteen lanes in element order.
#[test]
fn f32_op_then_mix_in_registers_matches_the_canonical_reference_bit_for_bit() {
    let config = Config { cases: 24, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[47; 32]);
    let cases = two_pass_op_then_mix(DType::F32);
    op_then_mix_cases_match(config, rng, &cases, "f32 op then mix matches the reference");
}

/// A form of one or two distinct inputs of the first `branches`, in branch
/// order, weighted by `weight`.
fn one_or_two_terms(
    branches: usize,
    weight: impl Strategy<Value = f32> + Clone,
) -> impl Strategy<Value = Form> + Clone {
    prop::collection::vec((0..branches, weight), 1..=2).prop_map(|mut t| {
        t.sort_by_key(|x| x.0);
        t.dedup_by_key(|x| x.0);
        Form { terms: t }
    })
}

/// Makes the operator TCFG (`which` 0) or Reject (1) on forms 0 and 1, or
/// keeps it; a renorm's or a rescale's groups become samples or the tensor.
fn two_pass_op(program: &mut Program, which: usize, per_sample: bool) {
    let over = if per_sample { Reduce::Sample } else { Reduce::Tensor };
    let (a, b) = (Value::Form(0), Value::Form(1));
    match which {
        0 => program.ops[0] = Op::Tcfg { cond: a, uncond: b, scale: 5.0, original: per_sample },
        1 => program.ops[0] = Op::Reject { input: a, direction: b, over },
        _ => {}
    }
    match &mut program.ops[0] {
        Op::Renorm { over: o, .. } | Op::StdRescale { over: o, .. } => *o = over,
        _ => {}
    }
}

/// Groups of more than 16384 elements (two passes), per sample and over the
/// tensor: batch × tokens × width.
fn two_pass_shape() -> impl Strategy<Value = Shape> {
    (1usize..=2, 5usize..=6, prop::sample::select(vec![4096usize, 8191, 8193]))
        .prop_map(|(batch, tokens, width)| Shape::new([batch, tokens, width]))
}

/// A group operator then a mix of its value and a third form, over three
/// inputs of `dtype`, every form one or two inputs (weight 1 too).
fn two_pass_op_then_mix(dtype: DType) -> impl Strategy<Value = (Program, Vec<Tensor>, Shape, DType)> {
    let weight = || prop_oneof![3 => -9.0f32..9.0, 1 => Just(1.0f32)];
    let form = one_or_two_terms(3, weight());
    let over = prop_oneof![Just(Reduce::Sample), Just(Reduce::Tensor)];
    let mix = (prop::bool::ANY, weight(), weight());
    ((form.clone(), form.clone(), form), 0usize..4, over, mix, two_pass_shape(), any::<u64>()).prop_map(
        move |(forms, kind, over, (op_first, w0, w1), shape, seed)| {
            let (a, b) = (Value::Form(0), Value::Form(1));
            let op = match kind {
                0 => Op::Reject { input: a, direction: b, over },
                1 => Op::Renorm { input: a, reference: b, over, eps: 1e-8, min: Some(0.0), max: Some(1.0) },
                2 => Op::StdRescale { input: a, reference: b, phi: 0.7, over },
                _ => Op::ZeroStar { cond: a, uncond: b, scale: 5.0, original: false },
            };
            let (op_value, form) = (Value::Op(0), Value::Form(2));
            let terms = if op_first { vec![(op_value, w0), (form, w1)] } else { vec![(form, w0), (op_value, w1)] };
            let program = Program {
                output: "x".into(),
                space: Space::Eps,
                layout: None,
                branches: (0..3).map(|k| format!("b{k}")).collect(),
                forms: vec![forms.0, forms.1, forms.2],
                ops: vec![op, Op::Mix { terms }],
                latches: vec![],
                counters: vec![],
                result: Value::Op(1),
                renoise: None,
            };
            let inputs = random_inputs(3, dtype, &shape, seed);
            (program, inputs, shape, dtype)
        },
    )
}

/// Every group operator on f32 forms of one or two inputs (weight 1 too),
/// on groups large enough for two passes: the statistics and the apply
/// compute the forms in registers, sixteen lanes in element order. One case
/// in three reads as its second form one input of its first (cond beside
/// guidance).
#[test]
fn f32_forms_in_registers_match_the_canonical_reference_bit_for_bit() {
    let config = Config { cases: 32, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[53; 32]);
    let form = one_or_two_terms(2, prop_oneof![3 => -4.0f32..4.0, 1 => Just(1.0f32)]);
    let cases = (case(), form.clone(), form, two_pass_shape(), prop::bool::ANY, 0usize..6, any::<u64>()).prop_map(
        |((mut program, _, _, _), fa, mut fb, shape, per_sample, kind, seed)| {
            if let (true, Some(&(k, _))) = (kind < 2, fa.terms.get(kind)) {
                fb = Form { terms: vec![(k, 1.0)] };
            }
            program.branches.truncate(2);
            program.forms = vec![fa, fb];
            // Kinds 2 and 3: TCFG and Reject.
            two_pass_op(&mut program, kind.checked_sub(2).unwrap_or(2), per_sample);
            let inputs = random_inputs(2, DType::F32, &shape, seed);
            (program, inputs, shape)
        },
    );
    cases_match_at_every_level(config, rng, &cases, DType::F32, "f32 forms match the reference");
}

/// A linear program (no operator): `evaluate` writes its new output once,
/// `evaluate_into` overwrites a kept one; both against the reference, with up
/// to ten terms (past the kernels that keep eight in registers) and sizes past
/// one parallel task.
#[test]
fn linear_programs_match_the_canonical_reference_bit_for_bit() {
    let config = Config { cases: 48, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[29; 32]);
    let terms = prop::collection::vec((0usize..4, -4.0f32..4.0), 0..=10);
    let cases =
        (case_with(&[1, 63, 64, 65, 8191, 8193, 70001]), terms).prop_map(|((mut program, inputs, shape, dtype), t)| {
            let terms = t.into_iter().filter(|&(b, _)| b < inputs.len()).collect();
            program.forms = vec![Form { terms }];
            program.ops.clear();
            program.result = Value::Form(0);
            (program, inputs, shape, dtype)
        });
    let mut runner = TestRunner::new_with_rng(config, rng);
    runner
        .run(&cases, |(program, inputs, shape, dtype)| {
            let refs: Vec<&Tensor> = inputs.iter().collect();
            let x: Vec<Vec<f32>> = inputs.iter().map(Tensor::to_f32).collect();
            let want: Vec<f32> = (0..shape.numel())
                .map(|e| match program.forms[0].terms.split_first() {
                    None => 0.0,
                    Some((&(b0, w0), rest)) => rest.iter().fold(w0 * x[b0][e], |acc, &(b, w)| w.mul_add(x[b][e], acc)),
                })
                .collect();
            let want = Tensor::from_f32(dtype, shape.clone(), &want);
            let new = evaluate(&program, &refs, dtype, &shape, &mut GuidanceState::new()).expect("inputs match");
            prop_assert_eq!(new.bits(), want.bits(), "evaluate {:?} {}", program.forms, dtype);
            let mut kept = Tensor::from_f32(dtype, shape.clone(), &vec![7.0; shape.numel()]);
            evaluate_into(&program, &refs, dtype, &shape, &mut GuidanceState::new(), &mut kept).expect("inputs match");
            prop_assert_eq!(kept.bits(), want.bits(), "evaluate_into {:?} {}", program.forms, dtype);
            Ok(())
        })
        .expect("linear programs match the reference");
}

/// Every single operator on token widths that pad differently.
#[test]
fn short_groups_match_the_canonical_reference_bit_for_bit() {
    let config = Config { cases: 64, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[23; 32]);
    at_every_level(|level| {
        let mut runner = TestRunner::new_with_rng(config.clone(), rng.clone());
        runner
            .run(&case_with(SHORT_WIDTHS), |(program, inputs, shape, dtype)| {
                steps_match_reference(&program, &inputs, &shape, dtype, 2, &format!("{level:?}"))?;
                Ok(())
            })
            .expect("short groups match the reference");
    });
}

/// Two steps of each case of `dtype` equal the reference at every SIMD level.
fn cases_match_at_every_level(
    config: Config,
    rng: TestRng,
    cases: &impl Strategy<Value = (Program, Vec<Tensor>, Shape)>,
    dtype: DType,
    what: &str,
) {
    at_every_level(|level| {
        let mut runner = TestRunner::new_with_rng(config.clone(), rng.clone());
        runner
            .run(cases, |(program, inputs, shape)| {
                steps_match_reference(&program, &inputs, &shape, dtype, 2, &format!("{level:?}"))?;
                Ok(())
            })
            .expect(what);
    });
}

/// Token widths that are whole chunks of sixteen, up to 256 lanes, some
/// padded to a power of two of chunks, and two past the split path's reach.
const SPLIT_WIDTHS: &[usize] = &[16, 32, 48, 64, 80, 96, 128, 144, 240, 256, 257, 272];

/// Short groups of bf16 whose forms are one or two inputs (weight 1 too):
/// the path that reduces and applies them in split order, straight from
/// the inputs, against the reference.
#[test]
fn split_order_short_groups_match_the_canonical_reference_bit_for_bit() {
    let config = Config { cases: 48, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[29; 32]);
    let form = one_or_two_terms(2, prop_oneof![3 => -4.0f32..4.0, 1 => Just(1.0f32)]);
    // One case in three reads as its second form one input of its first,
    // unweighted (cond beside guidance): the path that loads it once.
    let cases = (case_with(SPLIT_WIDTHS), form.clone(), form, 0usize..6, prop::bool::ANY, any::<u64>()).prop_map(
        |((mut program, _, shape, _), fa, mut fb, alias, reject, seed)| {
            if let (true, Some(&(k, _))) = (alias < 2, fa.terms.get(alias)) {
                fb = Form { terms: vec![(k, 1.0)] };
            }
            program.forms = vec![fa, fb];
            if reject {
                program.ops[0] = Op::Reject { input: Value::Form(0), direction: Value::Form(1), over: Reduce::Token };
            }
            match &mut program.ops[0] {
                Op::Renorm { over, .. } | Op::StdRescale { over, .. } => *over = Reduce::Token,
                _ => {}
            }
            let inputs = random_inputs(program.branches.len(), DType::BF16, &shape, seed);
            (program, inputs, shape)
        },
    );
    cases_match_at_every_level(config, rng, &cases, DType::BF16, "split-order short groups match the reference");
}

/// bf16 forms that are one input of weight 1 (read in place by the
/// statistics and apply passes, not widened into a block), one form or both,
/// on groups large enough for two passes (more than 16384 elements), per
/// sample and over the tensor.
#[test]
fn plain_bf16_forms_match_the_canonical_reference_bit_for_bit() {
    let config = Config { cases: 24, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[41; 32]);
    let shape = (1usize..=2, 5usize..=6, prop::sample::select(vec![4096usize, 8191, 8193]))
        .prop_map(|(batch, tokens, width)| Shape::new([batch, tokens, width]));
    let plain = |k: usize| Form { terms: vec![(k, 1.0)] };
    let cases = (case(), shape, 0usize..3, prop::bool::ANY, 0usize..4, any::<u64>()).prop_map(
        move |((mut program, _, _, _), shape, which, per_sample, later, seed)| {
            // Branch 0 for the first form, 1 for the second; the other form stays as drawn.
            if which != 1 {
                program.forms[0] = plain(0);
            }
            if which != 0 {
                program.forms[1] = plain(1);
            }
            // The operators of the later test too, which read their forms the same way.
            two_pass_op(&mut program, later, per_sample);
            let inputs = random_inputs(program.branches.len(), DType::BF16, &shape, seed);
            (program, inputs, shape)
        },
    );
    cases_match_at_every_level(config, rng, &cases, DType::BF16, "plain bf16 forms match the reference");
}

/// FDG element by element on planar images, as `fdg.rs` documents it: every
/// stage a loop over output pixels calling the canonical formulas.
fn fdg_reference(p: &Pyramid, c: &[f32], u: &[f32], bands: &[FdgBand], original: bool) -> Vec<f32> {
    let s = &p.spatial;
    let images = s.batch * s.planes;
    let planar = |x: &[f32]| -> Vec<f32> {
        let mut v = Vec::with_capacity(x.len());
        for i in 0..images {
            for y in 0..s.height {
                for xx in 0..s.width {
                    v.push(x[s.index(i / s.planes, i % s.planes, y, xx)]);
                }
            }
        }
        v
    };
    let map = |h: usize, w: usize, ho: usize, wo: usize, f: &dyn Fn(&[f32], usize, usize) -> f32, x: &[f32]| {
        let mut out = Vec::with_capacity(images * ho * wo);
        for img in x.chunks(h * w) {
            for y in 0..ho {
                for xx in 0..wo {
                    out.push(f(img, y, xx));
                }
            }
        }
        out
    };
    let blur = |x: &[f32], h: usize, w: usize| {
        let rows = map(h, w, h, w, &|m, y, xx| blur5(|j| m[y * w + j], xx, w), x);
        map(h, w, h, w, &|m, y, xx| blur5(|j| m[j * w + xx], y, h), &rows)
    };
    let down = |x: &[f32], h: usize, w: usize| {
        let f = |m: &[f32], y: usize, xx: usize| {
            let at = |yy: usize, x2: usize| m[yy * w + x2];
            down2(at(2 * y, 2 * xx), at(2 * y, 2 * xx + 1), at(2 * y + 1, 2 * xx), at(2 * y + 1, 2 * xx + 1))
        };
        map(h, w, h / 2, w / 2, &f, &blur(x, h, w))
    };
    // From h × w to 2h × 2w.
    let up = |x: &[f32], h: usize, w: usize| {
        let f = |m: &[f32], y: usize, xx: usize| {
            let ((ya, yb), (xa, xb)) = (up_taps(y, h), up_taps(xx, w));
            lerp(lerp(m[ya * w + xa], m[ya * w + xb]), lerp(m[yb * w + xa], m[yb * w + xb]))
        };
        blur(&map(h, w, 2 * h, 2 * w, &f, x), 2 * h, 2 * w)
    };
    let laplacian = |x: Vec<f32>| {
        let mut g = vec![x];
        for k in 0..p.levels - 1 {
            let (h, w) = p.dims(k);
            let next = down(&g[k], h, w);
            g.push(next);
        }
        let mut l: Vec<Vec<f32>> = (0..p.levels - 1)
            .map(|k| {
                let (h, w) = p.dims(k + 1);
                g[k].iter().zip(up(&g[k + 1], h, w)).map(|(g, u)| g - u).collect()
            })
            .collect();
        l.push(g.pop().expect("a level"));
        l
    };
    let (lc, lu) = (laplacian(planar(c)), laplacian(planar(u)));
    let guide = |k: usize| -> Vec<f32> {
        let band = &bands[k];
        if !band.on {
            return lc[k].clone();
        }
        let len = p.sample_len(k);
        let mut out = Vec::with_capacity(lc[k].len());
        for (c, u) in lc[k].chunks(len).zip(lu[k].chunks(len)) {
            let mut g: Vec<f32> = match band.parallel {
                None => (0..len).map(|i| band.scale.mul_add(c[i] - u[i], if original { c[i] } else { u[i] })).collect(),
                Some(eta) => {
                    let dc = dot_f64(len, |i| ((c[i] - u[i]) as f64, c[i] as f64));
                    let cc = dot_f64(len, |i| (c[i] as f64, c[i] as f64));
                    let coef = apg_projection(dc, cc);
                    (0..len)
                        .map(|i| {
                            let par = coef * c[i] as f64;
                            let perp = (c[i] - u[i]) as f64 - par;
                            band.scale.mul_add(eta.mul_add(par as f32, perp as f32), if original { c[i] } else { u[i] })
                        })
                        .collect()
                }
            };
            if band.rescale > 0.0 {
                let std = |v: &[f32]| std_from_sums(dot_f32(len, |i| (v[i], 1.0)), dot_f32(len, |i| (v[i], v[i])), len);
                let f = rescale_factor(std(c), std(&g), band.rescale);
                g.iter_mut().for_each(|x| *x *= f);
            }
            out.extend(g);
        }
        out
    };
    let mut r = guide(p.levels - 1);
    for k in (0..p.levels - 1).rev() {
        let (h, w) = p.dims(k + 1);
        r = up(&r, h, w).iter().zip(guide(k)).map(|(u, g)| u + g).collect();
    }
    let mut out = vec![0.0; c.len()];
    let mut i = 0;
    for img in 0..images {
        for y in 0..s.height {
            for xx in 0..s.width {
                out[s.index(img / s.planes, img % s.planes, y, xx)] = r[i];
                i += 1;
            }
        }
    }
    out
}

/// Values in [-2, 2] from `seed` (xorshift), one in eight a signed zero.
fn signed_values(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        match s % 16 {
            0 => 0.0,
            1 => -0.0,
            _ => ((s >> 20) % 20001) as f32 / 5000.0 - 2.0,
        }
    }
}

/// FDG of `E` copies of c and u, read as sources (widened a row at a time)
/// and as their widened f32 values: (got, want) in f32, then the same as
/// bits of `E`, written by FDG into an output of `E` and rounded from f32.
fn narrowed_fdg<E: cfg_core::cpu::Element>(
    p: &Pyramid,
    c: &[f32],
    u: &[f32],
    bands: &[FdgBand],
    original: bool,
    source: impl for<'a> Fn(&'a [E]) -> Source<'a>,
) -> [Vec<u32>; 4] {
    let narrow = |v: &[f32]| v.iter().map(|&x| E::put(x)).collect::<Vec<E>>();
    let wide = |v: &[E]| v.iter().map(|x| x.get()).collect::<Vec<f32>>();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let (cn, un) = (narrow(c), narrow(u));
    let (mut got, mut want) = (vec![f32::NAN; c.len()], vec![f32::NAN; c.len()]);
    fdg_sources(p, source(&cn), source(&un), bands, original, &mut got);
    fdg_into(p, &wide(&cn), &wide(&un), bands, original, &mut want);
    let mut rounded = narrow(&vec![7.0; c.len()]);
    fdg_sources(p, source(&cn), source(&un), bands, original, &mut rounded);
    [bits(&got), bits(&want), bits(&wide(&rounded)), bits(&wide(&narrow(&want)))]
}

/// FDG of random c and u (from `seed`, signed zeros included) has the bits of
/// the element-by-element reference, bf16 and f16 inputs, widened a row at a
/// time, give the bits of their f32 values, and into a bf16 or f16 output
/// those bits rounded.
fn fdg_bits_match(p: &Pyramid, seed: u64, bands: &[FdgBand], original: bool, case: &str) -> Result<(), TestCaseError> {
    let mut next = signed_values(seed);
    let n = p.images() * p.spatial.height * p.spatial.width;
    let (c, u): (Vec<f32>, Vec<f32>) = ((0..n).map(|_| next()).collect(), (0..n).map(|_| next()).collect());
    let mut got = vec![f32::NAN; n];
    fdg_into(p, &c, &u, bands, original, &mut got);
    let want = fdg_reference(p, &c, &u, bands, original);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    prop_assert_eq!(bits(&got), bits(&want), "f32 {}", case);
    let [got, want, rounded, want_rounded] = narrowed_fdg(p, &c, &u, bands, original, |x| Source::BF16(x));
    prop_assert_eq!(got, want, "bf16 {}", case);
    prop_assert_eq!(rounded, want_rounded, "bf16 output {}", case);
    let [got, want, rounded, want_rounded] = narrowed_fdg(p, &c, &u, bands, original, |x| Source::F16(x));
    prop_assert_eq!(got, want, "f16 {}", case);
    prop_assert_eq!(rounded, want_rounded, "f16 output {}", case);
    Ok(())
}

/// FDG's pyramid passes (planar, channels last, gathered layouts; bands
/// with and without statistics) against the element-by-element reference.
#[test]
fn fdg_matches_the_canonical_reference_bit_for_bit() {
    use cfg_core::layout::{Axis, Grid, Layout};
    let config = Config { cases: 48, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[29; 32]);
    let band =
        (prop::bool::weighted(0.8), -3.0f32..12.0, prop::option::of(-1.0f32..1.5), prop_oneof![Just(0.0), 0.1f64..1.0]);
    let bands = prop::collection::vec(band, 3).prop_map(|b| {
        b.into_iter().map(|(on, scale, parallel, rescale)| FdgBand { on, scale, parallel, rescale }).collect::<Vec<_>>()
    });
    let cases =
        (1usize..=3, 0usize..4, 1usize..=2, 1usize..=3, 2usize..=5, 2usize..=5, bands, prop::bool::ANY, any::<u64>());
    at_every_level(|level| {
        let mut runner = TestRunner::new_with_rng(config.clone(), rng.clone());
        runner
            .run(&cases, |(levels, kind, batch, frames, hk, wk, mut bands, original, seed)| {
                bands.truncate(levels);
                let (h, w) = (hk << (levels - 1), wk << (levels - 1));
                // Channels around the vector width, once a lane per channel of a full token.
                let ch = [1, 3, 8, 9, 64][(seed % 5) as usize];
                let grid = |f| Some(Grid { frames: f, height: h, width: w });
                let (layout, shape) = match kind {
                    0 => (Layout { axes: vec![Axis::B, Axis::C, Axis::H, Axis::W], grid: None }, vec![batch, ch, h, w]),
                    1 => (Layout { axes: vec![Axis::B, Axis::T, Axis::C], grid: grid(None) }, vec![batch, h * w, ch]),
                    2 => (Layout { axes: vec![Axis::B, Axis::H, Axis::W, Axis::C], grid: None }, vec![batch, h, w, ch]),
                    _ => (
                        Layout { axes: vec![Axis::B, Axis::T, Axis::C], grid: grid(Some(frames)) },
                        vec![batch, frames * h * w, ch],
                    ),
                };
                let shape = Shape::new(shape);
                let p = Pyramid::new(&layout, &shape, levels).expect("a valid pyramid");
                fdg_bits_match(&p, seed, &bands, original, &format!("{level:?} {layout:?} {shape} {bands:?}"))
            })
            .expect("FDG matches the reference");
    });
}

/// FDG on token grids of 8 to 64 channels with bands without statistics (the
/// only case the row passes run with channels as vector lanes; the test above
/// draws it in few of its cases), their rows in narrow column strips or
/// whole, against the element-by-element reference, from f32, bf16 and f16.
#[test]
fn fdg_on_token_grids_matches_the_canonical_reference_bit_for_bit() {
    use cfg_core::layout::{Axis, Grid, Layout};
    let config = Config { cases: 24, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[31; 32]);
    let band = (prop::bool::weighted(0.8), -3.0f32..12.0).prop_map(|(on, scale)| FdgBand {
        on,
        scale,
        parallel: None,
        rescale: 0.0,
    });
    let cases = (
        1usize..=3,
        1usize..=2,
        2usize..=9,
        2usize..=9,
        prop::collection::vec(band, 3),
        prop::sample::select(vec![8usize, 16, 64]),
        prop::bool::ANY,
        any::<u64>(),
    );
    at_every_level(|level| {
        let mut runner = TestRunner::new_with_rng(config.clone(), rng.clone());
        runner
            .run(&cases, |(levels, batch, hk, wk, mut bands, ch, original, seed)| {
                bands.truncate(levels);
                let (h, w) = (hk << (levels - 1), wk << (levels - 1));
                let layout = Layout {
                    axes: vec![Axis::B, Axis::T, Axis::C],
                    grid: Some(Grid { frames: None, height: h, width: w }),
                };
                let shape = Shape::new([batch, h * w, ch]);
                let p = Pyramid::new(&layout, &shape, levels).expect("a valid pyramid");
                // Rows cut into column strips of 1 to 5 pixels, or whole.
                let strip = [0, 1, 2, 3, 5][(seed >> 32) as usize % 5];
                set_strip_pixels(strip);
                fdg_bits_match(&p, seed, &bands, original, &format!("{level:?} {shape} {bands:?} strips of {strip}"))
            })
            .expect("FDG on token grids matches the reference");
    });
    set_strip_pixels(0);
}

/// MAGI-1's chunked guidance read straight from bf16/f16/f32 inputs (runs of
/// 1 to 70 elements, and of 9000 over several parallel tasks) against `apply`
/// element by element.
#[test]
fn chunked_matches_the_canonical_reference_bit_for_bit() {
    use cfg_core::chunked::{apply, chunked_direct, Chunks};
    use cfg_core::cpu::Element;
    use cfg_core::layout::{Axis, Layout};
    use half::{bf16, f16};

    fn check<E: Element + std::fmt::Debug>(
        chunks: &Chunks,
        weights: &[[f32; 3]],
        x: &[Vec<f32>; 3],
    ) -> Result<(), TestCaseError> {
        let src: Vec<Vec<E>> = x.iter().map(|v| v.iter().map(|&f| E::put(f)).collect()).collect();
        let mut got = vec![E::put(f32::NAN); src[0].len()];
        chunked_direct(chunks, weights, [&src[0], &src[1], &src[2]], &mut got);
        for (i, g) in got.iter().enumerate() {
            let want = E::put(apply(&weights[chunks.chunk_of(i)], src[0][i].get(), src[1][i].get(), src[2][i].get()));
            prop_assert_eq!(g.get().to_bits(), want.get().to_bits(), "element {} of {:?}", i, chunks);
        }
        Ok(())
    }

    let config = Config { cases: 48, failure_persistence: None, ..Config::default() };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[31; 32]);
    let cases = (
        1usize..=2,
        1usize..=3,
        1usize..=9,
        1usize..=4,
        prop_oneof![3 => 1usize..=70, 1 => Just(9000usize)],
        any::<u64>(),
    );
    at_every_level(|_| {
        let mut runner = TestRunner::new_with_rng(config.clone(), rng.clone());
        runner
            .run(&cases, |(batch, channels, frames, chunk_frames, plane, seed)| {
                let layout = Layout { axes: vec![Axis::B, Axis::C, Axis::F, Axis::H, Axis::W], grid: None };
                let shape = Shape::new([batch, channels, frames, 1, plane]);
                let count = frames.div_ceil(chunk_frames);
                let chunks = Chunks::new(&layout, &shape, chunk_frames, count).expect("a valid chunking");
                let mut next = signed_values(seed);
                let weights: Vec<[f32; 3]> = (0..count).map(|_| [next() * 4.0, next(), next()]).collect();
                let n = shape.numel();
                let x: [Vec<f32>; 3] = std::array::from_fn(|_| (0..n).map(|_| next()).collect());
                check::<f32>(&chunks, &weights, &x)?;
                check::<bf16>(&chunks, &weights, &x)?;
                check::<f16>(&chunks, &weights, &x)
            })
            .expect("chunked guidance matches the reference");
    });
}
