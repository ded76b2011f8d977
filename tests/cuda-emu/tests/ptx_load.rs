//! Every kernel of the project's PTX (NVRTC 13, sm_90) loads and decodes
//! with no unsupported instruction.

use cuda_emu::memory::Memory;
use cuda_emu::ptx::Module;

const FILES: &[(&str, &str)] = &[
    ("combine", include_str!("ptx/combine.ptx")),
    ("copy", include_str!("ptx/copy.ptx")),
    ("gmm", include_str!("ptx/gmm.ptx")),
    ("guidance", include_str!("ptx/guidance.ptx")),
    ("philox", include_str!("ptx/philox.ptx")),
    ("renorm_token", include_str!("ptx/renorm_token.ptx")),
    ("rescale", include_str!("ptx/rescale.ptx")),
    ("stats", include_str!("ptx/stats.ptx")),
    ("update", include_str!("ptx/update.ptx")),
];

#[test]
fn every_kernel_decodes_fully() {
    let mut mem = Memory::default();
    let mut bad = Vec::new();
    let mut count = 0;
    for (name, text) in FILES {
        let m = Module::load(text, &mut mem, 0).unwrap_or_else(|e| panic!("{name}.ptx: {e}"));
        assert!(!m.kernels().is_empty(), "{name}.ptx has no kernels");
        for k in m.kernels() {
            count += 1;
            if let Some(u) = k.unsupported() {
                bad.push(format!("{name}.ptx {}: {u}", k.name));
            }
        }
    }
    assert!(bad.is_empty(), "unsupported instructions:\n{}", bad.join("\n"));
    assert!(count > 40, "{count} kernels");
}

#[test]
fn module_globals_are_initialised() {
    let mut mem = Memory::default();
    let m = Module::load(FILES[4].1, &mut mem, 0).unwrap();
    let (addr, size) = m.global("__cudart_i2opi_d").unwrap();
    assert_eq!(size, 144);
    assert_eq!(&mem.slice(addr, 4).unwrap(), &[8, 93, 141, 31]);
}
