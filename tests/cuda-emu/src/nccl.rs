//! NCCL, emulated: ranks are threads of this process, each on its own
//! emulated device, matched by the unique id. Collectives are stream
//! operations that complete once every rank's stream has reached them; the
//! last rank to arrive moves the bytes for all, in rank order.
//!
//! Fault injection (`CFG_EMU_NCCL_FAULT`, comma-separated):
//! - `hang:R:K`: rank R's K-th collective (0-based, counting every
//!   all-reduce, all-gather and broadcast of its communicator) is accepted
//!   but never joins, as a rank stuck before the collective would;
//! - `error:R:K`: rank R's K-th collective fails: the call returns success
//!   and `ncclCommGetAsyncError` then reports `ncclSystemError`.

#![allow(non_snake_case)]

use crate::driver::codes;
use crate::driver::state::{self, driver};
use crate::driver::stream::{lock, Op, Poll, Wait};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// `ncclResult_t`.
pub type NcclResult = u32;
const SUCCESS: NcclResult = 0;
const SYSTEM_ERROR: NcclResult = 2;
const INTERNAL_ERROR: NcclResult = 3;
const INVALID_ARGUMENT: NcclResult = 4;
const INVALID_USAGE: NcclResult = 5;
const IN_PROGRESS: NcclResult = 7;

const ID_BYTES: usize = 128;

/// `ncclUniqueId`, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    internal: [u8; ID_BYTES],
}

/// The start of `ncclConfig_t` (the fields the stand-in reads).
#[repr(C)]
pub struct ConfigHead {
    size: usize,
    magic: u32,
    version: u32,
    blocking: c_int,
}

/// What a collective does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    AllReduceSum,
    AllGather,
    Broadcast { root: usize },
}

/// One rank's part of a collective.
#[derive(Debug, Clone, Copy)]
struct Part {
    kind: Kind,
    send: u64,
    recv: u64,
    count: usize,
    dtype: u32,
}

/// A collective in flight: the parts that arrived, and its outcome.
#[derive(Default)]
struct Rendezvous {
    parts: Vec<Option<Part>>,
    outcome: Option<Result<(), String>>,
}

/// The ranks that share one unique id.
struct Group {
    world: usize,
    joined: Mutex<Vec<bool>>,
    collectives: Mutex<HashMap<u64, Arc<Mutex<Rendezvous>>>>,
}

/// One rank's communicator.
struct Comm {
    group: Arc<Group>,
    rank: usize,
    device: usize,
    calls: u64,
    aborted: bool,
    async_error: Option<(NcclResult, String)>,
}

#[derive(Default)]
struct Nccl {
    groups: HashMap<[u8; ID_BYTES], Arc<Group>>,
    comms: HashMap<usize, Arc<Mutex<Comm>>>,
    next: usize,
}

fn nccl() -> &'static Mutex<Nccl> {
    static NCCL: OnceLock<Mutex<Nccl>> = OnceLock::new();
    NCCL.get_or_init(Default::default)
}

fn last_error() -> &'static Mutex<CString> {
    static LAST: OnceLock<Mutex<CString>> = OnceLock::new();
    LAST.get_or_init(|| Mutex::new(CString::default()))
}

fn fail(code: NcclResult, message: String) -> NcclResult {
    eprintln!("cuda-emu nccl: {message}");
    *lock(last_error()) = CString::new(message).unwrap_or_default();
    code
}

fn comm(handle: *mut c_void) -> Option<Arc<Mutex<Comm>>> {
    lock(nccl()).comms.get(&(handle as usize)).cloned()
}

/// The injected fault for `rank`'s `call`-th collective, if any.
fn injected(rank: usize, call: u64) -> Option<&'static str> {
    let spec = std::env::var("CFG_EMU_NCCL_FAULT").ok()?;
    spec.split(',').find_map(|f| {
        let mut it = f.trim().split(':');
        let (kind, r, k) = (it.next()?, it.next()?.parse::<usize>().ok()?, it.next()?.parse::<u64>().ok()?);
        let kind = match kind {
            "hang" => "hang",
            "error" => "error",
            _ => return None,
        };
        (r == rank && k == call).then_some(kind)
    })
}

fn dtype_size(dtype: u32) -> Option<usize> {
    Some(match dtype {
        0 | 1 => 1,
        2 | 3 | 7 => 4,
        4 | 5 | 8 => 8,
        6 | 9 => 2,
        _ => return None,
    })
}

#[no_mangle]
pub unsafe extern "C" fn ncclGetVersion(version: *mut c_int) -> NcclResult {
    if version.is_null() {
        return INVALID_ARGUMENT;
    }
    // SAFETY: non-null out-pointer.
    unsafe { version.write(22803) };
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn ncclGetUniqueId(id: *mut [u8; ID_BYTES]) -> NcclResult {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    if id.is_null() {
        return INVALID_ARGUMENT;
    }
    let mut bytes = [0u8; ID_BYTES];
    bytes[..13].copy_from_slice(b"cuda-emu-nccl");
    bytes[16..24].copy_from_slice(&NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    bytes[24..28].copy_from_slice(&std::process::id().to_le_bytes());
    // SAFETY: non-null out-pointer to 128 bytes.
    unsafe { id.write(bytes) };
    SUCCESS
}

#[no_mangle]
pub extern "C" fn ncclGetErrorString(r: NcclResult) -> *const c_char {
    let s: &'static std::ffi::CStr = match r {
        SUCCESS => c"no error",
        1 => c"unhandled cuda error (run with NCCL_DEBUG=INFO for details)",
        SYSTEM_ERROR => c"unhandled system error (run with NCCL_DEBUG=INFO for details)",
        INTERNAL_ERROR => c"internal error - please report this issue to the NCCL developers",
        INVALID_ARGUMENT => c"invalid argument (run with NCCL_DEBUG=WARN for details)",
        INVALID_USAGE => c"invalid usage (run with NCCL_DEBUG=WARN for details)",
        6 => c"remote process exited or there was a network error",
        IN_PROGRESS => c"NCCL operation in progress",
        _ => c"unknown result code",
    };
    s.as_ptr()
}

#[no_mangle]
pub extern "C" fn ncclGetLastError(_comm: *mut c_void) -> *const c_char {
    // The string lives in a static and is replaced only by a later failure.
    lock(last_error()).as_ptr()
}

/// # Safety
/// The pointers follow ncclCommInitRankConfig's contract.
#[no_mangle]
pub unsafe extern "C" fn ncclCommInitRankConfig(
    out: *mut *mut c_void,
    nranks: c_int,
    id: UniqueId,
    rank: c_int,
    config: *const ConfigHead,
) -> NcclResult {
    if out.is_null() || nranks < 1 || rank < 0 || rank >= nranks {
        return fail(INVALID_ARGUMENT, format!("init: rank {rank} of {nranks} ranks is invalid"));
    }
    let Ok(device) = state::current_device() else {
        return fail(INVALID_USAGE, "init: no CUDA context is current on this thread".into());
    };
    // SAFETY: a config is a valid ncclConfig_t when non-null.
    let blocking = config.is_null() || unsafe { (*config).blocking } != 0;
    let (world, rank) = (nranks as usize, rank as usize);
    let mut n = lock(nccl());
    let group = n
        .groups
        .entry(id.internal)
        .or_insert_with(|| {
            Arc::new(Group { world, joined: Mutex::new(vec![false; world]), collectives: Mutex::new(HashMap::new()) })
        })
        .clone();
    if group.world != world {
        return fail(INVALID_USAGE, format!("init: {world} ranks, but the id was created for {}", group.world));
    }
    {
        let mut joined = lock(&group.joined);
        if joined[rank] {
            return fail(INVALID_USAGE, format!("init: rank {rank} joined twice"));
        }
        joined[rank] = true;
    }
    for other in n.comms.values() {
        let c = lock(other);
        if Arc::ptr_eq(&c.group, &group) && c.device == device {
            return fail(
                INVALID_USAGE,
                format!("init: ranks {} and {rank} share device {device} (NCCL needs one GPU per rank)", c.rank),
            );
        }
    }
    n.next += 1;
    let handle = 0xCC_0000 + n.next * 16;
    n.comms.insert(
        handle,
        Arc::new(Mutex::new(Comm { group: group.clone(), rank, device, calls: 0, aborted: false, async_error: None })),
    );
    drop(n);
    // SAFETY: non-null out-pointer.
    unsafe { out.write(handle as *mut c_void) };
    if blocking {
        while lock(&group.joined).iter().any(|j| !j) {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        SUCCESS
    } else {
        IN_PROGRESS
    }
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommGetAsyncError(handle: *mut c_void, out: *mut NcclResult) -> NcclResult {
    let Some(c) = comm(handle) else { return INVALID_ARGUMENT };
    if out.is_null() {
        return INVALID_ARGUMENT;
    }
    let c = lock(&c);
    let state = if let Some((code, _)) = &c.async_error {
        *code
    } else if lock(&c.group.joined).iter().any(|j| !j) {
        IN_PROGRESS
    } else {
        SUCCESS
    };
    // SAFETY: non-null out-pointer.
    unsafe { out.write(state) };
    SUCCESS
}

#[no_mangle]
pub extern "C" fn ncclCommAbort(handle: *mut c_void) -> NcclResult {
    // The rank's own collectives still queued fail; peers are not told (as
    // with a real abort: they see a timeout).
    match lock(nccl()).comms.remove(&(handle as usize)) {
        Some(c) => {
            lock(&c).aborted = true;
            SUCCESS
        }
        None => INVALID_ARGUMENT,
    }
}

#[no_mangle]
pub extern "C" fn ncclCommFinalize(handle: *mut c_void) -> NcclResult {
    if comm(handle).is_some() {
        SUCCESS
    } else {
        INVALID_ARGUMENT
    }
}

#[no_mangle]
pub extern "C" fn ncclCommDestroy(handle: *mut c_void) -> NcclResult {
    match lock(nccl()).comms.remove(&(handle as usize)) {
        Some(_) => SUCCESS,
        None => INVALID_ARGUMENT,
    }
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommCount(handle: *mut c_void, count: *mut c_int) -> NcclResult {
    match comm(handle) {
        Some(c) if !count.is_null() => {
            // SAFETY: non-null out-pointer.
            unsafe { count.write(lock(&c).group.world as c_int) };
            SUCCESS
        }
        _ => INVALID_ARGUMENT,
    }
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommUserRank(handle: *mut c_void, rank: *mut c_int) -> NcclResult {
    match comm(handle) {
        Some(c) if !rank.is_null() => {
            // SAFETY: non-null out-pointer.
            unsafe { rank.write(lock(&c).rank as c_int) };
            SUCCESS
        }
        _ => INVALID_ARGUMENT,
    }
}

/// Collectives are matched by their order on each communicator, so a group
/// needs no extra work: every rank issues its calls in the same order.
#[no_mangle]
pub extern "C" fn ncclGroupStart() -> NcclResult {
    SUCCESS
}

/// See [`ncclGroupStart`].
#[no_mangle]
pub extern "C" fn ncclGroupEnd() -> NcclResult {
    SUCCESS
}

#[no_mangle]
pub extern "C" fn ncclAllReduce(
    send: *const c_void,
    recv: *mut c_void,
    count: usize,
    dtype: u32,
    op: u32,
    handle: *mut c_void,
    stream: *mut c_void,
) -> NcclResult {
    if op != 0 {
        return fail(INVALID_ARGUMENT, format!("all-reduce: only sum (op 0) is emulated, not op {op}"));
    }
    let part = Part { kind: Kind::AllReduceSum, send: send as u64, recv: recv as u64, count, dtype };
    enqueue(handle, stream, part)
}

#[no_mangle]
pub extern "C" fn ncclAllGather(
    send: *const c_void,
    recv: *mut c_void,
    count: usize,
    dtype: u32,
    handle: *mut c_void,
    stream: *mut c_void,
) -> NcclResult {
    enqueue(handle, stream, Part { kind: Kind::AllGather, send: send as u64, recv: recv as u64, count, dtype })
}

#[no_mangle]
pub extern "C" fn ncclBroadcast(
    send: *const c_void,
    recv: *mut c_void,
    count: usize,
    dtype: u32,
    root: c_int,
    handle: *mut c_void,
    stream: *mut c_void,
) -> NcclResult {
    let Ok(root) = usize::try_from(root) else { return INVALID_ARGUMENT };
    enqueue(handle, stream, Part { kind: Kind::Broadcast { root }, send: send as u64, recv: recv as u64, count, dtype })
}

fn enqueue(handle: *mut c_void, stream: *mut c_void, part: Part) -> NcclResult {
    let Some(c) = comm(handle) else { return fail(INVALID_ARGUMENT, "collective on an invalid communicator".into()) };
    if dtype_size(part.dtype).is_none() {
        return fail(INVALID_ARGUMENT, format!("unknown data type {}", part.dtype));
    }
    let (group, rank, device, call) = {
        let mut c = lock(&c);
        let call = c.calls;
        c.calls += 1;
        (c.group.clone(), c.rank, c.device, call)
    };
    if matches!(part.kind, Kind::Broadcast { root } if root >= group.world) {
        return fail(INVALID_ARGUMENT, format!("broadcast root {:?} out of range", part.kind));
    }
    let s = match state::stream(stream) {
        Ok(s) if s.device == device => s,
        _ => return fail(INVALID_ARGUMENT, format!("rank {rank}: the stream is not on the communicator's device")),
    };
    let fault = injected(rank, call);
    if fault == Some("error") {
        let message = format!("cuda-emu: injected error in rank {rank}'s collective {call}");
        lock(&c).async_error = Some((SYSTEM_ERROR, message.clone()));
        *lock(last_error()) = CString::new(message).unwrap_or_default();
        return SUCCESS;
    }
    let rendezvous = lock(&group.collectives).entry(call).or_default().clone();
    let wait = Collective { comm: c, group, rendezvous, rank, call, part, hang: fault == Some("hang") };
    // A failure met while the stream ran earlier work is the CUDA side's to report.
    let _ = s.enqueue(Op::Wait { op: Box::new(wait), started: false });
    SUCCESS
}

/// One rank's collective on its stream.
struct Collective {
    comm: Arc<Mutex<Comm>>,
    group: Arc<Group>,
    rendezvous: Arc<Mutex<Rendezvous>>,
    rank: usize,
    call: u64,
    part: Part,
    hang: bool,
}

impl Wait for Collective {
    fn poll(&mut self, first: bool) -> Poll {
        if lock(&self.comm).aborted {
            eprintln!("cuda-emu nccl: rank {}'s collective {} ended by ncclCommAbort", self.rank, self.call);
            return Poll::Failed(codes::LAUNCH_FAILED);
        }
        if self.hang {
            return Poll::Pending;
        }
        let mut r = lock(&self.rendezvous);
        if first {
            if r.parts.is_empty() {
                r.parts = vec![None; self.group.world];
            }
            r.parts[self.rank] = Some(self.part);
            if r.parts.iter().all(Option::is_some) {
                let parts: Vec<Part> = r.parts.iter().map(|p| p.expect("all arrived")).collect();
                r.outcome = Some(perform(&parts));
                lock(&self.group.collectives).remove(&self.call);
            }
        }
        match &r.outcome {
            None => Poll::Pending,
            Some(Ok(())) => Poll::Ready,
            Some(Err(message)) => {
                let message = format!("collective {} (rank {}): {message}", self.call, self.rank);
                lock(&self.comm).async_error = Some((INVALID_USAGE, message.clone()));
                fail(INVALID_USAGE, message);
                Poll::Failed(codes::LAUNCH_FAILED)
            }
        }
    }
}

/// Moves the bytes of a collective every rank has joined.
fn perform(parts: &[Part]) -> Result<(), String> {
    let first = parts[0];
    if crate::driver::stream::skip_work() {
        return Ok(());
    }
    if let Some((r, p)) = parts.iter().enumerate().find(|(_, p)| p.kind != first.kind || p.dtype != first.dtype) {
        return Err(format!(
            "rank {r} called {:?} ({}) where rank 0 called {:?} ({})",
            p.kind, p.dtype, first.kind, first.dtype
        ));
    }
    if let Some((r, p)) = parts.iter().enumerate().find(|(_, p)| p.count != first.count) {
        return Err(format!("rank {r} passed count {} where rank 0 passed {}", p.count, first.count));
    }
    let size = dtype_size(first.dtype).expect("checked at enqueue");
    let bytes = first.count * size;
    let mut mem = lock(&driver().memory);
    let read = |mem: &crate::memory::Memory, r: usize, addr: u64| {
        mem.slice(addr, bytes).map(<[u8]>::to_vec).map_err(|f| format!("rank {r}'s send buffer: {f}"))
    };
    let results: Vec<Vec<u8>> = match first.kind {
        Kind::AllReduceSum => {
            let inputs = parts.iter().enumerate().map(|(r, p)| read(&mem, r, p.send)).collect::<Result<Vec<_>, _>>()?;
            let sum = sum_in_rank_order(&inputs, first.dtype, first.count)?;
            vec![sum; parts.len()]
        }
        Kind::AllGather => {
            let inputs = parts.iter().enumerate().map(|(r, p)| read(&mem, r, p.send)).collect::<Result<Vec<_>, _>>()?;
            vec![inputs.concat(); parts.len()]
        }
        Kind::Broadcast { root } => vec![read(&mem, root, parts[root].send)?; parts.len()],
    };
    for (r, (p, out)) in parts.iter().zip(results).enumerate() {
        mem.slice_mut(p.recv, out.len()).map_err(|f| format!("rank {r}'s receive buffer: {f}"))?.copy_from_slice(&out);
    }
    Ok(())
}

/// Sums the ranks' buffers element-wise as `((x0 + x1) + x2) + ...`, each
/// addition rounded in the data type (f16/bf16 through f32).
fn sum_in_rank_order(inputs: &[Vec<u8>], dtype: u32, count: usize) -> Result<Vec<u8>, String> {
    let mut acc = inputs[0].clone();
    for x in &inputs[1..] {
        for i in 0..count {
            macro_rules! add {
                ($t:ty) => {{
                    const W: usize = std::mem::size_of::<$t>();
                    let a = <$t>::from_le_bytes(acc[i * W..(i + 1) * W].try_into().expect("width"));
                    let b = <$t>::from_le_bytes(x[i * W..(i + 1) * W].try_into().expect("width"));
                    acc[i * W..(i + 1) * W].copy_from_slice(&add_one(a, b).to_le_bytes());
                }};
            }
            match dtype {
                0 => add!(i8),
                1 => add!(u8),
                2 => add!(i32),
                3 => add!(u32),
                4 => add!(i64),
                5 => add!(u64),
                6 => add!(half::f16),
                7 => add!(f32),
                8 => add!(f64),
                9 => add!(half::bf16),
                _ => return Err(format!("unknown data type {dtype}")),
            }
        }
    }
    Ok(acc)
}

trait AddOne {
    fn add_one(self, other: Self) -> Self;
}
macro_rules! wrapping {
    ($($t:ty),*) => {$(impl AddOne for $t { fn add_one(self, o: Self) -> Self { self.wrapping_add(o) } })*};
}
wrapping!(i8, u8, i32, u32, i64, u64);
impl AddOne for f32 {
    fn add_one(self, o: Self) -> Self {
        self + o
    }
}
impl AddOne for f64 {
    fn add_one(self, o: Self) -> Self {
        self + o
    }
}
impl AddOne for half::f16 {
    fn add_one(self, o: Self) -> Self {
        half::f16::from_f32(self.to_f32() + o.to_f32())
    }
}
impl AddOne for half::bf16 {
    fn add_one(self, o: Self) -> Self {
        half::bf16::from_f32(self.to_f32() + o.to_f32())
    }
}
fn add_one<T: AddOne>(a: T, b: T) -> T {
    a.add_one(b)
}
