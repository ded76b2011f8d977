//! The exported driver API functions (the symbols cudarc resolves by name).
//! Each checks its handles, does its work on the emulated state and returns
//! the CUresult real CUDA would.

#![allow(non_snake_case)]

use super::codes::{self, CuResult};
use super::device;
use super::state::{self, driver, Function, LoadedModule};
use super::stream::{lock, Event, HostFn, Op, Stream};
use crate::ptx::{Launch, Module};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

type Handle = *mut c_void;

fn done(r: Result<(), CuResult>) -> CuResult {
    r.err().unwrap_or(codes::SUCCESS)
}

/// Writes `value` through `out`, refusing null.
unsafe fn put<T>(out: *mut T, value: T) -> Result<(), CuResult> {
    if out.is_null() {
        return Err(codes::INVALID_VALUE);
    }
    // SAFETY: non-null; the caller passes a valid out-pointer.
    unsafe { out.write(value) };
    Ok(())
}

fn ok(code: CuResult) -> Result<(), CuResult> {
    if code == codes::SUCCESS {
        Ok(())
    } else {
        Err(code)
    }
}

// ---- initialisation, devices, contexts ----

#[no_mangle]
pub extern "C" fn cuInit(_flags: c_uint) -> CuResult {
    driver().initialised.store(true, Ordering::Release);
    codes::SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CuResult {
    done(unsafe { put(version, 13000) })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CuResult {
    if !driver().initialised.load(Ordering::Acquire) {
        return codes::NOT_INITIALIZED;
    }
    done(unsafe { put(count, device::count() as c_int) })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(dev: *mut c_int, ordinal: c_int) -> CuResult {
    done(state::device_ordinal(ordinal).and_then(|d| unsafe { put(dev, d as c_int) }))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(value: *mut c_int, attr: c_int, dev: c_int) -> CuResult {
    done(state::device_ordinal(dev).and_then(|_| {
        let v = device::attribute(attr).ok_or(codes::INVALID_VALUE)?;
        unsafe { put(value, v) }
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: c_int) -> CuResult {
    done(state::device_ordinal(dev).and_then(|_| {
        if name.is_null() || len <= 0 {
            return Err(codes::INVALID_VALUE);
        }
        let bytes = device::NAME.as_bytes();
        let n = bytes.len().min(len as usize - 1);
        // SAFETY: the caller's buffer holds `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), name.cast::<u8>(), n);
            *name.add(n) = 0;
        }
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: c_int) -> CuResult {
    done(state::device_ordinal(dev).and_then(|d| {
        let mut id = *b"cuda-emu-device-";
        id[15] = d as u8;
        unsafe { put(uuid, id) }
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], dev: c_int) -> CuResult {
    unsafe { cuDeviceGetUuid(uuid, dev) }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: c_int) -> CuResult {
    done(state::device_ordinal(dev).and_then(|_| unsafe { put(bytes, device::TOTAL_MEMORY as usize) }))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CuResult {
    done(state::current_device().and_then(|d| {
        let used = lock(&driver().memory).used(d);
        unsafe { put(free, device::TOTAL_MEMORY.saturating_sub(used) as usize)? };
        unsafe { put(total, device::TOTAL_MEMORY as usize) }
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut Handle, dev: c_int) -> CuResult {
    done(state::device_ordinal(dev).and_then(|d| unsafe { put(ctx, state::context_handle(d)) }))
}

#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: c_int) -> CuResult {
    done(state::device_ordinal(dev).map(|_| ()))
}

#[no_mangle]
pub extern "C" fn cuCtxSetCurrent(ctx: Handle) -> CuResult {
    if ctx.is_null() {
        state::set_current(None);
        return codes::SUCCESS;
    }
    match state::context_device(ctx) {
        Some(d) => {
            state::set_current(Some(d));
            codes::SUCCESS
        }
        None => codes::INVALID_CONTEXT,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut Handle) -> CuResult {
    let current = state::current_device().ok().map_or(std::ptr::null_mut(), state::context_handle);
    done(unsafe { put(ctx, current) })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetDevice(dev: *mut c_int) -> CuResult {
    done(state::current_device().and_then(|d| unsafe { put(dev, d as c_int) }))
}

#[no_mangle]
pub extern "C" fn cuCtxSynchronize() -> CuResult {
    done(state::current_device().and_then(|d| {
        let streams = lock(&driver().objects).device_streams(d);
        streams.iter().map(|s| s.synchronize()).try_for_each(ok)
    }))
}

// ---- streams and events ----

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(stream: *mut Handle, _flags: c_uint) -> CuResult {
    done(state::current_device().and_then(|d| {
        let mut objects = lock(&driver().objects);
        let h = objects.handle();
        objects.streams.insert(h, Stream::new(d));
        unsafe { put(stream, h as Handle) }
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreateWithPriority(stream: *mut Handle, flags: c_uint, _priority: c_int) -> CuResult {
    unsafe { cuStreamCreate(stream, flags) }
}

#[no_mangle]
pub extern "C" fn cuStreamDestroy_v2(stream: Handle) -> CuResult {
    // Queued work still runs (as on a GPU); the handle goes at once.
    let s = lock(&driver().objects).streams.remove(&(stream as usize));
    match s {
        Some(s) => {
            s.drain();
            codes::SUCCESS
        }
        None => codes::INVALID_HANDLE,
    }
}

#[no_mangle]
pub extern "C" fn cuStreamSynchronize(stream: Handle) -> CuResult {
    done(state::stream(stream).and_then(|s| ok(s.synchronize())))
}

#[no_mangle]
pub extern "C" fn cuStreamQuery(stream: Handle) -> CuResult {
    done(state::stream(stream).and_then(|s| {
        ok(s.drain())?;
        if s.idle() {
            Ok(())
        } else {
            Err(codes::NOT_READY)
        }
    }))
}

#[no_mangle]
pub extern "C" fn cuStreamWaitEvent(stream: Handle, event: Handle, _flags: c_uint) -> CuResult {
    // Work on every stream runs when it is queued (only collectives wait), so
    // an event recorded earlier has completed or waits on a collective; wait for it.
    done(state::stream(stream).and_then(|_| state::event(event)).and_then(|e| ok(e.synchronize())))
}

#[no_mangle]
pub unsafe extern "C" fn cuLaunchHostFunc(
    stream: Handle,
    f: Option<unsafe extern "C" fn(*mut c_void)>,
    data: *mut c_void,
) -> CuResult {
    let Some(f) = f else { return codes::INVALID_VALUE };
    done(state::stream(stream).and_then(|s| ok(s.enqueue(Op::Host(HostFn { f, data: data as usize })))))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(event: *mut Handle, _flags: c_uint) -> CuResult {
    let mut objects = lock(&driver().objects);
    let h = objects.handle();
    objects.events.insert(h, Arc::new(Event::default()));
    done(unsafe { put(event, h as Handle) })
}

#[no_mangle]
pub extern "C" fn cuEventDestroy_v2(event: Handle) -> CuResult {
    match lock(&driver().objects).events.remove(&(event as usize)) {
        Some(_) => codes::SUCCESS,
        None => codes::INVALID_HANDLE,
    }
}

#[no_mangle]
pub extern "C" fn cuEventRecord(event: Handle, stream: Handle) -> CuResult {
    done(state::event(event).and_then(|e| {
        let s = state::stream(stream)?;
        e.recorded_on(&s);
        ok(s.enqueue(Op::Record(e)))
    }))
}

#[no_mangle]
pub extern "C" fn cuEventQuery(event: Handle) -> CuResult {
    done(state::event(event).and_then(|e| e.query().map(|_| ())))
}

#[no_mangle]
pub extern "C" fn cuEventSynchronize(event: Handle) -> CuResult {
    done(state::event(event).and_then(|e| ok(e.synchronize())))
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, start: Handle, end: Handle) -> CuResult {
    done((|| {
        let (a, b) = (state::event(start)?.query()?, state::event(end)?.query()?);
        let d = if b >= a { (b - a).as_secs_f32() } else { -(a - b).as_secs_f32() };
        unsafe { put(ms, d * 1e3) }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, start: Handle, end: Handle) -> CuResult {
    unsafe { cuEventElapsedTime(ms, start, end) }
}

// ---- memory ----

fn alloc(bytes: usize) -> Result<u64, CuResult> {
    let d = state::current_device()?;
    let mut mem = lock(&driver().memory);
    if mem.used(d).saturating_add(bytes as u64) > device::TOTAL_MEMORY {
        return Err(codes::OUT_OF_MEMORY);
    }
    Ok(mem.alloc(bytes, d))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut u64, bytes: usize) -> CuResult {
    done(alloc(bytes).and_then(|a| unsafe { put(dptr, a) }))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(dptr: *mut u64, bytes: usize, stream: Handle) -> CuResult {
    done(state::stream(stream).and_then(|_| alloc(bytes)).and_then(|a| unsafe { put(dptr, a) }))
}

#[no_mangle]
pub extern "C" fn cuMemFree_v2(dptr: u64) -> CuResult {
    // cuMemFree waits for the device's work that may still use the memory.
    let device = lock(&driver().memory).allocation(dptr).map(|a| a.device);
    let Some(device) = device else { return codes::INVALID_VALUE };
    let streams = lock(&driver().objects).device_streams(device);
    for s in streams {
        s.drain();
    }
    done(lock(&driver().memory).free(dptr).map_err(|f| super::stream::fault("cuMemFree", f)))
}

#[no_mangle]
pub extern "C" fn cuMemFreeAsync(dptr: u64, stream: Handle) -> CuResult {
    done(state::stream(stream).and_then(|s| ok(s.enqueue(Op::Free { addr: dptr }))))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetDefaultMemPool(pool: *mut Handle, dev: c_int) -> CuResult {
    done(state::device_ordinal(dev).and_then(|d| unsafe { put(pool, state::pool_handle(d)) }))
}

#[no_mangle]
pub extern "C" fn cuMemPoolSetAttribute(pool: Handle, _attr: c_int, value: *mut c_void) -> CuResult {
    // Pool attributes (release threshold, reuse policies) only tune caching;
    // emulated memory is never cached, so they are accepted and have no effect.
    if !state::is_pool(pool) || value.is_null() {
        return codes::INVALID_VALUE;
    }
    codes::SUCCESS
}

#[no_mangle]
pub extern "C" fn cuMemsetD8Async(dptr: u64, value: u8, len: usize, stream: Handle) -> CuResult {
    done(state::stream(stream).and_then(|s| ok(s.enqueue(Op::Memset { dst: dptr, value, len }))))
}

#[no_mangle]
pub extern "C" fn cuMemsetD8_v2(dptr: u64, value: u8, len: usize) -> CuResult {
    done(state::stream(std::ptr::null_mut()).and_then(|s| {
        ok(s.enqueue(Op::Memset { dst: dptr, value, len }))?;
        ok(s.synchronize())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(dst: u64, src: *const c_void, len: usize, stream: Handle) -> CuResult {
    done(state::stream(stream).and_then(|s| {
        if src.is_null() && len > 0 {
            return Err(codes::INVALID_VALUE);
        }
        // Pageable host memory is read when the call is made, as CUDA does.
        let data =
            if len == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(src.cast::<u8>(), len) }.to_vec() };
        count_copy(s.device, 0, len);
        ok(s.enqueue(Op::CopyIn { dst, data }))
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(dst: u64, src: *const c_void, len: usize) -> CuResult {
    let r = unsafe { cuMemcpyHtoDAsync_v2(dst, src, len, std::ptr::null_mut()) };
    if r != codes::SUCCESS {
        return r;
    }
    cuStreamSynchronize(std::ptr::null_mut())
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: u64, len: usize, stream: Handle) -> CuResult {
    // A copy to pageable memory returns once it is done: run the stream to here.
    done(state::stream(stream).and_then(|s| {
        ok(s.synchronize())?;
        if len == 0 {
            return Ok(());
        }
        if dst.is_null() {
            return Err(codes::INVALID_VALUE);
        }
        count_copy(s.device, 1, len);
        let mem = lock(&driver().memory);
        let from = mem.slice(src, len).map_err(|f| super::stream::fault("cuMemcpyDtoH", f))?;
        // SAFETY: the caller's buffer holds `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), dst.cast::<u8>(), len) };
        Ok(())
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: u64, len: usize) -> CuResult {
    unsafe { cuMemcpyDtoHAsync_v2(dst, src, len, std::ptr::null_mut()) }
}

#[no_mangle]
pub extern "C" fn cuMemcpyDtoDAsync_v2(dst: u64, src: u64, len: usize, stream: Handle) -> CuResult {
    done(state::stream(stream).and_then(|s| ok(s.enqueue(Op::CopyDevice { dst, src, len }))))
}

#[no_mangle]
pub extern "C" fn cuMemcpyDtoD_v2(dst: u64, src: u64, len: usize) -> CuResult {
    done(state::stream(std::ptr::null_mut()).and_then(|s| {
        ok(s.enqueue(Op::CopyDevice { dst, src, len }))?;
        ok(s.synchronize())
    }))
}

// ---- the stand-in's own test hook ----

/// Bytes copied between the host and each emulated device, by direction.
static COPIED: [[AtomicU64; 2]; 64] = [const { [const { AtomicU64::new(0) }; 2] }; 64];

fn count_copy(device: usize, direction: usize, bytes: usize) {
    if let Some(d) = COPIED.get(device) {
        d[direction].fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Bytes copied between the host and emulated device `device` so far:
/// `direction` 0 is host to device, 1 device to host. Not a CUDA function:
/// tests look it up to check that predictions stay on the device.
#[no_mangle]
pub extern "C" fn cfgEmuCopiedBytes(device: c_int, direction: c_int) -> u64 {
    let (Ok(d), Ok(dir)) = (usize::try_from(device), usize::try_from(direction)) else { return 0 };
    COPIED.get(d).and_then(|c| c.get(dir)).map_or(0, |c| c.load(Ordering::Relaxed))
}

// ---- modules and functions ----

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut Handle, image: *const c_void) -> CuResult {
    done((|| {
        let device = state::current_device()?;
        if image.is_null() {
            return Err(codes::INVALID_VALUE);
        }
        // SAFETY: a PTX image is a NUL-terminated string.
        let text = unsafe { CStr::from_ptr(image.cast::<c_char>()) }.to_str().map_err(|_| codes::INVALID_PTX)?;
        let loaded = {
            let mut mem = lock(&driver().memory);
            Module::load(text, &mut mem, device).map_err(|e| {
                eprintln!("cuda-emu: cuModuleLoadData: {e}");
                codes::INVALID_PTX
            })?
        };
        let mut objects = lock(&driver().objects);
        let h = objects.handle();
        objects.modules.insert(h, Arc::new(LoadedModule { module: loaded, device }));
        unsafe { put(module, h as Handle) }
    })())
}

#[no_mangle]
pub extern "C" fn cuModuleUnload(module: Handle) -> CuResult {
    let mut objects = lock(&driver().objects);
    match objects.modules.remove(&(module as usize)) {
        Some(m) => {
            objects.functions.retain(|_, f| !Arc::ptr_eq(&f.module, &m));
            codes::SUCCESS
        }
        None => codes::INVALID_HANDLE,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(function: *mut Handle, module: Handle, name: *const c_char) -> CuResult {
    done((|| {
        if name.is_null() {
            return Err(codes::INVALID_VALUE);
        }
        // SAFETY: a NUL-terminated name.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
        let mut objects = lock(&driver().objects);
        let m = objects.modules.get(&(module as usize)).cloned().ok_or(codes::INVALID_HANDLE)?;
        m.module.kernel(&name).ok_or(codes::NOT_FOUND)?;
        let h = objects.handle();
        objects.functions.insert(h, Function { module: m, kernel: name });
        unsafe { put(function, h as Handle) }
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetGlobal_v2(
    dptr: *mut u64,
    bytes: *mut usize,
    module: Handle,
    name: *const c_char,
) -> CuResult {
    done((|| {
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
        let m = lock(&driver().objects).modules.get(&(module as usize)).cloned().ok_or(codes::INVALID_HANDLE)?;
        let (addr, size) = m.module.global(&name).ok_or(codes::NOT_FOUND)?;
        if !dptr.is_null() {
            unsafe { dptr.write(addr) };
        }
        if !bytes.is_null() {
            unsafe { bytes.write(size) };
        }
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(value: *mut c_int, attr: c_int, function: Handle) -> CuResult {
    done(state::function(function).and_then(|f| {
        let k = f.module.module.kernel(&f.kernel).ok_or(codes::INVALID_HANDLE)?;
        let v = match attr {
            0 => 1024,
            1 => k.static_shared as c_int,
            2 => 0,
            3 => k.local_bytes as c_int,
            4 => device::REGISTERS_PER_THREAD,
            5 | 6 => 90,
            7 => 0,
            8 => 48 * 1024 - k.static_shared as c_int,
            9 => -1,
            _ => return Err(codes::INVALID_VALUE),
        };
        unsafe { put(value, v) }
    }))
}

#[no_mangle]
pub extern "C" fn cuFuncSetAttribute(function: Handle, _attr: c_int, _value: c_int) -> CuResult {
    done(state::function(function).map(|_| ()))
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    blocks: *mut c_int,
    function: Handle,
    block_size: c_int,
    dynamic_shared: usize,
    _flags: c_uint,
) -> CuResult {
    done(state::function(function).and_then(|f| {
        let k = f.module.module.kernel(&f.kernel).ok_or(codes::INVALID_HANDLE)?;
        let shared = (k.static_shared + dynamic_shared) as c_int;
        unsafe { put(blocks, device::blocks_per_sm(block_size, shared)) }
    }))
}

#[no_mangle]
pub unsafe extern "C" fn cuOccupancyMaxActiveBlocksPerMultiprocessor(
    blocks: *mut c_int,
    function: Handle,
    block_size: c_int,
    dynamic_shared: usize,
) -> CuResult {
    unsafe { cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(blocks, function, block_size, dynamic_shared, 0) }
}

// ---- launches ----

#[allow(clippy::too_many_arguments)]
unsafe fn launch(
    function: Handle,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared: c_uint,
    stream: Handle,
    params: *mut *mut c_void,
    cooperative: bool,
) -> Result<(), CuResult> {
    let f = state::function(function)?;
    let s = state::stream(stream)?;
    if s.device != f.module.device {
        return Err(codes::INVALID_HANDLE); // a module is loaded per context
    }
    let k = f.module.module.kernel(&f.kernel).ok_or(codes::INVALID_HANDLE)?;
    let threads = block.iter().map(|&b| b as u64).product::<u64>();
    let blocks = grid.iter().map(|&g| g as u64).product::<u64>();
    if threads == 0 || threads > 1024 || blocks == 0 || block[2] > 64 || grid[1] > 65_535 || grid[2] > 65_535 {
        return Err(codes::INVALID_VALUE);
    }
    if k.static_shared + shared as usize > 48 * 1024 {
        return Err(codes::INVALID_VALUE);
    }
    if cooperative {
        let per_sm = device::blocks_per_sm(threads as c_int, (k.static_shared + shared as usize) as c_int);
        if blocks > (per_sm * device::sms()) as u64 {
            return Err(codes::COOPERATIVE_LAUNCH_TOO_LARGE);
        }
    }
    let (offsets, size) = k.param_layout();
    let mut buffer = vec![0u8; size];
    if !k.params.is_empty() && params.is_null() {
        return Err(codes::INVALID_VALUE);
    }
    for (i, (p, at)) in k.params.iter().zip(offsets).enumerate() {
        // SAFETY: cuLaunchKernel's contract: kernelParams[i] points to the
        // i-th argument, of the size the kernel declares.
        unsafe {
            let arg = *params.add(i);
            if arg.is_null() {
                return Err(codes::INVALID_VALUE);
            }
            std::ptr::copy_nonoverlapping(arg.cast::<u8>(), buffer.as_mut_ptr().add(at), p.size);
        }
    }
    let n = driver().launches.fetch_add(1, Ordering::Relaxed);
    let launch = Launch { grid, block, dynamic_shared: shared as usize, cooperative, seed: seed(n) };
    ok(s.enqueue(Op::Launch { module: f.module.clone(), kernel: f.kernel.clone(), launch, params: buffer }))
}

/// The interleaving seed of launch `n`: `CFG_EMU_SEED` (default 0) mixed with `n`.
fn seed(n: u64) -> u64 {
    let base: u64 = std::env::var("CFG_EMU_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut z = base ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^ (z >> 31)
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuLaunchKernel(
    function: Handle,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    stream: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    if !extra.is_null() {
        return codes::NOT_SUPPORTED; // the `extra` argument packing is not emulated
    }
    done(unsafe { launch(function, [gx, gy, gz], [bx, by, bz], shared, stream, params, false) })
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuLaunchCooperativeKernel(
    function: Handle,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    stream: Handle,
    params: *mut *mut c_void,
) -> CuResult {
    done(unsafe { launch(function, [gx, gy, gz], [bx, by, bz], shared, stream, params, true) })
}

// ---- errors ----

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(code: CuResult, text: *mut *const c_char) -> CuResult {
    match codes::describe(code) {
        Some((_, s)) => done(unsafe { put(text, s.as_ptr()) }),
        None => codes::INVALID_VALUE,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(code: CuResult, text: *mut *const c_char) -> CuResult {
    match codes::describe(code) {
        Some((n, _)) => done(unsafe { put(text, n.as_ptr()) }),
        None => codes::INVALID_VALUE,
    }
}
