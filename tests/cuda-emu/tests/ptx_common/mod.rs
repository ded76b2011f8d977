//! Helpers for the PTX tests: run a one-kernel module on small buffers.
#![allow(dead_code)]

use cuda_emu::memory::Memory;
use cuda_emu::ptx::{KernelError, Launch, Module};

/// A launch of `grid` blocks of `block` threads.
pub fn launch(grid: u32, block: u32, cooperative: bool) -> Launch {
    Launch { grid: [grid, 1, 1], block: [block, 1, 1], dynamic_shared: 0, cooperative, seed: 7 }
}

/// Wraps `body` in an entry `k(.param .u64 out, .param .u64 in)`.
pub fn entry(regs: &str, body: &str) -> String {
    format!(
        ".version 9.0\n.target sm_90\n.address_size 64\n.visible .entry k(\n.param .u64 k_out,\n.param .u64 k_in\n)\n{{\n{regs}\n.reg .b64 %out;\n.reg .b64 %in;\nld.param.u64 %out, [k_out];\nld.param.u64 %in, [k_in];\n{body}\nret;\n}}\n"
    )
}

/// Runs kernel `k` of `ptx` with an output buffer of `out_len` bytes and an
/// input buffer holding `input`; returns the output bytes.
pub fn run(ptx: &str, l: &Launch, input: &[u8], out_len: usize) -> Result<Vec<u8>, KernelError> {
    let mut mem = Memory::default();
    let m = Module::load(ptx, &mut mem, 0).expect("loads");
    let k = m.kernel("k").expect("kernel k");
    assert_eq!(k.unsupported(), None);
    let out = mem.alloc(out_len, 0);
    mem.slice_mut(out, out_len).unwrap().fill(0);
    let inp = mem.alloc(input.len().max(8), 0);
    mem.slice_mut(inp, input.len()).unwrap().copy_from_slice(input);
    let mut params = out.to_le_bytes().to_vec();
    params.extend_from_slice(&inp.to_le_bytes());
    m.run(k, l, &params, &mut mem)?;
    Ok(mem.slice(out, out_len).unwrap().to_vec())
}

/// u32 words of a byte buffer.
pub fn words(b: &[u8]) -> Vec<u32> {
    b.chunks(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// u64 words of a byte buffer.
pub fn dwords(b: &[u8]) -> Vec<u64> {
    b.chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect()
}
