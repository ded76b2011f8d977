//! The PTX interpreter: parses the PTX text NVRTC emits and executes kernels
//! on the CPU, one emulated thread at a time, with checked memory.
//!
//! INTERFACE (used by the driver in `crate::driver`); the implementation is
//! split over the files of this folder.

use crate::memory::Memory;

/// A parsed module: its kernels and its module-scope variables.
#[derive(Debug)]
pub struct Module {/* filled in by the implementation */}

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
pub struct KernelError {/* filled in by the implementation */}

impl Module {
    /// Parses PTX text, placing module-scope `.global` variables (with their
    /// initialisers) in `mem` on `device`. Instructions the interpreter does
    /// not know are not an error here: a launch of a kernel that holds one
    /// fails, naming the instruction and the kernel.
    pub fn load(text: &str, mem: &mut Memory, device: usize) -> Result<Module, String> {
        let _ = (text, mem, device);
        todo!()
    }

    /// The entry called `name`.
    pub fn kernel(&self, name: &str) -> Option<&Kernel> {
        let _ = name;
        todo!()
    }

    /// The address and size of the module-scope variable `name`.
    pub fn global(&self, name: &str) -> Option<(u64, usize)> {
        let _ = name;
        todo!()
    }

    /// Runs `kernel` to completion. `params` is the parameter buffer laid out
    /// by [`Kernel::param_layout`].
    pub fn run(&self, kernel: &Kernel, launch: &Launch, params: &[u8], mem: &mut Memory) -> Result<(), KernelError> {
        let _ = (kernel, launch, params, mem);
        todo!()
    }
}

impl Kernel {
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
        todo!()
    }
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let _ = f;
        todo!()
    }
}
