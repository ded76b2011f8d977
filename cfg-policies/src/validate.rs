//! The rules a parsed policy must keep, checked with positions.

use crate::error::{ErrorKind, PolicyError, Warning};
use crate::locate::Locator;
use cfg_core::branch::{Modifier, OutputSlice, Prompt, BLUR_UNIFORM_SIGMA};
use cfg_core::expr::{Expr, Policy, ScaleRef};
use cfg_core::fdg::MAX_LEVELS;
use cfg_core::layout::Axis;
use cfg_core::reduce::Reduce;
use cfg_core::schedule::Schedule;
use cfg_core::window::Window;
use petgraph::algo::tarjan_scc;
use petgraph::graphmap::DiGraphMap;
use std::collections::{BTreeMap, BTreeSet};

const WINDOW_VARIANTS: [&str; 3] = ["Steps", "Progress", "Sigma"];

/// Checks `policy` (parsed from `source`); returns its warnings or the first error.
pub fn validate(policy: &Policy, source: &str, origin: &str) -> Result<Vec<Warning>, PolicyError> {
    Validator {
        policy,
        loc: Locator::new(source),
        origin,
        counts: BTreeMap::new(),
        used: Used::default(),
        spatial: None,
        frames: None,
    }
    .run()
}

#[derive(Default)]
struct Used {
    branches: BTreeSet<String>,
    scales: BTreeSet<String>,
    values: BTreeSet<String>,
}

struct Validator<'a> {
    policy: &'a Policy,
    loc: Locator,
    origin: &'a str,
    /// Occurrences seen so far of each operator (and of windows), to find the nth in the text.
    counts: BTreeMap<&'static str, usize>,
    used: Used,
    /// Walking an output: whether its layout has rows and columns (`None`
    /// for named values, whose output is known only when lowered).
    spatial: Option<bool>,
    /// Walking an output: whether its layout has frames (as `spatial`).
    frames: Option<bool>,
}

impl Validator<'_> {
    fn error(&self, at: Option<(usize, usize)>, message: String) -> PolicyError {
        let (line, col) = at.unwrap_or((1, 1));
        PolicyError { origin: self.origin.to_string(), line, col, message, kind: ErrorKind::Invalid }
    }

    /// Block lists must name a block; a blur's sigma must be positive; NAG's
    /// parameters must be in their ranges.
    fn modifier(&mut self, branch: &str, prompt: Prompt, m: &Modifier) -> Result<(), PolicyError> {
        if let Modifier::Nag { .. } = m {
            return self.nag(branch, prompt, m);
        }
        let Some((variant, layers)) = m.layers() else { return Ok(()) };
        let n = self.counts.entry(variant).or_insert(0);
        let at = self.loc.ident(&[variant], *n);
        *n += 1;
        if layers.is_empty() {
            let field = at.and_then(|a| self.loc.field_in_call(a, "layers"));
            return Err(self.error(
                field.or(at),
                format!("branch `{branch}`: `{variant}` names no block: list at least one layer"),
            ));
        }
        if let Modifier::BlurQueries { sigma, .. } = m {
            if !(sigma.is_finite() && *sigma > 0.0) {
                return Err(self.error(
                    at.and_then(|a| self.loc.field_in_call(a, "sigma")).or(at),
                    format!(
                        "branch `{branch}`: blur sigma {sigma} must be a positive number \
                         (at least {BLUR_UNIFORM_SIGMA} for a uniform mean)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// NAG: `scale` ≥ 0, `tau` ≥ 1, `alpha` in [0, 1], `sigma_end` ≥ 0,
    /// `extra_cost` ≥ 0, and a negative context other than the branch's own.
    fn nag(&mut self, branch: &str, prompt: Prompt, m: &Modifier) -> Result<(), PolicyError> {
        let Modifier::Nag { negative, scale, tau, alpha, sigma_end, extra_cost } = *m else { return Ok(()) };
        let n = self.counts.entry("Nag").or_insert(0);
        let at = self.loc.ident(&["Nag"], *n);
        *n += 1;
        let field = |this: &Self, name: &str| at.and_then(|a| this.loc.field_in_call(a, name)).or(at);
        let checks: [(&str, f64, bool, &str); 5] = [
            ("scale", scale, scale >= 0.0, "at least 0 (1 is no guidance)"),
            ("tau", tau, tau >= 1.0, "at least 1"),
            ("alpha", alpha, (0.0..=1.0).contains(&alpha), "in [0, 1]"),
            ("sigma_end", sigma_end, sigma_end >= 0.0, "at least 0"),
            ("extra_cost", extra_cost, extra_cost >= 0.0, "at least 0 (a share of one forward)"),
        ];
        for (name, value, ok, expected) in checks {
            if !ok {
                return Err(self.error(
                    field(self, name),
                    format!("branch `{branch}`: NAG's `{name}` is {value}; expected {expected}"),
                ));
            }
        }
        if negative == prompt {
            return Err(self.error(
                field(self, "negative"),
                format!(
                    "branch `{branch}`: NAG's negative context is the branch's own prompt ({negative:?}); \
                     expected another (`Negative` or `Empty`)"
                ),
            ));
        }
        Ok(())
    }

    /// A branch's output slice must name an axis after the batch, and one
    /// that every output with a declared layout has.
    fn slice(&self, branch: &str, slice: &OutputSlice) -> Result<(), PolicyError> {
        let key = self.loc.key(branch, 0);
        let call = key.and_then(|(l, c)| self.loc.next_token(l, c + 1));
        let field = call.and_then(|p| self.loc.field_in_call(p, "slice"));
        // `field` is the slice's `(`: the fields are in the call after the token before it.
        let axis = field.and_then(|p| self.loc.token_before(p)).and_then(|p| self.loc.field_in_call(p, "axis"));
        let at = axis.or(field).or(key);
        if slice.axis == 0 {
            return Err(self.error(
                at,
                format!(
                    "branch `{branch}`: `slice` along axis 0, the batch: expected the axis that carries \
                     the extra tokens (1 for [B, T, C])"
                ),
            ));
        }
        for (output, spec) in self.policy.outputs.iter() {
            if let Some(layout) = spec.layout.as_ref().filter(|l| slice.axis >= l.axes.len()) {
                return Err(self.error(
                    at,
                    format!(
                        "branch `{branch}`: `slice` along axis {}, but output `{output}` has {} axes \
                         (layout {layout}): expected an axis from 1 to {}",
                        slice.axis,
                        layout.axes.len(),
                        layout.axes.len() - 1
                    ),
                ));
            }
        }
        Ok(())
    }

    fn warning(&self, at: Option<(usize, usize)>, message: String) -> Warning {
        let (line, col) = at.unwrap_or((1, 1));
        Warning { origin: self.origin.to_string(), line, col, message }
    }

    fn run(mut self) -> Result<Vec<Warning>, PolicyError> {
        let p = self.policy;
        if let Some((line, col, text)) = self.loc.non_finite() {
            return Err(self.error(
                Some((line, col)),
                format!("`{text}` is not a finite number: scales, windows and parameters must be finite"),
            ));
        }
        if p.name.trim().is_empty() {
            return Err(
                self.error(self.loc.field("name"), "the policy's `name` is empty: expected a short name".into())
            );
        }
        if p.branches.is_empty() {
            return Err(
                self.error(self.loc.field("branches"), "no branches: a policy needs at least one branch".into())
            );
        }
        if p.outputs.is_empty() {
            return Err(self.error(self.loc.field("outputs"), "no outputs: a policy needs at least one output".into()));
        }
        if p.steps == Some(0) {
            return Err(self.error(
                self.loc.field("steps"),
                "`steps: 0`: a run needs at least one step (leave `steps` out to use the default)".into(),
            ));
        }
        self.duplicates()?;
        for (name, b) in p.branches.iter() {
            if !(b.cost.is_finite() && b.cost > 0.0) {
                return Err(self.error(
                    self.loc.key(name, 0),
                    format!("branch `{name}`: cost {} must be a positive number", b.cost),
                ));
            }
        }
        for (name, b) in p.branches.iter() {
            self.modifier(name, b.prompt, &b.modify)?;
        }
        for (name, b) in p.branches.iter() {
            if let Some(slice) = &b.slice {
                self.slice(name, slice)?;
            }
        }
        for (name, s) in p.scales.iter() {
            self.schedule(name, s)?;
        }
        // Walk the sections in the order they appear in the text, so that the
        // nth operator in the walk is the nth in the file.
        let values_first = match (self.loc.field("values"), self.loc.field("outputs")) {
            (Some(v), Some(o)) => v < o,
            _ => false,
        };
        if values_first {
            self.walk_values()?;
            self.walk_outputs()?;
        } else {
            self.walk_outputs()?;
            self.walk_values()?;
        }
        self.cycles()?;
        if let Some(o) = crate::range::check(p) {
            return Err(self.error(
                self.output_key(&o.output),
                format!(
                    "output `{}`: the folded weight of {} can reach {:e}, beyond the f32 range (±3.4e38): \
                     lower the scales that multiply it",
                    o.output, o.what, o.bound
                ),
            ));
        }
        Ok(self.unused())
    }

    /// The position of output `name`'s key (its name may also be a branch, scale or value).
    fn output_key(&self, name: &str) -> Option<(usize, usize)> {
        let p = self.policy;
        let before = p.branches.names().chain(p.scales.names()).chain(p.values.names()).filter(|n| *n == name).count();
        self.loc.key(name, before)
    }

    fn duplicates(&self) -> Result<(), PolicyError> {
        let p = self.policy;
        let sections: [(&str, Vec<&str>); 4] = [
            ("branch", p.branches.names().collect()),
            ("scale", p.scales.names().collect()),
            ("value", p.values.names().collect()),
            ("output", p.outputs.names().collect()),
        ];
        let mut keys_seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (kind, names) in &sections {
            let mut seen = BTreeSet::new();
            for name in names {
                let nth = keys_seen.entry(name).or_insert(0);
                if !seen.insert(*name) {
                    let first = self.loc.key(name, 0);
                    let at = self.loc.key(name, *nth);
                    let first = first.map(|(l, c)| format!(" (first declared at {l}:{c})")).unwrap_or_default();
                    return Err(self.error(at, format!("duplicate {kind} `{name}`{first}: names must be unique")));
                }
                *nth += 1;
            }
        }
        Ok(())
    }

    fn schedule(&self, name: &str, s: &Schedule) -> Result<(), PolicyError> {
        let at = self.loc.key(name, 0);
        match s {
            Schedule::Piecewise(pieces) if pieces.is_empty() => {
                Err(self.error(at, format!("scale `{name}`: a piecewise schedule needs at least one piece")))
            }
            Schedule::Piecewise(pieces) => match pieces.windows(2).find(|w| w[0].until >= w[1].until) {
                Some(w) => Err(self.error(
                    at,
                    format!(
                        "scale `{name}`: piecewise `until` values must increase strictly, found {} then {}",
                        w[0].until, w[1].until
                    ),
                )),
                None => Ok(()),
            },
            Schedule::StepList(runs) if runs.is_empty() => {
                Err(self.error(at, format!("scale `{name}`: a step list needs at least one run")))
            }
            Schedule::StepList(runs) => match runs.iter().position(|r| r.steps == 0) {
                Some(k) => Err(self.error(at, format!("scale `{name}`: run {k} of the step list has `steps: 0`"))),
                None => Ok(()),
            },
            Schedule::SigmaBins(bins) if bins.is_empty() => {
                Err(self.error(at, format!("scale `{name}`: sigma bins need at least one bin")))
            }
            Schedule::SigmaBins(bins) => match bins.windows(2).find(|w| w[0].at_least <= w[1].at_least) {
                Some(w) => Err(self.error(
                    at,
                    format!(
                        "scale `{name}`: sigma bins' `at_least` must decrease strictly, found {} then {}",
                        w[0].at_least, w[1].at_least
                    ),
                )),
                None => Ok(()),
            },
            Schedule::TimestepDecay { rate, .. } if *rate < 0.0 => {
                Err(self.error(at, format!("scale `{name}`: a timestep decay's rate {rate} must be ≥ 0 (0: no decay)")))
            }
            _ => Ok(()),
        }
    }

    fn walk_outputs(&mut self) -> Result<(), PolicyError> {
        for (name, out) in self.policy.outputs.iter() {
            if let Some(problem) = out.layout.as_ref().and_then(|l| l.problem()) {
                let key = self.output_key(name);
                let at = key
                    .and_then(|(l, c)| self.loc.next_token(l, c + 1))
                    .and_then(|p| self.loc.field_in_call(p, "layout"));
                return Err(self.error(at.or(key), format!("output `{name}`: layout: {problem}")));
            }
            self.spatial = Some(out.layout.as_ref().is_some_and(|l| {
                l.axes.contains(&Axis::T) || (l.axes.contains(&Axis::H) && l.axes.contains(&Axis::W))
            }));
            self.frames = Some(out.layout.as_ref().is_some_and(|l| {
                l.axes.contains(&Axis::F) || (l.axes.contains(&Axis::T) && l.grid.is_some_and(|g| g.frames.is_some()))
            }));
            self.output_exprs(name, &out.guidance, out.renoise.as_ref())?;
        }
        self.spatial = None;
        self.frames = None;
        Ok(())
    }

    /// An output's `guidance` and its `renoise` (which must be linear),
    /// walked in the order they appear in the text.
    fn output_exprs(&mut self, name: &str, guidance: &Expr, renoise: Option<&Expr>) -> Result<(), PolicyError> {
        let Some(renoise) = renoise else { return self.expr(guidance) };
        let call = self.output_key(name).and_then(|(l, c)| self.loc.next_token(l, c + 1));
        let field = |f: &str| call.and_then(|p| self.loc.field_in_call(p, f));
        let at = field("renoise");
        if let Some(operator) = renoise.first_nonlinear(&self.policy.values) {
            return Err(self.error(
                at.or(self.output_key(name)),
                format!(
                    "output `{name}`: `renoise` must be a linear expression of branches (Ref, Sum, Diff, \
                     Scaled, Cfg, Windowed, Use of linear values), found `{operator}`"
                ),
            ));
        }
        if at.is_some() && at < field("guidance") {
            self.expr(renoise)?;
            self.expr(guidance)
        } else {
            self.expr(guidance)?;
            self.expr(renoise)
        }
    }

    fn walk_values(&mut self) -> Result<(), PolicyError> {
        for (_, e) in self.policy.values.iter() {
            self.expr(e)?;
        }
        Ok(())
    }

    /// Position of the current occurrence of `e`'s operator.
    fn op_position(&mut self, name: &'static str) -> Option<(usize, usize)> {
        let n = self.counts.entry(name).or_insert(0);
        let at = self.loc.ident(&[name], *n);
        *n += 1;
        at
    }

    /// Position of parameter `field` of the operator at `at`; the operator's own if not found.
    fn param(&self, at: Option<(usize, usize)>, field: &str) -> Option<(usize, usize)> {
        at.and_then(|p| self.loc.field_in_call(p, field)).or(at)
    }

    fn expr(&mut self, e: &Expr) -> Result<(), PolicyError> {
        let at = self.op_position(e.operator());
        let p = self.policy;
        match e {
            Expr::Ref(b) => {
                if p.branches.get(b).is_none() {
                    let known: Vec<&str> = p.branches.names().collect();
                    return Err(self.error(
                        self.loc.call("Ref", b).or(self.loc.reference(b)).or(at),
                        format!("unknown branch `{b}`: expected one of {}", known.join(", ")),
                    ));
                }
                self.used.branches.insert(b.clone());
            }
            Expr::Use(v) => {
                if p.values.get(v).is_none() {
                    let known: Vec<&str> = p.values.names().collect();
                    let hint = if known.is_empty() {
                        "no values are declared".to_string()
                    } else {
                        format!("expected one of {}", known.join(", "))
                    };
                    let pos = self.loc.call("Use", v).or(self.loc.reference(v)).or(at);
                    return Err(self.error(pos, format!("unknown value `{v}`: {hint}")));
                }
                self.used.values.insert(v.clone());
            }
            Expr::Sum(terms) if terms.is_empty() => {
                return Err(self.error(at, "`Sum` needs at least one term".into()));
            }
            Expr::Windowed { window, .. } => self.window(window)?,
            Expr::Chunked { thresholds, prefix_scales, text_scales, chunk_frames, .. } => {
                if self.frames == Some(false) {
                    return Err(self.error(
                        at,
                        "`Chunked` needs the output's layout with frames: add for example \
                         `layout: (axes: [B, C, F, H, W])` to the output"
                            .into(),
                    ));
                }
                let n = thresholds.len();
                if n == 0 || prefix_scales.len() != n || text_scales.len() != n {
                    let (p, t) = (prefix_scales.len(), text_scales.len());
                    return Err(self.error(
                        self.param(at, "thresholds"),
                        format!(
                            "`Chunked`: {n} thresholds, {p} prefix_scales, {t} text_scales: \
                             expected one scale of each per threshold, at least one"
                        ),
                    ));
                }
                if let Some(w) = thresholds.windows(2).find(|w| w[0] >= w[1]) {
                    return Err(self.error(
                        self.param(at, "thresholds"),
                        format!("`Chunked`: thresholds must increase strictly, found {} then {}", w[0], w[1]),
                    ));
                }
                if *chunk_frames == 0 {
                    return Err(
                        self.error(self.param(at, "chunk_frames"), "`Chunked`: chunk_frames must be ≥ 1".into())
                    );
                }
            }
            Expr::Fdg { levels, .. } => {
                if self.spatial == Some(false) {
                    return Err(self.error(
                        at,
                        "`Fdg` needs the output's layout with image rows and columns: \
                         add for example `layout: (axes: [B, C, H, W])` to the output"
                            .into(),
                    ));
                }
                if levels.is_empty() || levels.len() > MAX_LEVELS {
                    let n = levels.len();
                    return Err(self.error(
                        self.param(at, "levels"),
                        format!("`Fdg`: {n} levels: expected 1 to {MAX_LEVELS}, highest frequencies first"),
                    ));
                }
                for w in levels.iter().filter_map(|l| l.window.as_ref()) {
                    self.window(w)?;
                }
            }
            _ => {}
        }
        for (field, param) in e.params() {
            if let ScaleRef::Named(n) = param {
                if p.scales.get(n).is_none() {
                    let known: Vec<&str> = p.scales.names().collect();
                    let hint = if known.is_empty() {
                        "no scales are declared".to_string()
                    } else {
                        format!("expected a number or one of {}", known.join(", "))
                    };
                    let pos = self.loc.field_string(field, n).or(self.loc.reference(n)).or(at);
                    return Err(self.error(pos, format!("unknown scale `{n}`: {hint}")));
                }
                self.used.scales.insert(n.clone());
            }
        }
        self.ranges(e, at)?;
        for c in e.children() {
            self.expr(c)?;
        }
        Ok(())
    }

    /// The smallest and largest value a parameter takes over the run, and how
    /// to name it (`1.5`, or the scale's name and the value it reaches).
    fn extent(&self, p: &ScaleRef) -> (f64, f64) {
        match p {
            ScaleRef::Value(v) => (*v, *v),
            ScaleRef::Named(n) => self.policy.scales.get(n).map_or((0.0, 0.0), Schedule::extent),
        }
    }

    fn shown(p: &ScaleRef, v: f64) -> String {
        match p {
            ScaleRef::Value(_) => format!("{v}"),
            ScaleRef::Named(n) => format!("(scale `{n}`, reaching {v})"),
        }
    }

    /// Operator parameters within their ranges, at every step of their schedules.
    fn ranges(&self, e: &Expr, at: Option<(usize, usize)>) -> Result<(), PolicyError> {
        let fail = |field: &str, message: String| Err(self.error(self.param(at, field), message));
        if let Expr::Renorm { over, .. } | Expr::StdRescale { over, .. } | Expr::PerpNeg { over, .. } = e {
            if *over == Reduce::Axis(0) {
                let op = e.operator();
                return fail("over", format!("`{op}`: `over: Axis(0)` is the batch axis: name another axis"));
            }
        }
        match e {
            Expr::Renorm { min, max, eps, .. } => {
                if let (Some(lo), Some(hi)) = (min, max) {
                    let (l, h) = (self.extent(lo).1, self.extent(hi).0);
                    if l > h {
                        let (l, h) = (Self::shown(lo, l), Self::shown(hi, h));
                        return fail("min", format!("`Renorm`: min {l} is above max {h}"));
                    }
                }
                let v = self.extent(eps).0;
                if v < 0.0 {
                    return fail("eps", format!("`Renorm`: eps {} must be ≥ 0", Self::shown(eps, v)));
                }
            }
            Expr::NormCap { ratio, .. } => {
                let v = self.extent(ratio).0;
                if v <= 0.0 {
                    return fail("ratio", format!("`NormCap`: ratio {} must be > 0", Self::shown(ratio, v)));
                }
            }
            Expr::StdRescale { phi, .. } => {
                let v = self.extent(phi).0;
                if v < 0.0 {
                    return fail("phi", format!("`StdRescale`: phi {} must be ≥ 0", Self::shown(phi, v)));
                }
            }
            Expr::Apg { norm_threshold: t, .. } | Expr::ApgMix { norm_threshold: t, .. } => {
                let v = self.extent(t).0;
                if v < 0.0 {
                    let (op, shown) = (e.operator(), Self::shown(t, v));
                    return fail(
                        "norm_threshold",
                        format!("`{op}`: norm_threshold {shown} must be ≥ 0 (0 turns it off)"),
                    );
                }
            }
            Expr::Fdg { levels, .. } => {
                for (k, level) in levels.iter().enumerate() {
                    let v = self.extent(&level.rescale).0;
                    if v < 0.0 {
                        let shown = Self::shown(&level.rescale, v);
                        return fail(
                            "levels",
                            format!("`Fdg`: level {k}'s rescale {shown} must be ≥ 0 (0 turns it off)"),
                        );
                    }
                }
            }
            Expr::Adaptive { threshold: t, .. } => {
                let (lo, hi) = self.extent(t);
                if let Some(v) = [lo, hi].into_iter().find(|v| !(-1.0..=1.0).contains(v)) {
                    let shown = Self::shown(t, v);
                    return fail("threshold", format!("`Adaptive`: threshold {shown} is a cosine, expected -1..=1"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn window(&mut self, w: &Window) -> Result<(), PolicyError> {
        let n = self.counts.entry("window").or_insert(0);
        let at = self.loc.ident(&WINDOW_VARIANTS, *n);
        *n += 1;
        let (lo, hi) = w.bounds();
        let (lo_name, hi_name) = match w {
            Window::Sigma { .. } => ("low", "high"),
            _ => ("start", "stop"),
        };
        if lo >= hi {
            return Err(
                self.error(at, format!("inverted or empty window: {lo_name} {lo} must be below {hi_name} {hi}"))
            );
        }
        if lo < 0.0 {
            return Err(self.error(self.param(at, lo_name), format!("window {lo_name} {lo} must be ≥ 0")));
        }
        Ok(())
    }

    fn cycles(&self) -> Result<(), PolicyError> {
        let names: Vec<&str> = self.policy.values.names().collect();
        let mut graph = DiGraphMap::<usize, ()>::new();
        for (i, (_, e)) in self.policy.values.iter().enumerate() {
            graph.add_node(i);
            for used in uses(e) {
                if let Some(j) = names.iter().position(|n| *n == used) {
                    graph.add_edge(i, j, ());
                }
            }
        }
        for scc in tarjan_scc(&graph) {
            let looped = scc.len() > 1 || graph.contains_edge(scc[0], scc[0]);
            if looped {
                // Start at the value declared first, and show the uses in order.
                let start = scc.iter().copied().min().unwrap_or(scc[0]);
                let path: Vec<&str> = cycle_path(&graph, &scc, start).into_iter().map(|i| names[i]).collect();
                return Err(self.error(
                    self.loc.key(names[start], 0),
                    format!(
                        "named values form a cycle ({}): a value cannot use itself, directly or through others",
                        path.join(" → ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn unused(&self) -> Vec<Warning> {
        let p = self.policy;
        let mut out = Vec::new();
        for name in p.branches.names().filter(|n| !self.used.branches.contains(*n)) {
            out.push(self.warning(self.loc.key(name, 0), format!("branch `{name}` is declared but no output uses it")));
        }
        for name in p.scales.names().filter(|n| !self.used.scales.contains(*n)) {
            out.push(self.warning(self.loc.key(name, 0), format!("scale `{name}` is declared but never used")));
        }
        for name in p.values.names().filter(|n| !self.used.values.contains(*n)) {
            out.push(self.warning(self.loc.key(name, 0), format!("value `{name}` is declared but never used")));
        }
        out
    }
}

/// A walk from `start` along uses inside `scc`, ending on the first value seen twice.
fn cycle_path(graph: &DiGraphMap<usize, ()>, scc: &[usize], start: usize) -> Vec<usize> {
    let mut path = vec![start];
    let mut current = start;
    loop {
        let next: Vec<usize> = graph.neighbors(current).filter(|n| scc.contains(n)).collect();
        match next.iter().find(|n| !path.contains(n)) {
            Some(&n) => {
                path.push(n);
                current = n;
            }
            None => {
                // Every member of a cycle uses another member, so `next` is not empty.
                path.push(next.first().copied().unwrap_or(start));
                return path;
            }
        }
    }
}

/// The named values an expression uses directly.
fn uses(e: &Expr) -> Vec<&str> {
    let mut out = Vec::new();
    if let Expr::Use(v) = e {
        out.push(v.as_str());
    }
    for c in e.children() {
        out.extend(uses(c));
    }
    out
}
