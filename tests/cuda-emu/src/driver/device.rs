//! What an emulated device reports: an H100 (sm_90, 132 SMs), as many of them
//! as `CFG_EMU_DEVICES` says (default 1). `CFG_EMU_SMS` changes the number of
//! multiprocessors (tests use 2, so that grid-size limits are met by small,
//! quickly emulated shapes).

/// The devices' name.
pub const NAME: &str = "NVIDIA H100 80GB HBM3 (cuda-emu)";
/// Reported global memory.
pub const TOTAL_MEMORY: u64 = 80 << 30;
/// Streaming multiprocessors (132, or `CFG_EMU_SMS`).
pub fn sms() -> i32 {
    std::env::var("CFG_EMU_SMS").ok().and_then(|v| v.trim().parse().ok()).filter(|&n| n > 0).unwrap_or(132)
}
/// Registers per thread the occupancy calculation assumes (PTX has virtual
/// registers only; ptxas would decide the real count).
pub const REGISTERS_PER_THREAD: i32 = 64;
const THREADS_PER_SM: i32 = 2048;
const BLOCKS_PER_SM: i32 = 32;
const SHARED_PER_SM: i32 = 233_472;
const SHARED_PER_BLOCK: i32 = 49_152;
const REGISTERS_PER_SM: i32 = 65_536;

/// How many devices exist.
pub fn count() -> usize {
    std::env::var("CFG_EMU_DEVICES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(1)
}

/// `cuDeviceGetAttribute`; `None` for an attribute the stand-in does not know.
pub fn attribute(attr: i32) -> Option<i32> {
    Some(match attr {
        1 => 1024,                                                                  // max threads per block
        2 | 3 => 1024,                                                              // max block dim x, y
        4 => 64,                                                                    // max block dim z
        5 => i32::MAX,                                                              // max grid dim x
        6 | 7 => 65_535,                                                            // max grid dim y, z
        8 => SHARED_PER_BLOCK,                                                      // shared memory per block
        9 => 65_536,                                                                // constant memory
        10 => 32,                                                                   // warp size
        11 => i32::MAX,                                                             // max pitch
        12 => REGISTERS_PER_SM,                                                     // registers per block
        13 => 1_980_000,                                                            // clock rate (kHz)
        14 => 512,                                                                  // texture alignment
        15 | 31 | 41 | 78 | 79 | 80 | 83 | 86 | 89 | 90 | 95 | 99 | 102 | 115 => 1, // features present
        16 => sms(),                                                                // multiprocessors
        17 | 18 | 35 | 84 => 0, // exec timeout, integrated, tcc, multi-gpu board
        19 => 1,                // can map host memory
        20 => 0,                // compute mode default
        32 => 1,                // ECC
        33 => 0x18,             // PCI bus
        34 | 50 => 0,           // PCI device, domain
        36 => 2_619_000,        // memory clock (kHz)
        37 => 5120,             // bus width
        38 => 50 << 20,         // L2
        39 => THREADS_PER_SM,   // threads per SM
        40 => 3,                // async engines
        75 => 9,                // compute capability major
        76 => 0,                // minor
        81 => SHARED_PER_SM,    // shared per SM
        82 => REGISTERS_PER_SM, // registers per SM
        97 => 232_448,          // shared per block opt-in
        106 => BLOCKS_PER_SM,   // blocks per SM
        111 => 1024,            // reserved shared per block
        _ => return None,
    })
}

/// Blocks of `threads` threads using `shared` bytes of shared memory that fit
/// on one multiprocessor at once.
pub fn blocks_per_sm(threads: i32, shared: i32) -> i32 {
    if threads <= 0 {
        return 0;
    }
    let by_threads = THREADS_PER_SM / threads;
    let by_registers = REGISTERS_PER_SM / (REGISTERS_PER_THREAD * threads);
    let by_shared = if shared > 0 { SHARED_PER_SM / (shared + 1024) } else { BLOCKS_PER_SM };
    by_threads.min(by_registers).min(by_shared).clamp(0, BLOCKS_PER_SM)
}
