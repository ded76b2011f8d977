//! Instruction semantics, bit for bit, on tiny hand-written kernels.

mod ptx_common;
use ptx_common::*;

fn one(regs: &str, body: &str, out_len: usize) -> Vec<u8> {
    run(&entry(regs, body), &launch(1, 1, false), &[], out_len).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn f32_rounding_zero_subnormal_nan() {
    let out = one(
        ".reg .f32 %f<8>;",
        "add.rn.f32 %f1, 0f3F800000, 0f33800000; st.global.f32 [%out], %f1;\n\
         add.rn.f32 %f2, 0f80000000, 0f00000000; st.global.f32 [%out+4], %f2;\n\
         fma.rn.f32 %f3, 0fBF800000, 0f00000000, 0f80000000; st.global.f32 [%out+8], %f3;\n\
         mul.rn.f32 %f4, 0f00800000, 0f3F000000; st.global.f32 [%out+12], %f4;\n\
         add.rn.f32 %f5, 0f7FC00001, 0f3F800000; st.global.f32 [%out+16], %f5;\n\
         div.rn.f32 %f6, 0f3F800000, 0f40400000; st.global.f32 [%out+20], %f6;\n\
         sqrt.rn.f32 %f7, 0f40000000; st.global.f32 [%out+24], %f7;\n\
         fma.rn.f32 %f7, 0f3F800001, 0f3F800001, 0fBF800002; st.global.f32 [%out+28], %f7;",
        32,
    );
    let w = words(&out);
    assert_eq!(w[0], 0x3f80_0000, "1 + 2^-24 ties to even");
    assert_eq!(w[1], 0x0000_0000, "-0 + 0 = +0");
    assert_eq!(w[2], 0x8000_0000, "-1*0 + -0 = -0");
    assert_eq!(w[3], 0x0040_0000, "subnormal result kept (no ftz)");
    assert_eq!(w[4], 0x7fff_ffff, "canonical NaN");
    assert_eq!(w[5], 0x3eaa_aaab);
    assert_eq!(w[6], 0x3fb5_04f3);
    assert_eq!(w[7], 0x2880_0000, "fused: (1+u)^2 - (1+2u) = u^2 exactly");
}

#[test]
fn f64_ops() {
    let out = one(
        ".reg .f64 %fd<6>;",
        "div.rn.f64 %fd1, 0d3FF0000000000000, 0d4008000000000000; st.global.f64 [%out], %fd1;\n\
         fma.rn.f64 %fd2, 0d3FF0000000000001, 0d3FF0000000000001, 0dBFF0000000000002; st.global.f64 [%out+8], %fd2;\n\
         sqrt.rn.f64 %fd3, 0d4000000000000000; st.global.f64 [%out+16], %fd3;\n\
         min.f64 %fd4, 0d7FF8000000000000, 0d4000000000000000; st.global.f64 [%out+24], %fd4;",
        32,
    );
    let d = dwords(&out);
    assert_eq!(d[0], (1.0f64 / 3.0).to_bits());
    assert_eq!(d[1], 0x3970_0000_0000_0000, "fused: u^2 with u = 2^-52");
    assert_eq!(d[2], 2f64.sqrt().to_bits());
    assert_eq!(d[3], 2f64.to_bits(), "min returns the non-NaN operand");
}

#[test]
fn half_conversions() {
    let out = one(
        ".reg .b16 %rs<8>; .reg .f32 %f<4>; .reg .b32 %r<2>;",
        "cvt.rn.f16.f32 %rs1, 0f477FF000; st.global.u16 [%out], %rs1;\n\
         cvt.rn.f16.f32 %rs2, 0f477FEFFF; st.global.u16 [%out+2], %rs2;\n\
         cvt.rn.f16.f32 %rs3, 0f33000000; st.global.u16 [%out+4], %rs3;\n\
         cvt.rn.f16.f32 %rs4, 0f7FC00000; st.global.u16 [%out+6], %rs4;\n\
         cvt.rn.bf16.f32 %rs5, 0f3F808000; st.global.u16 [%out+8], %rs5;\n\
         cvt.rn.bf16.f32 %rs6, 0f3F818000; st.global.u16 [%out+10], %rs6;\n\
         cvt.rn.f16.f32 %rs7, 0f33C00000; st.global.u16 [%out+12], %rs7;\n\
         mov.b16 %rs1, 0x0001; cvt.f32.f16 %f1, %rs1; st.global.f32 [%out+16], %f1;\n\
         cvt.rni.s32.f64 %r1, 0d4004000000000000; st.global.u32 [%out+20], %r1;\n\
         cvt.rzi.s32.f32 %r1, 0f7FC00000; st.global.u32 [%out+24], %r1;\n\
         cvt.rzi.s32.f32 %r1, 0f4F800000; st.global.u32 [%out+28], %r1;",
        32,
    );
    let h: Vec<u16> = out[..14].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    assert_eq!(h[0], 0x7c00, "65520 overflows to inf");
    assert_eq!(h[1], 0x7bff, "just below 65520 rounds to 65504");
    assert_eq!(h[2], 0x0000, "2^-25 is a tie between 0 and the smallest subnormal: even");
    assert_eq!(h[3], 0x7fff, "NaN");
    assert_eq!(h[4], 0x3f80, "bf16 tie to even (down)");
    assert_eq!(h[5], 0x3f82, "bf16 tie to even (up)");
    assert_eq!(h[6], 0x0002, "1.5 * 2^-24 is a tie between 1 and 2 units: even");
    let w = words(&out[16..]);
    assert_eq!(w[0], 0x3380_0000, "f16 subnormal widens exactly");
    assert_eq!(w[1], 2, "2.5 rounds to even");
    assert_eq!(w[2], 0, "NaN -> 0");
    assert_eq!(w[3], i32::MAX as u32, "saturates");
}

#[test]
fn integer_carries_wide_shifts_division() {
    let out = one(
        ".reg .b32 %r<12>; .reg .b64 %rd<4>;",
        "add.cc.u32 %r1, 0xffffffff, 2; addc.u32 %r2, 5, 6; st.global.u32 [%out], %r1; st.global.u32 [%out+4], %r2;\n\
         sub.cc.u32 %r3, 0, 1; subc.u32 %r4, 10, 0; st.global.u32 [%out+8], %r3; st.global.u32 [%out+12], %r4;\n\
         mul.hi.u32 %r5, 0x80000000, 6; st.global.u32 [%out+16], %r5;\n\
         mul.wide.s32 %rd1, -3, 0x40000000; st.global.u64 [%out+24], %rd1;\n\
         shl.b32 %r6, 1, 40; st.global.u32 [%out+32], %r6;\n\
         shr.s32 %r7, -8, 99; st.global.u32 [%out+36], %r7;\n\
         div.s32 %r8, -7, 2; st.global.u32 [%out+40], %r8;\n\
         rem.s32 %r9, -7, 2; st.global.u32 [%out+44], %r9;\n\
         clz.b64 %r10, 1; st.global.u32 [%out+48], %r10;\n\
         selp.b32 %r11, 5, 6, 0; st.global.u32 [%out+52], %r11;",
        56,
    );
    let w = words(&out);
    assert_eq!((w[0], w[1]), (1, 12), "carry into addc");
    assert_eq!((w[2], w[3]), (0xffff_ffff, 9), "borrow into subc");
    assert_eq!(w[4], 3);
    assert_eq!(dwords(&out[24..32])[0], (-3i64 << 30) as u64);
    assert_eq!(w[8], 0, "shl by >= width gives 0");
    assert_eq!(w[9], 0xffff_ffff, "shr.s by >= width fills the sign");
    assert_eq!(w[10] as i32, -3);
    assert_eq!(w[11] as i32, -1);
    assert_eq!(w[12], 63);
    assert_eq!(w[13], 6);
}

#[test]
fn setp_unordered_and_combined() {
    let out = one(
        ".reg .pred %p<8>; .reg .b32 %r<8>;",
        "setp.geu.f32 %p1, 0f7FC00000, 0f3F800000; selp.u32 %r1, 1, 0, %p1; st.global.u32 [%out], %r1;\n\
         setp.ge.f32 %p2, 0f7FC00000, 0f3F800000; selp.u32 %r2, 1, 0, %p2; st.global.u32 [%out+4], %r2;\n\
         setp.ne.f32 %p3, 0f7FC00000, 0f3F800000; selp.u32 %r3, 1, 0, %p3; st.global.u32 [%out+8], %r3;\n\
         setp.lt.s32.and %p4, -1, 0, %p1; selp.u32 %r4, 1, 0, %p4; st.global.u32 [%out+12], %r4;\n\
         setp.lt.u32 %p5, -1, 0; selp.u32 %r5, 1, 0, %p5; st.global.u32 [%out+16], %r5;\n\
         or.pred %p6, %p2, %p5; not.pred %p7, %p6; selp.u32 %r6, 1, 0, %p7; st.global.u32 [%out+20], %r6;",
        24,
    );
    assert_eq!(words(&out), vec![1, 0, 0, 1, 0, 1]);
}

#[test]
fn shuffles_and_barriers() {
    // out[tid] = value of lane tid+1 (clamped at 31); out[32+tid] = lane 3's
    // value; out[64+tid] = shared value written by thread 31-tid.
    let body = ".shared .align 4 .b8 sh[128];\n\
        mov.u32 %r1, %tid.x; mul.lo.u32 %r2, %r1, 10;\n\
        shfl.sync.down.b32 %r3|%p1, %r2, 1, 31, -1;\n\
        shfl.sync.idx.b32 %r4, %r2, 3, 31, -1;\n\
        mov.u64 %rd1, sh; mul.wide.u32 %rd2, %r1, 4; add.s64 %rd3, %rd1, %rd2; st.shared.u32 [%rd3], %r2;\n\
        bar.sync 0;\n\
        sub.u32 %r5, 31, %r1; mul.wide.u32 %rd4, %r5, 4; add.s64 %rd5, %rd1, %rd4; ld.shared.u32 %r6, [%rd5];\n\
        add.s64 %rd6, %out, %rd2; st.global.u32 [%rd6], %r3; st.global.u32 [%rd6+128], %r4; st.global.u32 [%rd6+256], %r6;";
    let ptx = entry(".reg .b32 %r<8>; .reg .pred %p<2>; .reg .b64 %rd<8>;", body);
    let out = run(&ptx, &launch(1, 32, false), &[], 384).unwrap_or_else(|e| panic!("{e}"));
    let w = words(&out);
    for t in 0..32u32 {
        assert_eq!(w[t as usize], if t < 31 { (t + 1) * 10 } else { 310 });
        assert_eq!(w[32 + t as usize], 30);
        assert_eq!(w[64 + t as usize], (31 - t) * 10);
    }
}
