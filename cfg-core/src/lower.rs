//! Lowering: a policy's expressions at one step become canonical programs.
//!
//! Every linear piece is folded in f64 into one weight per branch (so
//! `u + 1·(c − u)` lowers to exactly `1·c`), windows that are off at this step
//! vanish with their branches, and stateful operators consult the
//! [`GuidanceState`].

use crate::error::CoreError;
use crate::expr::{Expr, Policy, ScaleRef};
use crate::lower_cache::Read;
use crate::program::{FdgBand, Form, Latch, Op, Program, StepProgram, Value};
use crate::schedule::{ChunkTimes, StepContext};
use crate::state::GuidanceState;
use std::collections::BTreeMap;

/// Scale values that replace the policy's own (`--scale NAME=V`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Name → constant value.
    pub scales: BTreeMap<String, f64>,
}

impl Overrides {
    /// No overrides.
    pub fn none() -> Self {
        Self::default()
    }

    /// One override.
    pub fn with(mut self, name: &str, value: f64) -> Self {
        self.scales.insert(name.to_string(), value);
        self
    }
}

/// Lowers every output of `policy` at step `ctx`.
pub fn lower(
    policy: &Policy,
    ctx: &StepContext,
    state: &GuidanceState,
    overrides: &Overrides,
) -> Result<StepProgram, CoreError> {
    lower_recording(policy, ctx, state, overrides, &mut Vec::new())
}

/// [`lower`], appending to `reads` everything it read from the step and the
/// state (what [`crate::lower_cache::LoweringCache`] checks to reuse it).
pub(crate) fn lower_recording(
    policy: &Policy,
    ctx: &StepContext,
    state: &GuidanceState,
    overrides: &Overrides,
    reads: &mut Vec<Read>,
) -> Result<StepProgram, CoreError> {
    let outputs = policy
        .outputs
        .iter()
        .map(|(name, spec)| {
            let mut l = Lowerer::new(policy, ctx, state, overrides, name, reads);
            l.layout = spec.layout.as_ref();
            let lin = l.expr(&spec.guidance, name)?;
            let result = l.materialize(lin)?;
            let renoise = match &spec.renoise {
                Some(e) => Some(l.renoise(e, name)?),
                None => None,
            };
            Ok(l.finish(name, spec.space, result, renoise))
        })
        .collect::<Result<Vec<_>, CoreError>>()?;
    let renoise = outputs.iter().map(Program::renoise_program).collect();
    Ok(StepProgram { outputs, renoise })
}

/// The value of scale `s` at `ctx` (`None`: its schedule needs a sigma the
/// step lacks). Lowering and the cache's check both read scales through it.
pub(crate) fn scale_at(
    policy: &Policy,
    overrides: &Overrides,
    ctx: &StepContext,
    s: &ScaleRef,
) -> Result<Option<f64>, CoreError> {
    Ok(match s {
        ScaleRef::Value(v) => Some(*v),
        ScaleRef::Named(n) => match overrides.scales.get(n) {
            Some(v) => Some(*v),
            None => policy.scales.get(n).ok_or_else(|| CoreError::Unknown { kind: "scale", name: n.clone() })?.at(ctx),
        },
    })
}

/// Each frame chunk's time at `ctx`: the step's own chunk times when it has
/// them, else one time for every chunk, `1 − sigma` (MAGI-1's t: 0 pure noise,
/// 1 clean; flow sigma: 1 pure noise); `None` with neither. Lowering and the
/// cache's check both read chunk times through it.
pub(crate) fn chunk_times(ctx: &StepContext) -> Option<ChunkTimes> {
    if !ctx.chunks.as_slice().is_empty() {
        return Some(ctx.chunks);
    }
    ctx.sigma.and_then(|s| ChunkTimes::new(&[1.0 - s]))
}

/// An operand of a linear combination before numbering.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Atom {
    Branch(String),
    Op(usize),
}

/// A linear combination of atoms with f64 weights (zero weights removed).
type Lin = BTreeMap<Atom, f64>;

fn add(mut a: Lin, b: &Lin, k: f64) -> Lin {
    for (atom, w) in b {
        let sum = a.get(atom).copied().unwrap_or(0.0) + k * w;
        if sum == 0.0 {
            a.remove(atom);
        } else {
            a.insert(atom.clone(), sum);
        }
    }
    a
}

fn scaled(a: &Lin, k: f64) -> Lin {
    add(Lin::new(), a, k)
}

struct Lowerer<'a> {
    policy: &'a Policy,
    ctx: &'a StepContext,
    state: &'a GuidanceState,
    overrides: &'a Overrides,
    output: &'a str,
    /// The output's declared layout.
    layout: Option<&'a crate::layout::Layout>,
    /// Every read of the step or the state, in order. Whatever the lowering
    /// consults must be recorded here, or the cache would reuse stale programs.
    reads: &'a mut Vec<Read>,
    forms: Vec<BTreeMap<String, f32>>,
    ops: Vec<Op>,
    latches: Vec<Latch>,
    counters: Vec<String>,
    values: BTreeMap<String, Lin>,
    in_progress: Vec<String>,
}

impl<'a> Lowerer<'a> {
    fn new(
        policy: &'a Policy,
        ctx: &'a StepContext,
        state: &'a GuidanceState,
        overrides: &'a Overrides,
        output: &'a str,
        reads: &'a mut Vec<Read>,
    ) -> Self {
        Lowerer {
            policy,
            ctx,
            state,
            overrides,
            output,
            layout: None,
            reads,
            forms: Vec::new(),
            ops: Vec::new(),
            latches: Vec::new(),
            counters: Vec::new(),
            values: BTreeMap::new(),
            in_progress: Vec::new(),
        }
    }

    fn scale(&mut self, s: &ScaleRef) -> Result<f64, CoreError> {
        let name = match s {
            ScaleRef::Value(_) => "(literal)",
            ScaleRef::Named(n) => n.as_str(),
        };
        let v = scale_at(self.policy, self.overrides, self.ctx, s)?;
        self.reads.push(Read::Scale { scale: s.clone(), value: v });
        let v = v.ok_or(CoreError::SigmaRequired { step: self.ctx.step })?;
        if !v.is_finite() {
            return Err(CoreError::NonFiniteScale { name: name.to_string(), step: self.ctx.step });
        }
        if v.abs() > f32::MAX as f64 {
            return Err(self.out_of_range(format!("scale `{name}`"), v));
        }
        Ok(v)
    }

    fn optional(&mut self, s: &Option<ScaleRef>) -> Result<Option<f64>, CoreError> {
        s.as_ref().map(|s| self.scale(s)).transpose()
    }

    fn out_of_range(&self, what: String, value: f64) -> CoreError {
        CoreError::WeightOutOfRange { output: self.output.to_string(), what, value, step: self.ctx.step }
    }

    /// Lowers `e`; `path` names its position (the key of any operator state).
    fn expr(&mut self, e: &Expr, path: &str) -> Result<Lin, CoreError> {
        let child = |i: usize| format!("{path}.{i}");
        Ok(match e {
            Expr::Ref(b) => {
                if self.policy.branches.get(b).is_none() {
                    return Err(CoreError::Unknown { kind: "branch", name: b.clone() });
                }
                Lin::from([(Atom::Branch(b.clone()), 1.0)])
            }
            Expr::Use(name) => self.named_value(name)?,
            Expr::Sum(terms) => {
                let mut acc = Lin::new();
                for (i, t) in terms.iter().enumerate() {
                    let v = self.expr(t, &child(i))?;
                    acc = add(acc, &v, 1.0);
                }
                acc
            }
            Expr::Diff(a, b) => {
                let a = self.expr(a, &child(0))?;
                let b = self.expr(b, &child(1))?;
                add(a, &b, -1.0)
            }
            Expr::Scaled { scale, offset, term } => {
                let k = self.scale(scale)? + self.scale(offset)?;
                if k.abs() > f32::MAX as f64 {
                    return Err(self.out_of_range("a scale plus its offset".into(), k));
                }
                let t = self.expr(term, &child(0))?;
                scaled(&t, k)
            }
            Expr::Cfg { cond, uncond, scale, original } => {
                let s = self.scale(scale)?;
                let c = self.expr(cond, &child(0))?;
                let u = self.expr(uncond, &child(1))?;
                self.cfg_lin(&c, &u, s, *original)
            }
            Expr::Windowed { window, term, otherwise } => match self.read_window(window) {
                None => return Err(CoreError::SigmaRequired { step: self.ctx.step }),
                Some(true) => self.expr(term, &child(0))?,
                Some(false) => match otherwise {
                    Some(e) => self.expr(e, &child(1))?,
                    None => Lin::new(),
                },
            },
            Expr::Renorm { input, reference, over, min, max, eps } => {
                let (eps, min, max) = (self.scale(eps)?, self.optional(min)?, self.optional(max)?);
                let (input, reference) = self.pair(input, reference, path)?;
                self.push(Op::Renorm { input, reference, over: *over, eps, min, max })
            }
            Expr::NormCap { input, reference, ratio } => {
                let ratio = self.scale(ratio)?;
                let (input, reference) = self.pair(input, reference, path)?;
                self.push(Op::NormCap { input, reference, ratio })
            }
            Expr::StdRescale { input, reference, phi, over } => {
                let phi = self.scale(phi)?;
                let (input, reference) = self.pair(input, reference, path)?;
                self.push(Op::StdRescale { input, reference, phi, over: *over })
            }
            Expr::ZeroStar { cond, uncond, scale, zero_init_steps, original } => {
                let slot = format!("{}/{path}", self.output);
                let zeroed = self.state.count(&slot) < *zero_init_steps;
                self.reads.push(Read::ZeroInit { slot: slot.clone(), steps: *zero_init_steps, zeroed });
                self.counters.push(slot);
                if zeroed {
                    Lin::new()
                } else {
                    let s = self.scale(scale)? as f32;
                    let (cond, uncond) = self.pair(cond, uncond, path)?;
                    self.push(Op::ZeroStar { cond, uncond, scale: s, original: *original })
                }
            }
            Expr::Apg { cond, uncond, scale, momentum, norm_threshold, eta, original } => {
                let s = self.scale(scale)? as f32;
                let (momentum, norm_threshold, eta) =
                    (self.scale(momentum)? as f32, self.scale(norm_threshold)?, self.scale(eta)? as f32);
                let (cond, uncond) = self.pair(cond, uncond, path)?;
                let slot = format!("{}/{path}", self.output);
                self.push(Op::Apg { cond, uncond, scale: s, momentum, norm_threshold, eta, original: *original, slot })
            }
            Expr::MagnitudeAware { cond, uncond, scale, alpha } => {
                let (s, alpha) = (self.scale(scale)?, self.scale(alpha)?);
                let (cond, uncond) = self.pair(cond, uncond, path)?;
                self.push(Op::MagnitudeAware { cond, uncond, scale: s, alpha })
            }
            Expr::ApgMix {
                cond,
                uncond,
                cfg_scale,
                scale,
                apg_start_step,
                momentum,
                norm_threshold,
                eta,
                original,
            } => {
                let slot = format!("{}/{path}", self.output);
                let beta = self.scale(momentum)? as f32;
                if self.read_after(*apg_start_step) {
                    let (s, norm_threshold, eta) =
                        (self.scale(scale)? as f32, self.scale(norm_threshold)?, self.scale(eta)? as f32);
                    let (cond, uncond) = self.pair(cond, uncond, path)?;
                    self.push(Op::Apg {
                        cond,
                        uncond,
                        scale: s,
                        momentum: beta,
                        norm_threshold,
                        eta,
                        original: *original,
                        slot,
                    })
                } else if beta == 0.0 {
                    // No momentum to advance: plain CFG, folded.
                    let s = self.scale(cfg_scale)?;
                    let c = self.expr(cond, &child(0))?;
                    let u = self.expr(uncond, &child(1))?;
                    self.cfg_lin(&c, &u, s, *original)
                } else {
                    let s = self.scale(cfg_scale)? as f32;
                    let (cond, uncond) = self.pair(cond, uncond, path)?;
                    self.push(Op::MomentumCfg { cond, uncond, scale: s, momentum: beta, original: *original, slot })
                }
            }
            Expr::PerpNeg { pos, neg, empty, scale, neg_scale, over } => {
                let (s, sn) = (self.scale(scale)?, self.scale(neg_scale)?);
                let p = self.expr(pos, &child(0))?;
                let n = self.expr(neg, &child(1))?;
                let e = self.expr(empty, &child(2))?;
                let (pd, nd) = (add(p, &e, -1.0), add(n, &e, -1.0));
                let (input, direction) = (self.materialize(nd)?, self.materialize(pd.clone())?);
                let perp = self.push(Op::Reject { input, direction, over: *over });
                // empty + s·P − s·sn·N⊥
                add(add(e, &pd, s), &perp, -s * sn)
            }
            Expr::Fdg { cond, uncond, levels, original } => {
                let layout = self
                    .layout
                    .cloned()
                    .ok_or_else(|| CoreError::NeedsLayout { output: self.output.to_string(), operator: "Fdg" })?;
                let mut bands = Vec::with_capacity(levels.len());
                for level in levels {
                    let inside = match &level.window {
                        None => true,
                        Some(w) => self.read_window(w).ok_or(CoreError::SigmaRequired { step: self.ctx.step })?,
                    };
                    let s = self.scale(&level.scale)?;
                    let (weight, rescale) = (self.scale(&level.parallel_weight)?, self.scale(&level.rescale)?);
                    // diffusers' guider leaves a level whose scale is the identity's (1; 0 with `original`) as c_k.
                    let idle = if *original { s == 0.0 } else { s == 1.0 };
                    bands.push(FdgBand {
                        on: inside && !idle,
                        scale: s as f32,
                        parallel: (weight != 1.0).then_some(weight as f32),
                        rescale,
                    });
                }
                if bands.iter().all(|b| !b.on) {
                    // Every level is c_k: the pyramid rebuilds c, and u leaves the plan.
                    self.expr(cond, &child(0))?
                } else {
                    let (cond, uncond) = self.pair(cond, uncond, path)?;
                    self.push(Op::Fdg { cond, uncond, bands, original: *original, layout })
                }
            }
            Expr::Chunked { cond, prefix, uncond, thresholds, prefix_scales, text_scales, chunk_frames } => {
                let (times, given) = self.read_chunk_times();
                let times = times.ok_or(CoreError::SigmaRequired { step: self.ctx.step })?;
                let at = |t: f64| crate::chunked::lookup(thresholds, prefix_scales, text_scales, t);
                if !given {
                    // One time for the whole prediction: a linear form.
                    let (p, t) = at(times.as_slice().first().copied().unwrap_or(0.0));
                    let c = self.expr(cond, &child(0))?;
                    let pre = self.expr(prefix, &child(1))?;
                    let u = self.expr(uncond, &child(2))?;
                    add(add(scaled(&c, t), &pre, p - t), &u, 1.0 - p)
                } else {
                    let layout = self.layout.cloned().ok_or_else(|| CoreError::NeedsLayout {
                        output: self.output.to_string(),
                        operator: "Chunked",
                    })?;
                    let weights = times
                        .as_slice()
                        .iter()
                        .map(|&time| {
                            let (p, t) = at(time);
                            crate::chunked::weights(p, t)
                        })
                        .collect();
                    let c = self.expr(cond, &child(0))?;
                    let pre = self.expr(prefix, &child(1))?;
                    let u = self.expr(uncond, &child(2))?;
                    let (cond, prefix, uncond) = (self.materialize(c)?, self.materialize(pre)?, self.materialize(u)?);
                    self.push(Op::Chunked { cond, prefix, uncond, weights, chunk_frames: *chunk_frames, layout })
                }
            }
            Expr::Tcfg { cond, uncond, scale, original } => {
                let s = self.scale(scale)? as f32;
                let (cond, uncond) = self.pair(cond, uncond, path)?;
                self.push(Op::Tcfg { cond, uncond, scale: s, original: *original })
            }
            Expr::Adaptive { cond, uncond, scale, threshold } => {
                let slot = format!("{}/{path}", self.output);
                let c = self.expr(cond, &child(0))?;
                let latched = self.state.latched(&slot);
                self.reads.push(Read::Latched { slot: slot.clone(), latched });
                if latched {
                    c
                } else {
                    let s = self.scale(scale)?;
                    let u = self.expr(uncond, &child(1))?;
                    let (a, b) = (self.materialize(c.clone())?, self.materialize(u.clone())?);
                    let threshold = self.scale(threshold)?;
                    self.latches.push(Latch { a, b, threshold, slot });
                    self.cfg_lin(&c, &u, s, false)
                }
            }
        })
    }

    /// Whether this step comes after step `n`.
    fn read_after(&mut self, n: usize) -> bool {
        let after = self.ctx.step > n;
        self.reads.push(Read::After { step: n, after });
        after
    }

    /// Each chunk's time ([`chunk_times`]) and whether the step gave them
    /// (else one time for all), recorded.
    fn read_chunk_times(&mut self) -> (Option<ChunkTimes>, bool) {
        let (times, given) = (chunk_times(self.ctx), !self.ctx.chunks.as_slice().is_empty());
        self.reads.push(Read::Chunks { times, given });
        (times, given)
    }

    fn read_window(&mut self, window: &crate::window::Window) -> Option<bool> {
        let inside = window.contains(self.ctx);
        self.reads.push(Read::Window { window: window.clone(), inside });
        inside
    }

    fn cfg_lin(&self, c: &Lin, u: &Lin, s: f64, original: bool) -> Lin {
        let delta = add(c.clone(), u, -1.0);
        let base = if original { c } else { u };
        add(base.clone(), &delta, s)
    }

    fn pair(&mut self, a: &Expr, b: &Expr, path: &str) -> Result<(Value, Value), CoreError> {
        let a = self.expr(a, &format!("{path}.0"))?;
        let b = self.expr(b, &format!("{path}.1"))?;
        Ok((self.materialize(a)?, self.materialize(b)?))
    }

    fn named_value(&mut self, name: &str) -> Result<Lin, CoreError> {
        if let Some(v) = self.values.get(name) {
            return Ok(v.clone());
        }
        if self.in_progress.iter().any(|n| n == name) {
            return Err(CoreError::Cycle(name.to_string()));
        }
        let e =
            self.policy.values.get(name).ok_or_else(|| CoreError::Unknown { kind: "value", name: name.to_string() })?;
        self.in_progress.push(name.to_string());
        let lin = self.expr(e, &format!("value:{name}"))?;
        self.in_progress.pop();
        self.values.insert(name.to_string(), lin.clone());
        Ok(lin)
    }

    fn push(&mut self, op: Op) -> Lin {
        self.ops.push(op);
        Lin::from([(Atom::Op(self.ops.len() - 1), 1.0)])
    }

    /// Turns a linear combination into a program value, reusing equal forms.
    fn materialize(&mut self, lin: Lin) -> Result<Value, CoreError> {
        let mut branch_part = BTreeMap::new();
        let mut op_part = Vec::new();
        for (atom, w) in lin {
            let w32 = w as f32;
            if w32 == 0.0 {
                continue;
            }
            if !w32.is_finite() {
                let what = match &atom {
                    Atom::Branch(b) => format!("branch `{b}`"),
                    Atom::Op(i) => format!("the result of `{}`", self.ops[*i].name()),
                };
                return Err(self.out_of_range(what, w));
            }
            match atom {
                Atom::Branch(b) => {
                    branch_part.insert(b, w32);
                }
                Atom::Op(i) => op_part.push((Value::Op(i), w32)),
            }
        }
        let form = if branch_part.is_empty() {
            None
        } else if let Some(i) = self.forms.iter().position(|f| *f == branch_part) {
            Some(Value::Form(i))
        } else {
            self.forms.push(branch_part);
            Some(Value::Form(self.forms.len() - 1))
        };
        Ok(match (form, op_part.as_slice()) {
            (None, []) => Value::Zero,
            (Some(f), []) => f,
            (None, [(v, w)]) if *w == 1.0 => *v,
            _ => {
                let mut terms: Vec<(Value, f32)> = form.map(|f| (f, 1.0)).into_iter().collect();
                terms.extend(op_part);
                self.ops.push(Op::Mix { terms });
                Value::Op(self.ops.len() - 1)
            }
        })
    }

    /// Lowers an output's `renoise` expression into a form of the same
    /// program (a linear expression: no op, no state).
    fn renoise(&mut self, e: &Expr, name: &str) -> Result<Value, CoreError> {
        if let Some(operator) = e.first_nonlinear(&self.policy.values) {
            return Err(CoreError::NonLinearRenoise { output: name.to_string(), operator });
        }
        let lin = self.expr(e, &format!("{name}.renoise"))?;
        self.materialize(lin)
    }

    fn finish(self, name: &str, space: crate::expr::Space, result: Value, renoise: Option<Value>) -> Program {
        let mut branches: Vec<String> = self.forms.iter().flat_map(|f| f.keys().cloned()).collect();
        branches.sort();
        branches.dedup();
        let index = |b: &String| branches.binary_search(b).expect("collected above");
        let forms =
            self.forms.iter().map(|f| Form { terms: f.iter().map(|(b, w)| (index(b), *w)).collect() }).collect();
        Program {
            output: name.to_string(),
            space,
            layout: self.layout.cloned(),
            forms,
            ops: self.ops,
            latches: self.latches,
            counters: self.counters,
            result,
            renoise,
            branches,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::branch::{BranchSpec, Prompt};
    use crate::expr::{Named, OutputSpec, Space};
    use crate::program::Op;
    use crate::window::{Window, WindowRule};

    fn r(name: &str) -> Box<Expr> {
        Box::new(Expr::Ref(name.into()))
    }

    fn policy(guidance: Expr) -> Policy {
        Policy {
            name: "t".into(),
            summary: String::new(),
            source: String::new(),
            steps: None,
            branches: Named(vec![
                ("cond".into(), BranchSpec::prompt(Prompt::Positive)),
                ("uncond".into(), BranchSpec::prompt(Prompt::Negative)),
                ("skip".into(), BranchSpec::prompt(Prompt::Positive)),
            ]),
            scales: Named::default(),
            values: Named::default(),
            outputs: Named(vec![("x".into(), OutputSpec { space: Space::Eps, layout: None, guidance, renoise: None })]),
        }
    }

    #[test]
    fn renoise_is_one_more_form_of_the_program_and_must_be_linear() {
        let mut p = policy(cfg(0.8));
        p.outputs.0[0].1.renoise = Some(Expr::Ref("uncond".into()));
        let prog = lower(&p, &StepContext::new(0, 10), &GuidanceState::new(), &Overrides::none()).unwrap();
        let out = &prog.outputs[0];
        let Some(Value::Form(f)) = out.renoise else { panic!("a form: {:?}", out.renoise) };
        let uncond = out.branches.iter().position(|b| b == "uncond").unwrap();
        assert_eq!(out.forms[f].terms, vec![(uncond, 1.0)]);
        let rp = out.renoise_program().unwrap();
        assert!(rp.is_linear() && rp.result == Value::Form(f));
        // A program built without validation still refuses a non-linear renoise.
        p.outputs.0[0].1.renoise =
            Some(Expr::NormCap { input: r("uncond"), reference: r("cond"), ratio: ScaleRef::Value(1.0) });
        let e = lower(&p, &StepContext::new(0, 10), &GuidanceState::new(), &Overrides::none()).unwrap_err();
        assert!(matches!(e, CoreError::NonLinearRenoise { operator: "NormCap", .. }), "{e}");
    }

    fn cfg(scale: f64) -> Expr {
        Expr::Cfg { cond: r("cond"), uncond: r("uncond"), scale: ScaleRef::Value(scale), original: false }
    }

    fn lower0(p: &Policy, step: usize, n: usize, state: &GuidanceState) -> Program {
        lower(p, &StepContext::new(step, n), state, &Overrides::none()).unwrap().outputs.remove(0)
    }

    #[test]
    fn scale_one_folds_to_cond_alone() {
        let prog = lower0(&policy(cfg(1.0)), 0, 10, &GuidanceState::new());
        assert_eq!(prog.branches, vec!["cond".to_string()]);
        assert_eq!(prog.forms[0].terms, vec![(0, 1.0)]);
    }

    #[test]
    fn weights_fold_per_branch_in_name_order() {
        let prog = lower0(&policy(cfg(7.5)), 0, 10, &GuidanceState::new());
        assert_eq!(prog.branches, vec!["cond".to_string(), "uncond".to_string()]);
        assert_eq!(prog.forms[0].terms, vec![(0, 7.5), (1, -6.5)]);
        assert!(prog.is_linear());
    }

    #[test]
    fn an_off_window_drops_its_branch() {
        let slg = Expr::Sum(vec![
            cfg(7.0),
            Expr::Windowed {
                window: Window::Progress { start: 0.01, stop: 0.2, rule: WindowRule::DiffusersStrict },
                term: Box::new(Expr::Scaled {
                    scale: ScaleRef::Value(2.8),
                    offset: ScaleRef::Value(0.0),
                    term: Box::new(Expr::Diff(r("cond"), r("skip"))),
                }),
                otherwise: None,
            },
        ]);
        let p = policy(slg);
        let on = lower0(&p, 1, 50, &GuidanceState::new());
        assert!(on.branches.contains(&"skip".to_string()));
        let off = lower0(&p, 0, 50, &GuidanceState::new());
        assert!(!off.branches.contains(&"skip".to_string()));
        let off = lower0(&p, 10, 50, &GuidanceState::new());
        assert!(!off.branches.contains(&"skip".to_string()));
    }

    #[test]
    fn an_off_window_falls_back_to_its_else() {
        // diffusers' start/stop: CFG inside the window, cond alone outside.
        let p = policy(Expr::Windowed {
            window: Window::Steps { start: 2, stop: 4 },
            term: Box::new(cfg(5.0)),
            otherwise: Some(r("cond")),
        });
        let inside = lower0(&p, 2, 10, &GuidanceState::new());
        assert_eq!(inside.forms[0].terms, vec![(0, 5.0), (1, -4.0)]);
        for step in [0, 1, 4, 9] {
            let outside = lower0(&p, step, 10, &GuidanceState::new());
            assert_eq!(outside.branches, vec!["cond".to_string()], "step {step}");
            assert_eq!(outside.forms[0].terms, vec![(0, 1.0)]);
        }
    }

    #[test]
    fn operator_parameters_follow_their_schedules() {
        use crate::schedule::{Run, Schedule};
        let mut p = policy(Expr::StdRescale {
            input: Box::new(cfg(3.0)),
            reference: r("cond"),
            phi: ScaleRef::Named("phi".into()),
            over: crate::reduce::Reduce::Sample,
        });
        p.scales = Named(vec![(
            "phi".into(),
            Schedule::StepList(vec![Run { steps: 2, value: 0.7 }, Run { steps: 1, value: 0.0 }]),
        )]);
        let phi = |step| match lower0(&p, step, 3, &GuidanceState::new()).ops.last() {
            Some(Op::StdRescale { phi, .. }) => *phi,
            other => panic!("{other:?}"),
        };
        assert_eq!((phi(0), phi(1), phi(2)), (0.7, 0.7, 0.0));
    }

    #[test]
    fn zero_star_counts_from_explicit_start() {
        let p = policy(Expr::ZeroStar {
            cond: r("cond"),
            uncond: r("uncond"),
            scale: ScaleRef::Value(4.0),
            zero_init_steps: 1,
            original: false,
        });
        let mut state = GuidanceState::new();
        // Sampling may start at any step index (img2img): the first evaluated step is zero.
        let first = lower0(&p, 5, 10, &state);
        assert_eq!(first.result, Value::Zero);
        assert!(first.branches.is_empty());
        for slot in &first.counters {
            state.advance(slot);
        }
        let second = lower0(&p, 6, 10, &state);
        assert!(matches!(second.ops.last(), Some(Op::ZeroStar { .. })));
        state.start();
        assert_eq!(lower0(&p, 0, 10, &state).result, Value::Zero);
    }

    #[test]
    fn adaptive_latch_drops_uncond() {
        let p = policy(Expr::Adaptive {
            cond: r("cond"),
            uncond: r("uncond"),
            scale: ScaleRef::Value(5.0),
            threshold: ScaleRef::Value(0.99),
        });
        let mut state = GuidanceState::new();
        let before = lower0(&p, 0, 10, &state);
        assert_eq!(before.latches.len(), 1);
        assert_eq!(before.branches.len(), 2);
        state.latch(&before.latches[0].slot);
        let after = lower0(&p, 1, 10, &state);
        assert_eq!(after.branches, vec!["cond".to_string()]);
        assert!(after.latches.is_empty());
    }

    #[test]
    fn weights_beyond_f32_are_errors_naming_the_step_and_branch() {
        let p = policy(cfg(2.0));
        let over = Overrides::none();
        let ok = lower(&p, &StepContext::new(0, 4), &GuidanceState::new(), &over);
        assert!(ok.is_ok());
        // A literal beyond f32 (finite in f64).
        let err = lower(&policy(cfg(1e39)), &StepContext::new(2, 4), &GuidanceState::new(), &over).unwrap_err();
        assert!(matches!(&err, CoreError::WeightOutOfRange { step: 2, .. }), "{err}");
        // Each scale fits; their product, folded, does not.
        let nested = Expr::Cfg {
            cond: Box::new(Expr::Cfg {
                cond: r("cond"),
                uncond: r("skip"),
                scale: ScaleRef::Value(1e20),
                original: false,
            }),
            uncond: r("uncond"),
            scale: ScaleRef::Value(1e20),
            original: false,
        };
        let err = lower(&policy(nested), &StepContext::new(3, 4), &GuidanceState::new(), &over).unwrap_err();
        assert!(err.to_string().starts_with("step 3, output `x`: the folded weight of branch `cond`"), "{err}");
    }

    #[test]
    fn unknown_scale_and_missing_sigma_are_errors() {
        let p = policy(Expr::Cfg {
            cond: r("cond"),
            uncond: r("uncond"),
            scale: ScaleRef::Named("nope".into()),
            original: false,
        });
        let err = lower(&p, &StepContext::new(0, 1), &GuidanceState::new(), &Overrides::none()).unwrap_err();
        assert_eq!(err, CoreError::Unknown { kind: "scale", name: "nope".into() });
        let p = policy(Expr::Windowed {
            window: Window::Sigma { low: 0.1, high: 0.9 },
            term: Box::new(cfg(2.0)),
            otherwise: None,
        });
        let err = lower(&p, &StepContext::new(3, 5), &GuidanceState::new(), &Overrides::none()).unwrap_err();
        assert_eq!(err, CoreError::SigmaRequired { step: 3 });
    }
}
