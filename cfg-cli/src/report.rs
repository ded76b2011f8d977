//! What `cfg sample` reports per run: timing, traffic, quality per output
//! (text or JSON), and the results table of a grid.

use crate::models::bytes;
use crate::quality::Quality;
use cfg_runtime::Sampled;
use serde_json::{json, Value};
use std::time::Duration;

/// One finished run and its scores (one per output, in the policy's order).
pub struct RunResult {
    /// `AXIS=V` pairs of its grid point (empty without a grid).
    pub coords: Vec<(String, String)>,
    /// The policy's name.
    pub policy: String,
    /// Its steps, sampler and seed.
    pub steps: usize,
    /// The sampler's name.
    pub sampler: String,
    /// The seed.
    pub seed: u64,
    /// The run.
    pub sampled: Sampled,
    /// Wall time.
    pub wall: Duration,
    /// Quality per output, when the model has a true distribution to score against.
    pub quality: Vec<Quality>,
}

impl RunResult {
    /// `scale=2 seed=1`, or empty.
    pub fn label(&self) -> String {
        self.coords.iter().map(|(a, v)| format!("{a}={v}")).collect::<Vec<_>>().join(" ")
    }

    fn model_calls(&self) -> usize {
        self.sampled.reports.iter().map(|r| r.plan.calls()).sum()
    }

    fn payload(&self) -> usize {
        self.sampled.reports.iter().map(|r| r.plan.bytes()).sum()
    }

    fn sha256(&self) -> String {
        self.sampled.fingerprint().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A number for text: fixed decimals, `n/a` for NaN (no points, or non-finite samples).
fn num(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{v:.decimals$}")
    }
}

/// The text summary of one run.
pub fn print_text(r: &RunResult) {
    let s = &r.sampled;
    let steps = s.reports.len().max(1) as f64;
    let mut timing = cfg_runtime::StepTiming::default();
    for rep in &s.reports {
        timing += rep.timing;
    }
    let per = |d: Duration| d.as_secs_f64() * 1e3 / steps;
    println!(
        "time per step (rank 0): model {:.3} ms, combine {:.3} ms, communication {:.3} ms; wall {:.2} s",
        per(timing.model),
        per(timing.combine),
        per(timing.comm),
        r.wall.as_secs_f64()
    );
    let mut collectives: Vec<&str> = s.reports.iter().map(|rep| rep.plan.collective.name()).collect();
    collectives.dedup();
    println!(
        "model calls {}; collective payload {} in all ({} per step; {})",
        r.model_calls(),
        bytes(r.payload()),
        bytes((r.payload() as f64 / steps) as usize),
        collectives.join(" → ")
    );
    for ((name, _), q) in s.outputs.iter().zip(&r.quality) {
        println!(
            "output `{name}`: {}% of {} points on the requested class; mean log-likelihood {}; \
             sliced W1 {} (exact samples: {})",
            num(100.0 * q.on_class, 2),
            q.points,
            num(q.log_likelihood, 3),
            num(q.sliced_w1, 3),
            num(q.floor, 3)
        );
        for (c, k) in q.per_class.iter().enumerate() {
            println!(
                "  class {c} (n={}): mean err {}, cov err {}, sliced W1 {}",
                k.points,
                num(k.mean_err, 3),
                num(k.cov_err, 3),
                num(k.sliced_w1, 3)
            );
        }
    }
    println!("sha256 {}", r.sha256());
}

/// The results table of a grid: one row per run, its coordinates and each output's scores.
pub fn print_table(results: &[RunResult]) {
    let Some(first) = results.first() else { return };
    let mut header: Vec<String> = first.coords.iter().map(|(a, _)| a.clone()).collect();
    let multi = first.sampled.outputs.len() > 1;
    for (name, _) in &first.sampled.outputs {
        let p = if multi { format!("{name} ") } else { String::new() };
        header.extend([format!("{p}on-class %"), format!("{p}log-lik"), format!("{p}sliced W1"), format!("{p}floor")]);
    }
    header.push("sha256".into());
    let mut rows = vec![header];
    for r in results {
        let mut row: Vec<String> = r.coords.iter().map(|(_, v)| v.clone()).collect();
        for q in &r.quality {
            row.extend([num(100.0 * q.on_class, 2), num(q.log_likelihood, 3), num(q.sliced_w1, 3), num(q.floor, 3)]);
        }
        row.push(r.sha256()[..12].to_string());
        rows.push(row);
    }
    let axes = first.coords.len();
    let right: Vec<bool> = (0..rows[0].len()).map(|c| c >= axes && c + 1 < rows[0].len()).collect();
    println!();
    crate::table::print(&rows, &right);
}

/// A run as JSON.
pub fn to_json(r: &RunResult) -> Value {
    let outputs: Vec<Value> = r
        .sampled
        .outputs
        .iter()
        .zip(&r.quality)
        .map(|((name, _), q)| {
            json!({
                "name": name,
                "points": q.points,
                "on_class": q.on_class,
                "log_likelihood": q.log_likelihood,
                "sliced_w1": q.sliced_w1,
                "sliced_w1_floor": q.floor,
                "classes": q.per_class.iter().enumerate().map(|(c, k)| json!({
                    "class": c,
                    "points": k.points,
                    "mean_err": k.mean_err,
                    "cov_err": k.cov_err,
                    "sliced_w1": k.sliced_w1,
                    "sliced_w1_floor": k.floor,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let coords: serde_json::Map<String, Value> =
        r.coords.iter().map(|(a, v)| (a.clone(), Value::String(v.clone()))).collect();
    json!({
        "label": r.label(),
        "grid": coords,
        "policy": r.policy,
        "steps": r.steps,
        "sampler": r.sampler,
        "seed": r.seed,
        "model_calls": r.model_calls(),
        "payload_bytes": r.payload(),
        "wall_s": r.wall.as_secs_f64(),
        "sha256": r.sha256(),
        "outputs": outputs,
    })
}
