//! The kernel files and their run-time compilation with NVRTC.
//!
//! Each module is `common.cu` (and `factors.cu` where needed) followed by one
//! kernel file, compiled for the device's own architecture. PTX is cached per
//! (source hash, arch) for the life of the process, and on disk between
//! processes (`ptx_cache.rs`: `$CFG_PTX_CACHE`, else `~/.cache/cfg/ptx`).

use super::error::CudaError;
use super::ptx_cache;
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The prelude every kernel file is compiled after (types, conversions, fma).
pub const COMMON: &str = include_str!("../../kernels/common.cu");
const FACTORS: &str = include_str!("../../kernels/factors.cu");
/// `exp`, `log`, `sin`/`cos` from exactly rounded operations, the twin of
/// `cfg_core::portable_math` (compiled after [`COMMON`]): CPU bits on the GPU.
pub const PORTABLE_MATH: &str = include_str!("../../kernels/portable_math.cu");

/// One compiled unit: a name and the files it concatenates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelModule {
    /// The kernel file's stem (`combine` for `kernels/combine.cu`).
    pub name: &'static str,
    parts: &'static [&'static str],
    /// The kernels it defines that the backend loads.
    pub functions: &'static [&'static str],
}

impl KernelModule {
    /// A module of `parts` (concatenated in order) defining `functions`; for
    /// kernels outside this crate (a model's own). `name` keys the device's
    /// module cache, so it must be unique in the process.
    pub const fn new(
        name: &'static str,
        parts: &'static [&'static str],
        functions: &'static [&'static str],
    ) -> KernelModule {
        KernelModule { name, parts, functions }
    }

    /// The full source NVRTC compiles.
    pub fn source(&self) -> String {
        self.parts.concat()
    }
}

macro_rules! io_names {
    ($($p:literal),+) => {
        &[$(
            concat!($p, "_f32_f32"),
            concat!($p, "_f32_f16"),
            concat!($p, "_f32_bf16"),
            concat!($p, "_f16_f32"),
            concat!($p, "_f16_f16"),
            concat!($p, "_bf16_f32"),
            concat!($p, "_bf16_bf16"),
        )+]
    };
}

/// N-way weighted linear combine.
pub const COMBINE: KernelModule = KernelModule {
    name: "combine",
    parts: &[COMMON, include_str!("../../kernels/combine.cu")],
    functions: io_names!("combine", "combine1"),
};
/// Fused combine + per-token renorm.
pub const RENORM_TOKEN: KernelModule = KernelModule {
    name: "renorm_token",
    parts: &[COMMON, FACTORS, include_str!("../../kernels/renorm_token.cu")],
    functions: &[
        "renorm_token_warp_f32_f32",
        "renorm_token_block_f32_f32",
        "renorm_token_warp_f16_f16",
        "renorm_token_block_f16_f16",
        "renorm_token_warp_bf16_bf16",
        "renorm_token_block_bf16_bf16",
    ],
};
/// Generic statistics: segment dots, factors, scaling.
pub const STATS: KernelModule = KernelModule {
    name: "stats",
    parts: &[COMMON, FACTORS, include_str!("../../kernels/stats.cu")],
    functions: &[
        "seg_dots_f32",
        "seg_dots_f64",
        "finalize",
        "scale_groups_f32",
        "scale_groups_f16",
        "scale_groups_bf16",
    ],
};
/// Fused combine + std rescale / norm cap / renorm per sample or tensor.
pub const RESCALE: KernelModule = KernelModule {
    name: "rescale",
    parts: &[COMMON, FACTORS, include_str!("../../kernels/rescale.cu")],
    functions: &[
        "group_stats_f32",
        "group_stats_f16",
        "group_stats_bf16",
        "group_apply_f32_f32",
        "group_apply_f16_f16",
        "group_apply_bf16_bf16",
        "group_coop_f32_f32",
        "group_coop_f16_f16",
        "group_coop_bf16_bf16",
    ],
};
/// Zero-star, magnitude-aware and APG element-wise steps.
pub const GUIDANCE: KernelModule = KernelModule {
    name: "guidance",
    parts: &[COMMON, include_str!("../../kernels/guidance.cu")],
    functions: &[
        "zero_star",
        "magnitude_aware",
        "apg_running",
        "apg_combine",
        "tcfg",
        "cfg_delta",
        "reject",
        "chunked",
    ],
};
/// FDG's pyramid stages (blur, resize, gather/scatter between layouts).
pub const FDG: KernelModule = KernelModule {
    name: "fdg",
    parts: &[COMMON, include_str!("../../kernels/fdg.cu")],
    functions: &[
        "fdg_gather",
        "fdg_scatter",
        "fdg_blur_rows",
        "fdg_blur_cols",
        "fdg_down",
        "fdg_upsample",
        "fdg_sub",
        "fdg_add",
    ],
};
/// Copy (bandwidth reference) and poison fill.
pub const COPY: KernelModule = KernelModule {
    name: "copy",
    parts: &[COMMON, include_str!("../../kernels/copy.cu")],
    functions: &["copy_u16", "hold_ns", "poison_u16", "poison_u32"],
};
/// Philox noise.
pub const PHILOX: KernelModule = KernelModule {
    name: "philox",
    parts: &[COMMON, PORTABLE_MATH, include_str!("../../kernels/philox.cu")],
    functions: &["philox_u32", "philox_normal_f32"],
};

/// Every kernel module, in a fixed order.
pub const ALL: &[KernelModule] = &[COMBINE, RENORM_TOKEN, STATS, RESCALE, GUIDANCE, FDG, COPY, PHILOX];

/// Whether the environment demands NVRTC (`CFG_REQUIRE_NVRTC=1`, set by
/// `scripts/test.sh`): the kernel compile tests then fail instead of skipping.
pub fn nvrtc_required() -> bool {
    std::env::var_os("CFG_REQUIRE_NVRTC").is_some_and(|v| v == "1")
}

/// Whether libnvrtc can be loaded (without it cudarc would panic).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The NVRTC version `(major, minor)`, or an error when NVRTC is absent.
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; the pointers are valid for the call.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if status != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::Driver { context: "nvrtcVersion", message: format!("{status:?}") });
    }
    Ok((major, minor))
}

type Key = ([u8; 32], String);

fn cache() -> &'static Mutex<HashMap<Key, Arc<Ptx>>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Ptx>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Compiles `module` to PTX for `arch` (e.g. `sm_90`), or returns the PTX
/// compiled before: in this process, or in an earlier one (kept on disk by `ptx_cache`).
pub fn compile(module: &KernelModule, arch: &str) -> Result<Arc<Ptx>, CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::NoNvrtc);
    }
    let source = module.source();
    let key: Key = (Sha256::digest(source.as_bytes()).into(), arch.to_string());
    if let Some(ptx) = cache().lock().map_err(|_| poisoned())?.get(&key) {
        return Ok(ptx.clone());
    }
    let opts = CompileOptions {
        // Every fma is explicit; the compiler must not contract a*b+c on its own.
        fmad: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        ftz: Some(false),
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some(format!("{}.cu", module.name)),
        ..Default::default()
    };
    let disk = ptx_cache::dir().map(|dir| (dir, disk_digest(&source, &opts)));
    let kept = disk.as_ref().and_then(|(dir, digest)| ptx_cache::load(dir, digest));
    let ptx = match kept.filter(|text| defines_every_function(module, text)) {
        Some(text) => Ptx::from_src(text),
        None => {
            let ptx =
                cudarc::nvrtc::compile_ptx_with_opts(&source, opts).map_err(|e| compile_error(module, arch, e))?;
            if let Some((dir, digest)) = &disk {
                ptx_cache::store(dir, digest, &ptx.to_src());
            }
            ptx
        }
    };
    let ptx = Arc::new(ptx);
    cache().lock().map_err(|_| poisoned())?.insert(key, ptx.clone());
    Ok(ptx)
}

/// What the PTX on disk is named by: everything NVRTC's output depends on
/// (every compile option, through its `Debug` form, so none can be forgotten).
fn disk_digest(source: &str, opts: &CompileOptions) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(format!("cfg ptx v1\0{:?}\0{opts:?}\0", nvrtc_version().ok()).as_bytes());
    h.update(source.as_bytes());
    h.finalize().into()
}

/// Whether `ptx` has an entry for every kernel of `module` (a file that was
/// cut short, or is not PTX at all, is compiled again).
fn defines_every_function(module: &KernelModule, ptx: &str) -> bool {
    module.functions.iter().all(|f| ptx.contains(&format!(".entry {f}(")))
}

fn compile_error(module: &KernelModule, arch: &str, e: CompileError) -> CudaError {
    let log = match e {
        CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
        other => format!("{other:?}"),
    };
    CudaError::Compile { module: module.name.to_string(), arch: arch.to_string(), log }
}

fn poisoned() -> CudaError {
    CudaError::Unsupported("the PTX cache lock was poisoned by a panic".into())
}

/// A kernel's name (`combine1_bf16_f32`) written on the stack: launches look
/// their kernel up by name every step, and a `format!` would allocate.
pub(crate) struct KernelName {
    buf: [u8; 64],
    len: usize,
}

impl KernelName {
    /// The name `args` formats to (cut at 64 bytes; every name is shorter).
    pub(crate) fn of(args: std::fmt::Arguments<'_>) -> KernelName {
        let mut name = KernelName { buf: [0; 64], len: 0 };
        let _ = std::fmt::Write::write_fmt(&mut name, args);
        name
    }

    /// The name.
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for KernelName {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_ptx_missing_a_kernel_is_compiled_again() {
        let whole = ".visible .entry copy_u16(\n.visible .entry hold_ns(\n.visible .entry poison_u16(\n.visible .entry poison_u32(\n";
        assert!(defines_every_function(&COPY, whole));
        assert!(!defines_every_function(&COPY, &whole[..whole.len() / 2]));
        assert!(!defines_every_function(&COPY, "not ptx"));
    }

    #[test]
    fn the_disk_name_changes_with_the_source_and_the_options() {
        let opts = |arch: &str, fmad| CompileOptions {
            fmad: Some(fmad),
            options: vec![format!("--gpu-architecture={arch}")],
            ..Default::default()
        };
        let base = disk_digest("a", &opts("sm_90", false));
        assert_eq!(base, disk_digest("a", &opts("sm_90", false)));
        assert_ne!(base, disk_digest("b", &opts("sm_90", false)));
        assert_ne!(base, disk_digest("a", &opts("sm_80", false)));
        assert_ne!(base, disk_digest("a", &opts("sm_90", true)));
    }
}
