//! Every numeric parameter of a policy, addressed by a path, so that a run can
//! override or sweep it (`cfg sample --set PATH=VALUE`, `--grid PATH=V1,V2`).
//!
//! Paths:
//! - `NAME`: a declared scale, replaced by the constant VALUE at every step;
//! - `NAME.FIELD`: a field of a declared scale's schedule (`start`, `end`,
//!   `high`, `low`, `boundary`; `value` of a `Const`; `K.value`, `K.until` of
//!   the K-th piece of a `Piecewise`, from 0);
//! - `[OUTPUT.]OPERATOR[K].FIELD`: a field of the K-th (from 0, in source
//!   order; `[0]` may be left out) `OPERATOR` in the expression of output (or
//!   named value) OUTPUT, for example `sample.Apg.momentum`,
//!   `video.StdRescale.phi`, `sample.Windowed[1].start`. OUTPUT may be left
//!   out when only one output or value has such an operator. A window's bounds
//!   are fields of its `Windowed` (`start`, `stop`; `low`, `high` for `Sigma`);
//!   `scale` is a field only where a number is written (a named scale is set
//!   by its name).
//!
//! [`parameters`] lists every path with its value.

use crate::error::PolicyError;
use crate::load::Loaded;
use crate::validate::validate;
use cfg_core::expr::{Expr, Policy, ScaleRef};
use cfg_core::schedule::Schedule;
use cfg_core::window::Window;
use thiserror::Error;

/// Why a `PATH=VALUE` could not be applied.
#[derive(Debug, Error)]
pub enum SetError {
    /// No parameter has this path.
    #[error("`{path}`: policy `{policy}` has no such parameter{hint} (`cfg check --params {policy}` lists them)")]
    Unknown {
        /// The path.
        path: String,
        /// The policy.
        policy: String,
        /// What might have been meant.
        hint: String,
    },
    /// The value does not fit the parameter.
    #[error("`{path}`: {why}")]
    BadValue {
        /// The path.
        path: String,
        /// What was expected.
        why: String,
    },
    /// The policy with the new values breaks a rule.
    #[error("`{path}={value}`: {source}")]
    Invalid {
        /// The path.
        path: String,
        /// The value, as a short number.
        value: String,
        /// The rule it breaks, at the position of the original value.
        source: PolicyError,
    },
}

/// One settable parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    /// Its path.
    pub path: String,
    /// Its current value (`None` for an absent optional field such as `Renorm`'s `max`).
    pub value: Option<f64>,
}

/// A parameter's storage.
enum Slot<'a> {
    F64(&'a mut f64),
    /// An optional parameter (`Renorm`'s `min`, `max`): absent, a literal, or a named scale.
    Opt(&'a mut Option<ScaleRef>),
    Count(&'a mut usize),
}

impl Slot<'_> {
    fn get(&self) -> Option<f64> {
        match self {
            Slot::F64(v) => Some(**v),
            Slot::Opt(v) => v.as_ref().and_then(ScaleRef::literal),
            Slot::Count(v) => Some(**v as f64),
        }
    }

    fn set(&mut self, value: f64) -> Result<(), String> {
        match self {
            Slot::F64(v) => **v = value,
            Slot::Opt(v) => **v = Some(ScaleRef::Value(value)),
            Slot::Count(v) => {
                if !(value >= 0.0 && value.fract() == 0.0 && value <= u32::MAX as f64) {
                    return Err(format!("expected a whole number ≥ 0, got {value}"));
                }
                **v = value as usize;
            }
        }
        Ok(())
    }
}

/// A parameter written as a number is a field; one written as a scale's
/// name is set by that name.
fn literal<'a>(name: impl Into<String>, p: &'a mut ScaleRef, out: &mut Vec<(String, Slot<'a>)>) {
    if let ScaleRef::Value(v) = p {
        out.push((name.into(), Slot::F64(v)));
    }
}

/// The settable fields of one expression node.
fn fields(e: &mut Expr) -> Vec<(String, Slot<'_>)> {
    let mut out = Vec::new();
    match e {
        Expr::Scaled { scale, offset, .. } => {
            literal("scale", scale, &mut out);
            literal("offset", offset, &mut out);
        }
        Expr::Cfg { scale, .. } => literal("scale", scale, &mut out),
        Expr::MagnitudeAware { scale, alpha, .. } => {
            literal("scale", scale, &mut out);
            literal("alpha", alpha, &mut out);
        }
        Expr::Adaptive { scale, threshold, .. } => {
            literal("scale", scale, &mut out);
            literal("threshold", threshold, &mut out);
        }
        Expr::ZeroStar { scale, zero_init_steps, .. } => {
            literal("scale", scale, &mut out);
            out.push(("zero_init_steps".into(), Slot::Count(zero_init_steps)));
        }
        Expr::Apg { scale, momentum, norm_threshold, eta, .. } => {
            literal("scale", scale, &mut out);
            literal("momentum", momentum, &mut out);
            literal("norm_threshold", norm_threshold, &mut out);
            literal("eta", eta, &mut out);
        }
        Expr::ApgMix { cfg_scale, scale, apg_start_step, momentum, norm_threshold, eta, .. } => {
            literal("cfg_scale", cfg_scale, &mut out);
            literal("scale", scale, &mut out);
            out.push(("apg_start_step".into(), Slot::Count(apg_start_step)));
            literal("momentum", momentum, &mut out);
            literal("norm_threshold", norm_threshold, &mut out);
            literal("eta", eta, &mut out);
        }
        Expr::Renorm { min, max, eps, .. } => {
            for (name, v) in [("min", min), ("max", max)] {
                if !matches!(v, Some(ScaleRef::Named(_))) {
                    out.push((name.into(), Slot::Opt(v)));
                }
            }
            literal("eps", eps, &mut out);
        }
        Expr::NormCap { ratio, .. } => literal("ratio", ratio, &mut out),
        Expr::StdRescale { phi, .. } => literal("phi", phi, &mut out),
        Expr::Windowed { window, .. } => window_fields("", window, &mut out),
        Expr::Chunked { thresholds, prefix_scales, text_scales, chunk_frames, .. } => {
            for (name, list) in
                [("thresholds", thresholds), ("prefix_scales", prefix_scales), ("text_scales", text_scales)]
            {
                out.extend(list.iter_mut().enumerate().map(|(k, v)| (format!("{name}.{k}"), Slot::F64(v))));
            }
            out.push(("chunk_frames".into(), Slot::Count(chunk_frames)));
        }
        Expr::Fdg { levels, .. } => {
            for (k, l) in levels.iter_mut().enumerate() {
                literal(format!("levels.{k}.scale"), &mut l.scale, &mut out);
                literal(format!("levels.{k}.parallel_weight"), &mut l.parallel_weight, &mut out);
                literal(format!("levels.{k}.rescale"), &mut l.rescale, &mut out);
                if let Some(w) = &mut l.window {
                    window_fields(&format!("levels.{k}."), w, &mut out);
                }
            }
        }
        _ => {}
    }
    out
}

/// A window's bounds as fields, named with `prefix`.
fn window_fields<'a>(prefix: &str, window: &'a mut Window, out: &mut Vec<(String, Slot<'a>)>) {
    let f = |n: &str| format!("{prefix}{n}");
    match window {
        Window::Steps { start, stop } => out.extend([(f("start"), Slot::Count(start)), (f("stop"), Slot::Count(stop))]),
        Window::Progress { start, stop, .. } => {
            out.extend([(f("start"), Slot::F64(start)), (f("stop"), Slot::F64(stop))])
        }
        Window::Sigma { low, high } => out.extend([(f("low"), Slot::F64(low)), (f("high"), Slot::F64(high))]),
    }
}

fn schedule_fields(s: &mut Schedule) -> Vec<(String, Slot<'_>)> {
    match s {
        Schedule::Const(v) => vec![("value".into(), Slot::F64(v))],
        Schedule::Linear { start, end } | Schedule::Cosine { start, end } => {
            vec![("start".into(), Slot::F64(start)), ("end".into(), Slot::F64(end))]
        }
        Schedule::Piecewise(pieces) => pieces
            .iter_mut()
            .enumerate()
            .flat_map(|(k, p)| {
                [(format!("{k}.until"), Slot::F64(&mut p.until)), (format!("{k}.value"), Slot::F64(&mut p.value))]
            })
            .collect(),
        Schedule::TwoExpert { boundary, high, low } => vec![
            ("boundary".into(), Slot::F64(boundary)),
            ("high".into(), Slot::F64(high)),
            ("low".into(), Slot::F64(low)),
        ],
        Schedule::TimestepDecay { start, rate } => {
            vec![("start".into(), Slot::F64(start)), ("rate".into(), Slot::F64(rate))]
        }
        Schedule::StepList(runs) => runs
            .iter_mut()
            .enumerate()
            .flat_map(|(k, r)| {
                [(format!("{k}.steps"), Slot::Count(&mut r.steps)), (format!("{k}.value"), Slot::F64(&mut r.value))]
            })
            .collect(),
        Schedule::SigmaBins(bins) => bins
            .iter_mut()
            .enumerate()
            .flat_map(|(k, b)| {
                [(format!("{k}.at_least"), Slot::F64(&mut b.at_least)), (format!("{k}.value"), Slot::F64(&mut b.value))]
            })
            .collect(),
    }
}

type Visitor<'f> = dyn FnMut(String, Slot<'_>) + 'f;

/// Visits `e`'s fields, then its children's (pre-order, source order),
/// counting each operator's occurrences in `seen`.
fn walk(e: &mut Expr, owner: &str, seen: &mut std::collections::BTreeMap<&'static str, usize>, f: &mut Visitor<'_>) {
    let op = e.operator();
    let k = *seen.entry(op).and_modify(|k| *k += 1).or_insert(0);
    for (field, slot) in fields(e) {
        f(format!("{owner}.{op}[{k}].{field}"), slot);
    }
    for c in e.children_mut() {
        walk(c, owner, seen, f);
    }
}

/// Calls `f(path, slot)` for every parameter of `policy`, with full paths
/// (`OUTPUT.OPERATOR[K].FIELD`, `NAME.FIELD`).
fn visit(policy: &mut Policy, f: &mut Visitor<'_>) {
    for (name, schedule) in policy.scales.0.iter_mut() {
        for (field, slot) in schedule_fields(schedule) {
            f(format!("{name}.{field}"), slot);
        }
    }
    let exprs = policy
        .outputs
        .0
        .iter_mut()
        .map(|(n, o)| (n.as_str(), &mut o.guidance))
        .chain(policy.values.0.iter_mut().map(|(n, e)| (n.as_str(), e)));
    for (owner, e) in exprs {
        walk(e, owner, &mut Default::default(), f);
    }
}

/// Every settable parameter of `policy`, with its full path and value.
/// Declared scales are listed by name (set to a constant) and by field.
pub fn parameters(policy: &Policy) -> Vec<Parameter> {
    let mut p = policy.clone();
    let mut out: Vec<Parameter> = policy
        .scales
        .iter()
        .map(|(n, s)| Parameter {
            path: n.to_string(),
            value: match s {
                Schedule::Const(v) => Some(*v),
                _ => None,
            },
        })
        .collect();
    visit(&mut p, &mut |path, slot| out.push(Parameter { path, value: slot.get() }));
    out
}

/// Whether full path `full` (`OUT.Op[K].field`) is what the user's `path` means.
fn matches(full: &str, path: &str) -> bool {
    if full == path {
        return true;
    }
    // `[0]` may be left out.
    let strip = |s: &str| s.replace("[0]", "");
    if strip(full) == path || strip(full) == strip(path) {
        return true;
    }
    // The owner may be left out: compare from the first `.` on.
    let tail = |s: &str| s.split_once('.').map(|(_, t)| t.to_string());
    match tail(full) {
        Some(t) => t == path || strip(&t) == strip(path),
        None => false,
    }
}

/// Sets one parameter of `policy` (no validation: see [`apply`]).
pub fn set(policy: &mut Policy, path: &str, value: f64) -> Result<(), SetError> {
    if !value.is_finite() {
        return Err(SetError::BadValue { path: path.into(), why: format!("{value} is not a finite number") });
    }
    if let Some((_, s)) = policy.scales.0.iter_mut().find(|(n, _)| n == path) {
        *s = Schedule::Const(value);
        return Ok(());
    }
    // Exact full paths first (so an output named like an operator is unambiguous), then short forms.
    let mut full: Vec<String> = Vec::new();
    visit(&mut policy.clone(), &mut |p, _| full.push(p));
    let mut hits: Vec<&String> = full.iter().filter(|f| *f == path).collect();
    if hits.is_empty() {
        hits = full.iter().filter(|f| matches(f, path)).collect();
    }
    match hits.as_slice() {
        [] => {
            let field = path.rsplit('.').next().unwrap_or(path);
            let near: Vec<&str> =
                full.iter().filter(|f| f.ends_with(&format!(".{field}"))).map(String::as_str).collect();
            let hint = if near.is_empty() {
                let some: Vec<&str> = full.iter().map(String::as_str).take(6).collect();
                if some.is_empty() {
                    String::new()
                } else {
                    format!("; it has for example {}", some.join(", "))
                }
            } else {
                format!("; did you mean {}?", near.join(" or "))
            };
            Err(SetError::Unknown { path: path.into(), policy: policy.name.clone(), hint })
        }
        [one] => {
            let target = (*one).clone();
            let mut result = Ok(());
            visit(policy, &mut |p, mut slot| {
                if p == target {
                    result = slot.set(value);
                }
            });
            result.map_err(|why| SetError::BadValue { path: path.into(), why })
        }
        many => Err(SetError::BadValue {
            path: path.into(),
            why: format!(
                "ambiguous: it could be {}; write the whole path",
                many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" or ")
            ),
        }),
    }
}

/// `1e39` rather than forty digits; plain notation for ordinary numbers.
fn short(v: f64) -> String {
    if v != 0.0 && !(1e-4..1e6).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// `loaded` with every `(path, value)` of `sets` applied, validated again:
/// a value that breaks a rule (a negative `phi`, an inverted window) is an
/// error at the position of the value it replaces.
pub fn apply(loaded: &Loaded, sets: &[(String, f64)]) -> Result<Loaded, SetError> {
    let mut out = loaded.clone();
    for (path, value) in sets {
        set(&mut out.policy, path, *value)?;
        validate(&out.policy, &out.source, &out.origin).map_err(|source| SetError::Invalid {
            path: path.clone(),
            value: short(*value),
            source,
        })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apg() -> Loaded {
        crate::resolve("apg").expect("library policy")
    }

    #[test]
    fn lists_and_sets_operator_fields_by_short_and_full_paths() {
        let l = apg();
        let params = parameters(&l.policy);
        assert!(params.iter().any(|p| p.path == "sample.Apg[0].momentum"), "{params:?}");
        for path in ["sample.Apg[0].momentum", "sample.Apg.momentum", "Apg.momentum", "Apg[0].momentum"] {
            let out = apply(&l, &[(path.to_string(), 0.25)]).expect(path);
            let Expr::Apg { momentum, .. } = &out.policy.outputs.0[0].1.guidance else { panic!("an Apg") };
            assert_eq!(*momentum, ScaleRef::Value(0.25), "{path}");
        }
    }

    #[test]
    fn a_declared_scale_becomes_a_constant() {
        let l = apg();
        let name = l.policy.scales.names().next().expect("a scale").to_string();
        let out = apply(&l, &[(name.clone(), 3.0)]).unwrap();
        assert_eq!(out.policy.scales.get(&name), Some(&Schedule::Const(3.0)));
    }

    #[test]
    fn unknown_paths_bad_values_and_broken_rules_are_errors() {
        let l = apg();
        let e = apply(&l, &[("Apg.nope".into(), 1.0)]).unwrap_err().to_string();
        assert!(e.contains("no such parameter"), "{e}");
        let e = apply(&l, &[("Apg.norm_threshold".into(), -1.0)]).unwrap_err().to_string();
        assert!(e.contains("norm_threshold -1 must be ≥ 0") && e.contains("builtin:apg:"), "{e}");
        let z = crate::resolve("zero_star").unwrap();
        let e = apply(&z, &[("ZeroStar.zero_init_steps".into(), 1.5)]).unwrap_err().to_string();
        assert!(e.contains("whole number"), "{e}");
    }
}
