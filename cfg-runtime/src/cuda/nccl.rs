//! The NCCL communicator: [`Communicator`] over GPUs, through cudarc's
//! run-time loaded `libnccl`.
//!
//! **Data path.** Every collective runs in place in one device buffer per
//! communicator (grown on demand, allocated outside the memory pool so peers
//! in the same process can reach it), on the stream of the rank's [`Device`],
//! which the CUDA backend shares: kernels and collectives run in order with no
//! host wait between them. Device tensors ([`Communicator::all_gather_bytes`],
//! [`Communicator::all_reduce_sum_tensor`]) are copied into it and out of it
//! on the device, never through the host; the host-memory collectives
//! (fingerprints, host tensors) copy in from and out to the host.
//! - `all_reduce_sum`: `ncclAllReduce` (f32, sum) in place. NCCL keeps one
//!   reduction order for a given world size, topology, version and tuning, but
//!   promises no bits across world sizes; that is why the runtime's
//!   deterministic mode never all-reduces (it gathers predictions and combines
//!   them locally in the canonical order). With
//!   [`NcclOptions::fixed_order_reduce`] the all-reduce is itself a gather
//!   plus the host sum `((p0 + p1) + p2) + ...`, the in-process
//!   communicator's order and bits.
//! - `all_gather`: equal sizes use `ncclAllGather`; unequal sizes use one
//!   `ncclBroadcast` per rank that has bytes, rooted at that rank and fused in
//!   one NCCL group, so every rank's bytes travel at their own size: no padding.
//!
//! **Timeouts.** The communicator is created non-blocking (`blocking = 0`),
//! so no NCCL call waits: the calling thread polls `ncclCommGetAsyncError`
//! and a CUDA event recorded after the collective, against a deadline. On
//! expiry, on an NCCL error, or when another rank of a thread launch failed
//! (a shared signal), the communicator is aborted (`ncclCommAbort`) and the
//! call returns an error naming the step and the rank. Across processes
//! there is no shared signal: when a rank aborts, its peers see an NCCL
//! remote error or their own timeout.

use super::bootstrap::{fetch_id, BootstrapEnv, IdServer, ID_BYTES};
use super::device::{device_count, driver_available, Device};
use super::error::CudaError;
use super::staging::Staging;
use crate::comm::{all_gather_host, all_reduce_host, not_f32, Communicator};
use crate::error::RuntimeError;
use crate::local::panic_message;
use crate::tensor::{DeviceBytes, DeviceTensor};
use cudarc::driver::{CudaContext, CudaEvent, CudaStream};
use cudarc::nccl::sys::{self, ncclDataType_t, ncclResult_t};
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether libnccl can be loaded.
pub fn nccl_available() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { sys::is_culib_present() }
}

/// The driver first (cudarc panics without it), then NCCL.
fn check_libraries() -> Result<(), CudaError> {
    if !driver_available() {
        return Err(CudaError::NoDriver);
    }
    if !nccl_available() {
        return Err(CudaError::NoNccl);
    }
    Ok(())
}

/// The text of an NCCL result code.
fn result_text(r: ncclResult_t) -> String {
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for
    // any code; it is copied at once.
    let text = unsafe { sys::ncclGetErrorString(r) };
    if text.is_null() {
        format!("{r:?}")
    } else {
        // SAFETY: non-null, NUL-terminated, static (see above).
        format!("{r:?}: {}", unsafe { CStr::from_ptr(text) }.to_string_lossy())
    }
}

/// The NCCL unique id that names one communicator (made by one rank, shared
/// with the others).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NcclId([u8; ID_BYTES]);

impl NcclId {
    /// A fresh id (`ncclGetUniqueId`).
    pub fn new() -> Result<NcclId, CudaError> {
        check_libraries()?;
        let raw = cudarc::nccl::result::get_uniqueid()
            .map_err(|e| CudaError::Nccl { context: "ncclGetUniqueId", message: result_text(e.0) })?;
        Ok(NcclId(raw.internal.map(|c| c as u8)))
    }

    /// An id received from another rank.
    pub fn from_bytes(bytes: [u8; ID_BYTES]) -> NcclId {
        NcclId(bytes)
    }

    /// The bytes to send to the other ranks.
    pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
        &self.0
    }

    fn raw(&self) -> sys::ncclUniqueId {
        sys::ncclUniqueId { internal: self.0.map(|b| b as c_char) }
    }
}

impl std::fmt::Debug for NcclId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclId(")?;
        self.0[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, "..)")
    }
}

/// Settings of an NCCL communicator.
#[derive(Debug, Clone)]
pub struct NcclOptions {
    /// The longest one collective may take before the communicator is aborted.
    pub timeout: Duration,
    /// The longest bootstrap (id exchange) and communicator creation may take,
    /// each: processes may start at different times.
    pub init_timeout: Duration,
    /// All-reduce as a gather plus a host sum in rank order (the in-process
    /// communicator's bits) instead of `ncclAllReduce`.
    pub fixed_order_reduce: bool,
}

impl Default for NcclOptions {
    fn default() -> Self {
        NcclOptions {
            timeout: crate::local::DEFAULT_TIMEOUT,
            init_timeout: Duration::from_secs(300),
            fixed_order_reduce: false,
        }
    }
}

/// The first failure among the ranks of one thread launch.
#[derive(Debug, Clone)]
struct Failure {
    rank: usize,
    step: usize,
    reason: String,
}

/// Shared by the ranks of one thread launch, so that one rank's failure stops
/// the others' waits at once (each rank in its own process has its own).
/// It also counts each rank's collectives, so that a timeout can name the
/// ranks that never arrived.
#[derive(Debug, Clone, Default)]
struct Signal {
    first: Arc<Mutex<Option<Failure>>>,
    arrivals: Arc<Mutex<BTreeMap<usize, u64>>>,
    /// Shared by the ranks of a thread launch (else one process's own).
    shared: bool,
}

impl Signal {
    fn raise(&self, rank: usize, step: usize, reason: &str) {
        // A poisoned lock still holds a consistent Option.
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(Failure { rank, step, reason: reason.to_string() });
        }
    }

    fn get(&self) -> Option<Failure> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts a collective started by `rank`.
    fn arrive(&self, rank: usize) {
        *self.arrivals.lock().unwrap_or_else(|p| p.into_inner()).entry(rank).or_insert(0) += 1;
    }

    /// The signal of a thread launch, shared by its ranks.
    fn shared() -> Signal {
        Signal { shared: true, ..Signal::default() }
    }

    /// The ranks that started fewer collectives than `rank` (empty when the
    /// signal is a single process's own: then nothing is known of the peers).
    fn behind(&self, rank: usize, world: usize) -> Vec<usize> {
        if !self.shared {
            return Vec::new();
        }
        let arrivals = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        let mine = arrivals.get(&rank).copied().unwrap_or(0);
        (0..world).filter(|r| arrivals.get(r).copied().unwrap_or(0) < mine).collect()
    }
}

/// Why a wait ended early (the communicator is aborted by then).
enum Stop {
    Failed(String),
    TimedOut,
    Peer(Failure),
}

/// `NCCL_CONFIG_INITIALIZER` with `blocking = 0`.
fn nonblocking_config() -> sys::ncclConfig_t {
    const UNDEF: c_int = c_int::MIN; // NCCL_CONFIG_UNDEF_INT: NCCL's default
    sys::ncclConfig_t {
        size: std::mem::size_of::<sys::ncclConfig_t>(),
        magic: 0xcafe_beef,
        version: 22800, // NCCL_VERSION(2, 28, 0): the layout of this struct
        blocking: 0,
        cgaClusterSize: UNDEF,
        minCTAs: UNDEF,
        maxCTAs: UNDEF,
        netName: std::ptr::null(),
        splitShare: UNDEF,
        trafficClass: UNDEF,
        commName: std::ptr::null(),
        collnetEnable: UNDEF,
        CTAPolicy: UNDEF,
        shrinkShare: UNDEF,
        nvlsCTAs: UNDEF,
        nChannelsPerNetPeer: UNDEF,
        nvlinkCentricSched: UNDEF,
    }
}

fn in_flight(r: ncclResult_t) -> bool {
    matches!(r, ncclResult_t::ncclSuccess | ncclResult_t::ncclInProgress)
}

/// One rank of an NCCL communicator, on one device.
#[derive(Debug)]
pub struct NcclCommunicator {
    /// Null once aborted.
    comm: sys::ncclComm_t,
    rank: usize,
    world: usize,
    dev: Arc<Device>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    done: CudaEvent,
    staging: Option<Staging>,
    options: NcclOptions,
    signal: Signal,
}

// SAFETY: the NCCL handle is driven by one thread at a time (every method
// takes `&mut self`); NCCL allows that thread to change as long as calls are
// not concurrent, and every method makes the device's context current on the
// calling thread before calling NCCL. The CUDA objects are Send.
unsafe impl Send for NcclCommunicator {}

impl NcclCommunicator {
    /// Creates rank `rank` of `world_size` on device `ordinal`, joining the
    /// ranks created with the same `id`. Returns once every rank has joined,
    /// or an error at [`NcclOptions::init_timeout`].
    ///
    /// The communicator is not meant to move between threads while in use:
    /// create it in the thread that drives it (see [`run_nccl_threads`]).
    pub fn new(
        ordinal: usize,
        rank: usize,
        world_size: usize,
        id: &NcclId,
        options: NcclOptions,
    ) -> Result<NcclCommunicator, CudaError> {
        Self::create(ordinal, rank, world_size, id, options, Signal::default())
    }

    /// Joins a multi-process run described by torchrun's variables (`RANK`,
    /// `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, `LOCAL_RANK` for the device):
    /// see [`NcclCommunicator::from_bootstrap`].
    pub fn from_env(options: NcclOptions) -> Result<NcclCommunicator, CudaError> {
        let env = BootstrapEnv::from_env()?;
        Self::from_bootstrap(&env, options)
    }

    /// Joins a multi-process run: rank 0 makes the NCCL id and serves it over
    /// TCP on `0.0.0.0:port`; the other ranks fetch it from
    /// `master_addr:port`; then every rank creates its communicator on device
    /// `local_rank`.
    pub fn from_bootstrap(env: &BootstrapEnv, options: NcclOptions) -> Result<NcclCommunicator, CudaError> {
        check_libraries()?;
        let id = if env.rank == 0 {
            // Listen first, so that early clients find the port sooner.
            let server =
                if env.world_size > 1 { Some(IdServer::bind(&format!("0.0.0.0:{}", env.port))?) } else { None };
            let id = NcclId::new()?;
            if let Some(server) = server {
                server.serve(env.world_size, id.as_bytes(), options.init_timeout)?;
            }
            id
        } else {
            NcclId::from_bytes(fetch_id(&env.master_addr, env.port, env.rank, env.world_size, options.init_timeout)?)
        };
        Self::new(env.local_rank, env.rank, env.world_size, &id, options)
    }

    fn create(
        ordinal: usize,
        rank: usize,
        world_size: usize,
        id: &NcclId,
        options: NcclOptions,
        signal: Signal,
    ) -> Result<NcclCommunicator, CudaError> {
        check_libraries()?;
        if std::env::var_os("NCCL_COMM_BLOCKING").is_some_and(|v| v == "1") {
            // NCCL lets it override `blocking = 0`, and a blocking call cannot time out.
            return Err(CudaError::Unsupported(
                "NCCL_COMM_BLOCKING=1 makes NCCL calls block, so timeouts cannot abort them: unset it".into(),
            ));
        }
        if rank >= world_size || world_size > c_int::MAX as usize {
            return Err(CudaError::Unsupported(format!("NCCL rank {rank} of world size {world_size} is out of range")));
        }
        let count = device_count()?;
        if count == 0 {
            return Err(CudaError::NoDevice);
        }
        if ordinal >= count {
            return Err(CudaError::BadOrdinal { ordinal, count });
        }
        // The rank's device, shared with the CUDA backend (`device()`): its one
        // stream orders kernels and collectives.
        let dev = Arc::new(Device::new(ordinal)?);
        let (ctx, stream) = (dev.context().clone(), dev.stream().clone());
        ctx.bind_to_thread().map_err(|e| CudaError::driver("cuCtxSetCurrent", e))?;
        let done = ctx.new_event(None).map_err(|e| CudaError::driver("cuEventCreate", e))?;
        let mut config = nonblocking_config();
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` and `config` are valid for the call; the id is a
        // plain value; the device's context is current on this thread, which
        // is how NCCL picks the device.
        let started = unsafe {
            sys::ncclCommInitRankConfig(&mut comm, world_size as c_int, id.raw(), rank as c_int, &mut config)
        };
        let mut this =
            NcclCommunicator { comm, rank, world: world_size, dev, ctx, stream, done, staging: None, options, signal };
        if !in_flight(started) || this.comm.is_null() {
            let message = this.describe(started);
            this.abort_comm();
            return Err(CudaError::Nccl { context: "ncclCommInitRankConfig", message });
        }
        let deadline = Instant::now() + this.options.init_timeout;
        match this.wait(deadline, false) {
            Ok(()) => Ok(this),
            Err(Stop::Failed(message)) => Err(CudaError::Nccl { context: "ncclCommInitRankConfig", message }),
            Err(Stop::TimedOut) => Err(CudaError::Timeout {
                op: "communicator creation (waiting for every rank to join)",
                seconds: this.options.init_timeout.as_secs_f64(),
            }),
            Err(Stop::Peer(f)) => Err(CudaError::Nccl {
                context: "ncclCommInitRankConfig",
                message: format!("stopped because rank {} failed: {}", f.rank, f.reason),
            }),
        }
    }

    /// A result code with NCCL's last error message.
    fn describe(&self, r: ncclResult_t) -> String {
        // SAFETY: ncclGetLastError takes any handle (or null) and returns a
        // NUL-terminated string owned by NCCL, or null; it is copied at once.
        let last = unsafe { sys::ncclGetLastError(self.comm) };
        let last = if last.is_null() {
            String::new()
        } else {
            // SAFETY: non-null and NUL-terminated (see above).
            unsafe { CStr::from_ptr(last) }.to_string_lossy().into_owned()
        };
        if last.is_empty() {
            result_text(r)
        } else {
            format!("{} ({last})", result_text(r))
        }
    }

    /// `Ok(true)` when NCCL has nothing in progress, `Ok(false)` while it has.
    fn async_state(&self) -> Result<bool, String> {
        let mut state = ncclResult_t::ncclSuccess;
        // SAFETY: `self.comm` is live (callers check it is not null) and
        // `state` is valid for a write.
        let r = unsafe { sys::ncclCommGetAsyncError(self.comm, &mut state) };
        if r != ncclResult_t::ncclSuccess {
            return Err(self.describe(r));
        }
        match state {
            ncclResult_t::ncclSuccess => Ok(true),
            ncclResult_t::ncclInProgress => Ok(false),
            e => Err(self.describe(e)),
        }
    }

    /// Polls until NCCL has nothing in progress and, with `event`, the work
    /// recorded in `self.done` has finished. Every early end aborts the
    /// communicator.
    fn wait(&mut self, deadline: Instant, event: bool) -> Result<(), Stop> {
        let started = Instant::now();
        loop {
            if let Some(f) = self.signal.get() {
                self.abort_comm();
                return Err(Stop::Peer(f));
            }
            let stop = match self.async_state() {
                Ok(true) if !event => return Ok(()),
                Ok(true) => match self.done.try_is_complete() {
                    Ok(true) => return Ok(()),
                    Ok(false) => None,
                    Err(e) => Some(Stop::Failed(format!("CUDA error while waiting for the collective: {e:?}"))),
                },
                Ok(false) => None,
                Err(message) => Some(Stop::Failed(message)),
            };
            let stop = stop.or_else(|| (Instant::now() >= deadline).then_some(Stop::TimedOut));
            if let Some(stop) = stop {
                self.abort_comm();
                return Err(stop);
            }
            // Spin briefly (small collectives finish in microseconds), then
            // stop burning a core.
            if started.elapsed() < Duration::from_micros(200) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// Aborts the NCCL communicator (once); later collectives fail.
    fn abort_comm(&mut self) {
        if self.comm.is_null() {
            return;
        }
        let _ = self.ctx.bind_to_thread();
        // SAFETY: `self.comm` is live, owned by this value and nulled right
        // after, so it is aborted once; aborting with work in flight is what
        // ncclCommAbort is for.
        let _ = unsafe { sys::ncclCommAbort(self.comm) };
        self.comm = std::ptr::null_mut();
    }

    /// Ends a communicator that finished cleanly: `ncclCommFinalize` flushes
    /// its outstanding traffic, then `ncclCommDestroy`. Aborts instead when
    /// that fails or takes longer than the timeout.
    fn close(&mut self) {
        if self.comm.is_null() {
            return;
        }
        if self.ctx.bind_to_thread().is_err() {
            self.abort_comm();
            return;
        }
        // SAFETY: `self.comm` is live and its context current.
        let started = unsafe { sys::ncclCommFinalize(self.comm) };
        let deadline = Instant::now() + self.options.timeout;
        // `wait` aborts (and nulls the handle) on any early end.
        if in_flight(started) && self.wait(deadline, false).is_ok() {
            // SAFETY: finalized above, so destroying only frees resources;
            // the handle is nulled right after.
            let _ = unsafe { sys::ncclCommDestroy(self.comm) };
            self.comm = std::ptr::null_mut();
        } else {
            self.abort_comm();
        }
    }

    fn peer_failed(&self, f: &Failure) -> RuntimeError {
        RuntimeError::PeerFailed { rank: f.rank, step: f.step, reason: f.reason.clone(), seen_by: self.rank }
    }

    /// Turns an early end of `what` at `step` into the runtime's error, after
    /// aborting the communicator and telling the other ranks of a thread launch.
    fn stopped(&mut self, what: &'static str, step: usize, stop: Stop) -> RuntimeError {
        self.abort_comm();
        match stop {
            Stop::Peer(f) => self.peer_failed(&f),
            Stop::Failed(message) => {
                let detail = format!("NCCL {what} failed: {message}");
                self.signal.raise(self.rank, step, &detail);
                RuntimeError::Collective { rank: self.rank, step, detail }
            }
            Stop::TimedOut => {
                let seconds = self.options.timeout.as_secs_f64();
                // In a thread launch the late ranks are known; NCCL itself
                // cannot tell, so across processes name every other rank.
                let behind = self.signal.behind(self.rank, self.world);
                let reason = format!("NCCL {what} timed out after {seconds:.1} s");
                match behind.first() {
                    Some(&late) => {
                        self.signal.raise(late, step, &format!("never joined: {reason} on rank {}", self.rank))
                    }
                    None => self.signal.raise(self.rank, step, &reason),
                }
                let missing =
                    if behind.is_empty() { (0..self.world).filter(|&r| r != self.rank).collect() } else { behind };
                RuntimeError::Timeout { rank: self.rank, step, what, seconds, missing }
            }
        }
    }

    /// Checks that the communicator can run a collective.
    fn ready(&mut self, what: &'static str, step: usize) -> Result<(), RuntimeError> {
        self.signal.arrive(self.rank);
        if let Some(f) = self.signal.get() {
            self.abort_comm();
            return Err(self.peer_failed(&f));
        }
        if self.comm.is_null() {
            let detail = "the NCCL communicator was aborted".to_string();
            return Err(RuntimeError::Collective { rank: self.rank, step, detail });
        }
        match self.ctx.bind_to_thread() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.stopped(what, step, Stop::Failed(format!("cuCtxSetCurrent: {e:?}")))),
        }
    }

    /// The rank's device (its stream runs the collectives; give it to the
    /// CUDA backend so kernels and collectives are ordered without waits).
    pub fn device(&self) -> Arc<Device> {
        self.dev.clone()
    }

    /// Grows the staging buffer to `total` bytes and copies this rank's part
    /// to `offset`, from the host or from device memory.
    fn stage(&mut self, total: usize, offset: usize, part: Source<'_>) -> Result<(), String> {
        if self.staging.as_ref().is_none_or(|s| s.len() < total) {
            self.staging = None;
            self.staging = Some(Staging::new(&self.ctx, &self.stream, total)?);
        }
        let stage = self.staging.as_ref().expect("allocated above");
        match part {
            Source::Host([]) => Ok(()),
            Source::Host(bytes) => stage.upload(&self.stream, offset, bytes),
            Source::Device { len: 0, .. } => Ok(()),
            Source::Device { addr, len } => stage.copy_in(&self.stream, offset, addr, len),
        }
    }

    /// The device address of the staging buffer.
    fn stage_addr(&self) -> u64 {
        self.staging.as_ref().expect("stage allocates the staging buffer").addr()
    }

    /// The first `len` bytes of the staging buffer (the collective has finished).
    fn download(&self, len: usize) -> Result<Vec<u8>, String> {
        self.staging.as_ref().expect("stage allocates the staging buffer").download(&self.stream, len)
    }

    /// Copies the first `len` bytes of the staging buffer to device memory at `addr`.
    fn copy_out(&self, addr: u64, len: usize) -> Result<(), String> {
        if len == 0 {
            return Ok(());
        }
        self.staging.as_ref().expect("stage allocates the staging buffer").copy_out(&self.stream, addr, len)
    }

    /// Waits for a collective whose enqueue returned `started`.
    fn complete(
        &mut self,
        what: &'static str,
        step: usize,
        started: ncclResult_t,
        deadline: Instant,
    ) -> Result<(), RuntimeError> {
        if !in_flight(started) {
            let message = self.describe(started);
            return Err(self.stopped(what, step, Stop::Failed(message)));
        }
        // Non-blocking NCCL may still be enqueuing: the event must follow it.
        self.wait(deadline, false).map_err(|s| self.stopped(what, step, s))?;
        if let Err(e) = self.done.record(&self.stream) {
            return Err(self.stopped(what, step, Stop::Failed(format!("cuEventRecord: {e:?}"))));
        }
        self.wait(deadline, true).map_err(|s| self.stopped(what, step, s))
    }

    /// One broadcast per rank with bytes, rooted there, in one NCCL group:
    /// an all-gather of unequal sizes without padding.
    fn broadcast_each(&self, base: u64, offsets: &[usize], stream: sys::cudaStream_t) -> ncclResult_t {
        // SAFETY: opens a group; it only records state for this thread.
        let opened = unsafe { sys::ncclGroupStart() };
        if !in_flight(opened) {
            return opened;
        }
        let mut first = ncclResult_t::ncclSuccess;
        for root in 0..self.world {
            let len = offsets[root + 1] - offsets[root];
            if len == 0 {
                continue;
            }
            let at = (base + offsets[root] as u64) as *mut c_void;
            // SAFETY: `at..at + len` lies in the staging buffer (offsets are
            // prefix sums of the sizes, which add up to its length); the root
            // sends from and every rank receives into the same place, as
            // in-place broadcast allows; the communicator is live.
            let r =
                unsafe { sys::ncclBroadcast(at, at, len, ncclDataType_t::ncclUint8, root as c_int, self.comm, stream) };
            if in_flight(first) && !in_flight(r) {
                first = r;
            }
        }
        // SAFETY: closes the group opened above (required after an error too).
        let closed = unsafe { sys::ncclGroupEnd() };
        if in_flight(first) {
            closed
        } else {
            first
        }
    }

    /// Every rank's `local` bytes, in rank order (`what` names the caller's
    /// collective in errors).
    /// Every rank's part, concatenated in rank order in the staging buffer
    /// (equal sizes: `ncclAllGather`; else one broadcast per rank with
    /// bytes); returns the total bytes.
    fn gather(
        &mut self,
        what: &'static str,
        step: usize,
        local: Source<'_>,
        sizes: &[usize],
    ) -> Result<usize, RuntimeError> {
        if sizes.len() != self.world || local.len() != sizes[self.rank] {
            let detail =
                format!("rank {} gave {} bytes with sizes {sizes:?} for {} ranks", self.rank, local.len(), self.world);
            return Err(self.stopped(what, step, Stop::Failed(detail)));
        }
        self.ready(what, step)?;
        let offsets = offsets(sizes);
        let total = offsets[self.world];
        if total == 0 {
            return Ok(0);
        }
        let deadline = Instant::now() + self.options.timeout;
        if let Err(e) = self.stage(total, offsets[self.rank], local) {
            return Err(self.stopped(what, step, Stop::Failed(e)));
        }
        let base = self.stage_addr();
        let stream = self.stream.cu_stream() as sys::cudaStream_t;
        let started = if sizes.iter().all(|&s| s == sizes[0]) {
            let mine = (base + offsets[self.rank] as u64) as *const c_void;
            // SAFETY: the staging buffer holds world × sizes[0] bytes with
            // this rank's part at its own offset, as in-place all-gather
            // requires; the communicator is live and its context current.
            unsafe {
                sys::ncclAllGather(mine, base as *mut c_void, sizes[0], ncclDataType_t::ncclUint8, self.comm, stream)
            }
        } else {
            self.broadcast_each(base, &offsets, stream)
        };
        self.complete(what, step, started, deadline)?;
        Ok(total)
    }

    /// The sum of every rank's `len` f32 values, in place in the staging buffer.
    fn reduce(&mut self, what: &'static str, step: usize, local: Source<'_>, len: usize) -> Result<(), RuntimeError> {
        self.ready(what, step)?;
        if len == 0 {
            return Ok(());
        }
        let deadline = Instant::now() + self.options.timeout;
        if let Err(e) = self.stage(len * 4, 0, local) {
            return Err(self.stopped(what, step, Stop::Failed(e)));
        }
        let at = self.stage_addr() as *mut c_void;
        let stream = self.stream.cu_stream() as sys::cudaStream_t;
        // SAFETY: the staging buffer holds `len` f32 values at `at` (in place
        // is allowed); the communicator is live, its context current.
        let started = unsafe {
            sys::ncclAllReduce(at, at, len, ncclDataType_t::ncclFloat32, sys::ncclRedOp_t::ncclSum, self.comm, stream)
        };
        self.complete(what, step, started, deadline)
    }
}

/// Where a rank's part of a collective comes from.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// Host memory.
    Host(&'a [u8]),
    /// Device memory of the rank's device.
    Device { addr: u64, len: usize },
}

impl Source<'_> {
    fn len(&self) -> usize {
        match self {
            Source::Host(b) => b.len(),
            Source::Device { len, .. } => *len,
        }
    }
}

/// Byte offsets of each part and, last, the total.
fn offsets(sizes: &[usize]) -> SmallVec<[usize; 9]> {
    std::iter::once(0)
        .chain(sizes.iter().scan(0, |sum, &s| {
            *sum += s;
            Some(*sum)
        }))
        .collect()
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_gather(&mut self, step: usize, local: &[u8], sizes: &[usize]) -> Result<Vec<Vec<u8>>, RuntimeError> {
        let what = "all-gather";
        let total = self.gather(what, step, Source::Host(local), sizes)?;
        if total == 0 {
            return Ok(vec![Vec::new(); self.world]);
        }
        let all = self.download(total).map_err(|e| self.stopped(what, step, Stop::Failed(e)))?;
        Ok(offsets(sizes).windows(2).map(|w| all[w[0]..w[1]].to_vec()).collect())
    }

    fn all_reduce_sum(&mut self, step: usize, buf: &mut [f32]) -> Result<(), RuntimeError> {
        let what = "all-reduce";
        let bytes: Vec<u8> = buf.iter().flat_map(|x| x.to_le_bytes()).collect();
        if self.options.fixed_order_reduce {
            let parts = self.all_gather(step, &bytes, &vec![bytes.len(); self.world])?;
            // ((p0 + p1) + p2) + ...: the in-process communicator's order.
            for (r, part) in parts.iter().enumerate() {
                for (x, c) in buf.iter_mut().zip(part.chunks_exact(4)) {
                    let v = f32::from_le_bytes(c.try_into().expect("4 bytes"));
                    *x = if r == 0 { v } else { *x + v };
                }
            }
            return Ok(());
        }
        self.reduce(what, step, Source::Host(&bytes), buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let out = self.download(bytes.len()).map_err(|e| self.stopped(what, step, Stop::Failed(e)))?;
        for (x, c) in buf.iter_mut().zip(out.chunks_exact(4)) {
            *x = f32::from_le_bytes(c.try_into().expect("4 bytes"));
        }
        Ok(())
    }

    fn all_gather_bytes(
        &mut self,
        step: usize,
        local: &DeviceBytes,
        sizes: &[usize],
    ) -> Result<DeviceBytes, RuntimeError> {
        let what = "all-gather";
        let (mem, len) = match local {
            DeviceBytes::Host(bytes) => return all_gather_host(self, step, bytes, sizes),
            DeviceBytes::Cuda { mem, len } => (mem, len),
        };
        let source = Source::Device { addr: self.dev.raw_addr(mem), len: *len };
        let total = self.gather(what, step, source, sizes)?;
        // `copy_out` writes all `total` bytes: no memset.
        let out = self.dev.raw_bytes(total).map_err(|e| self.stopped(what, step, Stop::Failed(e.to_string())))?;
        let addr = self.dev.raw_addr(&out);
        self.copy_out(addr, total).map_err(|e| self.stopped(what, step, Stop::Failed(e)))?;
        Ok(DeviceBytes::Cuda { mem: out, len: total })
    }

    fn all_reduce_sum_tensor(&mut self, step: usize, buf: &mut DeviceTensor) -> Result<(), RuntimeError> {
        let what = "all-reduce";
        let t = match buf {
            DeviceTensor::Host(t) => return all_reduce_host(self, step, t),
            DeviceTensor::Cuda(t) => t,
        };
        if t.buf.dtype != cfg_core::DType::F32 {
            return Err(not_f32(self.rank, step));
        }
        if self.options.fixed_order_reduce {
            // The in-process order, on the host: a test and debugging aid.
            let mut host = self
                .dev
                .download(&t.buf, &t.shape)
                .map_err(|e| self.stopped(what, step, Stop::Failed(e.to_string())))?;
            if let cfg_core::tensor::TensorData::F32(v) = &mut host.data {
                self.all_reduce_sum(step, v)?;
            }
            let up = self.dev.upload(&host).map_err(|e| self.stopped(what, step, Stop::Failed(e.to_string())))?;
            t.buf = up;
            return Ok(());
        }
        let (addr, len) = (t.buf.addr(&self.dev), t.buf.len);
        self.reduce(what, step, Source::Device { addr, len: len * 4 }, len)?;
        self.copy_out(addr, len * 4).map_err(|e| self.stopped(what, step, Stop::Failed(e)))
    }

    fn abort(&mut self, step: usize, reason: &str) {
        self.signal.raise(self.rank, step, reason);
        self.abort_comm();
    }
}

impl Drop for NcclCommunicator {
    fn drop(&mut self) {
        // A clean end finalizes (peers may still be reading this rank's last
        // bytes) within the timeout; a failed one aborts, which does not wait
        // for the peers.
        if std::thread::panicking() || self.signal.get().is_some() {
            self.abort_comm();
        } else {
            self.close();
        }
    }
}

/// Runs `f` on one thread per device (rank `r` on `ordinals[r]`), each with
/// an NCCL communicator created in that thread, and returns each rank's
/// result in rank order.
///
/// Fails as a whole with the originating rank's error when a communicator
/// cannot be created (no driver, no NCCL, bad ordinal, timeout). A rank whose
/// `f` returns an error or panics stops the others' collectives at once.
pub fn run_nccl_threads<T, F>(
    ordinals: &[usize],
    options: NcclOptions,
    f: F,
) -> Result<Vec<Result<T, RuntimeError>>, CudaError>
where
    T: Send,
    F: Fn(&mut NcclCommunicator) -> Result<T, RuntimeError> + Sync,
{
    if ordinals.is_empty() {
        return Err(CudaError::Unsupported("an NCCL run needs at least one device".into()));
    }
    let id = NcclId::new()?;
    let world = ordinals.len();
    let signal = Signal::shared();
    let outcomes: Vec<Result<Result<T, RuntimeError>, CudaError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ordinals
            .iter()
            .enumerate()
            .map(|(rank, &ordinal)| {
                let (f, signal, options) = (&f, signal.clone(), options.clone());
                scope.spawn(move || {
                    let mut comm = match NcclCommunicator::create(ordinal, rank, world, &id, options, signal.clone()) {
                        Ok(comm) => comm,
                        Err(e) => {
                            signal.raise(rank, 0, &format!("creating its NCCL communicator failed: {e}"));
                            return Err(e);
                        }
                    };
                    // The communicator outlives `f`, so a failure is signalled
                    // before it is aborted: the peers then name this rank.
                    let outcome = match catch_unwind(AssertUnwindSafe(|| f(&mut comm))) {
                        Ok(Ok(v)) => Ok(v),
                        Ok(Err(e)) => {
                            signal.raise(rank, e.step().unwrap_or(0), &e.to_string());
                            Err(e)
                        }
                        Err(panic) => {
                            let message = panic_message(panic.as_ref());
                            signal.raise(rank, 0, &format!("panicked: {message}"));
                            Err(RuntimeError::Panic { rank, step: 0, message })
                        }
                    };
                    // Peers read this rank's staging buffer directly until they
                    // end too: it is freed only once every rank's thread has.
                    let staging = comm.staging.take();
                    drop(comm);
                    Ok((outcome, staging))
                })
            })
            .collect();
        let ended: Vec<_> = handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| {
                let lost = RuntimeError::Panic { rank, step: 0, message: "thread lost".into() };
                h.join().unwrap_or_else(|_| Ok((Err(lost), None)))
            })
            .collect();
        ended.into_iter().map(|r| r.map(|(outcome, _staging)| outcome)).collect()
    });
    let origin = signal.get().map(|f| f.rank);
    let mut failed: Vec<(usize, CudaError)> = Vec::new();
    let mut results = Vec::with_capacity(world);
    for (rank, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(r) => results.push(r),
            Err(e) => failed.push((rank, e)),
        }
    }
    if failed.is_empty() {
        return Ok(results);
    }
    let at = failed.iter().position(|(rank, _)| Some(*rank) == origin).unwrap_or(0);
    Err(failed.swap_remove(at).1)
}

#[cfg(test)]
mod tests {
    use super::Signal;

    #[test]
    fn a_timeout_names_the_ranks_behind() {
        let s = Signal::shared();
        for rank in [0, 1, 2, 0, 2] {
            s.arrive(rank);
        }
        assert_eq!(s.behind(0, 3), vec![1], "rank 1 started one collective, ranks 0 and 2 two");
        assert_eq!(s.behind(1, 3), Vec::<usize>::new(), "nobody is behind the last rank");
        s.arrive(0);
        assert_eq!(s.behind(0, 4), vec![1, 2, 3], "rank 3 never arrived");
        let alone = Signal::shared();
        alone.arrive(2);
        assert_eq!(alone.behind(2, 3), vec![0, 1], "no peer has started a collective yet");
    }

    #[test]
    fn a_single_process_signal_knows_no_peer() {
        let s = Signal::default();
        s.arrive(1);
        s.arrive(1);
        assert!(s.behind(1, 4).is_empty(), "a process's own signal knows nothing of the peers");
    }
}
