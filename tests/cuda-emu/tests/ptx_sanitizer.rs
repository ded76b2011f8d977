//! The sanitizer catches broken kernels with a clear message and the right code.

mod ptx_common;
use cuda_emu::memory::Memory;
use cuda_emu::ptx::Module;
use ptx_common::*;

fn fails(regs: &str, body: &str, l: &cuda_emu::ptx::Launch) -> cuda_emu::ptx::KernelError {
    run(&entry(regs, body), l, &[0; 64], 64).expect_err("the kernel must fail")
}

#[test]
fn out_of_bounds_write() {
    let e = fails("", "st.global.u32 [%out+64], 1;", &launch(1, 1, false));
    assert_eq!(e.code(), 700, "{e}");
    let m = e.to_string();
    assert!(
        m.contains("outside every allocation") && m.contains("st.global.u32 [%out+64], 1") && m.contains("line"),
        "{m}"
    );
}

#[test]
fn misaligned_access() {
    let e = fails("", "st.global.u32 [%out+2], 1;", &launch(1, 1, false));
    assert_eq!(e.code(), 716, "{e}");
    assert!(e.to_string().contains("misaligned"), "{e}");
}

#[test]
fn use_after_free() {
    let mut mem = Memory::default();
    let m = Module::load(&entry("", "st.global.u32 [%out], 1;"), &mut mem, 0).unwrap();
    let a = mem.alloc(16, 0);
    mem.free(a).unwrap();
    let mut params = a.to_le_bytes().to_vec();
    params.extend_from_slice(&0u64.to_le_bytes());
    let e = m.run(m.kernel("k").unwrap(), &launch(1, 1, false), &params, &mut mem).unwrap_err();
    assert_eq!(e.code(), 700);
    assert!(e.to_string().contains("use after free"), "{e}");
}

const SHARED_SWAP: &str = ".shared .align 4 .b8 sh[128];\n\
    mov.u32 %r1, %tid.x; mov.u64 %rd1, sh; mul.wide.u32 %rd2, %r1, 4; add.s64 %rd3, %rd1, %rd2;\n\
    st.shared.u32 [%rd3], %r1;\n\
    BARRIER\n\
    sub.u32 %r2, 31, %r1; mul.wide.u32 %rd4, %r2, 4; add.s64 %rd5, %rd1, %rd4; ld.shared.u32 %r3, [%rd5];\n\
    add.s64 %rd6, %out, %rd2; st.global.u32 [%rd6], %r3;";

#[test]
fn shared_race_without_barrier() {
    let regs = ".reg .b32 %r<4>; .reg .b64 %rd<8>;";
    let ok = run(&entry(regs, &SHARED_SWAP.replace("BARRIER", "bar.sync 0;")), &launch(1, 32, false), &[], 128);
    assert!(ok.is_ok(), "{}", ok.unwrap_err());
    let e = run(&entry(regs, &SHARED_SWAP.replace("BARRIER", "")), &launch(1, 32, false), &[], 128).unwrap_err();
    assert_eq!(e.code(), 700, "{e}");
    assert!(e.to_string().contains("race") && e.to_string().contains("bar.sync"), "{e}");
}

const GRID_BARRIER: &str = "atom.global.add.u32 %r1, [%in], 1;\n\
    mov.u32 %r2, %nctaid.x;\n\
    $Lspin:\n\
    ld.volatile.global.u32 %r3, [%in];\n\
    setp.lt.u32 %p1, %r3, %r2;\n\
    @%p1 bra $Lspin;\n\
    mov.u32 %r4, %ctaid.x; mul.wide.u32 %rd1, %r4, 4; add.s64 %rd2, %out, %rd1; st.global.u32 [%rd2], %r3;";

#[test]
fn grid_barrier_needs_a_cooperative_launch() {
    let ptx = entry(".reg .b32 %r<6>; .reg .pred %p<2>; .reg .b64 %rd<4>;", GRID_BARRIER);
    let out = run(&ptx, &launch(4, 1, true), &[0; 8], 16).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(words(&out), vec![4; 4]);
    let e = run(&ptx, &launch(4, 1, false), &[0; 8], 16).unwrap_err();
    assert_eq!(e.code(), 702, "{e}");
    assert!(e.to_string().contains("livelock") && e.to_string().contains("cooperative"), "{e}");
}

#[test]
fn barrier_deadlock() {
    let body = "mov.u32 %r1, %tid.x; setp.eq.u32 %p1, %r1, 0; @%p1 bra $Lskip; bar.sync 0; $Lskip: shfl.sync.idx.b32 %r2, %r1, 0, 31, -1;";
    let e = fails(".reg .b32 %r<4>; .reg .pred %p<2>;", body, &launch(1, 32, false));
    assert_eq!(e.code(), 702, "{e}");
    assert!(e.to_string().contains("deadlock"), "{e}");
}

#[test]
fn trap_and_unsupported() {
    let e = fails("", "trap;", &launch(1, 1, false));
    assert_eq!(e.code(), 715, "{e}");
    let ptx = entry(".reg .f32 %f<2>;", "tanh.approx.f32 %f1, %f0;");
    let mut mem = Memory::default();
    let m = Module::load(&ptx, &mut mem, 0).unwrap();
    let k = m.kernel("k").unwrap();
    assert!(k.unsupported().unwrap().contains("tanh"));
    let e = m.run(k, &launch(1, 1, false), &[0; 16], &mut mem).unwrap_err();
    assert_eq!(e.code(), 801);
    assert!(e.to_string().contains("tanh.approx.f32") && e.to_string().contains("kernel k"), "{e}");
}
