//! The runtime on CUDA ranks: the same guider and sampling loop as the CPU
//! ranks, tensors resident on each GPU, NCCL between them. Runs on the real
//! driver where a GPU is present and, in CI, on the CUDA stand-in
//! (`scripts/test.sh` puts it on the library path with 4 emulated GPUs);
//! elsewhere every test prints why it skips (and fails instead under
//! `CFG_REQUIRE_CUDA=1`).

mod runtime_support;

use cfg_core::branch::BranchSpec;
use cfg_core::expr::Policy;
use cfg_runtime::cuda::{device_count, run_nccl_threads, CudaBackend, NcclOptions};
use cfg_runtime::local::DEFAULT_TIMEOUT;
use cfg_runtime::model::{Call, DeviceCall, Model, ModelError, OutputInfo};
use cfg_runtime::scheduler::{Sampler, SamplerKind};
use cfg_runtime::{
    sample, Collective, Communicator, DeviceTensor, LocalComm, Mode, Place, RuntimeError, SampleOptions, Sampled,
};
use runtime_support::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The CUDA devices usable here (up to 4), or None with the reason printed.
fn gpus() -> Option<usize> {
    match device_count() {
        Ok(n) if n > 0 => Some(n.min(4)),
        other => {
            let required = std::env::var_os("CFG_REQUIRE_CUDA").is_some_and(|v| v == "1");
            assert!(!required, "CFG_REQUIRE_CUDA=1 but no CUDA device: {other:?}");
            eprintln!("SKIPPED: no CUDA device ({other:?}); scripts/test.sh runs this on the CUDA stand-in");
            None
        }
    }
}

fn options(kind: SamplerKind, mode: Mode, steps: usize) -> SampleOptions {
    SampleOptions {
        steps,
        sampler: Sampler::new(kind),
        seed: 11,
        mode,
        fingerprint_every: 0,
        ..SampleOptions::default()
    }
}

fn nccl() -> NcclOptions {
    NcclOptions { timeout: Duration::from_secs(60), init_timeout: Duration::from_secs(60), ..NcclOptions::default() }
}

/// `sample` on `world` CUDA ranks (GPUs 0..world): one thread each with
/// NCCL, or one rank without NCCL.
fn run_cuda<M: Model + Sync>(
    model: &M,
    policy: &Policy,
    world: usize,
    opts: &SampleOptions,
) -> Vec<Result<Sampled, RuntimeError>> {
    if world == 1 {
        let comm = LocalComm::group(1, DEFAULT_TIMEOUT).pop().unwrap();
        return vec![sample(model, policy, opts, comm, CudaBackend::new(0).unwrap(), &mut |_| {})];
    }
    let ordinals: Vec<usize> = (0..world).collect();
    run_nccl_threads(&ordinals, nccl(), |comm| {
        let backend = CudaBackend::on(comm.device());
        sample(model, policy, opts, comm, backend, &mut |_| {})
    })
    .unwrap_or_else(|e| panic!("{} on {world} GPUs: {e}", policy.name))
}

fn ok(runs: Vec<Result<Sampled, RuntimeError>>, what: &str) -> Vec<Sampled> {
    runs.into_iter().enumerate().map(|(r, s)| s.unwrap_or_else(|e| panic!("{what}, rank {r}: {e}"))).collect()
}

#[test]
fn every_policy_gives_one_digest_on_cpu_and_on_1_to_4_gpus() {
    let Some(n) = gpus() else { return };
    for name in cfg_policies::library::names() {
        let policy = policy(name);
        let model = small_tokens(&policy);
        let opts = options(SamplerKind::Euler, Mode::Deterministic, 6);
        let want = hex(&run_ok(&model, &policy, 1, &opts)[0].fingerprint());
        for world in 1..=n {
            for (r, s) in ok(run_cuda(&model, &policy, world, &opts), name).iter().enumerate() {
                assert_eq!(hex(&s.fingerprint()), want, "{name}: rank {r} of {world} GPUs differs from the CPU");
            }
        }
    }
}

#[test]
fn stochastic_sampling_is_the_same_bits_on_gpus() {
    let Some(n) = gpus() else { return };
    for name in ["cfg", "apg"] {
        let policy = policy(name);
        let model = small_tokens(&policy);
        let opts = options(SamplerKind::Ancestral, Mode::Deterministic, 5);
        let want = hex(&run_ok(&model, &policy, 1, &opts)[0].fingerprint());
        for s in ok(run_cuda(&model, &policy, n, &opts), name) {
            assert_eq!(hex(&s.fingerprint()), want, "{name} ancestral on {n} GPUs");
        }
    }
}

#[test]
fn fast_mode_all_reduces_device_forms_and_ranks_agree() {
    let Some(n) = gpus().filter(|&n| n >= 2) else { return };
    let policy = policy("ltx2");
    let names: Vec<&str> = policy.outputs.names().collect();
    // f32 predictions: the all-reduce of f32 forms moves fewer bytes, so it is chosen.
    let model = cfg_gmm::GmmModel::tokens(&names, 3, 4, 3, cfg_core::DType::F32);
    let opts = options(SamplerKind::Euler, Mode::Fast, 5);
    let ranks = ok(run_cuda(&model, &policy, n, &opts), "ltx2 fast");
    assert!(ranks[0].reports.iter().any(|r| r.plan.collective == Collective::AllReduce), "never all-reduced");
    let cpu = run_ok(&model, &policy, n, &opts);
    for s in &ranks {
        assert_eq!(hex(&s.fingerprint()), hex(&ranks[0].fingerprint()), "ranks agree");
    }
    // The same partial forms summed in the same rank order: the CPU ranks' bits.
    assert_eq!(hex(&ranks[0].fingerprint()), hex(&cpu[0].fingerprint()), "fast mode on GPUs vs CPU ranks");
}

/// Counts model calls per rank.
struct Counting<'a> {
    inner: &'a cfg_gmm::GmmModel,
    calls: &'a [AtomicUsize],
}

impl Model for Counting<'_> {
    fn outputs(&self) -> Vec<OutputInfo> {
        self.inner.outputs()
    }
    fn predict(&self, call: &Call<'_>) -> Result<Vec<Vec<cfg_core::Tensor>>, ModelError> {
        self.inner.predict(call)
    }
    fn predict_on(&self, place: &Place, call: &DeviceCall<'_>) -> Result<Vec<Vec<DeviceTensor>>, ModelError> {
        let Place::Cuda(dev) = place else { return Err(ModelError("expected a CUDA rank".into())) };
        self.calls[dev.context().ordinal()].fetch_add(1, Ordering::Relaxed);
        self.inner.predict_on(place, call)
    }
    fn can_batch(&self, a: &BranchSpec, b: &BranchSpec) -> bool {
        self.inner.can_batch(a, b)
    }
}

#[test]
fn idle_gpus_make_no_model_call_and_the_sums_are_right() {
    let Some(n) = gpus().filter(|&n| n >= 3) else { return };
    let policy = policy("cfg"); // two branches
    let model = small_tokens(&policy);
    let calls: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
    let counting = Counting { inner: &model, calls: &calls };
    let steps = 4;
    for mode in [Mode::Deterministic, Mode::Fast] {
        let opts = options(SamplerKind::Euler, mode, steps);
        let want = hex(&run_ok(&model, &policy, 1, &opts)[0].fingerprint());
        calls.iter().for_each(|c| c.store(0, Ordering::Relaxed));
        let ranks = ok(run_cuda(&counting, &policy, n, &opts), "cfg on idle GPUs");
        let per_rank: Vec<usize> = calls.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(
            per_rank.iter().filter(|&&c| c == 0).count(),
            n - 2,
            "{mode:?}: idle ranks called the model: {per_rank:?}"
        );
        assert_eq!(per_rank.iter().sum::<usize>(), 2 * steps, "{mode:?}: {per_rank:?}");
        for s in &ranks {
            // Every rank ends with the result (not rank 0 only), with no broadcast.
            assert!(s.reports.iter().all(|r| r.plan.collective != Collective::None), "{mode:?}: no collective");
            if mode == Mode::Deterministic {
                assert_eq!(hex(&s.fingerprint()), want, "{mode:?}: idle ranks changed the sum");
            }
        }
        if mode == Mode::Fast {
            let cpu = run_ok(&model, &policy, n, &opts);
            assert_eq!(hex(&ranks[0].fingerprint()), hex(&cpu[0].fingerprint()), "fast: zeros from idle ranks");
        }
    }
}

/// The stand-in's count of bytes copied between the host and `device`
/// (`direction` 0: to the device, 1: to the host); None on a real driver.
fn emulator_copied(device: usize, direction: i32) -> Option<u64> {
    // SAFETY: the library is loaded (a device was found); the symbol, when
    // present, is the stand-in's `u64 cfgEmuCopiedBytes(int, int)`.
    unsafe {
        let lib = cudarc::driver::sys::culib();
        let f = lib.get::<unsafe extern "C" fn(i32, i32) -> u64>(b"cfgEmuCopiedBytes\0").ok()?;
        Some(f(device as i32, direction))
    }
}

#[test]
fn no_prediction_or_form_crosses_to_the_host() {
    let Some(n) = gpus().filter(|&n| n >= 2) else { return };
    for (name, mode) in [
        ("ltx2", Mode::Deterministic),
        ("ltx2", Mode::Fast),
        ("apg", Mode::Deterministic),
        // The renoise prediction and the cond branch's slice stay on the device too.
        ("cfg_pp", Mode::Deterministic),
        ("ideogram4", Mode::Deterministic),
    ] {
        let policy = policy(name);
        let names: Vec<&str> = policy.outputs.names().collect();
        let model = cfg_gmm::GmmModel::tokens(&names, 2, 64, 16, cfg_core::DType::F32);
        let prediction: usize = model.outputs().iter().map(|o| o.bytes()).min().unwrap();
        let steps = 4;
        let opts = options(SamplerKind::Euler, mode, steps);
        let ordinals: Vec<usize> = (0..n).collect();
        // Per rank and step: the runtime's count, and the stand-in's device-to-host bytes.
        let runs = run_nccl_threads(&ordinals, nccl(), |comm| {
            let device = comm.rank();
            let backend = CudaBackend::on(comm.device());
            let mut to_host = Vec::new();
            let mut before = emulator_copied(device, 1);
            let mut on_step = |_: &cfg_runtime::StepReport| {
                let now = emulator_copied(device, 1);
                to_host.push(now.zip(before).map(|(a, b)| a - b));
                before = now;
            };
            let s = sample(&model, &policy, &opts, comm, backend, &mut on_step)?;
            Ok((s, to_host))
        })
        .unwrap();
        for (rank, run) in runs.into_iter().enumerate() {
            let (s, to_host) = run.unwrap_or_else(|e| panic!("{name} rank {rank}: {e}"));
            // The last step downloads the latents (the fingerprint check): skip it.
            for (r, d2h) in s.reports[..steps - 1].iter().zip(&to_host) {
                let what = format!("{name} {mode:?} rank {rank} step {}", r.step);
                // Small values only (latches, per-sample factors, the model's per-step tables).
                assert!((r.host_bytes as usize) < prediction / 4, "{what}: {} bytes counted", r.host_bytes);
                if let Some(d2h) = d2h {
                    assert!((*d2h as usize) < prediction / 4, "{what}: {d2h} bytes reached the host");
                }
            }
        }
    }
}

#[test]
fn cfg_pp_and_sliced_branches_are_the_cpu_bits_on_1_to_4_gpus() {
    let Some(n) = gpus() else { return };
    // CFG++: every sampler re-noises with the uncond prediction on the device.
    let p = policy("cfg_pp");
    let model = small_tokens(&p);
    for kind in [SamplerKind::Euler, SamplerKind::Ddim, SamplerKind::Ancestral] {
        let opts = options(kind, Mode::Deterministic, 6);
        let want = hex(&run_ok(&model, &p, 1, &opts)[0].fingerprint());
        for world in 1..=n {
            for (r, s) in ok(run_cuda(&model, &p, world, &opts), "cfg_pp").iter().enumerate() {
                assert_eq!(hex(&s.fingerprint()), want, "cfg_pp {kind}: rank {r} of {world} GPUs");
            }
        }
    }
    // Ideogram-4's cond branch carries junk tokens on the device and is sliced
    // there: the bits of the policy without the slice, on the CPU.
    let sliced = policy("ideogram4");
    let mut plain = sliced.clone();
    plain.branches.0.iter_mut().for_each(|(_, b)| b.slice = None);
    let model = small_tokens(&plain);
    let opts = options(SamplerKind::Euler, Mode::Deterministic, 6);
    let want = hex(&run_ok(&model, &plain, 1, &opts)[0].fingerprint());
    for world in 1..=n {
        for (r, s) in ok(run_cuda(&model, &sliced, world, &opts), "ideogram4").iter().enumerate() {
            assert_eq!(hex(&s.fingerprint()), want, "ideogram4 sliced: rank {r} of {world} GPUs");
        }
    }
}

#[test]
fn a_failing_gpu_rank_is_named_by_every_rank() {
    let Some(n) = gpus().filter(|&n| n >= 2) else { return };
    struct Failing<'a>(&'a cfg_gmm::GmmModel, usize);
    impl Model for Failing<'_> {
        fn outputs(&self) -> Vec<OutputInfo> {
            self.0.outputs()
        }
        fn predict(&self, call: &Call<'_>) -> Result<Vec<Vec<cfg_core::Tensor>>, ModelError> {
            self.0.predict(call)
        }
        fn predict_on(&self, place: &Place, call: &DeviceCall<'_>) -> Result<Vec<Vec<DeviceTensor>>, ModelError> {
            let Place::Cuda(dev) = place else { return Err(ModelError("expected a CUDA rank".into())) };
            if dev.context().ordinal() == self.1 && call.info.step == 2 {
                return Err(ModelError("out of memory (injected)".into()));
            }
            self.0.predict_on(place, call)
        }
    }
    let policy = policy("cfg");
    let model = small_tokens(&policy);
    let culprit = 0; // rank 0 always computes a branch
    let runs = run_cuda(&Failing(&model, culprit), &policy, n, &options(SamplerKind::Euler, Mode::Deterministic, 5));
    for (r, run) in runs.iter().enumerate() {
        match run {
            Err(RuntimeError::Model { rank, step: 2, .. }) if *rank == culprit && r == culprit => {}
            // PeerFailed, not Timeout: the peers were told at once, not left to time out.
            Err(RuntimeError::PeerFailed { rank, step: 2, .. }) if *rank == culprit => {}
            other => panic!("rank {r}: {other:?}"),
        }
    }
}
