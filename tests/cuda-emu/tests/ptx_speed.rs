//! Interpreter throughput on a compute loop (prints instructions per second;
//! no time bound is asserted).

mod ptx_common;
use ptx_common::*;

#[test]
fn loop_throughput() {
    let body = "mov.u32 %r1, 0; mov.f32 %f1, 0f00000000;\n$Lloop:\n\
        fma.rn.f32 %f1, %f1, 0f3F000000, 0f3F800000; add.s32 %r1, %r1, 1; setp.lt.u32 %p1, %r1, 20000; @%p1 bra $Lloop;\n\
        mov.u32 %r2, %tid.x; mul.wide.u32 %rd1, %r2, 4; add.s64 %rd2, %out, %rd1; st.global.f32 [%rd2], %f1;";
    let ptx = entry(".reg .b32 %r<4>; .reg .f32 %f<2>; .reg .pred %p<2>; .reg .b64 %rd<4>;", body);
    let start = std::time::Instant::now();
    let out = run(&ptx, &launch(2, 128, false), &[], 1024).unwrap_or_else(|e| panic!("{e}"));
    let secs = start.elapsed().as_secs_f64();
    let instrs = 256.0 * 20000.0 * 4.0;
    eprintln!("{:.1} M instructions/s", instrs / secs / 1e6);
    assert_eq!(words(&out)[0], 2f32.to_bits());
}
