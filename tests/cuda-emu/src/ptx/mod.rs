//! The PTX interpreter: parses the PTX text NVRTC emits and executes kernels
//! on the CPU, one emulated thread at a time, with checked memory.
//!
//! `parse` splits the text, `load` builds a module, `decode` turns each
//! function into instructions with resolved operands (`instr`), `exec` runs
//! one thread, `schedule` interleaves threads and blocks (seeded) and detects
//! deadlocks, `sanitize` finds shared-memory races, `float` holds the IEEE
//! rules (NaN results, half conversions).

use crate::memory::Memory;
use std::collections::HashMap;

mod decode;
mod exec;
mod float;
mod instr;
mod load;
mod parse;
mod sanitize;
mod schedule;

/// Generic-address window of shared memory (the block's shared offset is added).
pub const SHARED_BASE: u64 = 0x1000_0000_0000;
/// Generic-address window of local memory (the thread's local offset is added).
pub const LOCAL_BASE: u64 = 0x2000_0000_0000;
/// Generic-address window of the kernel parameter buffer.
pub const PARAM_BASE: u64 = 0x3000_0000_0000;
/// Size of each window.
pub const WINDOW: u64 = 0x1000_0000_0000;

/// A parsed module: its kernels and its module-scope variables.
#[derive(Debug)]
pub struct Module {
    funcs: Vec<decode::Func>,
    kernels: Vec<Kernel>,
    globals: HashMap<String, (u64, usize)>,
}

/// One `.entry` of a module.
#[derive(Debug)]
pub struct Kernel {
    /// The entry's name.
    pub name: String,
    /// Its parameters, in order.
    pub params: Vec<ParamDecl>,
    /// Bytes of `.shared` memory the kernel declares statically.
    pub static_shared: usize,
    /// Bytes of `.local` memory per thread.
    pub local_bytes: usize,
    /// Registers declared (a stand-in for the hardware count).
    pub registers: usize,
    /// Index of the entry in the module's functions.
    pub(crate) func: usize,
    /// The first unsupported instruction the kernel can reach, described.
    pub(crate) unsupported: Option<String>,
    /// Its error code and location, for `run`.
    pub(crate) unsupported_at: Option<(u32, u32)>,
}

/// A kernel parameter's size and alignment in the parameter buffer.
#[derive(Debug, Clone, Copy)]
pub struct ParamDecl {
    /// Bytes.
    pub size: usize,
    /// Alignment in bytes.
    pub align: usize,
}

/// How a kernel is launched.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory bytes.
    pub dynamic_shared: usize,
    /// Cooperative launch: every block is resident at once.
    pub cooperative: bool,
    /// Seeds the interleaving of threads and blocks.
    pub seed: u64,
}

/// Why a launch failed.
#[derive(Debug, Clone)]
pub struct KernelError {
    /// CUresult code.
    pub code: u32,
    /// Kernel name.
    pub kernel: String,
    /// Block index.
    pub block: [u32; 3],
    /// Thread index in the block.
    pub thread: [u32; 3],
    /// PTX line of the instruction (0: none).
    pub line: u32,
    /// The instruction's text.
    pub text: String,
    /// What went wrong.
    pub msg: String,
}

impl Module {
    /// Parses PTX text, placing module-scope `.global` variables (with their
    /// initialisers) in `mem` on `device`. Instructions the interpreter does
    /// not know are not an error here: a launch of a kernel that holds one
    /// fails, naming the instruction and the kernel.
    pub fn load(text: &str, mem: &mut Memory, device: usize) -> Result<Module, String> {
        load::load(text, mem, device)
    }

    /// The entry called `name`.
    pub fn kernel(&self, name: &str) -> Option<&Kernel> {
        self.kernels.iter().find(|k| k.name == name)
    }

    /// Every entry of the module.
    pub fn kernels(&self) -> &[Kernel] {
        &self.kernels
    }

    /// The address and size of the module-scope variable `name`.
    pub fn global(&self, name: &str) -> Option<(u64, usize)> {
        self.globals.get(name).copied()
    }

    /// Runs `kernel` to completion. `params` is the parameter buffer laid out
    /// by [`Kernel::param_layout`].
    pub fn run(&self, kernel: &Kernel, launch: &Launch, params: &[u8], mem: &mut Memory) -> Result<(), KernelError> {
        let err = |code, msg: String, line, text| KernelError {
            code,
            kernel: kernel.name.clone(),
            block: [0; 3],
            thread: [0; 3],
            line,
            text,
            msg,
        };
        if let (Some(what), Some((f, pc))) = (&kernel.unsupported, kernel.unsupported_at) {
            let f = &self.funcs[f as usize];
            return Err(err(
                801,
                format!("unsupported instruction ({what})"),
                f.lines[pc as usize],
                f.texts[pc as usize].clone(),
            ));
        }
        let (_, size) = kernel.param_layout();
        if params.len() < size {
            return Err(err(
                1,
                format!("parameter buffer of {} bytes, the kernel needs {size}", params.len()),
                0,
                String::new(),
            ));
        }
        schedule::Runner { funcs: &self.funcs, kernel, launch, params }.run(mem)
    }
}

impl Kernel {
    /// The first instruction this kernel (or a function it calls) holds that
    /// the interpreter does not support, described; `None` when all are.
    pub fn unsupported(&self) -> Option<&str> {
        self.unsupported.as_deref()
    }

    /// Offset of dynamic shared memory (after the static variables).
    pub fn dyn_shared_offset(&self) -> usize {
        self.static_shared.next_multiple_of(16)
    }

    /// The offset of each parameter in the parameter buffer, and its size.
    pub fn param_layout(&self) -> (Vec<usize>, usize) {
        let mut offsets = Vec::with_capacity(self.params.len());
        let mut end = 0usize;
        for p in &self.params {
            let at = end.next_multiple_of(p.align.max(1));
            offsets.push(at);
            end = at + p.size;
        }
        (offsets, end)
    }
}

impl KernelError {
    /// The CUresult code the driver reports for it.
    pub fn code(&self) -> u32 {
        self.code
    }
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [bx, by, bz] = self.block;
        let [tx, ty, tz] = self.thread;
        write!(f, "kernel {}, block ({bx},{by},{bz}), thread ({tx},{ty},{tz}): {}", self.kernel, self.msg)?;
        if self.line > 0 {
            write!(f, " [PTX line {}: `{}`]", self.line, self.text)?;
        }
        Ok(())
    }
}
