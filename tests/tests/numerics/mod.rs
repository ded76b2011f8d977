//! Shared by the numeric tests: seeded inputs, running a library policy at a
//! step, hand-written f64 statistics, and the accuracy checks of `docs/architecture.md`, section 5.
#![allow(dead_code)]

pub mod fdg;

use cfg_core::expr::{Expr, Policy};
use cfg_core::lower::{lower, Overrides};
use cfg_core::schedule::StepContext;
use cfg_core::state::GuidanceState;
use cfg_core::{cpu, DType, Shape, Tensor};
use proptest::test_runner::{Config, RngSeed};
use std::collections::BTreeMap;

/// Fixed seed, no persistence files, few cases: CI stays fast and repeatable.
pub fn config(cases: u32) -> Config {
    Config { cases, rng_seed: RngSeed::Fixed(0x05ee_dcf9), failure_persistence: None, ..Config::default() }
}

/// A library policy, which must load without warnings.
pub fn library(name: &str) -> Policy {
    let loaded = cfg_policies::resolve(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(loaded.warnings.is_empty(), "{name}: {:?}", loaded.warnings);
    loaded.policy
}

/// `shape` ([B, T, D]) made to fit the layout a policy's outputs declare:
/// a [B, C, H, W] latent becomes [B, T, 4, 2·D] (rows and columns even, at
/// least 4, as FDG's two-level pyramid needs), a [B, C, F, H, W] one
/// [B, T, 12, 2, D]; without a layout, `shape`.
pub fn shape_for(policy: &Policy, shape: &Shape) -> Shape {
    let axes = policy.outputs.iter().filter_map(|(_, o)| o.layout.as_ref()).map(|l| l.axes.len()).max();
    match (axes, shape.dims()) {
        (Some(4), &[b, t, d]) => Shape::new([b, t, 4, 2 * d.max(2)]),
        // [B, C, F, H, W] (MAGI-1's chunks are 6 frames).
        (Some(5), &[b, t, d]) => Shape::new([b, t, 12, 2, d]),
        _ => shape.clone(),
    }
}

/// SplitMix64: a tiny seeded generator, so inputs follow from one u64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform(-2.0, 2.0) as f32).collect()
    }
}

/// One random prediction per branch of a policy, in one dtype and shape.
pub struct Case {
    pub dtype: DType,
    pub shape: Shape,
    pub branches: BTreeMap<String, Tensor>,
}

impl Case {
    pub fn random(policy: &Policy, dtype: DType, shape: Shape, seed: u64) -> Case {
        let mut rng = Rng::new(seed);
        let branches = policy
            .branches
            .names()
            .map(|name| (name.to_string(), Tensor::from_f32(dtype, shape.clone(), &rng.values(shape.numel()))))
            .collect();
        Case { dtype, shape, branches }
    }

    /// Replaces one branch's values (rounded to the case's dtype).
    pub fn set(&mut self, name: &str, values: &[f32]) {
        self.branches.insert(name.to_string(), Tensor::from_f32(self.dtype, self.shape.clone(), values));
    }

    /// A branch's values as stored (after rounding to the dtype), in f64.
    pub fn get(&self, name: &str) -> Vec<f64> {
        self.branches[name].to_f32().into_iter().map(f64::from).collect()
    }

    /// Lowers `policy` at `ctx` and evaluates every output on the CPU.
    /// Returns (output name, result, branches the program read).
    pub fn run(
        &self,
        policy: &Policy,
        ctx: &StepContext,
        state: &mut GuidanceState,
        overrides: &Overrides,
    ) -> Vec<(String, Tensor, Vec<String>)> {
        let step = lower(policy, ctx, state, overrides).expect("library policies lower");
        step.outputs
            .iter()
            .map(|program| {
                let inputs: Vec<&Tensor> = program.branches.iter().map(|b| &self.branches[b]).collect();
                let out = cpu::evaluate(program, &inputs, self.dtype, &self.shape, state).expect("inputs match");
                (program.output.clone(), out, program.branches.clone())
            })
            .collect()
    }
}

/// The element groups of a statistic, written out by hand.
#[derive(Debug, Clone, Copy)]
pub enum Group {
    /// Each token: consecutive runs of the last dim.
    Token,
    /// Each sample: consecutive runs of all non-batch dims.
    Sample,
    /// Everything.
    Tensor,
}

pub fn groups(shape: &Shape, group: Group) -> Vec<Vec<usize>> {
    let n = shape.numel();
    let len = match group {
        Group::Token => shape.0[shape.0.len() - 1],
        Group::Sample => n / shape.0[0],
        Group::Tensor => n,
    };
    (0..n / len).map(|g| (g * len..(g + 1) * len).collect()).collect()
}

pub fn dot(a: &[f64], b: &[f64], idx: &[usize]) -> f64 {
    idx.iter().map(|&i| a[i] * b[i]).sum()
}

pub fn norm(a: &[f64], idx: &[usize]) -> f64 {
    dot(a, a, idx).sqrt()
}

/// Unbiased (N − 1) standard deviation, as torch's `std`.
pub fn std(a: &[f64], idx: &[usize]) -> f64 {
    let n = idx.len() as f64;
    let mean = idx.iter().map(|&i| a[i]).sum::<f64>() / n;
    (idx.iter().map(|&i| (a[i] - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// u + s·(c − u), element-wise.
pub fn cfg(c: &[f64], u: &[f64], s: f64) -> Vec<f64> {
    c.iter().zip(u).map(|(c, u)| u + s * (c - u)).collect()
}

/// Σ w_k·x_k, element-wise.
pub fn mix(terms: &[(f64, &[f64])]) -> Vec<f64> {
    let n = terms[0].1.len();
    (0..n).map(|i| terms.iter().map(|(w, x)| w * x[i]).sum()).collect()
}

/// Multiplies each group of `g` by `factor(group indices)`.
pub fn scale_groups(g: &[f64], shape: &Shape, group: Group, factor: impl Fn(&[usize]) -> f64) -> Vec<f64> {
    let mut out = g.to_vec();
    for idx in groups(shape, group) {
        let f = factor(&idx);
        for &i in &idx {
            out[i] = g[i] * f;
        }
    }
    out
}

/// `docs/architecture.md`, section 5: in f32, ‖out − ref‖/‖ref‖ ≤ 1e-6; in f16/bf16, every element within
/// the rounding of the f64 result to the dtype plus one ulp.
pub fn check(out: &Tensor, reference: &[f64]) -> Result<(), String> {
    let got: Vec<f64> = out.to_f32().into_iter().map(f64::from).collect();
    assert_eq!(got.len(), reference.len());
    match out.dtype() {
        DType::F32 => {
            let num = got.iter().zip(reference).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
            let den = reference.iter().map(|b| b * b).sum::<f64>().sqrt();
            let rel = if den == 0.0 { num } else { num / den };
            if rel <= 1e-6 {
                Ok(())
            } else {
                Err(format!("f32 relative error {rel:e} > 1e-6"))
            }
        }
        dtype => {
            for (i, (&a, &r)) in got.iter().zip(reference).enumerate() {
                let bound = (dtype.round_f64(r) - r).abs() + dtype.ulp(r);
                if (a - r).abs() > bound {
                    return Err(format!("{dtype} element {i}: got {a}, reference {r}, bound {bound:e}"));
                }
            }
            Ok(())
        }
    }
}

/// Bit patterns of a tensor, for bit-exact comparisons.
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.bits()
}

/// Sets the APG node's parameters (the library file fixes β, threshold and η).
pub fn set_apg(policy: &mut Policy, b: f64, thr: f64, e: f64) {
    match &mut policy.outputs.0[0].1.guidance {
        Expr::Apg { momentum, norm_threshold, eta, .. } => {
            *momentum = cfg_core::expr::ScaleRef::Value(b);
            *norm_threshold = cfg_core::expr::ScaleRef::Value(thr);
            *eta = cfg_core::expr::ScaleRef::Value(e);
        }
        other => panic!("apg.ron's output is {}", other.operator()),
    }
}

/// diffusers' `normalized_guidance` with its `MomentumBuffer`, restated in f64.
#[allow(clippy::too_many_arguments)]
pub fn apg_reference(
    c: &[f64],
    u: &[f64],
    shape: &Shape,
    s: f64,
    momentum: f64,
    threshold: f64,
    eta: f64,
    running: &mut Option<Vec<f64>>,
) -> Vec<f64> {
    let mut diff: Vec<f64> = c.iter().zip(u).map(|(c, u)| c - u).collect();
    if momentum != 0.0 {
        let r: Vec<f64> = match running.as_ref() {
            Some(prev) => diff.iter().zip(prev).map(|(d, r)| d + momentum * r).collect(),
            None => diff.clone(),
        };
        *running = Some(r.clone());
        diff = r;
    }
    if threshold > 0.0 {
        let d = diff.clone();
        diff = scale_groups(&d, shape, Group::Sample, |idx| (threshold / norm(&d, idx)).min(1.0));
    }
    let coef = scale_groups(&vec![1.0; c.len()], shape, Group::Sample, |idx| {
        let n = norm(c, idx).max(1e-12);
        dot(&diff, c, idx) / (n * n)
    });
    (0..c.len())
        .map(|k| {
            let par = coef[k] * c[k];
            let perp = diff[k] - par;
            u[k] + s * (perp + eta * par)
        })
        .collect()
}
