//! `exp`, `ln` and `sin`/`cos` of a turn in f64, built only from operations
//! that IEEE 754 rounds exactly (add, mul, div, sqrt, fma) and integer bit
//! manipulation, so that the CUDA twin in `cfg-runtime/kernels/portable_math.cu`
//! computes the same bits: a model or a noise generator using these gives
//! bit-identical results on the CPU and on the GPU. Accuracy: within about one
//! ulp of the correctly rounded result (checked against the standard library
//! in the tests).
//!
//! The CUDA file mirrors each function line for line; change both together.

const SHIFTER: f64 = 6_755_399_441_055_744.0; // 1.5 · 2⁵²: adding it rounds to an integer
const INV_LN2: f64 = std::f64::consts::LOG2_E;
const LN2_HI: f64 = 0.693_147_180_369_123_8; // ln 2 to 32 bits: k·LN2_HI is exact
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10; // ln 2 − LN2_HI
const EXP_MAX: f64 = 709.782_712_893_384; // ln(f64::MAX)
const EXP_MIN: f64 = -745.133_219_101_941_2; // below: rounds to 0
const SQRT2: f64 = std::f64::consts::SQRT_2;
const TAU_HI: f64 = std::f64::consts::TAU;
const TAU_LO: f64 = 2.449_293_598_294_706_4e-16; // 2π − TAU_HI

/// 1/k! for k = 13 down to 2 (Horner order).
const EXP_TAYLOR: [f64; 12] = [
    1.0 / 6_227_020_800.0,
    1.0 / 479_001_600.0,
    1.0 / 39_916_800.0,
    1.0 / 3_628_800.0,
    1.0 / 362_880.0,
    1.0 / 40_320.0,
    1.0 / 5_040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
];

/// 2/(2k+1) for k = 10 down to 1 (Horner order): `2·atanh(s) = 2s + s·z·P(z)`, z = s².
const LN_ATANH: [f64; 10] = [
    2.0 / 21.0,
    2.0 / 19.0,
    2.0 / 17.0,
    2.0 / 15.0,
    2.0 / 13.0,
    2.0 / 11.0,
    2.0 / 9.0,
    2.0 / 7.0,
    2.0 / 5.0,
    2.0 / 3.0,
];

/// sin x = x + x³·S(x²): S's coefficients (−1)^k/(2k+1)! for k = 8 down to 1.
const SIN_TAYLOR: [f64; 8] = [
    1.0 / 355_687_428_096_000.0,
    -1.0 / 1_307_674_368_000.0,
    1.0 / 6_227_020_800.0,
    -1.0 / 39_916_800.0,
    1.0 / 362_880.0,
    -1.0 / 5_040.0,
    1.0 / 120.0,
    -1.0 / 6.0,
];

/// cos x = 1 − x²/2 + x⁴·C(x²): C's coefficients (−1)^k/(2k)! for k = 9 down to 2.
const COS_TAYLOR: [f64; 8] = [
    -1.0 / 6_402_373_705_728_000.0,
    1.0 / 20_922_789_888_000.0,
    -1.0 / 87_178_291_200.0,
    1.0 / 479_001_600.0,
    -1.0 / 3_628_800.0,
    1.0 / 40_320.0,
    -1.0 / 720.0,
    1.0 / 24.0,
];

fn horner(c: &[f64], x: f64) -> f64 {
    let mut p = c[0];
    for &k in &c[1..] {
        p = p.mul_add(x, k);
    }
    p
}

/// 2^k for k in [-1022, 1023], from its bits.
fn pow2(k: i64) -> f64 {
    f64::from_bits(((k + 1023) as u64) << 52)
}

/// e^x.
pub fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x > EXP_MAX {
        return f64::INFINITY;
    }
    if x < EXP_MIN {
        return 0.0;
    }
    let k = x.mul_add(INV_LN2, SHIFTER) - SHIFTER;
    let r = (-k).mul_add(LN2_LO, (-k).mul_add(LN2_HI, x));
    let p = horner(&EXP_TAYLOR, r).mul_add(r * r, r) + 1.0;
    // 2^k in two exact-range factors: only the last product can round (to a subnormal).
    let k = k as i64;
    let k1 = k / 2;
    p * pow2(k1) * pow2(k - k1)
}

/// The natural logarithm.
pub fn ln(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x == f64::INFINITY {
        return x;
    }
    let (x, mut e) = if x < f64::MIN_POSITIVE { (x * 18_014_398_509_481_984.0, -54i64) } else { (x, 0) };
    let bits = x.to_bits();
    e += ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > SQRT2 {
        m *= 0.5;
        e += 1;
    }
    let f = m - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    let r = z * horner(&LN_ATANH, z);
    let hfsq = 0.5 * f * f;
    let ln_m = f - (hfsq - s * (hfsq + r));
    let e = e as f64;
    e.mul_add(LN2_HI, e.mul_add(LN2_LO, ln_m))
}

/// `(sin 2πu, cos 2πu)` for `u` in [0, 1] a multiple of 2⁻²⁴ or coarser
/// (so the quadrant split is exact), as Box–Muller needs.
pub fn sin_cos_turns(u: f64) -> (f64, f64) {
    let q = (4.0 * u + SHIFTER) - SHIFTER;
    let f = q.mul_add(-0.25, u);
    let x = f.mul_add(TAU_HI, f * TAU_LO);
    let x2 = x * x;
    let s = (x2 * x).mul_add(horner(&SIN_TAYLOR, x2), x);
    let c = (x2 * x2).mul_add(horner(&COS_TAYLOR, x2), (-0.5f64).mul_add(x2, 1.0));
    match (q as i64) & 3 {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f64, b: f64) -> u64 {
        if a == b {
            return 0;
        }
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs()
    }

    /// A spread of inputs: Philox-free, deterministic.
    fn inputs(lo: f64, hi: f64, n: usize) -> impl Iterator<Item = f64> {
        (0..n).map(move |i| {
            let t = (i as f64 + 0.5) / n as f64;
            let t = (t * 7919.0).fract();
            lo + (hi - lo) * t
        })
    }

    #[test]
    fn exp_is_within_one_ulp_of_the_standard_library() {
        for x in inputs(-740.0, 709.0, 200_000).chain(inputs(-1.0, 1.0, 50_000)) {
            assert!(ulps(exp(x), x.exp()) <= 1, "exp({x:e}) = {:e}, std {:e}", exp(x), x.exp());
        }
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        assert_eq!(exp(710.0), f64::INFINITY);
        assert_eq!(exp(-746.0), 0.0);
        assert_eq!(exp(f64::NEG_INFINITY), 0.0);
        assert!(exp(f64::NAN).is_nan());
        assert!(ulps(exp(-744.0), (-744.0f64).exp()) <= 1, "subnormal result");
        assert!(ulps(exp(709.7), 709.7f64.exp()) <= 1);
    }

    #[test]
    fn ln_is_within_one_ulp_of_the_standard_library() {
        for x in inputs(1e-300, 1e300, 100_000).chain(inputs(0.5, 2.0, 100_000)).chain(inputs(1e-310, 1e-305, 1000)) {
            assert!(ulps(ln(x), x.ln()) <= 1, "ln({x:e}) = {:e}, std {:e}", ln(x), x.ln());
        }
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert_eq!(ln(f64::INFINITY), f64::INFINITY);
        assert!(ln(-1.0).is_nan() && ln(f64::NAN).is_nan());
    }

    #[test]
    fn sin_cos_turns_match_the_standard_library() {
        // The reference rounds 2πu first (up to 4e-16 off for u near 1): compare loosely.
        for i in 0..(1u32 << 16) {
            let u = (i << 8) as f64 / (1u64 << 24) as f64;
            let (s, c) = sin_cos_turns(u);
            let theta = std::f64::consts::TAU * u;
            assert!((s - theta.sin()).abs() <= 1e-15 && (c - theta.cos()).abs() <= 1e-15, "u = {u}: {s} {c}");
        }
        assert_eq!(sin_cos_turns(0.0), (0.0, 1.0));
        assert_eq!(sin_cos_turns(0.25), (1.0, 0.0));
    }
}
