//! `--grid AXIS=V1,V2,...` (repeatable): one run per combination of values.
//!
//! An axis is `seed`, `steps`, `sampler`, `policy`, or any parameter path
//! that `--set` takes (a declared scale such as `scale`, or
//! `sample.Apg.momentum`, ...). The first axis varies slowest.

use crate::error::CliError;
use cfg_runtime::scheduler::SamplerKind;

/// The most runs one grid may ask for.
pub const MAX_RUNS: usize = 256;

/// One axis and its values, as text.
#[derive(Debug, Clone)]
pub struct Axis {
    /// `seed`, `steps`, `sampler`, `policy` or a parameter path.
    pub name: String,
    /// The values, as written.
    pub values: Vec<String>,
}

/// One combination: what it changes from the command line's settings.
#[derive(Debug, Clone, Default)]
pub struct Point {
    /// `AXIS=V` for every axis, in axis order.
    pub coords: Vec<(String, String)>,
    /// The seed, if an axis sets it.
    pub seed: Option<u64>,
    /// The number of steps, if an axis sets it.
    pub steps: Option<usize>,
    /// The sampler, if an axis sets it.
    pub sampler: Option<SamplerKind>,
    /// The policy, if an axis sets it.
    pub policy: Option<String>,
    /// Parameter values (`--set` paths).
    pub sets: Vec<(String, f64)>,
}

#[cfg(test)]
impl Point {
    /// `scale=2 seed=1`; empty for the single run without a grid.
    pub fn label(&self) -> String {
        self.coords.iter().map(|(a, v)| format!("{a}={v}")).collect::<Vec<_>>().join(" ")
    }
}

/// Parses `NAME=VALUE` with a finite number (for `--set` and `--scale`).
pub fn parse_set(flag: &str, item: &str) -> Result<(String, f64), CliError> {
    let (name, value) =
        item.split_once('=').ok_or_else(|| CliError(format!("{flag} `{item}`: expected NAME=VALUE")))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(CliError(format!("{flag} `{item}`: expected NAME=VALUE (the name is empty)")));
    }
    let v = number(flag, item, value)?;
    Ok((name.to_string(), v))
}

fn number(flag: &str, item: &str, value: &str) -> Result<f64, CliError> {
    let v: f64 =
        value.trim().parse().map_err(|_| CliError(format!("{flag} `{item}`: `{}` is not a number", value.trim())))?;
    if !v.is_finite() {
        return Err(CliError(format!("{flag} `{item}`: `{}` is not a finite number", value.trim())));
    }
    Ok(v)
}

/// Parses the `--grid` items.
pub fn parse(items: &[String]) -> Result<Vec<Axis>, CliError> {
    let mut axes: Vec<Axis> = Vec::new();
    for item in items {
        let (name, values) = item
            .split_once('=')
            .ok_or_else(|| CliError(format!("--grid `{item}`: expected AXIS=V1,V2,... (for example scale=1,2,4)")))?;
        let name = name.trim().to_string();
        let values: Vec<String> =
            values.split(',').map(str::trim).filter(|v| !v.is_empty()).map(String::from).collect();
        if name.is_empty() {
            return Err(CliError(format!("--grid `{item}`: the axis name is empty")));
        }
        if values.is_empty() {
            return Err(CliError(format!("--grid `{item}`: no values")));
        }
        if axes.iter().any(|a| a.name == name) {
            return Err(CliError(format!("--grid {name}: the axis is given twice; list all its values in one --grid")));
        }
        // Check every value now, so that a typo fails before the first run.
        for v in &values {
            value(&name, v, &mut Point::default())?;
        }
        axes.push(Axis { name, values });
    }
    let runs = axes.iter().try_fold(1usize, |n, a| n.checked_mul(a.values.len())).unwrap_or(usize::MAX);
    if runs > MAX_RUNS {
        return Err(CliError(format!("--grid asks for {runs} runs: at most {MAX_RUNS}; sweep fewer values at once")));
    }
    Ok(axes)
}

/// Applies one axis value to `p`.
fn value(axis: &str, v: &str, p: &mut Point) -> Result<(), CliError> {
    let bad = |what: &str| CliError(format!("--grid {axis}: `{v}` is not {what}"));
    match axis {
        "seed" => p.seed = Some(v.parse().map_err(|_| bad("a seed (a whole number ≥ 0)"))?),
        "steps" => p.steps = Some(v.parse().map_err(|_| bad("a number of steps (a whole number ≥ 1)"))?),
        "sampler" => p.sampler = Some(v.parse().map_err(|e: String| CliError(format!("--grid sampler: {e}")))?),
        "policy" => p.policy = Some(v.to_string()),
        _ => p.sets.push((axis.to_string(), number("--grid", &format!("{axis}={v}"), v)?)),
    }
    p.coords.push((axis.to_string(), v.to_string()));
    Ok(())
}

/// Every combination of the axes' values (one empty point without axes).
pub fn points(axes: &[Axis]) -> Result<Vec<Point>, CliError> {
    let mut out = vec![Point::default()];
    for a in axes {
        let mut next = Vec::with_capacity(out.len() * a.values.len());
        for p in &out {
            for v in &a.values {
                let mut q = p.clone();
                value(&a.name, v, &mut q)?;
                next.push(q);
            }
        }
        out = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_axis_varies_slowest() {
        let axes = parse(&["scale=1,2".into(), "seed=0,1,2".into()]).unwrap();
        let pts = points(&axes).unwrap();
        assert_eq!(pts.len(), 6);
        assert_eq!(pts[0].label(), "scale=1 seed=0");
        assert_eq!(pts[1].label(), "scale=1 seed=1");
        assert_eq!(pts[5].label(), "scale=2 seed=2");
        assert_eq!(pts[4].sets, vec![("scale".to_string(), 2.0)]);
        assert_eq!(pts[4].seed, Some(1));
    }

    #[test]
    fn bad_axes_fail_before_any_run() {
        assert!(parse(&["scale".into()]).unwrap_err().0.contains("expected AXIS=V1,V2"));
        assert!(parse(&["scale=".into()]).unwrap_err().0.contains("no values"));
        assert!(parse(&["sampler=heun".into()]).unwrap_err().0.contains("unknown sampler"));
        assert!(parse(&["scale=1,x".into()]).unwrap_err().0.contains("`x` is not a number"));
        assert!(parse(&["a=1,2,3,4,5,6,7,8".into(), "b=1,2,3,4,5,6,7,8".into(), "c=1,2,3,4,5".into()])
            .unwrap_err()
            .0
            .contains("320 runs"));
    }
}
