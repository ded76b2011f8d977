//! Per-step orchestration overhead: a null model (it returns ready-made
//! predictions), 4 branches on 4 ranks, 262,144-element bf16 predictions.
//! Reports µs per step, the split into model, combine and communication, and
//! heap allocations per step, for both modes: on 4 in-process CPU ranks
//! (criterion), then, where 4 CUDA devices exist (4 GPUs, or the CUDA stand-in
//! with `CFG_EMU_DEVICES=4`), on 4 CUDA ranks with NCCL. On the stand-in the
//! host's own time is shown apart from the emulated device work
//! (`cfgEmuBusyNanos`), which stands in for GPU time.

use cfg_core::lower::Overrides;
use cfg_core::{DType, Shape, Tensor};
use cfg_runtime::cuda::{device_count, run_nccl_threads, CudaBackend, NcclOptions};
use cfg_runtime::local::DEFAULT_TIMEOUT;
use cfg_runtime::{run_local, Call, CpuBackend, Guider, Mode, Model, ModelError, OutputInfo, StepInfo, StepTiming};
use cfg_runtime::{Backend, Communicator};
use criterion::{criterion_group, criterion_main, Criterion};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

// Large per-step buffers: glibc's allocator hands their pages back to the OS and
// faults them in again every step (most of the overhead with it); mimalloc keeps
// them, as the `cfg` binary does. Every allocation is counted.
#[global_allocator]
static ALLOCATOR: Counting = Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

struct Counting;

// SAFETY: forwards to mimalloc unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

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

/// What rank 0 saw over the measured steps.
struct Measured {
    wall: Duration,
    split: StepTiming,
    /// Emulated device work on rank 0's device (zero on a real GPU).
    device_busy: Duration,
    /// CPU time of rank 0's thread (waits for peers excluded).
    cpu: Duration,
    /// Heap allocations of all ranks.
    allocations: u64,
}

/// Runs `warmup + iters` steps on 4 ranks (CPU, or CUDA devices 0..4) and
/// measures the last `iters` on rank 0.
fn steps(mode: Mode, cuda: bool, warmup: usize, iters: u64) -> Measured {
    let policy = cfg_policies::parse(POLICY, "bench").expect("bench policy").policy;
    let shape = Shape::new(vec![1, 4096, 64]);
    let values: Vec<f32> = (0..shape.numel()).map(|i| ((i % 97) as f32 - 48.0) / 17.0).collect();
    let model = Null { pred: Tensor::from_f32(DType::BF16, shape.clone(), &values) };
    let latents = Tensor::from_f32(DType::F32, shape, &values);
    /// One rank: warm up, then measure.
    fn one<C: Communicator, B: Backend>(
        (policy, model, latents, mode): (&cfg_core::expr::Policy, &Null, &Tensor, Mode),
        (warmup, iters, device): (usize, u64, usize),
        comm: C,
        mut backend: B,
    ) -> Result<Measured, cfg_runtime::RuntimeError> {
        let latents = vec![backend.upload(latents.clone()).expect("upload")];
        let mut g = Guider::new(policy.clone(), Overrides::none(), model, comm, backend, mode)?;
        g.start();
        let mut split = StepTiming::default();
        let (mut started, mut busy0, mut allocs0, mut cpu0) = (Instant::now(), 0, 0, Duration::ZERO);
        for step in 0..warmup + iters as usize {
            if step == warmup {
                (started, busy0, allocs0) = (Instant::now(), busy_nanos(device), ALLOCATIONS.load(Ordering::Relaxed));
                cpu0 = thread_cpu();
                split = StepTiming::default();
            }
            let info = StepInfo { step, num_steps: usize::MAX, t: 0.5, sigma: 0.5 };
            split += g.step(model, &latents, info)?.timing;
        }
        Ok(Measured {
            wall: started.elapsed(),
            split,
            device_busy: Duration::from_nanos(busy_nanos(device) - busy0),
            cpu: thread_cpu() - cpu0,
            allocations: ALLOCATIONS.load(Ordering::Relaxed) - allocs0,
        })
    }
    let job = (&policy, &model, &latents, mode);
    let results = if cuda {
        let options = NcclOptions {
            timeout: Duration::from_secs(600),
            init_timeout: Duration::from_secs(600),
            ..NcclOptions::default()
        };
        run_nccl_threads(&[0, 1, 2, 3], options, |comm| {
            let (backend, device) = (CudaBackend::on(comm.device()), comm.rank());
            one(job, (warmup, iters, device), comm, backend)
        })
        .expect("4 CUDA ranks")
    } else {
        run_local(4, DEFAULT_TIMEOUT, |comm| one(job, (warmup, iters, 0), comm, CpuBackend))
    };
    results.into_iter().next().expect("rank 0").expect("bench run")
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The stand-in's emulated device time of `device` (0 on a real driver).
fn busy_nanos(device: usize) -> u64 {
    if !cfg_runtime::cuda::driver_available() {
        return 0;
    }
    // SAFETY: the driver library is present; the symbol, when present, is the
    // stand-in's `u64 cfgEmuBusyNanos(int)`.
    unsafe {
        cudarc::driver::sys::culib()
            .get::<unsafe extern "C" fn(i32) -> u64>(b"cfgEmuBusyNanos\0")
            .map_or(0, |f| f(device as i32))
    }
}

fn report(what: &str, m: &Measured, iters: u64) {
    let us = |d: Duration| d.as_secs_f64() * 1e6 / iters as f64;
    // Rank 0's own CPU time, without its emulated device work (the model is a copy: kept).
    let host = m.cpu.saturating_sub(m.device_busy);
    eprintln!(
        "{what}: {:.1} µs/step wall (model {:.1}, combine {:.1}, communication {:.1}); rank 0 thread CPU {:.1}, \
         of which emulated device work {:.1}, host {:.1}; {:.1} allocations/step (all ranks)",
        us(m.wall),
        us(m.split.model),
        us(m.split.combine),
        us(m.split.comm),
        us(m.cpu),
        us(m.device_busy),
        us(host),
        m.allocations as f64 / iters as f64,
    );
}

fn bench(c: &mut Criterion) {
    for (name, mode) in [("deterministic", Mode::Deterministic), ("fast", Mode::Fast)] {
        let n = 200;
        report(&format!("cpu {name}"), &steps(mode, false, 2, n), n);
        c.bench_function(&format!("step_4_branches_4_ranks_262k_bf16_{name}"), |b| {
            b.iter_custom(|iters| steps(mode, false, 0, iters).wall)
        });
    }
    match device_count() {
        Ok(d) if d >= 4 => {
            for (name, mode) in [("deterministic", Mode::Deterministic), ("fast", Mode::Fast)] {
                let n = 5;
                report(&format!("cuda {name}"), &steps(mode, true, 2, n), n);
            }
        }
        other => eprintln!("cuda: skipped, needs 4 CUDA devices ({other:?}; the stand-in: CFG_EMU_DEVICES=4)"),
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
