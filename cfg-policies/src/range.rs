//! Folded weights against the f32 range, checked before any step runs.
//!
//! Lowering folds every linear piece into one f64 weight per branch and rounds
//! it to f32; a weight beyond ±3.4e38 would become infinite and turn every
//! output into NaN. This bounds each weight from above with every scale at its
//! largest magnitude over the run (triangle inequality), so a policy that
//! passes here can never overflow a weight, whatever the step.

use cfg_core::expr::{Expr, Policy, ScaleRef};
use std::collections::BTreeMap;

/// An upper bound on the magnitude of each folded weight, by what it weighs
/// (`branch `c``, or `the result of `Apg``).
type Bounds = BTreeMap<String, f64>;

/// A weight that can leave the f32 range.
#[derive(Debug, Clone, PartialEq)]
pub struct OutOfRange {
    /// The output (or named value) whose expression holds it.
    pub output: String,
    /// What it weighs.
    pub what: String,
    /// The bound.
    pub bound: f64,
}

/// The first weight of `policy` whose bound exceeds f32's largest finite value.
/// Named values must be free of cycles.
pub fn check(policy: &Policy) -> Option<OutOfRange> {
    let mut walker = Walker { policy, found: None };
    for (name, out) in policy.outputs.iter() {
        for e in std::iter::once(&out.guidance).chain(&out.renoise) {
            let b = walker.expr(e, name, 0);
            walker.check(name, &b);
        }
        if let Some(f) = walker.found.take() {
            return Some(f);
        }
    }
    None
}

struct Walker<'a> {
    policy: &'a Policy,
    found: Option<OutOfRange>,
}

/// Named values may nest; this deep is certainly a mistake (and stack-safe).
const MAX_DEPTH: usize = 64;

fn add(mut a: Bounds, b: &Bounds, k: f64) -> Bounds {
    for (what, w) in b {
        *a.entry(what.clone()).or_insert(0.0) += k * w;
    }
    a
}

impl Walker<'_> {
    fn scale(&self, s: &ScaleRef) -> f64 {
        match s {
            ScaleRef::Value(v) => v.abs(),
            ScaleRef::Named(n) => self.policy.scales.get(n).map_or(0.0, |s| s.max_abs()),
        }
    }

    fn check(&mut self, output: &str, b: &Bounds) {
        if self.found.is_some() {
            return;
        }
        if let Some((what, bound)) = b.iter().find(|(_, w)| w.is_nan() || **w > f32::MAX as f64) {
            self.found = Some(OutOfRange { output: output.to_string(), what: what.clone(), bound: *bound });
        }
    }

    /// An operator's operand: materialized on its own, so checked on its own.
    fn operand(&mut self, e: &Expr, output: &str, depth: usize) {
        let b = self.expr(e, output, depth + 1);
        self.check(output, &b);
    }

    fn expr(&mut self, e: &Expr, output: &str, depth: usize) -> Bounds {
        if depth > MAX_DEPTH {
            return Bounds::new();
        }
        let d = depth + 1;
        match e {
            Expr::Ref(b) => Bounds::from([(format!("branch `{b}`"), 1.0)]),
            Expr::Use(v) => match self.policy.values.get(v) {
                Some(e) => self.expr(e, output, d),
                None => Bounds::new(),
            },
            Expr::Sum(terms) => terms.iter().fold(Bounds::new(), |acc, t| {
                let b = self.expr(t, output, d);
                add(acc, &b, 1.0)
            }),
            Expr::Diff(a, b) => {
                let a = self.expr(a, output, d);
                let b = self.expr(b, output, d);
                add(a, &b, 1.0)
            }
            Expr::Scaled { scale, offset, term } => {
                let k = self.scale(scale) + self.scale(offset);
                let t = self.expr(term, output, d);
                add(Bounds::new(), &t, k)
            }
            Expr::Cfg { cond, uncond, scale, original } => {
                let s = self.scale(scale);
                let c = self.expr(cond, output, d);
                let u = self.expr(uncond, output, d);
                let base = if *original { c.clone() } else { u.clone() };
                add(add(base, &c, s), &u, s)
            }
            Expr::Adaptive { cond, uncond, scale, .. } => {
                // Both operands are also materialized on their own (the latch's cosine).
                let s = self.scale(scale);
                let c = self.expr(cond, output, d);
                let u = self.expr(uncond, output, d);
                self.check(output, &c);
                self.check(output, &u);
                add(add(u.clone(), &c, s), &u, s)
            }
            Expr::Windowed { term, otherwise, .. } => {
                let t = self.expr(term, output, d);
                match otherwise {
                    Some(e) => {
                        // Either one or the other is lowered at a step: the larger bound holds.
                        let o = self.expr(e, output, d);
                        let mut b = t;
                        for (what, w) in o {
                            let e = b.entry(what).or_insert(0.0);
                            *e = e.max(w);
                        }
                        b
                    }
                    None => t,
                }
            }
            _ => {
                // A non-linear operator: its operands are materialized on their
                // own; its result enters the enclosing form with weight 1.
                for c in e.children() {
                    self.operand(c, output, d);
                }
                let scales = e.params().into_iter().filter(|(field, _)| field.ends_with("scale"));
                for (field, s) in scales {
                    let s = self.scale(s);
                    let what = format!("the {field} of `{}`", e.operator());
                    self.check(output, &Bounds::from([(what, s)]));
                }
                Bounds::from([(format!("the result of `{}`", e.operator()), 1.0)])
            }
        }
    }
}
