//! Float helpers with the hardware's NaN rules and conversions.
//!
//! NaN results (chosen from the PTX ISA and NVIDIA's floating-point notes;
//! where the ISA is silent this is our choice, marked as such):
//! - f32 arithmetic (`add`/`sub`/`mul`/`div`/`fma`/`sqrt`/`rcp`) returning NaN
//!   gives the canonical NaN `0x7fffffff` whatever the inputs' payloads.
//! - f64 arithmetic returning NaN: the first NaN input, quietened; a NaN made
//!   from non-NaN inputs (inf - inf, 0 * inf, sqrt(-1)) is `0xfff8000000000000`
//!   (our choice; the ISA does not pin the f64 payload down).
//! - `cvt.rn.f16.f32` / `cvt.rn.bf16.f32` of a NaN give `0x7fff`;
//!   `cvt.f32.f16`/`cvt.f32.bf16`/`cvt.rn.f32.f64` of a NaN give `0x7fffffff`;
//!   `cvt.f64.f32` of a NaN keeps the payload (quietened).
//! - `min`/`max` return the non-NaN operand; both NaN: canonical NaN.
//!   `-0 < +0` for them.

/// The canonical f32 NaN.
pub const NAN32: u32 = 0x7fff_ffff;
/// The f64 NaN produced from non-NaN inputs (our choice, see module docs).
pub const NAN64: u64 = 0xfff8_0000_0000_0000;

/// An f32 result with NaN canonicalised.
#[inline]
pub fn r32(x: f32) -> u64 {
    if x.is_nan() {
        NAN32 as u64
    } else {
        x.to_bits() as u64
    }
}

/// An f64 result: NaN inputs propagate (quietened), else NAN64.
#[inline]
pub fn r64(x: f64, inputs: &[f64]) -> u64 {
    if !x.is_nan() {
        return x.to_bits();
    }
    for i in inputs {
        if i.is_nan() {
            return i.to_bits() | 0x0008_0000_0000_0000;
        }
    }
    NAN64
}

/// `min`/`max` on f32 (PTX rules).
pub fn minmax32(a: f32, b: f32, max: bool) -> u64 {
    if a.is_nan() && b.is_nan() {
        return NAN32 as u64;
    }
    if a.is_nan() {
        return b.to_bits() as u64;
    }
    if b.is_nan() {
        return a.to_bits() as u64;
    }
    let pick_a = if a == b {
        // -0 < +0
        (a.is_sign_negative() && !max) || (!a.is_sign_negative() && max)
    } else {
        (a < b) != max
    };
    if pick_a {
        a.to_bits() as u64
    } else {
        b.to_bits() as u64
    }
}

/// `min`/`max` on f64 (PTX rules).
pub fn minmax64(a: f64, b: f64, max: bool) -> u64 {
    if a.is_nan() && b.is_nan() {
        return NAN64;
    }
    if a.is_nan() {
        return b.to_bits();
    }
    if b.is_nan() {
        return a.to_bits();
    }
    let pick_a = if a == b { (a.is_sign_negative() && !max) || (!a.is_sign_negative() && max) } else { (a < b) != max };
    if pick_a {
        a.to_bits()
    } else {
        b.to_bits()
    }
}

/// `cvt.rn.f16.f32`: round to nearest even, subnormals kept, overflow to inf.
pub fn f32_to_f16(x: f32) -> u16 {
    if x.is_nan() {
        0x7fff
    } else {
        half::f16::from_f32(x).to_bits()
    }
}

/// `cvt.rn.bf16.f32`.
pub fn f32_to_bf16(x: f32) -> u16 {
    if x.is_nan() {
        0x7fff
    } else {
        half::bf16::from_f32(x).to_bits()
    }
}

/// `cvt.rn.f16.f64`.
pub fn f64_to_f16(x: f64) -> u16 {
    if x.is_nan() {
        0x7fff
    } else {
        half::f16::from_f64(x).to_bits()
    }
}

/// `cvt.rn.bf16.f64`.
pub fn f64_to_bf16(x: f64) -> u16 {
    if x.is_nan() {
        0x7fff
    } else {
        half::bf16::from_f64(x).to_bits()
    }
}

/// Rounds to an integral value by the `cvt` mode (`.rni` ties to even).
pub fn round_int(x: f64, rnd: super::instr::Rnd) -> f64 {
    use super::instr::Rnd;
    match rnd {
        Rnd::Rni | Rnd::Rn => x.round_ties_even(),
        Rnd::Rmi | Rnd::Rm => x.floor(),
        Rnd::Rpi | Rnd::Rp => x.ceil(),
        _ => x.trunc(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions_round_to_even() {
        assert_eq!(f32_to_f16(65519.0), 0x7bff);
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(f32::NAN), 0x7fff);
        assert_eq!(f32_to_f16(5.960_464_5e-8), 0x0001);
        assert_eq!(f32_to_f16(2.980_232_2e-8), 0x0000); // tie to even (0)
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80); // tie to even
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
    }

    #[test]
    fn minmax_prefers_numbers() {
        assert_eq!(minmax32(f32::NAN, 1.0, false), 1f32.to_bits() as u64);
        assert_eq!(minmax32(0.0, -0.0, false), (-0f32).to_bits() as u64);
        assert_eq!(minmax64(0.0, -0.0, true), 0f64.to_bits());
    }
}
