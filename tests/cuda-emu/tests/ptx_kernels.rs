//! The project's own kernels (NVRTC 13 PTX fixtures) run end to end.

use cuda_emu::memory::Memory;
use cuda_emu::ptx::{Launch, Module};

fn launch(grid: u32, block: u32, seed: u64) -> Launch {
    Launch { grid: [grid, 1, 1], block: [block, 1, 1], dynamic_shared: 0, cooperative: false, seed }
}

#[test]
fn copy_u16_copies() {
    let mut mem = Memory::default();
    let m = Module::load(include_str!("ptx/copy.ptx"), &mut mem, 0).unwrap();
    let k = m.kernel("copy_u16").unwrap();
    let n = 37usize;
    let src = mem.alloc(n * 2, 0);
    let dst = mem.alloc(n * 2, 0);
    let data: Vec<u8> = (0..n * 2).map(|i| (i * 7) as u8).collect();
    mem.slice_mut(src, n * 2).unwrap().copy_from_slice(&data);
    let mut p = Vec::new();
    p.extend_from_slice(&src.to_le_bytes());
    p.extend_from_slice(&dst.to_le_bytes());
    p.extend_from_slice(&(n as i64).to_le_bytes());
    p.extend_from_slice(&1i32.to_le_bytes());
    m.run(k, &launch(2, 2, 1), &p, &mut mem).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(mem.slice(dst, n * 2).unwrap(), &data[..]);
}

#[test]
fn combine_f32_f32_two_forms() {
    let mut mem = Memory::default();
    let m = Module::load(include_str!("ptx/combine.ptx"), &mut mem, 0).unwrap();
    let k = m.kernel("combine_f32_f32").unwrap();
    let n = 37usize;
    let x0: Vec<f32> = (0..n).map(|i| i as f32 * 0.37 - 3.0).collect();
    let x1: Vec<f32> = (0..n).map(|i| 1.0 / (i as f32 + 1.0)).collect();
    let put = |mem: &mut Memory, v: &[f32]| {
        let a = mem.alloc(v.len() * 4, 0);
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        mem.slice_mut(a, b.len()).unwrap().copy_from_slice(&b);
        a
    };
    let (a0, a1) = (put(&mut mem, &x0), put(&mut mem, &x1));
    let (o0, o1) = (mem.alloc(n * 4, 0), mem.alloc(n * 4, 0));
    // Forms: x[8] ptrs, w[4][8] f32, mask[4], first[4], branches, forms (232 bytes)
    let mut forms = vec![0u8; 232];
    forms[0..8].copy_from_slice(&a0.to_le_bytes());
    forms[8..16].copy_from_slice(&a1.to_le_bytes());
    let w = |f: usize, b: usize| 64 + (f * 8 + b) * 4;
    forms[w(0, 0)..w(0, 0) + 4].copy_from_slice(&2.0f32.to_le_bytes());
    forms[w(0, 1)..w(0, 1) + 4].copy_from_slice(&0.5f32.to_le_bytes());
    forms[w(1, 1)..w(1, 1) + 4].copy_from_slice(&(-1.0f32).to_le_bytes());
    forms[192..196].copy_from_slice(&3u32.to_le_bytes());
    forms[196..200].copy_from_slice(&2u32.to_le_bytes());
    forms[208..212].copy_from_slice(&0i32.to_le_bytes());
    forms[212..216].copy_from_slice(&1i32.to_le_bytes());
    forms[224..228].copy_from_slice(&2i32.to_le_bytes());
    forms[228..232].copy_from_slice(&2i32.to_le_bytes());
    let (offs, size) = k.param_layout();
    let mut p = vec![0u8; size];
    p[offs[0]..offs[0] + 232].copy_from_slice(&forms);
    p[offs[1]..offs[1] + 8].copy_from_slice(&o0.to_le_bytes());
    p[offs[1] + 8..offs[1] + 16].copy_from_slice(&o1.to_le_bytes());
    p[offs[2]..offs[2] + 8].copy_from_slice(&(n as i64).to_le_bytes());
    p[offs[3]..offs[3] + 4].copy_from_slice(&1i32.to_le_bytes());
    for seed in [1, 2] {
        m.run(k, &launch(2, 4, seed), &p, &mut mem).unwrap_or_else(|e| panic!("{e}"));
        let get = |a| -> Vec<f32> {
            mem.slice(a, n * 4).unwrap().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
        };
        let (r0, r1) = (get(o0), get(o1));
        for i in 0..n {
            assert_eq!(r0[i].to_bits(), 0.5f32.mul_add(x1[i], 2.0 * x0[i]).to_bits(), "form 0 at {i}");
            assert_eq!(r1[i].to_bits(), (-x1[i]).to_bits(), "form 1 at {i}");
        }
    }
}
