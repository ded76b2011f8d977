//! Typed launches of the kernels, one function per kernel family.
//!
//! Public items: [`copy_u16`] and [`poison`]; the rest serve the backend.

use super::device::{Buffer, Device};
use super::error::CudaError;
use super::kernels;
use super::kernels::KernelName;
use super::memory::DeviceMem;
use super::params::{Dots, FactorArgs, Forms, GroupArgs, Groups, Outs, RenormArgs, MAX_FORMS};
use cfg_core::reduce::{LANES, SEGMENT};
use cfg_core::DType;
use cudarc::driver::{CudaFunction, CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use std::ffi::c_void;

pub(crate) fn driver(e: cudarc::driver::DriverError) -> CudaError {
    CudaError::driver("kernel launch", e)
}

/// A kernel parameter: the address of a plain value, which `cuLaunchKernel`
/// copies. `Copy` keeps device buffers out: they go as their `u64` address.
pub(crate) fn param<T: Copy + DeviceRepr>(x: &T) -> *mut c_void {
    (x as *const T).cast_mut().cast()
}

/// Launches `f` on the device's stream with `params`, without the heap
/// allocation of cudarc's launch builder (the per-step launches use this).
///
/// # Safety
/// `params` must match the kernel's parameter list, and every pointer they
/// carry must address enough device memory for the launch.
pub(crate) unsafe fn launch(
    dev: &Device,
    f: &CudaFunction,
    cfg: LaunchConfig,
    params: &mut [*mut c_void],
) -> Result<(), CudaError> {
    dev.context().bind_to_thread().map_err(driver)?;
    let stream = dev.stream().cu_stream();
    // SAFETY: the caller's contract; the function and stream belong to this device.
    unsafe {
        cudarc::driver::result::launch_kernel(
            f.cu_function(),
            cfg.grid_dim,
            cfg.block_dim,
            cfg.shared_mem_bytes,
            stream,
            params,
        )
    }
    .map_err(driver)
}

fn aligned<'a>(addrs: impl IntoIterator<Item = &'a u64>) -> i32 {
    i32::from(addrs.into_iter().all(|a| a % 16 == 0))
}

pub(crate) fn blocks(n: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (n.max(1) as u32, 1, 1), block_dim: (LANES as u32, 1, 1), shared_mem_bytes: 0 }
}

/// `outs[f] = form f` over `forms` (its `x` set), `n` elements, `input` → `output` dtype.
pub(crate) fn combine(
    dev: &Device,
    forms: &Forms,
    input: DType,
    outs: &[u64],
    output: DType,
    n: usize,
) -> Result<(), CudaError> {
    debug_assert!(outs.len() == forms.forms as usize && outs.len() <= MAX_FORMS);
    let mut o = Outs::default();
    o.o[..outs.len()].copy_from_slice(outs);
    let vec = aligned(forms.x[..forms.branches as usize].iter().chain(outs));
    let kind = if outs.len() == 1 { "combine1" } else { "combine" };
    let name = KernelName::of(format_args!("{kind}_{}_{}", input.name(), output.name()));
    let f = dev.function(&kernels::COMBINE, name.as_str())?;
    let n64 = n as i64;
    let cfg = dev.grid(n.div_ceil(8));
    // SAFETY: the argument list matches `combine[1]_<in>_<out>(Forms, Outs, i64, int)`
    // (combine1 reads form 0 only, and `outs` then holds one form);
    // every pointer in `forms`/`o` addresses at least `n` elements of its dtype.
    unsafe { launch(dev, &f, cfg, &mut [param(forms), param(&o), param(&n64), param(&vec)]) }
}

/// Fused combine + per-token renorm (width ≤ SEGMENT): form 0 is g, form 1 is r.
pub(crate) fn renorm_token(
    dev: &Device,
    forms: &Forms,
    dtype: DType,
    out: &Buffer,
    args: &RenormArgs,
) -> Result<(), CudaError> {
    let team = if args.width <= 1024 { "warp" } else { "block" };
    let per_block = if team == "warp" { 8 } else { 1 };
    let f = dev.function(
        &kernels::RENORM_TOKEN,
        KernelName::of(format_args!("renorm_token_{team}_{}_{}", dtype.name(), dtype.name())).as_str(),
    )?;
    let o = out.addr(dev);
    // SAFETY: matches `renorm_token_*(Forms, O*, RenormArgs)`; `out` holds tokens × width elements.
    let cfg = blocks((args.tokens as usize).div_ceil(per_block));
    unsafe { launch(dev, &f, cfg, &mut [param(forms), param(&o), param(args)]) }
}

/// Scratch memory of the fused and generic statistics.
pub(crate) struct Scratch {
    pub segs: DeviceMem,
    pub factors: DeviceMem,
    pub sync: DeviceMem,
}

impl Scratch {
    pub fn new(dev: &Device, groups: usize, nseg: usize, sums: usize) -> Result<Scratch, CudaError> {
        Ok(Scratch {
            segs: dev.zeros_u8(groups * nseg * sums * 8)?,
            factors: dev.zeros_u8(groups * 8)?,
            sync: dev.zeros_u8(8)?,
        })
    }
}

/// Fused combine + group rescale (std rescale, norm cap, renorm) over contiguous
/// groups; one cooperative pass when every segment's block fits on the device
/// at once and `allow_coop`, else two passes. Returns the number of passes.
#[allow(clippy::too_many_arguments)] // one launch's full description; a struct would only rename them
pub(crate) fn group_rescale(
    dev: &Device,
    forms: &Forms,
    dtype: DType,
    out: &Buffer,
    groups: usize,
    len: usize,
    factor: FactorArgs,
    allow_coop: bool,
) -> Result<usize, CudaError> {
    if groups * len == 0 {
        return Ok(0); // nothing to write; one launched block would read past the buffers
    }
    let nseg = len.div_ceil(SEGMENT).max(1);
    let args = GroupArgs {
        f: FactorArgs { len: len as i64, ..factor },
        groups: groups as i64,
        len: len as i64,
        nseg: nseg as i64,
        n: (groups * len) as i64,
    };
    let scratch = Scratch::new(dev, groups, nseg, 4)?;
    let (segs, factors, sync) = (dev.addr(&scratch.segs), dev.addr(&scratch.factors), dev.addr(&scratch.sync));
    let o = out.addr(dev);
    let total = groups * nseg;
    let d = dtype.name();
    if allow_coop {
        let coop = dev.function(&kernels::RESCALE, KernelName::of(format_args!("group_coop_{d}_{d}")).as_str())?;
        if total <= resident_blocks(dev, &coop)? {
            // SAFETY: matches `group_coop_*(Forms, GroupArgs, float*, double*, u32*, O*)`;
            // scratch sizes follow GroupArgs; every block is resident (checked above),
            // which the grid barrier needs; the launch is cooperative.
            unsafe {
                dev.stream()
                    .launch_builder(&coop)
                    .arg(forms)
                    .arg(&args)
                    .arg(&segs)
                    .arg(&factors)
                    .arg(&sync)
                    .arg(&o)
                    .launch_cooperative(blocks(total))
            }
            .map_err(driver)?;
            drop_after_sync(dev, scratch)?;
            return Ok(1);
        }
    }
    let stats = dev.function(&kernels::RESCALE, KernelName::of(format_args!("group_stats_{d}")).as_str())?;
    // SAFETY: matches `group_stats_*(Forms, GroupArgs, float*, double*, u32*)`.
    unsafe {
        launch(
            dev,
            &stats,
            blocks(total),
            &mut [param(forms), param(&args), param(&segs), param(&factors), param(&sync)],
        )
    }?;
    let apply = dev.function(&kernels::RESCALE, KernelName::of(format_args!("group_apply_{d}_{d}")).as_str())?;
    let vec = aligned(forms.x[..forms.branches as usize].iter().chain([&o]));
    // SAFETY: matches `group_apply_*(Forms, GroupArgs, const double*, O*, int)`.
    let cfg = dev.grid((groups * len).div_ceil(8));
    unsafe { launch(dev, &apply, cfg, &mut [param(forms), param(&args), param(&factors), param(&o), param(&vec)]) }?;
    drop_after_sync(dev, scratch)?;
    Ok(2)
}

/// How many blocks of `f` can be resident on the device at once (the largest
/// cooperative grid).
fn resident_blocks(dev: &Device, f: &CudaFunction) -> Result<usize, CudaError> {
    let per_sm = f.occupancy_max_active_blocks_per_multiprocessor(LANES as u32, 0, None).map_err(driver)?;
    Ok(per_sm as usize * dev.sms() as usize)
}

/// The passes over memory a fused rescale of `groups` groups of `len`
/// elements of `dtype` takes on this device: 1 where every segment's block
/// fits on chip at once (cooperative launch), else 2.
pub fn rescale_passes(dev: &Device, dtype: DType, groups: usize, len: usize) -> Result<usize, CudaError> {
    let total = groups * len.div_ceil(SEGMENT).max(1);
    let d = dtype.name();
    let coop = dev.function(&kernels::RESCALE, KernelName::of(format_args!("group_coop_{d}_{d}")).as_str())?;
    Ok(if total <= resident_blocks(dev, &coop)? { 1 } else { 2 })
}

/// Scratch is freed only once the kernels that use it are done.
fn drop_after_sync(dev: &Device, scratch: Scratch) -> Result<(), CudaError> {
    // With the stream-ordered allocator cudarc frees on the stream, after the
    // launches; otherwise wait for them first.
    if !dev.context().has_async_alloc() {
        dev.sync()?;
    }
    drop(scratch);
    Ok(())
}

/// `out = u + scale·(c − u)` (`original`: `c + scale·(c − u)`) over `n` f32
/// values: APG-Mix's CFG phase and an FDG level without a parallel weight.
pub(crate) fn cfg_delta(
    dev: &Device,
    (c, u): (u64, u64),
    scale: f32,
    original: bool,
    out: u64,
    n: usize,
) -> Result<(), CudaError> {
    let (orig, n64) = (i32::from(original), n as i64);
    let k = dev.function(&kernels::GUIDANCE, "cfg_delta")?;
    // SAFETY: matches `cfg_delta(c, u, float, int, float*, i64)`, all n floats.
    unsafe {
        launch(dev, &k, dev.grid(n), &mut [param(&c), param(&u), param(&scale), param(&orig), param(&out), param(&n64)])
    }
}

/// APG's last two launches, shared by `Apg` and FDG's parallel weight: the
/// per-group projection coefficient of `d` on `c` (f64 lanes), then
/// `out = apg_combine(c, u, d, coef)` with `eta`, `scale` and `original`
/// (every address of `n` f32 values). Waits for the stream (the coefficients
/// are freed on return).
#[allow(clippy::too_many_arguments)]
pub(crate) fn apg_combine(
    dev: &Device,
    (c, u, d): (u64, u64, u64),
    groups: &Groups,
    eta: f32,
    scale: f32,
    original: bool,
    out: u64,
    n: usize,
) -> Result<(), CudaError> {
    let f = FactorArgs { kind: super::params::kind::APG_PROJ, ..Default::default() };
    let coef = group_factors(dev, d, c, groups, &[], true, f)?;
    let (co, orig, n64) = (dev.addr(&coef), i32::from(original), n as i64);
    let k = dev.function(&kernels::GUIDANCE, "apg_combine")?;
    // SAFETY: matches `apg_combine(c, u, d, coef, Groups, float, float, int, float*, i64)`;
    // coef holds one double per group.
    unsafe {
        launch(
            dev,
            &k,
            dev.grid(n),
            &mut [
                param(&c),
                param(&u),
                param(&d),
                param(&co),
                param(groups),
                param(&eta),
                param(&scale),
                param(&orig),
                param(&out),
                param(&n64),
            ],
        )
    }?;
    dev.sync()
}

/// Per-group factors of `kind` from canonical dots of f32 values `x`, `y`.
/// Returns the factors (one f64 per group) in device memory.
pub(crate) fn group_factors(
    dev: &Device,
    x: u64,
    y: u64,
    groups: &Groups,
    dots: &[(i32, i32)],
    f64_lanes: bool,
    factor: FactorArgs,
) -> Result<DeviceMem, CudaError> {
    let count = groups.count as usize;
    if count == 0 {
        return dev.zeros_u8(0); // no group; one launched block would read past the buffers
    }
    let nseg = (groups.len as usize).div_ceil(SEGMENT).max(1);
    let segs = dev.zeros_u8(count * nseg * 4 * 8)?;
    let factors = dev.zeros_u8(count * 8)?;
    let (s, fa) = (dev.addr(&segs), dev.addr(&factors));
    let nseg64 = nseg as i64;
    if f64_lanes {
        let k = dev.function(&kernels::STATS, "seg_dots_f64")?;
        // SAFETY: matches `seg_dots_f64(const float*, const float*, Groups, i64, double*)`.
        unsafe {
            launch(dev, &k, blocks(count * nseg), &mut [param(&x), param(&y), param(groups), param(&nseg64), param(&s)])
        }?;
    } else {
        let k = dev.function(&kernels::STATS, "seg_dots_f32")?;
        let d = Dots::of(dots);
        // SAFETY: matches `seg_dots_f32(const float*, const float*, Groups, Dots, i64, float*)`.
        unsafe {
            launch(
                dev,
                &k,
                blocks(count * nseg),
                &mut [param(&x), param(&y), param(groups), param(&d), param(&nseg64), param(&s)],
            )
        }?;
    }
    let k = dev.function(&kernels::STATS, "finalize")?;
    let (is64, count64) = (i32::from(f64_lanes), count as i64);
    let a = FactorArgs { len: groups.len, ..factor };
    // SAFETY: matches `finalize(const void*, int, i64, i64, FactorArgs, double*)`.
    // One thread per group, no grid-stride loop: cover every group.
    let cfg = blocks(count.div_ceil(LANES));
    unsafe {
        launch(dev, &k, cfg, &mut [param(&s), param(&is64), param(&count64), param(&nseg64), param(&a), param(&fa)])
    }?;
    if !dev.context().has_async_alloc() {
        dev.sync()?;
    }
    drop(segs);
    Ok(factors)
}

/// `out = x · factor[group]` (f32 in, `out.dtype` out).
pub(crate) fn scale_groups(
    dev: &Device,
    x: u64,
    factors: &CudaSlice<u8>,
    groups: &Groups,
    out: &Buffer,
) -> Result<(), CudaError> {
    let k =
        dev.function(&kernels::STATS, KernelName::of(format_args!("scale_groups_{}", out.dtype.name())).as_str())?;
    let (fa, o, n) = (dev.addr(factors), out.addr(dev), out.len as i64);
    // SAFETY: matches `scale_groups_*(const float*, const double*, Groups, O*, i64)`.
    unsafe { launch(dev, &k, dev.grid(out.len), &mut [param(&x), param(&fa), param(groups), param(&o), param(&n)]) }?;
    Ok(())
}

/// Copies `src` to `dst` (16-bit elements) with the combine's access pattern.
pub fn copy_u16(dev: &Device, src: &Buffer, dst: &Buffer) -> Result<(), CudaError> {
    let k = dev.function(&kernels::COPY, "copy_u16")?;
    let (s, d) = (src.addr(dev), dst.addr(dev));
    let n = (src.len * src.dtype.size() / 2).min(dst.len * dst.dtype.size() / 2);
    let (n64, vec) = (n as i64, aligned(&[s, d]));
    // SAFETY: matches `copy_u16(const u16*, u16*, i64, int)`; both hold n 16-bit words.
    unsafe { launch(dev, &k, dev.grid(n.div_ceil(8)), &mut [param(&s), param(&d), param(&n64), param(&vec)]) }?;
    Ok(())
}

/// Fills a buffer with the 32-bit `pattern` (NaN for f32; poison before a run);
/// an odd 16-bit tail gets the pattern's low half.
pub fn poison(dev: &Device, b: &Buffer, pattern: u32) -> Result<(), CudaError> {
    let bytes = b.len * b.dtype.size();
    let (words, a) = ((bytes / 4) as i64, b.addr(dev));
    let k = dev.function(&kernels::COPY, "poison_u32")?;
    // SAFETY: matches `poison_u32(u32*, i64, u32)`; the buffer holds `words` words.
    unsafe { launch(dev, &k, dev.grid(words as usize), &mut [param(&a), param(&words), param(&pattern)]) }?;
    if bytes % 4 == 2 {
        let k = dev.function(&kernels::COPY, "poison_u16")?;
        let (tail, one, half) = (a + 4 * words as u64, 1i64, pattern as u16);
        // SAFETY: matches `poison_u16(u16*, i64, u16)`; the last 16-bit word of the buffer.
        unsafe { launch(dev, &k, dev.grid(1), &mut [param(&tail), param(&one), param(&half)]) }?;
    }
    Ok(())
}

/// Keeps the stream busy for `ns` nanoseconds, so that work queued meanwhile
/// starts back to back (benchmarks time the GPU, not the host).
pub(crate) fn hold_stream(dev: &Device, ns: u64) -> Result<(), CudaError> {
    let k = dev.function(&kernels::COPY, "hold_ns")?;
    let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: matches `hold_ns(u64)`; touches no memory.
    unsafe { launch(dev, &k, one, &mut [param(&ns)]) }?;
    Ok(())
}
