//! Streams: ordered queues of work executed on the calling thread as soon as
//! nothing ahead of it waits. Only a collective (NCCL) can wait, for its peers;
//! work behind it stays queued until a later driver call finds it ready.

use super::codes::{self, CuResult};
use super::state::{driver, LoadedModule};
use crate::ptx::Launch;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a waiting operation reports when polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Done; the stream moves on.
    Ready,
    /// Not yet (peers missing).
    Pending,
    /// Failed with this CUresult; the stream moves on and reports it.
    Failed(CuResult),
}

/// An operation that completes when others have done their part.
pub trait Wait: Send {
    /// `first` is true the first time the operation reaches the head of its
    /// stream (its inputs are then ready).
    fn poll(&mut self, first: bool) -> Poll;
}

/// A host function enqueued with cuLaunchHostFunc.
#[derive(Debug, Clone, Copy)]
pub struct HostFn {
    pub f: unsafe extern "C" fn(*mut std::ffi::c_void),
    pub data: usize,
}

/// One queued operation.
pub enum Op {
    Launch { module: Arc<LoadedModule>, kernel: String, launch: Launch, params: Vec<u8> },
    CopyIn { dst: u64, data: Vec<u8> },
    CopyDevice { dst: u64, src: u64, len: usize },
    Memset { dst: u64, value: u8, len: usize },
    Free { addr: u64 },
    Record(Arc<Event>),
    Wait { op: Box<dyn Wait>, started: bool },
    Host(HostFn),
}

/// A stream of one device.
pub struct Stream {
    /// Its device.
    pub device: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Op>,
    /// The first error met while executing queued work, reported (and
    /// cleared) by the next call that asks about the stream.
    error: Option<CuResult>,
}

/// An event: completed when the work queued before its record has run.
#[derive(Debug, Default)]
pub struct Event {
    state: Mutex<EventState>,
}

#[derive(Debug, Default)]
struct EventState {
    stream: Option<Arc<Stream>>,
    done_at: Option<Instant>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stream(device {})", self.device)
    }
}

impl Stream {
    /// A new empty stream on `device`.
    pub fn new(device: usize) -> Arc<Stream> {
        Arc::new(Stream { device, inner: Mutex::new(Inner::default()) })
    }

    /// Queues `op` and runs whatever is ready; returns an error met on the way.
    pub fn enqueue(self: &Arc<Self>, op: Op) -> CuResult {
        lock(&self.inner).queue.push_back(op);
        self.drain()
    }

    /// Runs the queued work that is ready; returns (and clears) the stream's error.
    pub fn drain(self: &Arc<Self>) -> CuResult {
        let mut inner = lock(&self.inner);
        while let Some(front) = inner.queue.front_mut() {
            if let Op::Wait { op, started } = front {
                let first = !*started;
                *started = true;
                match op.poll(first) {
                    Poll::Pending => break,
                    Poll::Ready => {}
                    Poll::Failed(code) => {
                        inner.error.get_or_insert(code);
                    }
                }
                inner.queue.pop_front();
                continue;
            }
            let op = inner.queue.pop_front().expect("front exists");
            let started = thread_cpu_nanos();
            let done = execute(self, op);
            count_busy(self.device, thread_cpu_nanos().saturating_sub(started));
            if let Err(code) = done {
                inner.error.get_or_insert(code);
            }
        }
        inner.error.take().unwrap_or(codes::SUCCESS)
    }

    /// Whether nothing is queued.
    pub fn idle(&self) -> bool {
        lock(&self.inner).queue.is_empty()
    }

    /// Runs the queue to its end, waiting for peers as long as it takes.
    pub fn synchronize(self: &Arc<Self>) -> CuResult {
        let mut first_error = codes::SUCCESS;
        loop {
            let r = self.drain();
            if first_error == codes::SUCCESS {
                first_error = r;
            }
            if self.idle() {
                return first_error;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
}

impl Event {
    /// Marks the event pending on `stream` (cuEventRecord).
    pub fn recorded_on(&self, stream: &Arc<Stream>) {
        let mut s = lock(&self.state);
        s.stream = Some(stream.clone());
        s.done_at = None;
    }

    fn complete(&self) {
        lock(&self.state).done_at = Some(Instant::now());
    }

    /// When the event completed, running its stream first; `Err(NOT_READY)`
    /// while work ahead of it waits.
    pub fn query(&self) -> Result<Instant, CuResult> {
        let stream = {
            let s = lock(&self.state);
            if let Some(t) = s.done_at {
                return Ok(t);
            }
            s.stream.clone()
        };
        let Some(stream) = stream else { return Ok(Instant::now()) }; // never recorded: complete
        let r = stream.drain();
        if r != codes::SUCCESS {
            return Err(r);
        }
        lock(&self.state).done_at.ok_or(codes::NOT_READY)
    }

    /// Waits for the event.
    pub fn synchronize(&self) -> CuResult {
        loop {
            match self.query() {
                Ok(_) => return codes::SUCCESS,
                Err(codes::NOT_READY) => std::thread::sleep(std::time::Duration::from_micros(50)),
                Err(e) => return e,
            }
        }
    }
}

/// `CFG_EMU_SKIP_WORK=1`: kernels, copies, memsets and the data movement of
/// collectives are skipped (results are garbage). Benchmarks use it to time
/// the host's own work: what is left is the driver-API calls and the waits.
pub fn skip_work() -> bool {
    static SKIP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SKIP.get_or_init(|| std::env::var("CFG_EMU_SKIP_WORK").is_ok_and(|v| v.trim() == "1"))
}

fn execute(stream: &Arc<Stream>, op: Op) -> Result<(), CuResult> {
    let d = driver();
    if skip_work() && matches!(op, Op::Launch { .. } | Op::CopyIn { .. } | Op::CopyDevice { .. } | Op::Memset { .. }) {
        return Ok(());
    }
    match op {
        Op::Launch { module, kernel, launch, params } => {
            let k = module.module.kernel(&kernel).ok_or(codes::INVALID_HANDLE)?;
            let mut mem = lock(&d.memory);
            module.module.run(k, &launch, &params, &mut mem).map_err(|e| {
                eprintln!("cuda-emu: device {}: {e}", stream.device);
                e.code()
            })
        }
        Op::CopyIn { dst, data } => {
            let mut mem = lock(&d.memory);
            let to = mem.slice_mut(dst, data.len()).map_err(|f| fault("cuMemcpyHtoD", f))?;
            to.copy_from_slice(&data);
            Ok(())
        }
        Op::CopyDevice { dst, src, len } => {
            let mut mem = lock(&d.memory);
            let data = mem.slice(src, len).map_err(|f| fault("cuMemcpyDtoD source", f))?.to_vec();
            mem.slice_mut(dst, len).map_err(|f| fault("cuMemcpyDtoD destination", f))?.copy_from_slice(&data);
            Ok(())
        }
        Op::Memset { dst, value, len } => {
            let mut mem = lock(&d.memory);
            mem.slice_mut(dst, len).map_err(|f| fault("cuMemset", f))?.fill(value);
            Ok(())
        }
        Op::Free { addr } => lock(&d.memory).free(addr).map_err(|f| fault("cuMemFreeAsync", f)),
        Op::Record(event) => {
            event.complete();
            Ok(())
        }
        Op::Host(h) => {
            // SAFETY: the caller of cuLaunchHostFunc promised `f(data)` is valid.
            unsafe { (h.f)(h.data as *mut std::ffi::c_void) };
            Ok(())
        }
        Op::Wait { .. } => unreachable!("waits are polled by drain"),
    }
}

/// CPU nanoseconds spent running each emulated device's queued work (kernels, copies).
static BUSY: [AtomicU64; 64] = [const { AtomicU64::new(0) }; 64];

fn count_busy(device: usize, nanos: u64) {
    if let Some(b) = BUSY.get(device) {
        b.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// CPU time of the calling thread (the emulation runs on the caller's thread).
fn thread_cpu_nanos() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU nanoseconds spent running emulated device `device`'s work so far.
/// Not a CUDA function: benchmarks subtract it from wall time to get the
/// host's own time (the emulation stands in for GPU time).
#[no_mangle]
pub extern "C" fn cfgEmuBusyNanos(device: std::ffi::c_int) -> u64 {
    usize::try_from(device).ok().and_then(|d| BUSY.get(d)).map_or(0, |b| b.load(Ordering::Relaxed))
}

/// Reports a refused copy or free (the host side of the sanitizer).
pub fn fault(what: &str, f: crate::memory::Fault) -> CuResult {
    eprintln!("cuda-emu: {what}: {f}");
    codes::ILLEGAL_ADDRESS
}

/// Locks a mutex, ignoring poisoning (a panic elsewhere must not wedge the driver).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
