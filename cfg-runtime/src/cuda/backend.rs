//! [`CudaBackend`]: the [`Backend`] trait on one CUDA device.

use super::device::Device;
use super::error::CudaError;
use super::exec::{evaluate, ExecOptions};
use super::launch;
use super::params::{Forms, MAX_TERMS};
use crate::backend::{Backend, BackendError};
use cfg_core::program::Program;
use cfg_core::state::GuidanceState;
use cfg_core::tensor::TensorData;
use cfg_core::{DType, Shape, Tensor};

/// Runs guidance programs on one CUDA device; bit-identical to the CPU backend
/// in f32 (same evaluation order, explicit fma, canonical reductions).
#[derive(Debug)]
pub struct CudaBackend {
    dev: Device,
    opts: ExecOptions,
}

impl From<CudaError> for BackendError {
    fn from(e: CudaError) -> Self {
        BackendError(e.to_string())
    }
}

impl CudaBackend {
    /// Opens device `ordinal`; [`CudaError::NoDriver`] without libcuda.
    pub fn new(ordinal: usize) -> Result<CudaBackend, CudaError> {
        Ok(CudaBackend { dev: Device::new(ordinal)?, opts: ExecOptions::default() })
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// Chooses the evaluation options (e.g. no cooperative launches).
    pub fn with_options(mut self, opts: ExecOptions) -> Self {
        self.opts = opts;
        self
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        format!("cuda:{}", self.dev.context().ordinal())
    }

    fn evaluate(
        &mut self,
        program: &Program,
        inputs: &[&Tensor],
        dtype: DType,
        shape: &Shape,
        state: &mut GuidanceState,
    ) -> Result<Tensor, BackendError> {
        cfg_core::cpu::check_inputs(program, inputs, dtype, shape)?;
        let bufs = inputs.iter().map(|t| self.dev.upload(t)).collect::<Result<Vec<_>, _>>()?;
        let out = evaluate(&self.dev, program, &bufs, dtype, shape, state, self.opts)?;
        Ok(self.dev.download(&out, shape)?)
    }

    fn partial_form(&mut self, present: &[(&Tensor, f32)], out: &mut [f32]) -> Result<(), BackendError> {
        let n = out.len();
        let Some((first, _)) = present.first() else {
            out.fill(0.0);
            return Ok(());
        };
        if present.len() > MAX_TERMS || present.iter().any(|(t, _)| t.dtype() != first.dtype() || t.len() != n) {
            return Err(BackendError("local branch predictions differ in dtype or size, or exceed 8".into()));
        }
        let bufs = present.iter().map(|(t, _)| self.dev.upload(t)).collect::<Result<Vec<_>, _>>()?;
        let addrs: Vec<u64> = bufs.iter().map(|b| b.addr(&self.dev)).collect();
        let mut f = Forms::new(&addrs);
        let terms: Vec<(usize, f32)> = present.iter().enumerate().map(|(k, (_, w))| (k, *w)).collect();
        f.push(&terms);
        let dst = self.dev.alloc(DType::F32, n)?;
        launch::combine(&self.dev, &f, first.dtype(), &[dst.addr(&self.dev)], DType::F32, n)?;
        let t = self.dev.download(&dst, &Shape::new([n]))?;
        if let TensorData::F32(v) = t.data {
            out.copy_from_slice(&v);
        }
        Ok(())
    }
}
