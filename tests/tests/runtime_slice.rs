//! Per-branch output slicing: a branch whose model output carries extra
//! tokens is cut to the output's shape before the combine. The analytic
//! model pads such a branch's outputs with junk tokens
//! (`cfg_gmm::extra_tokens`), so a correct slice gives the bits of the
//! unsliced run, and a model output that does not fit is a typed error
//! naming the rank, step, branch, output and the expected shape.

mod runtime_support;

use cfg_core::branch::OutputSlice;
use cfg_core::expr::Policy;
use cfg_runtime::scheduler::{Sampler, SamplerKind};
use cfg_runtime::{Call, Mode, Model, ModelError, OutputInfo, RuntimeError, SampleOptions};
use runtime_support::*;

fn options(mode: Mode) -> SampleOptions {
    SampleOptions {
        steps: 6,
        sampler: Sampler::new(SamplerKind::Euler),
        seed: 5,
        mode,
        fingerprint_every: 1,
        ..SampleOptions::default()
    }
}

fn with_slices(p: &Policy, slices: &[(&str, OutputSlice)]) -> Policy {
    let mut p = p.clone();
    for (name, spec) in p.branches.0.iter_mut() {
        spec.slice = slices.iter().find(|(n, _)| n == name).map(|(_, s)| *s);
    }
    p
}

fn slice(axis: usize, offset: usize, from_end: bool) -> OutputSlice {
    OutputSlice { axis, offset, from_end }
}

#[test]
fn sliced_branches_give_the_unsliced_bits_on_every_world_size() {
    let declared = policy("ideogram4");
    assert!(declared.branches.get("cond").and_then(|b| b.slice).is_some(), "ideogram4 declares its slice");
    let plain = with_slices(&declared, &[]);
    let model = small_tokens(&plain);
    for mode in [Mode::Deterministic, Mode::Fast] {
        let want = hex(&run_ok(&model, &plain, 1, &options(mode))[0].fingerprint());
        for slices in [
            vec![("cond", slice(1, 0, true))],
            vec![("cond", slice(1, 2, false))],
            vec![("cond", slice(2, 1, true)), ("uncond", slice(1, 0, false))],
        ] {
            let sliced = with_slices(&declared, &slices);
            for world in 1..=4 {
                for (r, s) in run_ok(&model, &sliced, world, &options(mode)).iter().enumerate() {
                    assert_eq!(hex(&s.fingerprint()), want, "{mode:?} {slices:?}: rank {r} of {world}");
                }
            }
        }
    }
}

/// The analytic model, with `drop` tokens removed from every prediction of
/// the sliced branches (a model whose output is shorter than the slice needs).
struct Short<'a> {
    inner: &'a cfg_gmm::GmmModel,
    drop: usize,
}

impl Model for Short<'_> {
    fn outputs(&self) -> Vec<OutputInfo> {
        self.inner.outputs()
    }
    fn predict(&self, call: &Call<'_>) -> Result<Vec<Vec<cfg_core::Tensor>>, ModelError> {
        let mut out = self.inner.predict(call)?;
        for ((_, spec), per_output) in call.branches.iter().zip(&mut out) {
            if spec.slice.is_none() {
                continue;
            }
            for t in per_output.iter_mut() {
                let d = t.shape.dims().to_vec();
                let keep = (d[1] - self.drop) * d[2];
                let v: Vec<f32> = t.to_f32().chunks(d[1] * d[2]).flat_map(|s| s[..keep].to_vec()).collect();
                *t = cfg_core::Tensor::from_f32(t.dtype(), cfg_core::Shape::new([d[0], d[1] - self.drop, d[2]]), &v);
            }
        }
        Ok(out)
    }
}

#[test]
fn a_prediction_too_short_for_its_slice_names_branch_step_and_shapes() {
    // The model pads 3 junk tokens before the real 4 (`from_end`); dropping 5
    // leaves 2 tokens where the slice needs 4.
    let p = with_slices(&policy("ideogram4"), &[("cond", slice(1, 0, true))]);
    let inner = small_tokens(&p);
    let model = Short { inner: &inner, drop: 5 };
    for (r, res) in run(&model, &p, 2, &options(Mode::Deterministic)).into_iter().enumerate() {
        let e = res.expect_err("the slice does not fit");
        let text = e.to_string();
        assert_eq!(e.step(), Some(0), "rank {r}: {text}");
        if let RuntimeError::BadPrediction { branch, output, expected, got, .. } = &e {
            assert_eq!((branch.as_str(), output.as_str()), ("cond", "sample"), "{text}");
            assert!(expected.contains("[3, ≥4, 3]") && expected.contains("the last 4"), "{text}");
            assert!(got.contains("[3, 2, 3]"), "{text}");
        } else {
            // The other rank learns of it from the failing one.
            assert!(text.contains("branch `cond`") || text.contains("rank"), "rank {r}: {text}");
        }
    }
}

#[test]
fn a_slice_beyond_the_predictions_axes_is_an_error() {
    // No layout declares the rank, so the model's 3-axis output meets a slice along axis 3.
    let p = with_slices(&policy("ideogram4"), &[("cond", slice(3, 0, false))]);
    let model = small_tokens(&p);
    let res = run(&model, &p, 1, &options(Mode::Deterministic)).remove(0);
    let text = res.expect_err("axis 3 of a 3-axis output").to_string();
    assert!(text.contains("branch `cond`") && text.contains("axis 3") && text.contains("step 0"), "{text}");
}
