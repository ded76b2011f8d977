//! The process-wide driver state: memory, and the objects behind the opaque
//! handles (contexts, streams, events, modules, functions).

use super::codes::{self, CuResult};
use super::stream::{lock, Event, Stream};
use crate::memory::Memory;
use crate::ptx::Module;
use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A loaded module and the device it was loaded on.
#[derive(Debug)]
pub struct LoadedModule {
    pub module: Module,
    pub device: usize,
}

/// A function handle: a kernel of a loaded module.
#[derive(Debug, Clone)]
pub struct Function {
    pub module: Arc<LoadedModule>,
    pub kernel: String,
}

/// Everything the driver keeps.
pub struct Driver {
    /// All device memory.
    pub memory: Mutex<Memory>,
    /// Objects behind handles.
    pub objects: Mutex<Objects>,
    /// Whether cuInit was called.
    pub initialised: AtomicBool,
    /// Launches so far (mixed into each launch's interleaving seed).
    pub launches: AtomicU64,
}

/// Handle tables (a handle is its id, as a pointer).
#[derive(Default)]
pub struct Objects {
    next: usize,
    pub streams: HashMap<usize, Arc<Stream>>,
    pub events: HashMap<usize, Arc<Event>>,
    pub modules: HashMap<usize, Arc<LoadedModule>>,
    pub functions: HashMap<usize, Function>,
    default_streams: HashMap<usize, Arc<Stream>>,
}

impl Objects {
    /// A fresh handle value (never null, never reused).
    pub fn handle(&mut self) -> usize {
        self.next += 1;
        0x10_0000 + self.next * 16
    }

    /// The legacy default stream of `device`.
    pub fn default_stream(&mut self, device: usize) -> Arc<Stream> {
        self.default_streams.entry(device).or_insert_with(|| Stream::new(device)).clone()
    }

    /// Every stream of `device` (the default one included).
    pub fn device_streams(&self, device: usize) -> Vec<Arc<Stream>> {
        self.streams.values().chain(self.default_streams.values()).filter(|s| s.device == device).cloned().collect()
    }
}

/// The driver.
pub fn driver() -> &'static Driver {
    static DRIVER: OnceLock<Driver> = OnceLock::new();
    DRIVER.get_or_init(|| Driver {
        memory: Mutex::new(Memory::default()),
        objects: Mutex::new(Objects::default()),
        initialised: AtomicBool::new(false),
        launches: AtomicU64::new(0),
    })
}

const CONTEXT_BASE: usize = 0xC0_0000;
const POOL_BASE: usize = 0xB0_0000;

thread_local! {
    /// The device of the context current on this thread.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The primary context handle of `device`.
pub fn context_handle(device: usize) -> *mut c_void {
    (CONTEXT_BASE + device * 16) as *mut c_void
}

/// The device of a context handle.
pub fn context_device(ctx: *mut c_void) -> Option<usize> {
    let v = (ctx as usize).checked_sub(CONTEXT_BASE)?;
    (v % 16 == 0 && v / 16 < super::device::count()).then_some(v / 16)
}

/// The memory pool handle of `device`.
pub fn pool_handle(device: usize) -> *mut c_void {
    (POOL_BASE + device * 16) as *mut c_void
}

/// Whether `pool` is a pool handle.
pub fn is_pool(pool: *mut c_void) -> bool {
    (pool as usize).checked_sub(POOL_BASE).is_some_and(|v| v % 16 == 0 && v / 16 < super::device::count())
}

/// The current thread's device.
pub fn current_device() -> Result<usize, CuResult> {
    if !driver().initialised.load(Ordering::Acquire) {
        return Err(codes::NOT_INITIALIZED);
    }
    CURRENT.with(|c| c.get()).ok_or(codes::INVALID_CONTEXT)
}

/// Makes `device`'s context current (None: no context).
pub fn set_current(device: Option<usize>) {
    CURRENT.with(|c| c.set(device));
}

/// The stream behind a handle; null is the current context's default stream.
pub fn stream(handle: *mut c_void) -> Result<Arc<Stream>, CuResult> {
    if handle.is_null() {
        let device = current_device()?;
        return Ok(lock(&driver().objects).default_stream(device));
    }
    lock(&driver().objects).streams.get(&(handle as usize)).cloned().ok_or(codes::INVALID_HANDLE)
}

/// The event behind a handle.
pub fn event(handle: *mut c_void) -> Result<Arc<Event>, CuResult> {
    lock(&driver().objects).events.get(&(handle as usize)).cloned().ok_or(codes::INVALID_HANDLE)
}

/// The function behind a handle.
pub fn function(handle: *mut c_void) -> Result<Function, CuResult> {
    lock(&driver().objects).functions.get(&(handle as usize)).cloned().ok_or(codes::INVALID_HANDLE)
}

/// Validates a device ordinal.
pub fn device_ordinal(dev: i32) -> Result<usize, CuResult> {
    if !driver().initialised.load(Ordering::Acquire) {
        return Err(codes::NOT_INITIALIZED);
    }
    usize::try_from(dev).ok().filter(|&d| d < super::device::count()).ok_or(codes::INVALID_DEVICE)
}
