//! Per-step orchestration overhead: a null model (it returns ready-made
//! predictions), 4 branches on 4 ranks, 262,144-element bf16 predictions.
//! Reports µs per step, the split into model, combine and communication, and
//! heap allocations per step, for both modes: on 4 in-process CPU ranks
//! (criterion), then, where 4 CUDA devices exist (4 GPUs, or the CUDA stand-in
//! with `CFG_EMU_DEVICES=4`), on 4 CUDA ranks with NCCL. On the stand-in the
//! host's own time is shown apart from the emulated device work
//! (`cfgEmuBusyNanos`), which stands in for GPU time; with
//! `CFG_EMU_SKIP_WORK=1` the stand-in skips device work altogether, so rank 0's
//! thread time is the host's own (runtime, driver calls and short waits).
//! The null model's own allocations (the `Vec`s it returns) are counted apart.

use cfg_core::lower::Overrides;
use cfg_core::{Shape, Tensor};
use cfg_runtime::cuda::{device_count, run_nccl_threads, CudaBackend, NcclOptions};
use cfg_runtime::local::DEFAULT_TIMEOUT;
use cfg_runtime::{run_local, Backend, Communicator, CpuBackend, Guider, Mode, StepInfo, StepTiming};
use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[path = "../tests/support/null_model.rs"]
mod null_model;

use null_model::{Counting, Null, ALLOCATIONS, FOUR_BRANCHES, MODEL_ALLOCATIONS};

#[global_allocator]
static ALLOCATOR: Counting<mimalloc::MiMalloc> = Counting(mimalloc::MiMalloc);

/// What rank 0 saw over the measured steps.
struct Measured {
    wall: Duration,
    split: StepTiming,
    /// Emulated device work on rank 0's device (zero on a real GPU).
    device_busy: Duration,
    /// CPU time of rank 0's thread (waits for peers excluded).
    cpu: Duration,
    /// Heap allocations of all ranks, the model's excluded.
    allocations: u64,
    /// Heap allocations inside the model's calls (all ranks).
    model_allocations: u64,
}

/// Runs `warmup + iters` steps on 4 ranks (CPU, or CUDA devices 0..4) and
/// measures the last `iters` on rank 0.
fn steps(mode: Mode, cuda: bool, warmup: usize, iters: u64) -> Measured {
    let policy = cfg_policies::parse(FOUR_BRANCHES, "bench").expect("bench policy").policy;
    let (model, latents) = Null::new(Shape::new([1, 4096, 64]));
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
        let (mut started, mut busy0, mut allocs0, mut cpu0) = (Instant::now(), 0, (0, 0), Duration::ZERO);
        let allocations = || (ALLOCATIONS.load(Ordering::Relaxed), MODEL_ALLOCATIONS.load(Ordering::Relaxed));
        for step in 0..warmup + iters as usize {
            if step == warmup {
                (started, busy0, allocs0) = (Instant::now(), busy_nanos(device), allocations());
                cpu0 = thread_cpu();
                split = StepTiming::default();
            }
            let info = StepInfo {
                step,
                num_steps: usize::MAX,
                t: 0.5,
                sigma: 0.5,
                chunks: cfg_core::schedule::ChunkTimes::NONE,
            };
            split += g.step(model, &latents, info)?.timing;
        }
        Ok(Measured {
            wall: started.elapsed(),
            split,
            device_busy: Duration::from_nanos(busy_nanos(device) - busy0),
            cpu: thread_cpu() - cpu0,
            allocations: allocations().0 - allocs0.0,
            model_allocations: allocations().1 - allocs0.1,
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
    // Looked up once: a symbol lookup allocates, and this runs inside the
    // measured window of the other ranks.
    static BUSY: std::sync::OnceLock<Option<unsafe extern "C" fn(i32) -> u64>> = std::sync::OnceLock::new();
    let f = BUSY.get_or_init(|| {
        if !cfg_runtime::cuda::driver_available() {
            return None;
        }
        // SAFETY: the driver library is present; the symbol, when present, is
        // the stand-in's `u64 cfgEmuBusyNanos(int)`.
        unsafe {
            cudarc::driver::sys::culib().get::<unsafe extern "C" fn(i32) -> u64>(b"cfgEmuBusyNanos\0").ok().map(|f| *f)
        }
    });
    // SAFETY: the stand-in's function takes any device number.
    f.map_or(0, |f| unsafe { f(device as i32) })
}

fn report(what: &str, m: &Measured, iters: u64) {
    let us = |d: Duration| d.as_secs_f64() * 1e6 / iters as f64;
    // Rank 0's own CPU time, without its emulated device work (the model is a copy: kept).
    let host = m.cpu.saturating_sub(m.device_busy);
    eprintln!(
        "{what}: {:.1} µs/step wall (model {:.1}, combine {:.1}, communication {:.1}); rank 0 thread CPU {:.1}, \
         of which emulated device work {:.1}, host {:.1}; {:.1} allocations/step (all ranks; the model's own: {:.1})",
        us(m.wall),
        us(m.split.model),
        us(m.split.combine),
        us(m.split.comm),
        us(m.cpu),
        us(m.device_busy),
        us(host),
        m.allocations as f64 / iters as f64,
        m.model_allocations as f64 / iters as f64,
    );
}

fn bench(c: &mut Criterion) {
    if std::env::var("TMP_CUDA_ONLY").is_err() {
        for (name, mode) in [("deterministic", Mode::Deterministic), ("fast", Mode::Fast)] {
            let n = 200;
            report(&format!("cpu {name}"), &steps(mode, false, 5, n), n);
            c.bench_function(&format!("step_4_branches_4_ranks_262k_bf16_{name}"), |b| {
                b.iter_custom(|iters| steps(mode, false, 0, iters).wall)
            });
        }
    }
    match device_count() {
        Ok(d) if d >= 4 => {
            // Emulated kernels are slow; without them (host time only) many steps fit.
            let skip_work = std::env::var("CFG_EMU_SKIP_WORK").is_ok_and(|v| v.trim() == "1");
            for (name, mode) in [("deterministic", Mode::Deterministic), ("fast", Mode::Fast)] {
                let n = if skip_work { 200 } else { 5 };
                report(&format!("cuda {name}"), &steps(mode, true, 5, n), n);
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
