//! A steady step costs the host no allocation: once the first steps have
//! lowered the policy, planned, and filled the device's free lists, a step
//! whose program repeats allocates nothing on the host (the model's own
//! returned lists aside, counted apart), on 4 CUDA ranks with NCCL, in both
//! modes. Every allocation of the process is counted by this binary's
//! allocator. The CUDA test needs 4 devices (the stand-in gives them:
//! `CFG_EMU_DEVICES=4`, as scripts/test.sh sets); elsewhere it says why it skips.

use cfg_core::lower::Overrides;
use cfg_core::{Shape, Tensor};
use cfg_runtime::cuda::{device_count, run_nccl_threads, CudaBackend, NcclOptions};
use cfg_runtime::local::DEFAULT_TIMEOUT;
use cfg_runtime::{run_local, CpuBackend, Guider, Mode, StepInfo};
use std::alloc::System;
use std::sync::atomic::Ordering;
use std::sync::Barrier;
use std::time::Duration;

#[path = "support/null_model.rs"]
mod null_model;

use null_model::{Counting, Null, ALLOCATIONS, FOUR_BRANCHES};

#[global_allocator]
static ALLOCATOR: Counting<System> = Counting(System);

fn null_model() -> (Null, Tensor) {
    Null::new(Shape::new([1, 256, 64]))
}

const WARMUP: usize = 4;
const STEPS: usize = 12;

/// Runs `WARMUP + STEPS` steps on one rank; returns the process's allocations
/// during this rank's last `STEPS` steps and how many times it lowered. The
/// ranks meet at `done` after counting, so no rank's teardown is counted.
fn rank_steps<C: cfg_runtime::Communicator, B: cfg_runtime::Backend>(
    (model, latents, mode): (&Null, &Tensor, Mode),
    done: &Barrier,
    comm: C,
    mut backend: B,
) -> Result<(u64, u64), cfg_runtime::RuntimeError> {
    let policy = cfg_policies::parse(FOUR_BRANCHES, "steady").expect("test policy").policy;
    let latents = vec![backend.upload(latents.clone()).expect("upload")];
    let mut g = Guider::new(policy, Overrides::none(), model, comm, backend, mode)?;
    g.start();
    let mut before = 0;
    let mut run = || {
        for step in 0..WARMUP + STEPS {
            if step == WARMUP {
                before = ALLOCATIONS.load(Ordering::SeqCst);
            }
            g.step(
                model,
                &latents,
                StepInfo {
                    step,
                    num_steps: WARMUP + STEPS,
                    t: 0.5,
                    sigma: 0.5,
                    chunks: cfg_core::schedule::ChunkTimes::NONE,
                },
            )?;
        }
        Ok(ALLOCATIONS.load(Ordering::SeqCst) - before)
    };
    let counted = run();
    // Every rank gets here, failed or not (a failure fails them all).
    done.wait();
    Ok((counted?, g.lowerings()))
}

#[test]
fn a_constant_policy_is_lowered_once_per_run() {
    let (model, latents) = null_model();
    for mode in [Mode::Deterministic, Mode::Fast] {
        let done = Barrier::new(4);
        let ranks = run_local(4, DEFAULT_TIMEOUT, |comm| rank_steps((&model, &latents, mode), &done, comm, CpuBackend));
        for (rank, r) in ranks.into_iter().enumerate() {
            let (_, lowerings) = r.expect("steps run");
            assert_eq!(lowerings, 1, "{mode:?}: rank {rank} lowered {lowerings} times");
        }
    }
}

#[test]
fn steady_cuda_steps_allocate_nothing_on_the_host() {
    match device_count() {
        Ok(n) if n >= 4 => {}
        other => {
            let required = std::env::var_os("CFG_REQUIRE_CUDA").is_some_and(|v| v == "1");
            assert!(!required, "CFG_REQUIRE_CUDA=1 but 4 CUDA devices are missing: {other:?}");
            eprintln!("SKIPPED: needs 4 CUDA devices ({other:?}); scripts/test.sh runs this on the CUDA stand-in");
            return;
        }
    }
    let (model, latents) = null_model();
    let options =
        NcclOptions { timeout: Duration::from_secs(120), init_timeout: Duration::from_secs(120), ..Default::default() };
    for mode in [Mode::Deterministic, Mode::Fast] {
        // Allocations are counted process-wide: the ranks' windows overlap,
        // so each rank's count covers its peers' steady steps too.
        let done = Barrier::new(4);
        let ranks = run_nccl_threads(&[0, 1, 2, 3], options.clone(), |comm| {
            let backend = CudaBackend::on(comm.device());
            rank_steps((&model, &latents, mode), &done, comm, backend)
        })
        .expect("4 CUDA ranks");
        for (rank, r) in ranks.into_iter().enumerate() {
            let (allocations, lowerings) = r.expect("steps run");
            assert_eq!(lowerings, 1, "{mode:?}: rank {rank} lowered {lowerings} times");
            assert_eq!(allocations, 0, "{mode:?}: {allocations} host allocations in rank {rank}'s steady steps");
        }
    }
}
