//! The `Communicator` trait: the collectives the runtime needs, on the memory
//! where a rank's tensors live (host bytes for the in-process communicator,
//! device buffers in place for NCCL).
//!
//! A communicator connects the `world_size()` ranks of one sampling run. Every
//! rank calls the same collectives in the same order (the plan is computed
//! identically everywhere), each tagged with the step for error messages.
//!
//! Contract for implementations (in-process threads here, NCCL in `cuda`):
//! - results are identical on every rank (no "valid on rank 0 only");
//! - [`Communicator::all_reduce_sum`] sums in a fixed order for a fixed world
//!   size, so that repeated runs give the same bits;
//! - once any rank calls [`Communicator::abort`], every pending and later
//!   collective on every rank returns [`RuntimeError::PeerFailed`] naming the
//!   failing rank and step, and a collective that waits longer than the
//!   implementation's timeout returns [`RuntimeError::Timeout`]. Nothing hangs.

use crate::error::RuntimeError;
use crate::tensor::{DeviceBytes, DeviceTensor};
use cfg_core::tensor::TensorData;
use sha2::{Digest, Sha256};

/// Collectives over the ranks of one run.
pub trait Communicator: Send {
    /// This rank, `0..world_size()`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn world_size(&self) -> usize;

    /// Gathers every rank's bytes to every rank, in rank order.
    ///
    /// `sizes[r]` is the byte count rank `r` contributes (every rank knows it
    /// from the plan; `local.len() == sizes[self.rank()]`), so implementations
    /// without a variable-size gather need no extra round to learn the sizes.
    fn all_gather(&mut self, step: usize, local: &[u8], sizes: &[usize]) -> Result<Vec<Vec<u8>>, RuntimeError>;

    /// Replaces `buf` on every rank with the elementwise sum of every rank's
    /// `buf` (same length everywhere), summed in a fixed order.
    fn all_reduce_sum(&mut self, step: usize, buf: &mut [f32]) -> Result<(), RuntimeError>;

    /// Reports that this rank failed at `step`, so that every other rank's
    /// pending and later collectives return an error naming this rank.
    fn abort(&mut self, step: usize, reason: &str);

    /// [`Communicator::all_gather`] where the bytes live: returns every
    /// rank's bytes, concatenated in rank order. The default serves host
    /// bytes; a device communicator gathers device memory in place.
    fn all_gather_bytes(
        &mut self,
        step: usize,
        local: &DeviceBytes,
        sizes: &[usize],
    ) -> Result<DeviceBytes, RuntimeError> {
        match local {
            DeviceBytes::Host(bytes) => all_gather_host(self, step, bytes, sizes),
            DeviceBytes::Cuda { .. } => Err(host_only(self.rank(), step)),
        }
    }

    /// [`Communicator::all_reduce_sum`] where the f32 values live, in place.
    fn all_reduce_sum_tensor(&mut self, step: usize, buf: &mut DeviceTensor) -> Result<(), RuntimeError> {
        match buf.as_host_mut() {
            Some(t) => all_reduce_host(self, step, t),
            None => Err(host_only(self.rank(), step)),
        }
    }
}

/// The host-memory side of [`Communicator::all_gather_bytes`].
pub fn all_gather_host<C: Communicator + ?Sized>(
    comm: &mut C,
    step: usize,
    bytes: &[u8],
    sizes: &[usize],
) -> Result<DeviceBytes, RuntimeError> {
    Ok(DeviceBytes::Host(comm.all_gather(step, bytes, sizes)?.concat()))
}

/// The host-memory side of [`Communicator::all_reduce_sum_tensor`]: f32 only.
pub fn all_reduce_host<C: Communicator + ?Sized>(
    comm: &mut C,
    step: usize,
    t: &mut cfg_core::Tensor,
) -> Result<(), RuntimeError> {
    match &mut t.data {
        TensorData::F32(v) => comm.all_reduce_sum(step, v),
        _ => Err(not_f32(comm.rank(), step)),
    }
}

/// The error for an all-reduce of something other than f32 values.
pub(crate) fn not_f32(rank: usize, step: usize) -> RuntimeError {
    RuntimeError::Collective { rank, step, detail: "an all-reduce sums f32 values".into() }
}

fn host_only(rank: usize, step: usize) -> RuntimeError {
    RuntimeError::Collective {
        rank,
        step,
        detail: "this communicator works on host memory, but the tensors are in CUDA device memory \
                 (use the NCCL communicator with the CUDA backend)"
            .into(),
    }
}

/// A communicator lent to a run (`sample` takes its communicator by value).
impl<C: Communicator + ?Sized> Communicator for &mut C {
    fn rank(&self) -> usize {
        (**self).rank()
    }

    fn world_size(&self) -> usize {
        (**self).world_size()
    }

    fn all_gather(&mut self, step: usize, local: &[u8], sizes: &[usize]) -> Result<Vec<Vec<u8>>, RuntimeError> {
        (**self).all_gather(step, local, sizes)
    }

    fn all_reduce_sum(&mut self, step: usize, buf: &mut [f32]) -> Result<(), RuntimeError> {
        (**self).all_reduce_sum(step, buf)
    }

    fn abort(&mut self, step: usize, reason: &str) {
        (**self).abort(step, reason)
    }

    fn all_gather_bytes(
        &mut self,
        step: usize,
        local: &DeviceBytes,
        sizes: &[usize],
    ) -> Result<DeviceBytes, RuntimeError> {
        (**self).all_gather_bytes(step, local, sizes)
    }

    fn all_reduce_sum_tensor(&mut self, step: usize, buf: &mut DeviceTensor) -> Result<(), RuntimeError> {
        (**self).all_reduce_sum_tensor(step, buf)
    }
}

/// A 32-byte fingerprint (SHA-256) of some bytes.
pub fn fingerprint(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Checks that every rank holds the same fingerprint; the error names the
/// first rank that differs from rank 0.
pub fn check_fingerprint<C: Communicator + ?Sized>(
    comm: &mut C,
    step: usize,
    local: &[u8; 32],
) -> Result<(), RuntimeError> {
    let sizes = vec![32; comm.world_size()];
    let all = comm.all_gather(step, local, &sizes)?;
    match all.iter().position(|f| f.as_slice() != all[0].as_slice()) {
        None => Ok(()),
        Some(rank) => Err(RuntimeError::Divergence { step, rank }),
    }
}
