//! The driver API of the stand-in, called as cudarc calls it (through the
//! exported functions): broken CUDA C kernels compiled by NVRTC are caught
//! with the right CUresult, memory errors on the host side too.

use cuda_emu::driver::api::*;
use cuda_emu::driver::codes;
use std::ffi::{c_void, CString};

const BROKEN: &str = r#"
extern "C" __global__ void out_of_bounds(float* out, int n) { out[threadIdx.x + n] = 1.0f; }

extern "C" __global__ void reverse(float* out, int sync) {
    __shared__ float sh[64];
    sh[threadIdx.x] = (float)threadIdx.x;
    if (sync) __syncthreads();
    out[threadIdx.x] = sh[63 - threadIdx.x];
}

extern "C" __global__ void grid_barrier(unsigned* counter, unsigned* out) {
    if (threadIdx.x == 0) {
        atomicAdd(counter, 1u);
        while (*(volatile unsigned*)counter < gridDim.x) {}
    }
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = 1u;
}
"#;

/// The PTX of `BROKEN`, or None (printed) without NVRTC.
fn broken_ptx() -> Option<CString> {
    if !cfg_runtime::cuda::kernels::nvrtc_available() {
        assert!(!cfg_runtime::cuda::kernels::nvrtc_required(), "CFG_REQUIRE_NVRTC=1 but libnvrtc cannot be loaded");
        eprintln!("SKIPPED: libnvrtc not found");
        return None;
    }
    let opts = cudarc::nvrtc::CompileOptions { options: vec!["--gpu-architecture=sm_90".into()], ..Default::default() };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(BROKEN, opts).expect("compiles");
    Some(CString::new(ptx.to_src()).unwrap())
}

/// Makes device 0's primary context current on this thread.
fn context() {
    assert_eq!(cuInit(0), codes::SUCCESS);
    let mut ctx = std::ptr::null_mut();
    assert_eq!(unsafe { cuDevicePrimaryCtxRetain(&mut ctx, 0) }, codes::SUCCESS);
    assert_eq!(cuCtxSetCurrent(ctx), codes::SUCCESS);
}

fn alloc(bytes: usize) -> u64 {
    let mut p = 0u64;
    assert_eq!(unsafe { cuMemAlloc_v2(&mut p, bytes) }, codes::SUCCESS);
    assert_eq!(cuMemsetD8_v2(p, 0, bytes), codes::SUCCESS);
    p
}

fn function(module: *mut c_void, name: &str) -> *mut c_void {
    let mut f = std::ptr::null_mut();
    let name = CString::new(name).unwrap();
    assert_eq!(unsafe { cuModuleGetFunction(&mut f, module, name.as_ptr()) }, codes::SUCCESS);
    f
}

/// Launches `f` on the default stream with `args` (each a pointer to its value).
fn launch(f: *mut c_void, grid: u32, block: u32, cooperative: bool, args: &mut [*mut c_void]) -> u32 {
    let (s, p) = (std::ptr::null_mut(), args.as_mut_ptr());
    let r = unsafe {
        if cooperative {
            cuLaunchCooperativeKernel(f, grid, 1, 1, block, 1, 1, 0, s, p)
        } else {
            cuLaunchKernel(f, grid, 1, 1, block, 1, 1, 0, s, p, std::ptr::null_mut())
        }
    };
    if r != codes::SUCCESS {
        return r;
    }
    cuStreamSynchronize(s)
}

fn arg<T>(v: &mut T) -> *mut c_void {
    (v as *mut T).cast()
}

#[test]
fn broken_kernels_fail_their_launch_with_the_right_code() {
    let Some(ptx) = broken_ptx() else { return };
    context();
    let mut module = std::ptr::null_mut();
    assert_eq!(unsafe { cuModuleLoadData(&mut module, ptx.as_ptr().cast()) }, codes::SUCCESS);

    // An out-of-bounds write: 32 floats, written from index 16.
    let (mut out, mut n) = (alloc(32 * 4), 16i32);
    let f = function(module, "out_of_bounds");
    assert_eq!(launch(f, 1, 32, false, &mut [arg(&mut out), arg(&mut n)]), codes::ILLEGAL_ADDRESS);
    n = 0;
    assert_eq!(launch(f, 1, 32, false, &mut [arg(&mut out), arg(&mut n)]), codes::SUCCESS, "in bounds");

    // A shared value read from another thread without __syncthreads: a race.
    let (mut out, f) = (alloc(64 * 4), function(module, "reverse"));
    let mut sync = 1i32;
    assert_eq!(launch(f, 1, 64, false, &mut [arg(&mut out), arg(&mut sync)]), codes::SUCCESS);
    let mut host = [0f32; 64];
    assert_eq!(unsafe { cuMemcpyDtoH_v2(host.as_mut_ptr().cast(), out, 256) }, codes::SUCCESS);
    assert!(host.iter().enumerate().all(|(i, &x)| x == (63 - i) as f32), "{host:?}");
    sync = 0;
    assert_eq!(launch(f, 1, 64, false, &mut [arg(&mut out), arg(&mut sync)]), codes::ILLEGAL_ADDRESS);

    // A grid barrier: fine in a cooperative launch of resident blocks; more
    // blocks than fit at once are refused; a plain launch never gets past it.
    let f = function(module, "grid_barrier");
    let mut per_sm = 0;
    let r = unsafe { cuOccupancyMaxActiveBlocksPerMultiprocessor(&mut per_sm, f, 128, 0) };
    assert_eq!(r, codes::SUCCESS);
    let resident = per_sm as u32 * cuda_emu::driver::device::sms() as u32;
    let (mut counter, mut out) = (alloc(4), alloc(4 * 128 * 4));
    assert_eq!(launch(f, 4, 128, true, &mut [arg(&mut counter), arg(&mut out)]), codes::SUCCESS);
    let too_many = resident + 1;
    let mut big = alloc(too_many as usize * 128 * 4);
    let r = launch(f, too_many, 128, true, &mut [arg(&mut counter), arg(&mut big)]);
    assert_eq!(r, codes::COOPERATIVE_LAUNCH_TOO_LARGE);
    let mut counter = alloc(4);
    assert_eq!(launch(f, 4, 128, false, &mut [arg(&mut counter), arg(&mut out)]), codes::LAUNCH_TIMEOUT);
}

#[test]
fn host_side_memory_errors_are_caught() {
    context();
    let p = alloc(64);
    let mut host = [0u8; 64];
    assert_eq!(unsafe { cuMemcpyDtoH_v2(host.as_mut_ptr().cast(), p + 8, 64) }, codes::ILLEGAL_ADDRESS);
    assert_eq!(cuMemFree_v2(p), codes::SUCCESS);
    assert_eq!(unsafe { cuMemcpyDtoH_v2(host.as_mut_ptr().cast(), p, 4) }, codes::ILLEGAL_ADDRESS, "after free");
    assert_eq!(cuMemFree_v2(p), codes::INVALID_VALUE, "double free");
    let mut text = std::ptr::null();
    assert_eq!(unsafe { cuGetErrorString(codes::ILLEGAL_ADDRESS, &mut text) }, codes::SUCCESS);
    let text = unsafe { std::ffi::CStr::from_ptr(text) }.to_str().unwrap();
    assert_eq!(text, "an illegal memory access was encountered");
}

#[test]
fn the_device_reports_an_h100() {
    context();
    let mut v = 0;
    for (attr, want) in [(75, 9), (76, 0), (10, 32), (95, 1), (115, 1)] {
        assert_eq!(unsafe { cuDeviceGetAttribute(&mut v, attr, 0) }, codes::SUCCESS);
        assert_eq!(v, want, "attribute {attr}");
    }
    assert_eq!(unsafe { cuDeviceGetAttribute(&mut v, 16, 0) }, codes::SUCCESS);
    assert_eq!(v, cuda_emu::driver::device::sms());
    assert_eq!(unsafe { cuDeviceGetAttribute(&mut v, 0, 0) }, codes::INVALID_VALUE, "not an attribute");
    let mut dev = 0;
    let beyond = cuda_emu::driver::device::count() as i32;
    assert_eq!(unsafe { cuDeviceGet(&mut dev, beyond) }, codes::INVALID_DEVICE);
}
