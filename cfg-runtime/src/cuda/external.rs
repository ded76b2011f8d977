//! Work ordered with another framework's stream (torch's current stream):
//! the device's own stream waits for what is queued there, and that stream
//! waits for what this device queued, each through one event.

use super::device::Device;
use super::error::CudaError;
use cudarc::driver::{result, sys};

/// A stream another framework owns, by its raw handle (0: the legacy default stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalStream(pub usize);

impl ExternalStream {
    fn raw(self) -> sys::CUstream {
        self.0 as sys::CUstream
    }
}

impl Device {
    /// Queues a wait on this device's stream for the work queued on `external` so far.
    pub fn wait_for(&self, external: ExternalStream) -> Result<(), CudaError> {
        self.context().bind_to_thread().map_err(|e| CudaError::driver("cuCtxSetCurrent", e))?;
        // `external` must be a live stream of this context (the caller's handle).
        event_between(external.raw(), self.stream().cu_stream())
    }

    /// Queues a wait on `external` for the work queued on this device's stream so far.
    pub fn signal(&self, external: ExternalStream) -> Result<(), CudaError> {
        self.context().bind_to_thread().map_err(|e| CudaError::driver("cuCtxSetCurrent", e))?;
        event_between(self.stream().cu_stream(), external.raw())
    }
}

/// Records an event on `from` and makes `to` wait for it.
fn event_between(from: sys::CUstream, to: sys::CUstream) -> Result<(), CudaError> {
    if from == to {
        return Ok(());
    }
    let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
        .map_err(|e| CudaError::driver("cuEventCreate", e))?;
    // SAFETY: the event was just created; both streams belong to the current
    // context. Destroying an event with a pending wait is allowed: the driver
    // releases it once the wait is done.
    let waited = unsafe {
        result::event::record(event, from)
            .and_then(|()| result::stream::wait_event(to, event, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT))
    };
    // SAFETY: as above.
    let destroyed = unsafe { result::event::destroy(event) };
    waited.map_err(|e| CudaError::driver("cuEventRecord/cuStreamWaitEvent", e))?;
    destroyed.map_err(|e| CudaError::driver("cuEventDestroy", e))
}
