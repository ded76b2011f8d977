//! Per-step orchestration overhead: a null model (it returns ready-made
//! predictions), 4 branches on 4 in-process ranks, 262,144-element bf16
//! predictions. Reports µs per step, and the split into model, combine and
//! communication, for both modes.

use cfg_core::lower::Overrides;
use cfg_core::{DType, Shape, Tensor};
use cfg_runtime::local::DEFAULT_TIMEOUT;
use cfg_runtime::{
    run_local, Call, CpuBackend, DeviceTensor, Guider, Mode, Model, ModelError, OutputInfo, StepInfo, StepTiming,
};
use criterion::{criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};

// Large per-step buffers: glibc's allocator hands their pages back to the OS and
// faults them in again every step (most of the overhead with it); mimalloc keeps
// them, as the `cfg` binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POLICY: &str = r#"Policy(
    name: "four",
    branches: {
        "cond": (prompt: Positive),
        "uncond": (prompt: Negative),
        "perturbed": (prompt: Positive, modify: SkipSelfAttention([29])),
        "isolated": (prompt: Positive, modify: IsolateModality),
    },
    scales: { "s": Const(3.0), "stg": Const(1.0), "m": Const(3.0) },
    outputs: {
        "sample": (
            space: V,
            guidance: Sum([
                Ref("cond"),
                Scaled(scale: "s", offset: -1.0, term: Diff(Ref("cond"), Ref("uncond"))),
                Scaled(scale: "stg", term: Diff(Ref("cond"), Ref("perturbed"))),
                Scaled(scale: "m", offset: -1.0, term: Diff(Ref("cond"), Ref("isolated"))),
            ]),
        ),
    },
)"#;

/// Returns a copy of one prepared prediction per branch.
struct Null {
    pred: Tensor,
}

impl Model for Null {
    fn outputs(&self) -> Vec<OutputInfo> {
        vec![OutputInfo { name: "sample".into(), shape: self.pred.shape.clone(), dtype: DType::BF16 }]
    }
    fn predict(&self, call: &Call<'_>) -> Result<Vec<Vec<Tensor>>, ModelError> {
        Ok(call.branches.iter().map(|_| vec![self.pred.clone()]).collect())
    }
}

/// Runs `iters` steps on 4 ranks; returns rank 0's wall time and time split.
fn steps(mode: Mode, iters: u64) -> (Duration, StepTiming) {
    let policy = cfg_policies::parse(POLICY, "bench").expect("bench policy").policy;
    let shape = Shape::new(vec![1, 4096, 64]);
    let values: Vec<f32> = (0..shape.numel()).map(|i| ((i % 97) as f32 - 48.0) / 17.0).collect();
    let model = Null { pred: Tensor::from_f32(DType::BF16, shape.clone(), &values) };
    let latents = vec![DeviceTensor::Host(Tensor::from_f32(DType::F32, shape, &values))];
    let results = run_local(4, DEFAULT_TIMEOUT, |comm| {
        let mut g = Guider::new(policy.clone(), Overrides::none(), &model, comm, CpuBackend, mode)?;
        g.start();
        let mut split = StepTiming::default();
        let started = Instant::now();
        for step in 0..iters as usize {
            let info = StepInfo { step, num_steps: usize::MAX, t: 0.5, sigma: 0.5 };
            split += g.step(&model, &latents, info)?.timing;
        }
        Ok((started.elapsed(), split))
    });
    results.into_iter().next().expect("rank 0").expect("bench run")
}

fn bench(c: &mut Criterion) {
    for (name, mode) in [("deterministic", Mode::Deterministic), ("fast", Mode::Fast)] {
        let n = 200;
        let (wall, split) = steps(mode, n);
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        eprintln!(
            "{name}: {:.1} µs/step (model {:.1}, combine {:.1}, communication {:.1}) over {n} steps",
            us(wall),
            us(split.model),
            us(split.combine),
            us(split.comm)
        );
        c.bench_function(&format!("step_4_branches_4_ranks_262k_bf16_{name}"), |b| {
            b.iter_custom(|iters| steps(mode, iters).0)
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
