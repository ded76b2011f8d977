//! Shared helpers of the runtime integration tests.
#![allow(dead_code)]

use cfg_core::expr::Policy;
use cfg_core::DType;
use cfg_gmm::GmmModel;
use cfg_runtime::local::DEFAULT_TIMEOUT;
use cfg_runtime::{run_local, sample, CpuBackend, Model, RuntimeError, SampleOptions, Sampled};

/// The world sizes every determinism test covers.
pub const WORLDS: [usize; 6] = [1, 2, 3, 4, 5, 8];

/// A library policy by name.
pub fn policy(name: &str) -> Policy {
    cfg_policies::resolve(name).unwrap_or_else(|e| panic!("{name}: {e}")).policy
}

/// A small token model (bf16 predictions) with the policy's outputs.
pub fn small_tokens(policy: &Policy) -> GmmModel {
    let names: Vec<&str> = policy.outputs.names().collect();
    match policy.outputs.iter().filter_map(|(_, o)| o.layout.as_ref()).map(|l| l.axes.len()).max() {
        // [B, C, H, W] latents (FDG): 3 × 2 × 4 × 4.
        Some(4) => return GmmModel::image(&names, 3, 2, 4, 4, DType::BF16),
        // [B, C, F, H, W] latents (MAGI-1): 3 × 2 × 12 × 2 × 2, two chunks of 6 frames.
        Some(5) => return GmmModel::video(&names, 3, 2, 12, 2, 2, DType::BF16),
        _ => {}
    }
    GmmModel::tokens(&names, 3, 4, 3, DType::BF16)
}

/// The 2-D model with the policy's outputs.
pub fn planar(policy: &Policy, batch: usize) -> GmmModel {
    let names: Vec<&str> = policy.outputs.names().collect();
    GmmModel::planar(&names, batch)
}

/// Runs `sample` on `world` in-process ranks.
pub fn run<M: Model + Sync>(
    model: &M,
    policy: &Policy,
    world: usize,
    opts: &SampleOptions,
) -> Vec<Result<Sampled, RuntimeError>> {
    run_local(world, DEFAULT_TIMEOUT, |comm| sample(model, policy, opts, comm, CpuBackend, &mut |_| {}))
}

/// Runs and unwraps every rank.
pub fn run_ok<M: Model + Sync>(model: &M, policy: &Policy, world: usize, opts: &SampleOptions) -> Vec<Sampled> {
    run(model, policy, world, opts)
        .into_iter()
        .enumerate()
        .map(|(r, s)| s.unwrap_or_else(|e| panic!("{} on {world} ranks, rank {r}: {e}", policy.name)))
        .collect()
}

/// Hex of a fingerprint.
pub fn hex(f: &[u8; 32]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}
