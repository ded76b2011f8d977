//! [`CudaBackend`]: the [`Backend`] trait on one CUDA device, with every
//! tensor in device memory.

use super::device::{Buffer, Device};
use super::error::CudaError;
use super::exec::{evaluate, ExecOptions};
use super::params::{Forms, MAX_TERMS};
use super::{launch, sampler};
use crate::backend::{
    advance_counters, check_forms_size, check_partial_inputs, identity_forms, Backend, BackendError, UpdateStep,
};
use crate::scheduler::Sampler;
use crate::slice::Rows;
use crate::tensor::{CudaTensor, DeviceBytes, DeviceTensor, Place};
use cfg_core::expr::Space;
use cfg_core::program::{Program, Value};
use cfg_core::state::GuidanceState;
use cfg_core::{DType, Shape, Tensor};
use smallvec::SmallVec;
use std::sync::Arc;

/// A short list on the stack (a form's terms and inputs: at most 8).
type Few<T> = SmallVec<[T; 8]>;

/// Runs guidance programs and the sampler on one CUDA device; bit-identical
/// to the CPU backend in f32 (same evaluation order, explicit fma, canonical
/// reductions).
#[derive(Debug)]
pub struct CudaBackend {
    dev: Arc<Device>,
    opts: ExecOptions,
}

impl From<CudaError> for BackendError {
    fn from(e: CudaError) -> Self {
        BackendError(e.to_string())
    }
}

/// The device buffer of `t`, or an error naming what was expected.
fn cuda<'a>(t: &'a DeviceTensor, what: &str) -> Result<&'a Buffer, BackendError> {
    t.as_cuda().map(|c| &c.buf).ok_or_else(|| BackendError(format!("the CUDA backend was given {what} in host memory")))
}

fn tensor(buf: Buffer, shape: &Shape) -> DeviceTensor {
    DeviceTensor::Cuda(CudaTensor { buf, shape: shape.clone() })
}

impl CudaBackend {
    /// Opens device `ordinal`; [`CudaError::NoDriver`] without libcuda.
    pub fn new(ordinal: usize) -> Result<CudaBackend, CudaError> {
        Ok(CudaBackend::on(Arc::new(Device::new(ordinal)?)))
    }

    /// A backend on an open device (shared with its communicator, so that
    /// kernels and collectives run in order on one stream).
    pub fn on(dev: Arc<Device>) -> CudaBackend {
        CudaBackend { dev, opts: ExecOptions::default() }
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// The device, shared (for another backend or a communicator on it).
    pub fn shared_device(&self) -> Arc<Device> {
        self.dev.clone()
    }

    /// Chooses the evaluation options (e.g. no cooperative launches).
    pub fn with_options(mut self, opts: ExecOptions) -> Self {
        self.opts = opts;
        self
    }

    /// `dtype` values of `src` (f32), rounded to nearest even: `1·x` through
    /// the combine kernel (a copy for f32).
    fn round(&self, src: &Buffer, dtype: DType) -> Result<Buffer, CudaError> {
        let dev = &self.dev;
        let mut out = dev.alloc(dtype, src.len)?;
        if dtype == DType::F32 {
            dev.memcpy(src, &mut out)?;
        } else {
            let mut f = Forms::new(&[src.addr(dev)]);
            f.push(&[(0, 1.0)]);
            launch::combine(dev, &f, DType::F32, &[out.addr(dev)], dtype, src.len)?;
        }
        Ok(out)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        format!("cuda:{}", self.dev.context().ordinal())
    }

    fn place(&self) -> Place {
        Place::Cuda(self.dev.clone())
    }

    fn evaluate(
        &mut self,
        program: &Program,
        inputs: &[&DeviceTensor],
        dtype: DType,
        shape: &Shape,
        state: &mut GuidanceState,
    ) -> Result<DeviceTensor, BackendError> {
        program.check_shape(shape)?;
        let bufs = inputs.iter().map(|t| cuda(t, "a prediction")).collect::<Result<Few<_>, _>>()?;
        if bufs.len() != program.branches.len() || bufs.iter().any(|b| b.dtype != dtype || b.len != shape.numel()) {
            return Err(BackendError(format!(
                "`{}`: expected {} predictions of {} {dtype}",
                program.output,
                program.branches.len(),
                shape
            )));
        }
        let out = evaluate(&self.dev, program, &bufs, dtype, shape, state, self.opts)?;
        Ok(tensor(out, shape))
    }

    fn partial_forms(
        &mut self,
        program: &Program,
        local: &[Option<&DeviceTensor>],
        shape: &Shape,
    ) -> Result<DeviceTensor, BackendError> {
        check_partial_inputs(program, local.len())?;
        let (dev, n) = (&self.dev, shape.numel());
        let out = dev.zeros(DType::F32, program.forms.len() * n)?;
        for (i, form) in program.forms.iter().enumerate() {
            let mut present: Few<(&Buffer, f32)> = Few::new();
            for &(b, w) in &form.terms {
                if let Some(t) = local[b] {
                    present.push((cuda(t, "a prediction")?, w));
                }
            }
            let Some((first, _)) = present.first() else { continue }; // zeros already
            if present.len() > MAX_TERMS || present.iter().any(|(b, _)| b.dtype != first.dtype || b.len != n) {
                return Err(BackendError("local branch predictions differ in dtype or size, or exceed 8".into()));
            }
            let addrs: Few<u64> = present.iter().map(|(b, _)| b.addr(dev)).collect();
            let mut f = Forms::new(&addrs);
            let terms: Few<(usize, f32)> = present.iter().enumerate().map(|(k, (_, w))| (k, *w)).collect();
            f.push(&terms);
            let at = out.addr(dev) + (i * n * 4) as u64;
            launch::combine(dev, &f, first.dtype, &[at], DType::F32, n)?;
        }
        Ok(tensor(out, &Shape::new([program.forms.len() * n])))
    }

    fn evaluate_forms(
        &mut self,
        program: &Program,
        forms: &DeviceTensor,
        dtype: DType,
        shape: &Shape,
        state: &mut GuidanceState,
    ) -> Result<DeviceTensor, BackendError> {
        let n = shape.numel();
        program.check_shape(shape)?;
        check_forms_size(program, forms, n)?;
        let dev = self.dev.clone();
        let all = cuda(forms, "reduced forms")?;
        // Each form as its own buffer (a device copy).
        let form = |i: usize| dev.copy_range(all, i * n, n);
        if let (true, Value::Form(i)) = (program.is_linear(), program.result) {
            advance_counters(program, state);
            return Ok(tensor(self.round(&form(i)?, dtype)?, shape));
        }
        let identity = identity_forms(program);
        let inputs = (0..program.forms.len()).map(form).collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&Buffer> = inputs.iter().collect();
        let out = evaluate(&dev, &identity, &refs, DType::F32, shape, state, self.opts)?;
        Ok(tensor(self.round(&out, dtype)?, shape))
    }

    fn init_latents(&mut self, seed: u64, output: usize, t0: f64, shape: &Shape) -> Result<DeviceTensor, BackendError> {
        let x = sampler::init_latents(&self.dev, seed, output as u32, t0, shape.numel())?;
        Ok(tensor(x, shape))
    }

    fn update(
        &mut self,
        s: &Sampler,
        space: Space,
        x: &mut DeviceTensor,
        pred: &DeviceTensor,
        renoise: Option<&DeviceTensor>,
        at: UpdateStep,
    ) -> Result<(), BackendError> {
        let (xb, pb) = (cuda(x, "latents")?, cuda(pred, "a prediction")?);
        let rb = renoise.map(|r| cuda(r, "a re-noising prediction")).transpose()?;
        sampler::update(&self.dev, s, at.seed, space, at.step, at.output, xb, (pb, rb), (at.t, at.t_next))?;
        Ok(())
    }

    fn narrow(&mut self, t: &DeviceTensor, rows: &Rows, shape: &Shape) -> Result<DeviceTensor, BackendError> {
        let src = cuda(t, "a prediction")?;
        if src.len < rows.outer * rows.got || rows.outer * rows.want != shape.numel() {
            return Err(BackendError(format!("slice of {} elements: {rows:?} does not fit {shape}", src.len)));
        }
        // Every element is written below: no memset.
        let mut dst = self.dev.alloc(src.dtype, shape.numel())?;
        self.dev.copy_rows(src, &mut dst, rows)?;
        Ok(tensor(dst, shape))
    }

    fn pack(&mut self, parts: &[&DeviceTensor]) -> Result<DeviceBytes, BackendError> {
        let len: usize = parts.iter().map(|t| t.bytes()).sum();
        // Every byte is written below: no memset.
        let mut mem = self.dev.raw_bytes(len)?;
        let mut at = 0;
        for t in parts {
            self.dev.copy_into(cuda(t, "a prediction")?, &mut mem, at)?;
            at += t.bytes();
        }
        Ok(DeviceBytes::Cuda { mem, len })
    }

    fn unpack(
        &mut self,
        bytes: &DeviceBytes,
        offset: usize,
        dtype: DType,
        shape: &Shape,
    ) -> Result<DeviceTensor, BackendError> {
        let DeviceBytes::Cuda { mem, len } = bytes else {
            return Err(BackendError("the CUDA backend was given bytes in host memory".into()));
        };
        if offset + shape.numel() * dtype.size() > *len {
            return Err(BackendError(format!("{len} bytes hold no {shape} {dtype} at offset {offset}")));
        }
        Ok(tensor(self.dev.copy_out(mem, offset, dtype, shape.numel())?, shape))
    }

    fn upload(&mut self, t: Tensor) -> Result<DeviceTensor, BackendError> {
        Ok(tensor(self.dev.upload(&t)?, &t.shape))
    }

    fn download(&mut self, t: &DeviceTensor) -> Result<Tensor, BackendError> {
        Ok(self.dev.download(cuda(t, "a tensor")?, t.shape())?)
    }

    fn host_bytes(&self) -> u64 {
        self.dev.host_bytes()
    }
}
