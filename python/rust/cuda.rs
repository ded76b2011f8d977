//! The guider's steps on CUDA tensors: the project's kernels run on the
//! tensors' device, in place, ordered on the caller's stream (torch's
//! current stream): the guider's device stream first waits for the work
//! queued there, and the caller's stream then waits for the guider's work.

use crate::buffers::{Checked, Place};
use crate::errors::guidance;
use cfg_core::program::Program;
use cfg_core::state::GuidanceState;
use cfg_core::Shape;
use cfg_runtime::backend::Backend;
use cfg_runtime::cuda::{evaluate_into, Buffer, CudaBackend, Device, ExecOptions, ExternalStream};
use cfg_runtime::tensor::{CudaTensor, DeviceTensor};
use pyo3::PyResult;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The devices opened so far, by ordinal (one per process, shared by every guider).
fn devices() -> &'static Mutex<HashMap<usize, Arc<Device>>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<Device>>>> = OnceLock::new();
    DEVICES.get_or_init(Mutex::default)
}

/// Device `ordinal` (its primary context, which torch shares).
pub fn device(ordinal: usize) -> Result<Arc<Device>, String> {
    let mut open = devices().lock().map_err(|_| "the CUDA device table is poisoned".to_string())?;
    if let Some(d) = open.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Arc::new(Device::new(ordinal).map_err(|e| format!("CUDA device {ordinal}: {e}"))?);
    open.insert(ordinal, d.clone());
    Ok(d)
}

/// The one place every tensor of a call is in.
pub fn place_of<'a>(tensors: impl IntoIterator<Item = (String, &'a Checked)>) -> PyResult<Place> {
    let mut first: Option<(String, Place)> = None;
    for (name, t) in tensors {
        match &first {
            None => first = Some((name, t.place)),
            Some((n0, p0)) if *p0 != t.place => {
                return Err(guidance(format!(
                    "{name} is on {}, but {n0} is on {p0}: every tensor of a call must be on one device",
                    t.place
                )))
            }
            Some(_) => {}
        }
    }
    Ok(first.map_or(Place::Cpu, |(_, p)| p))
}

/// `t`'s memory, used in place.
fn borrow(dev: &Device, t: &Checked) -> Buffer {
    // SAFETY: `t` was imported through DLPack on this device and is kept
    // alive, unwritten by others, for the whole call (the Importer holds it).
    unsafe { Buffer::borrowed(dev, t.addr() as u64, t.dtype, t.shape.numel()) }
}

/// Runs `f` on `dev` ordered on `stream` (see the module's comment).
fn ordered<T>(dev: &Device, stream: usize, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let stream = ExternalStream(stream);
    dev.wait_for(stream).map_err(|e| e.to_string())?;
    let out = f();
    // Signalled even after a failure, so the caller's stream never runs ahead of queued work.
    dev.signal(stream).map_err(|e| e.to_string())?;
    out
}

/// One output's program on its predictions, written into `out`.
pub struct Job<'a> {
    /// The program.
    pub program: &'a Program,
    /// Its predictions, in `program.branches` order.
    pub inputs: Vec<&'a Checked>,
    /// Where the result goes.
    pub out: &'a Checked,
}

/// `combine`: each job's program, straight into its output.
pub fn combine(dev: &Device, stream: usize, jobs: &[Job<'_>], state: &mut GuidanceState) -> Result<(), String> {
    ordered(dev, stream, || {
        for job in jobs {
            let inputs: Vec<Buffer> = job.inputs.iter().map(|t| borrow(dev, t)).collect();
            let refs: Vec<&Buffer> = inputs.iter().collect();
            let mut out = borrow(dev, job.out);
            evaluate_into(dev, job.program, &refs, &job.out.shape, state, ExecOptions::default(), &mut out)
                .map_err(|e| format!("output `{}`: {e}", job.program.output))?;
        }
        Ok(())
    })
}

/// `partial_forms`: this rank's weighted f32 forms of each program, written
/// one after another into `forms`. `local[i][b]` is program i's prediction of branch b.
pub fn partial_forms(
    dev: &Arc<Device>,
    stream: usize,
    programs: &[(&Program, usize, Vec<Option<&Checked>>)],
    forms: &Checked,
) -> Result<(), String> {
    ordered(dev, stream, || {
        let mut backend = CudaBackend::on(dev.clone());
        let mut dst = borrow(dev, forms);
        let mut at = 0usize;
        for (p, n, local) in programs {
            let tensors: Vec<Option<DeviceTensor>> = local.iter().map(|t| t.map(|t| device_tensor(dev, t))).collect();
            let refs: Vec<Option<&DeviceTensor>> = tensors.iter().map(Option::as_ref).collect();
            let part = backend.partial_forms(p, &refs, &Shape::new([*n])).map_err(|e| e.to_string())?;
            copy_into(dev, &part, &mut dst, at)?;
            at += part.len();
        }
        Ok(())
    })
}

/// `finish`: each program's non-linear part from its reduced forms (`forms`
/// holds every program's, one after another), written into its output.
pub fn finish(
    dev: &Arc<Device>,
    stream: usize,
    programs: &[(&Program, &Checked)],
    forms: &Checked,
    state: &mut GuidanceState,
) -> Result<(), String> {
    ordered(dev, stream, || {
        let mut backend = CudaBackend::on(dev.clone());
        let all = borrow(dev, forms);
        let mut at = 0usize;
        for (p, out) in programs {
            let len = p.forms.len() * out.shape.numel();
            let mine = dev.copy_range(&all, at, len).map_err(|e| e.to_string())?;
            at += len;
            let mine = DeviceTensor::Cuda(CudaTensor { buf: mine, shape: Shape::new([len]) });
            let result = backend.evaluate_forms(p, &mine, out.dtype, &out.shape, state).map_err(|e| e.to_string())?;
            let mut dst = borrow(dev, out);
            copy_into(dev, &result, &mut dst, 0)?;
        }
        Ok(())
    })
}

fn device_tensor(dev: &Device, t: &Checked) -> DeviceTensor {
    DeviceTensor::Cuda(CudaTensor { buf: borrow(dev, t), shape: t.shape.clone() })
}

/// Copies `src` into `dst` from element `at` on.
fn copy_into(dev: &Device, src: &DeviceTensor, dst: &mut Buffer, at: usize) -> Result<(), String> {
    let src = src.as_cuda().ok_or("the CUDA backend returned a host tensor")?;
    dev.copy_to(&src.buf, dst, at).map_err(|e| e.to_string())
}
