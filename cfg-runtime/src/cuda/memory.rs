//! Device memory recycled by size, as PyTorch's caching allocator does: a
//! dropped buffer's memory goes back to its device's free list, and the next
//! request of that byte size takes it without a driver call. A step's buffers
//! have the same sizes as the last step's, so a steady run allocates nothing.
//!
//! Reuse is ordered like `cuMemFreeAsync`: a `Device` does all its work on
//! one stream, so work queued with the new owner runs after the old owner's.

use cudarc::driver::{CudaSlice, CudaStream, DriverError};
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// The free lists of one device, by byte size.
#[derive(Debug, Default)]
pub(crate) struct FreeLists {
    by_size: Mutex<HashMap<usize, Vec<CudaSlice<u8>>>>,
}

impl FreeLists {
    /// Memory of exactly `bytes` bytes (contents undefined): a recycled
    /// block, or a new one from the stream-ordered allocator.
    pub(crate) fn take(self: &Arc<Self>, stream: &Arc<CudaStream>, bytes: usize) -> Result<DeviceMem, DriverError> {
        let recycled = self.by_size.lock().ok().and_then(|mut lists| lists.get_mut(&bytes).and_then(Vec::pop));
        let mem = match recycled {
            Some(mem) => mem,
            // SAFETY: callers write the memory (a kernel, a copy or a memset) before reading it.
            None => unsafe { stream.alloc::<u8>(bytes) }?,
        };
        Ok(DeviceMem { mem: Some(mem), free: Some(self.clone()) })
    }

    /// Hands every cached block back to the driver.
    pub(crate) fn release(&self) {
        if let Ok(mut lists) = self.by_size.lock() {
            lists.clear();
        }
    }
}

/// Device memory that returns to its device's free list when dropped, or
/// memory another framework owns, which is left alone.
#[derive(Debug)]
pub struct DeviceMem {
    /// Always `Some` until dropped.
    mem: Option<CudaSlice<u8>>,
    /// `None` for borrowed memory.
    free: Option<Arc<FreeLists>>,
}

impl DeviceMem {
    /// `bytes` bytes at `addr`, owned by someone else: dropping it frees nothing.
    ///
    /// # Safety
    /// `addr` must be a live allocation of `stream`'s context with `bytes`
    /// bytes, alive for as long as this value is used.
    pub(crate) unsafe fn borrowed(stream: &Arc<CudaStream>, addr: u64, bytes: usize) -> DeviceMem {
        // SAFETY: the caller's contract; `Drop` leaks it instead of freeing.
        let mem = unsafe { stream.upgrade_device_ptr::<u8>(addr, bytes) };
        DeviceMem { mem: Some(mem), free: None }
    }
}

impl Deref for DeviceMem {
    type Target = CudaSlice<u8>;
    fn deref(&self) -> &CudaSlice<u8> {
        self.mem.as_ref().expect("present until dropped")
    }
}

impl DerefMut for DeviceMem {
    fn deref_mut(&mut self) -> &mut CudaSlice<u8> {
        self.mem.as_mut().expect("present until dropped")
    }
}

impl Drop for DeviceMem {
    fn drop(&mut self) {
        let Some(mem) = self.mem.take() else { return };
        match &self.free {
            Some(free) => {
                if let Ok(mut lists) = free.by_size.lock() {
                    lists.entry(mem.len()).or_default().push(mem);
                }
            }
            // Not ours to free.
            None => {
                mem.leak();
            }
        }
    }
}
