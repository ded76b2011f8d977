//! One CUDA device: its context, one stream, loaded kernel modules and buffers.
//!
//! Every entry point first checks that libcuda can be loaded: cudarc panics
//! when it cannot, and a library must return an error instead.

use super::error::CudaError;
use super::kernels::{self, KernelModule};
use super::memory::{DeviceMem, FreeLists};
use cfg_core::{DType, Shape, Tensor};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Whether libcuda (the driver) can be loaded.
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// The number of CUDA devices; [`CudaError::NoDriver`] without libcuda.
pub fn device_count() -> Result<usize, CudaError> {
    if !driver_available() {
        return Err(CudaError::NoDriver);
    }
    use cudarc::driver::{sys::CUresult, DriverError};
    match CudaContext::device_count() {
        Ok(n) => Ok(n.max(0) as usize),
        Err(DriverError(CUresult::CUDA_ERROR_NO_DEVICE)) => Ok(0),
        // A stub libcuda (a container without the host's driver), or a mismatched one.
        Err(DriverError(CUresult::CUDA_ERROR_STUB_LIBRARY | CUresult::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH)) => {
            Err(CudaError::NoDriver)
        }
        Err(e) => Err(CudaError::driver("cuDeviceGetCount", e)),
    }
}

/// A device with its context, one stream and the kernels loaded so far.
#[derive(Debug)]
pub struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    sms: u32,
    name: String,
    modules: Mutex<HashMap<&'static str, LoadedModule>>,
    /// Bytes copied between the host and this device so far (both ways).
    host_bytes: AtomicU64,
    /// Freed memory kept for reuse.
    free: Arc<FreeLists>,
}

/// A loaded module and the functions looked up in it so far.
#[derive(Debug)]
struct LoadedModule {
    module: Arc<CudaModule>,
    functions: HashMap<String, CudaFunction>,
}

/// Device memory holding `len` elements of `dtype`.
#[derive(Debug)]
pub struct Buffer {
    mem: DeviceMem,
    /// Element type.
    pub dtype: DType,
    /// Element count.
    pub len: usize,
}

impl Device {
    /// Opens device `ordinal` (its primary context).
    pub fn new(ordinal: usize) -> Result<Device, CudaError> {
        let count = device_count()?;
        if count == 0 {
            return Err(CudaError::NoDevice);
        }
        if ordinal >= count {
            return Err(CudaError::BadOrdinal { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::driver("cuCtxCreate", e))?;
        // One stream does all of this device object's work in order (kernels,
        // copies, and the collectives of a communicator sharing it), so
        // cudarc's per-buffer events (for cross-stream ordering) are not
        // needed, and raw pointers placed in parameter structs stay ordered
        // with the launches that use them. It is a stream of its own, not the
        // legacy default one: other users of the GPU (another rank group,
        // another backend) never queue behind this one's collectives.
        // SAFETY: no buffer exists yet in this context object, and this
        // device uses a single stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| CudaError::driver("cuStreamCreate", e))?;
        if ctx.has_async_alloc() {
            keep_freed_memory(&ctx)?;
        }
        let (major, minor) = ctx.compute_capability().map_err(|e| CudaError::driver("compute capability", e))?;
        let sms = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| CudaError::driver("multiprocessor count", e))?;
        let name = ctx.name().map_err(|e| CudaError::driver("device name", e))?;
        Ok(Device {
            ctx,
            stream,
            arch: format!("sm_{major}{minor}"),
            sms: sms.max(1) as u32,
            name,
            modules: Mutex::new(HashMap::new()),
            host_bytes: AtomicU64::new(0),
            free: Arc::default(),
        })
    }

    /// Bytes copied between the host and this device so far, both ways
    /// (step reports show the per-step difference: only small values
    /// should cross on a device-resident run).
    pub fn host_bytes(&self) -> u64 {
        self.host_bytes.load(Ordering::Relaxed)
    }

    fn count(&self, bytes: usize) {
        self.host_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The device's name and architecture (`NVIDIA H100 80GB HBM3 (sm_90)`).
    pub fn describe(&self) -> String {
        format!("{} ({})", self.name, self.arch)
    }

    /// The architecture kernels are compiled for (`sm_90`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Streaming multiprocessors.
    pub fn sms(&self) -> u32 {
        self.sms
    }

    /// The stream all work runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// A kernel of `module`, compiling (cached) and loading the module on
    /// first use; the function handle is kept, since every launch asks for it.
    pub fn function(&self, module: &KernelModule, name: &str) -> Result<CudaFunction, CudaError> {
        let mut modules = self.modules.lock().map_err(|_| CudaError::Unsupported("module lock poisoned".into()))?;
        let loaded = match modules.get_mut(module.name) {
            Some(loaded) => loaded,
            None => {
                let ptx = kernels::compile(module, &self.arch)?;
                let m = self.ctx.load_module((*ptx).clone()).map_err(|e| CudaError::driver("cuModuleLoadData", e))?;
                modules.entry(module.name).or_insert(LoadedModule { module: m, functions: HashMap::new() })
            }
        };
        if let Some(f) = loaded.functions.get(name) {
            return Ok(f.clone());
        }
        let f = loaded.module.load_function(name).map_err(|e| CudaError::driver("cuModuleGetFunction", e))?;
        loaded.functions.insert(name.to_string(), f.clone());
        Ok(f)
    }

    /// Uninitialised device memory for `len` elements of `dtype`.
    pub fn alloc(&self, dtype: DType, len: usize) -> Result<Buffer, CudaError> {
        Ok(Buffer { mem: self.take((len * dtype.size()).max(1))?, dtype, len })
    }

    /// Uninitialised memory of `bytes` bytes, recycled where one of that size was freed.
    fn take(&self, bytes: usize) -> Result<DeviceMem, CudaError> {
        self.free.take(&self.stream, bytes).map_err(|e| CudaError::driver("cuMemAlloc", e))
    }

    /// Zeroed device memory of `bytes` bytes (counters, barriers).
    pub(crate) fn zeros_u8(&self, bytes: usize) -> Result<DeviceMem, CudaError> {
        let mut mem = self.take(bytes.max(1))?;
        self.stream.memset_zeros(&mut *mem).map_err(|e| CudaError::driver("cuMemsetD8Async", e))?;
        Ok(mem)
    }

    /// Sets every byte of `b` to zero (queued on the stream).
    pub fn memset_zeros(&self, b: &mut Buffer) -> Result<(), CudaError> {
        self.stream.memset_zeros(&mut *b.mem).map_err(|e| CudaError::driver("cuMemsetD8Async", e))
    }

    /// Zeroed memory for `len` elements of `dtype`.
    pub fn zeros(&self, dtype: DType, len: usize) -> Result<Buffer, CudaError> {
        Ok(Buffer { mem: self.zeros_u8(len * dtype.size())?, dtype, len })
    }

    /// Hands the memory kept for reuse back to the driver (freed buffers of
    /// sizes a run no longer uses).
    pub fn release_cached(&self) {
        self.free.release();
    }

    /// Copies a host tensor to the device.
    pub fn upload(&self, t: &Tensor) -> Result<Buffer, CudaError> {
        let mut b = self.alloc(t.dtype(), t.len())?;
        let bytes = t.as_bytes();
        self.count(bytes.len());
        if !bytes.is_empty() {
            self.stream
                .memcpy_htod(bytes, &mut b.mem.slice_mut(..bytes.len()))
                .map_err(|e| CudaError::driver("cuMemcpyHtoD", e))?;
        }
        Ok(b)
    }

    /// Copies f32 values to the device.
    pub fn upload_f32(&self, v: &[f32]) -> Result<Buffer, CudaError> {
        self.upload(&Tensor { shape: Shape::new([v.len()]), data: cfg_core::tensor::TensorData::F32(v.to_vec()) })
    }

    /// Copies f64 values to raw device memory.
    pub(crate) fn upload_f64(&self, v: &[f64]) -> Result<DeviceMem, CudaError> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.count(bytes.len());
        let mut mem = self.zeros_u8(bytes.len())?;
        if !bytes.is_empty() {
            self.stream
                .memcpy_htod(&bytes, &mut mem.slice_mut(..bytes.len()))
                .map_err(|e| CudaError::driver("cuMemcpyHtoD", e))?;
        }
        Ok(mem)
    }

    /// Copies a buffer back into a host tensor of `shape` (waits for the stream).
    pub fn download(&self, b: &Buffer, shape: &Shape) -> Result<Tensor, CudaError> {
        let bytes = self.download_bytes(b)?;
        Tensor::from_bytes(b.dtype, shape.clone(), &bytes)
            .ok_or_else(|| CudaError::Unsupported(format!("buffer of {} elements does not fill {shape}", b.len)))
    }

    /// The raw bytes of a buffer (waits for the stream).
    pub fn download_bytes(&self, b: &Buffer) -> Result<Vec<u8>, CudaError> {
        let n = b.len * b.dtype.size();
        self.count(n);
        let mut host = vec![0u8; n];
        if n > 0 {
            self.stream.memcpy_dtoh(&b.mem.slice(..n), &mut host).map_err(|e| CudaError::driver("cuMemcpyDtoH", e))?;
        }
        self.sync()?;
        Ok(host)
    }

    /// f64 values from raw device memory (waits for the stream).
    pub(crate) fn download_f64(&self, mem: &CudaSlice<u8>, len: usize) -> Result<Vec<f64>, CudaError> {
        let mut host = vec![0u8; len * 8];
        self.count(len * 8);
        self.stream.memcpy_dtoh(&mem.slice(..len * 8), &mut host).map_err(|e| CudaError::driver("cuMemcpyDtoH", e))?;
        self.sync()?;
        Ok(host.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect())
    }

    /// Waits for all queued work.
    pub fn sync(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(|e| CudaError::driver("cuStreamSynchronize", e))
    }

    /// Copies `src` to `dst` with the driver's device-to-device memcpy.
    pub fn memcpy(&self, src: &Buffer, dst: &mut Buffer) -> Result<(), CudaError> {
        let bytes = src.len * src.dtype.size();
        if dst.len * dst.dtype.size() < bytes {
            return Err(CudaError::Unsupported(format!("memcpy of {bytes} bytes into a smaller buffer")));
        }
        self.stream
            .memcpy_dtod(&src.mem.slice(..bytes), &mut dst.mem.slice_mut(..bytes))
            .map_err(|e| CudaError::driver("cuMemcpyDtoDAsync", e))
    }

    /// Copies the elements of `src` into `dst` (of the same dtype) from element `at` on.
    pub fn copy_to(&self, src: &Buffer, dst: &mut Buffer, at: usize) -> Result<(), CudaError> {
        if src.dtype != dst.dtype || at + src.len > dst.len {
            return Err(CudaError::Unsupported(format!(
                "copy of {} {} at element {at} into {} {}",
                src.len, src.dtype, dst.len, dst.dtype
            )));
        }
        self.copy_into(src, &mut dst.mem, at * dst.dtype.size())
    }

    /// Copies the elements of `src` into raw memory `dst` at byte `at`.
    pub fn copy_into(&self, src: &Buffer, dst: &mut CudaSlice<u8>, at: usize) -> Result<(), CudaError> {
        let n = src.len * src.dtype.size();
        if at + n > dst.len() {
            return Err(CudaError::Unsupported(format!("copy of {n} bytes at {at} into {} bytes", dst.len())));
        }
        if n == 0 {
            return Ok(());
        }
        self.stream
            .memcpy_dtod(&src.mem.slice(..n), &mut dst.slice_mut(at..at + n))
            .map_err(|e| CudaError::driver("cuMemcpyDtoDAsync", e))
    }

    /// A new buffer of `len` elements of `dtype` copied from raw memory `src` at byte `at`.
    pub fn copy_out(&self, src: &CudaSlice<u8>, at: usize, dtype: DType, len: usize) -> Result<Buffer, CudaError> {
        let n = len * dtype.size();
        if at + n > src.len() {
            return Err(CudaError::Unsupported(format!("copy of {n} bytes at {at} from {} bytes", src.len())));
        }
        let mut b = self.alloc(dtype, len)?;
        if n > 0 {
            self.stream
                .memcpy_dtod(&src.slice(at..at + n), &mut b.mem.slice_mut(..n))
                .map_err(|e| CudaError::driver("cuMemcpyDtoDAsync", e))?;
        }
        Ok(b)
    }

    /// Copies the runs of a slice (see [`crate::slice`]) from `src` into
    /// `dst` (same dtype, `rows.outer × rows.want` elements), one
    /// device-to-device copy per run.
    pub fn copy_rows(&self, src: &Buffer, dst: &mut Buffer, rows: &crate::slice::Rows) -> Result<(), CudaError> {
        let size = src.dtype.size();
        if src.dtype != dst.dtype || src.len < rows.outer * rows.got || dst.len < rows.outer * rows.want {
            return Err(CudaError::Unsupported(format!(
                "slice of {} {} into {} {}: {rows:?}",
                src.len, src.dtype, dst.len, dst.dtype
            )));
        }
        let n = rows.want * size;
        if n == 0 {
            return Ok(());
        }
        for o in 0..rows.outer {
            let (from, to) = ((o * rows.got + rows.start) * size, o * n);
            self.stream
                .memcpy_dtod(&src.mem.slice(from..from + n), &mut dst.mem.slice_mut(to..to + n))
                .map_err(|e| CudaError::driver("cuMemcpyDtoDAsync", e))?;
        }
        Ok(())
    }

    /// A new buffer holding elements `start..start + len` of `src`.
    pub fn copy_range(&self, src: &Buffer, start: usize, len: usize) -> Result<Buffer, CudaError> {
        if start + len > src.len {
            return Err(CudaError::Unsupported(format!("elements {start}..{} of {}", start + len, src.len)));
        }
        let size = src.dtype.size();
        self.copy_out(&src.mem, start * size, src.dtype, len)
    }

    /// Uninitialised raw memory of `bytes` bytes (written before it is read).
    pub fn raw_bytes(&self, bytes: usize) -> Result<DeviceMem, CudaError> {
        self.take(bytes.max(1))
    }

    /// The device address of raw memory.
    pub fn raw_addr(&self, mem: &CudaSlice<u8>) -> u64 {
        self.addr(mem)
    }

    /// The median time in milliseconds of `f` over `reps` runs, measured with
    /// CUDA events on the stream, after warm-up runs (kernel loading, clocks).
    /// Each run is queued behind a short stream hold, so the interval between
    /// the events is GPU time only, not the host's time to queue the work.
    pub fn median_ms(&self, reps: usize, mut f: impl FnMut() -> Result<(), CudaError>) -> Result<f64, CudaError> {
        const WARMUP: usize = 3;
        const HOLD_NS: u64 = 500_000;
        let ev = || self.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT));
        let (start, end) = (
            ev().map_err(|e| CudaError::driver("cuEventCreate", e))?,
            ev().map_err(|e| CudaError::driver("cuEventCreate", e))?,
        );
        for _ in 0..WARMUP {
            f()?;
        }
        self.sync()?;
        let mut ms = Vec::with_capacity(reps.max(1));
        for _ in 0..reps.max(1) {
            super::launch::hold_stream(self, HOLD_NS)?;
            start.record(&self.stream).map_err(|e| CudaError::driver("cuEventRecord", e))?;
            f()?;
            end.record(&self.stream).map_err(|e| CudaError::driver("cuEventRecord", e))?;
            ms.push(start.elapsed_ms(&end).map_err(|e| CudaError::driver("cuEventElapsedTime", e))? as f64);
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        Ok(ms[ms.len() / 2])
    }

    /// Whether `b` was allocated in this device's context (the primary
    /// context, shared by every `Device` of one GPU).
    pub fn owns(&self, b: &Buffer) -> bool {
        b.mem.stream().context().cu_ctx() == self.ctx.cu_ctx()
    }

    /// The device address of raw memory.
    pub(crate) fn addr(&self, mem: &CudaSlice<u8>) -> u64 {
        mem.device_ptr(&self.stream).0
    }

    /// A grid-stride launch shape for `items` work items of 256 threads each.
    pub(crate) fn grid(&self, items: usize) -> LaunchConfig {
        let blocks = items.div_ceil(256).clamp(1, self.sms as usize * 16);
        LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
    }
}

impl Buffer {
    /// Memory another framework owns (a torch tensor's), used in place: never
    /// freed or recycled here.
    ///
    /// # Safety
    /// `addr` must be device memory of `dev`'s context holding `len` elements
    /// of `dtype`, alive and not written by others while the buffer is used.
    pub unsafe fn borrowed(dev: &Device, addr: u64, dtype: DType, len: usize) -> Buffer {
        // SAFETY: the caller's contract.
        let mem = unsafe { DeviceMem::borrowed(&dev.stream, addr, (len * dtype.size()).max(1)) };
        Buffer { mem, dtype, len }
    }

    /// The device address of the first element.
    pub fn addr(&self, dev: &Device) -> u64 {
        dev.addr(&self.mem)
    }
}

/// Lets the stream-ordered allocator keep freed memory instead of returning it
/// to the driver at every synchronisation (the default release threshold is 0),
/// so a step's buffers are reused rather than mapped again.
fn keep_freed_memory(ctx: &CudaContext) -> Result<(), CudaError> {
    use cudarc::driver::{result, sys};
    let mut keep: u64 = u64::MAX;
    // SAFETY: the device comes from a live context; the release threshold
    // attribute takes a pointer to a u64.
    unsafe {
        let pool = result::device::get_default_mem_pool(ctx.cu_device())
            .map_err(|e| CudaError::driver("cuDeviceGetDefaultMemPool", e))?;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut keep as *mut u64).cast(),
        )
        .map_err(|e| CudaError::driver("cuMemPoolSetAttribute", e))
    }
}
