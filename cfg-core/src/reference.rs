//! The f64 reference evaluator: the same program, every operation in f64 with
//! plain sums. Accuracy reports compare against it by ‖out − ref‖/‖ref‖.

use crate::program::{Op, Program, Value};
use crate::reduce::{Groups, Reduce};
use crate::{Shape, Tensor};
use std::collections::BTreeMap;

/// The reference's own operator state (APG momentum in f64).
#[derive(Debug, Clone, Default)]
pub struct ReferenceState {
    momentum: BTreeMap<String, Vec<f64>>,
}

impl ReferenceState {
    /// A fresh state (start of sampling).
    pub fn new() -> Self {
        Self::default()
    }
}

/// Evaluates `program` in f64. `inputs` follow `program.branches`.
pub fn evaluate_f64(program: &Program, inputs: &[&Tensor], shape: &Shape, state: &mut ReferenceState) -> Vec<f64> {
    let n = shape.numel();
    let branches: Vec<Vec<f64>> = inputs.iter().map(|t| t.to_f32().into_iter().map(f64::from).collect()).collect();
    let forms: Vec<Vec<f64>> = program
        .forms
        .iter()
        .map(|f| (0..n).map(|i| f.terms.iter().map(|&(b, w)| w as f64 * branches[b][i]).sum()).collect())
        .collect();
    let mut ops: Vec<Vec<f64>> = Vec::new();
    for op in &program.ops {
        let get = |v: Value, ops: &Vec<Vec<f64>>| -> Vec<f64> {
            match v {
                Value::Zero => vec![0.0; n],
                Value::Form(i) => forms[i].clone(),
                Value::Op(i) => ops[i].clone(),
            }
        };
        let out = match op {
            Op::Mix { terms } => {
                let vals: Vec<(Vec<f64>, f64)> = terms.iter().map(|&(v, w)| (get(v, &ops), w as f64)).collect();
                (0..n).map(|i| vals.iter().map(|(v, w)| w * v[i]).sum()).collect()
            }
            Op::Renorm { input, reference, over, eps, min, max } => {
                let (g, r) = (get(*input, &ops), get(*reference, &ops));
                per_group(&g, shape, *over, |idx| {
                    let nr = norm(&r, idx);
                    let ng = norm(&g, idx);
                    if ng + eps == 0.0 {
                        return 1.0;
                    }
                    let mut f = nr / (ng + eps);
                    if let Some(lo) = min {
                        f = f.max(*lo);
                    }
                    if let Some(hi) = max {
                        f = f.min(*hi);
                    }
                    f
                })
            }
            Op::NormCap { input, reference, ratio } => {
                let (g, r) = (get(*input, &ops), get(*reference, &ops));
                let all: Vec<usize> = (0..n).collect();
                let (nr, ng) = (norm(&r, &all), norm(&g, &all));
                let f = if ng > ratio * nr { ratio * nr / ng } else { 1.0 };
                g.iter().map(|x| x * f).collect()
            }
            Op::StdRescale { input, reference, phi, over } => {
                let (g, r) = (get(*input, &ops), get(*reference, &ops));
                per_group(&g, shape, *over, |idx| {
                    let sg = std(&g, idx);
                    if sg == 0.0 {
                        1.0
                    } else {
                        phi * std(&r, idx) / sg + (1.0 - phi)
                    }
                })
            }
            Op::ZeroStar { cond, uncond, scale, original } => {
                let (c, u) = (get(*cond, &ops), get(*uncond, &ops));
                let alpha =
                    per_group(&vec![1.0; n], shape, Reduce::Sample, |idx| dot(&c, &u, idx) / (dot(&u, &u, idx) + 1e-8));
                let s = *scale as f64;
                (0..n)
                    .map(|i| {
                        let ua = alpha[i] * u[i];
                        let base = if *original { c[i] } else { ua };
                        base + s * (c[i] - ua)
                    })
                    .collect()
            }
            Op::Apg { cond, uncond, scale, momentum, norm_threshold, eta, original, slot } => {
                let (c, u) = (get(*cond, &ops), get(*uncond, &ops));
                let mut delta: Vec<f64> = (0..n).map(|i| c[i] - u[i]).collect();
                if *momentum != 0.0 {
                    if let Some(prev) = state.momentum.get(slot).filter(|p| p.len() == n) {
                        delta = (0..n).map(|i| delta[i] + *momentum as f64 * prev[i]).collect();
                    }
                    state.momentum.insert(slot.clone(), delta.clone());
                }
                if *norm_threshold > 0.0 {
                    delta = per_group(&delta, shape, Reduce::Sample, |idx| {
                        let nd = norm(&delta, idx);
                        if nd == 0.0 {
                            1.0
                        } else {
                            (norm_threshold / nd).min(1.0)
                        }
                    });
                }
                let coef = per_group(&vec![1.0; n], shape, Reduce::Sample, |idx| {
                    let nc = norm(&c, idx).max(1e-12);
                    dot(&delta, &c, idx) / (nc * nc)
                });
                (0..n)
                    .map(|i| {
                        let par = coef[i] * c[i];
                        let update = (delta[i] - par) + *eta as f64 * par;
                        let base = if *original { c[i] } else { u[i] };
                        base + *scale as f64 * update
                    })
                    .collect()
            }
            Op::MagnitudeAware { cond, uncond, scale, alpha } => {
                let (c, u) = (get(*cond, &ops), get(*uncond, &ops));
                let delta: Vec<f64> = (0..n).map(|i| c[i] - u[i]).collect();
                let s = per_group(&vec![1.0; n], shape, Reduce::Sample, |idx| {
                    let nu = norm(&u, idx);
                    let ratio = if nu > 0.0 { norm(&delta, idx) / nu } else { f64::INFINITY };
                    1.0 + (scale - 1.0) * (-alpha * ratio).exp()
                });
                (0..n).map(|i| u[i] + s[i] * delta[i]).collect()
            }
            Op::MomentumCfg { cond, uncond, scale, momentum, original, slot } => {
                let (c, u) = (get(*cond, &ops), get(*uncond, &ops));
                let mut running: Vec<f64> = (0..n).map(|i| c[i] - u[i]).collect();
                if let Some(prev) = state.momentum.get(slot).filter(|p| p.len() == n) {
                    running = (0..n).map(|i| running[i] + *momentum as f64 * prev[i]).collect();
                }
                state.momentum.insert(slot.clone(), running);
                let s = *scale as f64;
                (0..n).map(|i| if *original { c[i] } else { u[i] } + s * (c[i] - u[i])).collect()
            }
            Op::Reject { input, direction, over } => {
                let (x, d) = (get(*input, &ops), get(*direction, &ops));
                let groups = Groups::new(*over, shape);
                let mut out = x.clone();
                for g in 0..groups.count {
                    let idx: Vec<usize> = (0..groups.len).map(|k| groups.index(g, k)).collect();
                    let dd = dot(&d, &d, &idx);
                    let k = if dd == 0.0 { 0.0 } else { dot(&x, &d, &idx) / dd };
                    for &i in &idx {
                        out[i] = x[i] - k * d[i];
                    }
                }
                out
            }
            Op::Chunked { cond, prefix, uncond, weights, chunk_frames, layout } => {
                let (c, pre, u) = (get(*cond, &ops), get(*prefix, &ops), get(*uncond, &ops));
                match crate::chunked::Chunks::new(layout, shape, *chunk_frames, weights.len()) {
                    Ok(ch) => (0..n)
                        .map(|i| {
                            let w = weights[ch.chunk_of(i)].map(f64::from);
                            w[0] * c[i] + w[1] * pre[i] + w[2] * u[i]
                        })
                        .collect(),
                    Err(_) => vec![f64::NAN; n],
                }
            }
            Op::Fdg { cond, uncond, bands, original, layout } => {
                let (c, u) = (get(*cond, &ops), get(*uncond, &ops));
                match crate::fdg::Pyramid::new(layout, shape, bands.len()) {
                    Ok(p) => crate::fdg_reference::fdg_f64(&p, &c, &u, bands, *original),
                    // A shape the pyramid cannot use: the evaluators refuse it.
                    Err(_) => vec![f64::NAN; n],
                }
            }
            Op::Tcfg { cond, uncond, scale, original } => {
                let (c, u) = (get(*cond, &ops), get(*uncond, &ops));
                let groups = Groups::new(Reduce::Sample, shape);
                let mut out = vec![0.0; n];
                for g in 0..groups.count {
                    let idx: Vec<usize> = (0..groups.len).map(|k| groups.index(g, k)).collect();
                    let (a, b) = tcfg_f64(dot(&c, &c, &idx), dot(&c, &u, &idx), dot(&u, &u, &idx));
                    for &i in &idx {
                        let up = a * c[i] + b * u[i];
                        let base = if *original { c[i] } else { up };
                        out[i] = base + *scale as f64 * (c[i] - up);
                    }
                }
                out
            }
        };
        ops.push(out);
    }
    match program.result {
        Value::Zero => vec![0.0; n],
        Value::Form(i) => forms[i].clone(),
        Value::Op(i) => ops[i].clone(),
    }
}

/// Multiplies each element of `v` by `factor(indices of its group)`.
fn per_group(v: &[f64], shape: &Shape, over: Reduce, factor: impl Fn(&[usize]) -> f64) -> Vec<f64> {
    let groups = Groups::new(over, shape);
    let mut out = v.to_vec();
    for g in 0..groups.count {
        let idx: Vec<usize> = (0..groups.len).map(|k| groups.index(g, k)).collect();
        let f = factor(&idx);
        for &i in &idx {
            out[i] = v[i] * f;
        }
    }
    out
}

/// TCFG's (α, β) with u' = α·c + β·u, in f64 (see [`crate::tcfg`]).
pub fn tcfg_f64(cc: f64, cu: f64, uu: f64) -> (f64, f64) {
    let (w0, w1) = crate::tcfg::top_eigenvector(cc, cu, uu);
    let n2 = w0 * w0 + w1 * w1;
    if n2 == 0.0 {
        return (0.0, 0.0);
    }
    (w0 * w1 / n2, w1 * w1 / n2)
}

fn dot(a: &[f64], b: &[f64], idx: &[usize]) -> f64 {
    idx.iter().map(|&i| a[i] * b[i]).sum()
}

fn norm(a: &[f64], idx: &[usize]) -> f64 {
    dot(a, a, idx).sqrt()
}

fn std(a: &[f64], idx: &[usize]) -> f64 {
    let n = idx.len() as f64;
    if idx.len() < 2 {
        return 0.0;
    }
    let mean = idx.iter().map(|&i| a[i]).sum::<f64>() / n;
    (idx.iter().map(|&i| (a[i] - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// ‖a − b‖ / ‖b‖ (0 when both are zero).
pub fn relative_error(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if den == 0.0 {
        num
    } else {
        num / den
    }
}
