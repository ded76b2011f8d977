//! Errors of the CUDA backend and the NCCL communicator.

use thiserror::Error;

/// Something the CUDA backend could not do.
#[derive(Debug, Error)]
pub enum CudaError {
    /// libcuda is not installed (no driver, or not on the loader's path).
    #[error("no CUDA driver found (libcuda could not be loaded)")]
    NoDriver,
    /// The driver loaded but reports no device.
    #[error("no CUDA device found")]
    NoDevice,
    /// The requested device ordinal does not exist.
    #[error("CUDA device {ordinal} does not exist ({count} found)")]
    BadOrdinal {
        /// Requested ordinal.
        ordinal: usize,
        /// Devices present.
        count: usize,
    },
    /// libnvrtc is not installed.
    #[error("no NVRTC found (libnvrtc could not be loaded; see scripts/install-nvrtc.sh)")]
    NoNvrtc,
    /// libnccl is not installed (cudarc looks for `libnccl.so`, not the
    /// `libnccl.so.2` that runtime-only packages ship).
    #[error("no NCCL library found (libnccl.so could not be loaded; if only libnccl.so.2 is installed, link libnccl.so to it in a folder on LD_LIBRARY_PATH)")]
    NoNccl,
    /// NVRTC rejected a kernel file.
    #[error("kernel `{module}` does not compile for {arch}: {log}")]
    Compile {
        /// Kernel file.
        module: String,
        /// Target architecture.
        arch: String,
        /// Compiler log.
        log: String,
    },
    /// A driver call failed.
    #[error("CUDA driver error in {context}: {message}")]
    Driver {
        /// What was being done.
        context: &'static str,
        /// The driver's message.
        message: String,
    },
    /// An NCCL call failed.
    #[error("NCCL error in {context}: {message}")]
    Nccl {
        /// What was being done.
        context: &'static str,
        /// NCCL's message.
        message: String,
    },
    /// A collective did not finish in time; the communicator was aborted.
    #[error("NCCL {op} timed out after {seconds:.1} s; the communicator was aborted")]
    Timeout {
        /// The collective.
        op: &'static str,
        /// The timeout.
        seconds: f64,
    },
    /// Bootstrapping several processes failed (environment or TCP).
    #[error("NCCL bootstrap: {0}")]
    Bootstrap(#[from] super::bootstrap::BootstrapError),
    /// The program or its inputs cannot run on this backend.
    #[error("CUDA backend: {0}")]
    Unsupported(String),
}

impl CudaError {
    /// Wraps a driver error with what was being done.
    pub(crate) fn driver(context: &'static str, e: impl std::fmt::Debug) -> CudaError {
        CudaError::Driver { context, message: format!("{e:?}") }
    }
}
