//! The NCCL communicator's staging buffer: device memory from `cuMemAlloc`,
//! outside the stream-ordered pool. Ranks that share a process read and write
//! each other's buffers directly, and pool memory is reachable only by the
//! devices its pool grants access to (peer access does not cover it).

use cudarc::driver::{result, sys, CudaContext, CudaStream};
use std::sync::Arc;

/// `len` bytes of device memory on `ctx`'s device.
#[derive(Debug)]
pub(crate) struct Staging {
    ctx: Arc<CudaContext>,
    ptr: sys::CUdeviceptr,
    len: usize,
}

impl Staging {
    /// Memory of at least one byte, zeroed in order on `stream` (the
    /// stream every later use of it is queued on).
    pub fn new(ctx: &Arc<CudaContext>, stream: &CudaStream, len: usize) -> Result<Staging, String> {
        ctx.bind_to_thread().map_err(|e| format!("cuCtxSetCurrent: {e:?}"))?;
        let len = len.max(1);
        // SAFETY: the context is current; the memory is freed once, in Drop.
        let ptr = unsafe { result::malloc_sync(len) }.map_err(|e| format!("cuMemAlloc: {e:?}"))?;
        let staging = Staging { ctx: ctx.clone(), ptr, len };
        // SAFETY: `ptr` holds `len` bytes; queued before any copy or collective.
        unsafe { result::memset_d8_async(ptr, 0, len, stream.cu_stream()) }
            .map_err(|e| format!("cuMemsetD8Async: {e:?}"))?;
        Ok(staging)
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The device address of byte 0.
    pub fn addr(&self) -> u64 {
        self.ptr
    }

    /// Queues a copy of `bytes` to `offset` on `stream`.
    pub fn upload(&self, stream: &CudaStream, offset: usize, bytes: &[u8]) -> Result<(), String> {
        if offset + bytes.len() > self.len {
            return Err(format!(
                "{} bytes at offset {offset} overrun the {}-byte staging buffer",
                bytes.len(),
                self.len
            ));
        }
        // SAFETY: the range lies in the buffer (checked above); the source is
        // pageable host memory, which the driver copies out before returning.
        unsafe { result::memcpy_htod_async(self.ptr + offset as u64, bytes, stream.cu_stream()) }
            .map_err(|e| format!("cuMemcpyHtoD: {e:?}"))
    }

    /// Queues a device-to-device copy of `len` bytes at `src` to `offset` on `stream`.
    pub fn copy_in(&self, stream: &CudaStream, offset: usize, src: u64, len: usize) -> Result<(), String> {
        if offset + len > self.len {
            return Err(format!("{len} bytes at offset {offset} overrun the {}-byte staging buffer", self.len));
        }
        // SAFETY: the range lies in the buffer (checked above); `src` holds
        // `len` bytes of device memory (the caller's tensor), ordered on `stream`.
        unsafe { result::memcpy_dtod_async(self.ptr + offset as u64, src, len, stream.cu_stream()) }
            .map_err(|e| format!("cuMemcpyDtoDAsync: {e:?}"))
    }

    /// Queues a device-to-device copy of the first `len` bytes to `dst` on `stream`.
    pub fn copy_out(&self, stream: &CudaStream, dst: u64, len: usize) -> Result<(), String> {
        if len > self.len {
            return Err(format!("{len} bytes read from the {}-byte staging buffer", self.len));
        }
        // SAFETY: `len` bytes lie in the buffer; `dst` holds `len` bytes of
        // device memory, ordered on `stream`.
        unsafe { result::memcpy_dtod_async(dst, self.ptr, len, stream.cu_stream()) }
            .map_err(|e| format!("cuMemcpyDtoDAsync: {e:?}"))
    }

    /// The first `len` bytes, after the work queued on `stream` has finished.
    pub fn download(&self, stream: &CudaStream, len: usize) -> Result<Vec<u8>, String> {
        if len > self.len {
            return Err(format!("{len} bytes read from the {}-byte staging buffer", self.len));
        }
        let mut host = vec![0u8; len];
        // SAFETY: `len` bytes lie in the buffer; the stream is synchronised
        // before `host` is read or dropped.
        unsafe { result::memcpy_dtoh_async(&mut host, self.ptr, stream.cu_stream()) }
            .map_err(|e| format!("cuMemcpyDtoH: {e:?}"))?;
        stream.synchronize().map_err(|e| format!("cuStreamSynchronize: {e:?}"))?;
        Ok(host)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by `new` in this context, freed once, after the
        // communicator that used it was destroyed or aborted (its Drop runs
        // before its fields are dropped; a thread launch keeps every rank's
        // buffer until all ranks have ended, since peers read it directly).
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}
