//! Runtime CPU-feature dispatch: a [`Task`] runs compiled for the best
//! [`Level`] the CPU has: AVX2+FMA (then `mul_add` is one instruction, not a
//! libm call), AVX2+FMA with AVX-512 BF16 (f32 → bf16 in one instruction), or
//! portably. All compute the same bits: fma is exact either way, and the
//! hardware bf16 rounding is used only where it equals ours (see `to_bf16`).
//!
//! A task is told which [`Vector`] of eight f32 lanes it runs with, so that
//! its hot loops can hold values in registers (AVX2) instead of leaving the
//! vectorization to the compiler. Every vector operation is the scalar IEEE
//! operation lane by lane, so a vector loop gives the bits its scalar form gives.

use std::ops::{Add, Mul, Neg, Sub};
use std::sync::atomic::{AtomicU8, Ordering};

/// A unit of work whose `run` is inlined into the dispatched region.
pub trait Task {
    /// What it returns.
    type Out;
    /// Whether it runs in the AVX-512 BF16 region where the CPU has it:
    /// tasks that round values to bf16 (one instruction there), and loops
    /// the compiler vectorizes sixteen lanes wide there (FDG's row passes).
    /// The others would be compiled a third time for nothing.
    const AVX512: bool = false;
    /// The work, with the vector type of the region it runs in;
    /// implementations are `#[inline(always)]`.
    fn run<V: Vector>(self) -> Self::Out;
}

/// The arithmetic of the operators' formulas, on one f32 or on eight lanes.
pub trait Num: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Neg<Output = Self> {
    /// `x` in every lane.
    fn splat(x: f32) -> Self;
    /// `self·a + b`, rounded once.
    fn mul_add(self, a: Self, b: Self) -> Self;
}

impl Num for f32 {
    #[inline(always)]
    fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32) -> f32 {
        f32::mul_add(self, a, b)
    }
}

/// Eight f32 lanes.
pub trait Vector: Num {
    /// Eight consecutive values.
    fn load(x: &[f32; 8]) -> Self;
    /// Writes the lanes.
    fn store(self, to: &mut [f32; 8]);
    /// The canonical fold of the lanes (`l[i] += l[i+4]`, then `+2`, then
    /// `+1`): `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`.
    fn fold(self) -> f32;
    /// [`Vector::fold`] of each of eight vectors (the same additions, the
    /// eight vectors transposed so that each step adds them all at once).
    #[inline(always)]
    fn fold8(v: [Self; 8]) -> [f32; 8] {
        let mut r = [0.0; 8];
        for (r, v) in r.iter_mut().zip(v) {
            *r = v.fold();
        }
        r
    }
    /// `√x` of eight f64 (correctly rounded, as the scalar square root).
    fn sqrt_f64(x: [f64; 8]) -> [f64; 8];
    /// `a / b` of eight f64 (correctly rounded, as the scalar division).
    fn div_f64(a: [f64; 8], b: [f64; 8]) -> [f64; 8];
    /// The lanes rounded to bf16 bits as [`crate::cpu::bf16_bits_rne`] rounds them.
    fn to_bf16(self) -> [u16; 8];
    /// Sixteen lanes, `lo` then `hi`, rounded as [`Vector::to_bf16`] rounds them
    /// (packed together: one store for both).
    #[inline(always)]
    fn to_bf16_pair(lo: Self, hi: Self) -> [u16; 16] {
        let mut r = [0; 16];
        let (a, b) = r.split_at_mut(8);
        a.copy_from_slice(&lo.to_bf16());
        b.copy_from_slice(&hi.to_bf16());
        r
    }
    /// Sixteen bf16 widened to f32 in [`SPLIT`] order (`lo` holds elements
    /// 0–3 and 8–11, `hi` 4–7 and 12–15): the order AVX2 widens them in
    /// without a shuffle across its 128-bit halves, which costs Zen 2 a third
    /// of a bf16 kernel's time.
    #[inline(always)]
    fn from_bf16_split(x: &[u16; 16]) -> (Self, Self) {
        let (lo, hi) = to_split(x.map(|b| f32::from_bits((b as u32) << 16)));
        (Self::load(&lo), Self::load(&hi))
    }
    /// Sixteen f32 loaded in [`SPLIT`] order (AVX2: two 128-bit loads each,
    /// no shuffle across halves).
    #[inline(always)]
    fn load_split(x: &[f32; 16]) -> (Self, Self) {
        let (lo, hi) = to_split(*x);
        (Self::load(&lo), Self::load(&hi))
    }
    /// Sixteen lanes in [`SPLIT`] order rounded as [`Vector::to_bf16`] rounds
    /// them, in element order.
    #[inline(always)]
    fn to_bf16_split(lo: Self, hi: Self) -> [u16; 16] {
        from_split(lo.to_bf16(), hi.to_bf16())
    }
    /// The last level of the canonical fold of sixteen lanes held in split
    /// order, down to eight in element order: lane `i` of the result is
    /// lane `i` plus lane `i + 8` of the sixteen (`lo`'s two halves added,
    /// then `hi`'s).
    #[inline(always)]
    fn fold_halves(lo: Self, hi: Self) -> Self {
        let (mut l, mut h) = ([0.0; 8], [0.0; 8]);
        lo.store(&mut l);
        hi.store(&mut h);
        let x = from_split(l, h);
        let mut r = [0.0; 8];
        for (i, r) in r.iter_mut().enumerate() {
            *r = x[i] + x[i + 8];
        }
        Self::load(&r)
    }
    /// APG's projection of `r` against these lanes `c` in f64: `p = k·c` and
    /// `r − p`, each computed in f64 and rounded to f32 (as the scalar `as` casts).
    fn project_f64(self, r: Self, k: f64) -> (Self, Self);
}

/// The element each lane of a split pair holds (`lo`'s eight lanes, then
/// `hi`'s): see [`Vector::from_bf16_split`]. Element-wise arithmetic does
/// not care where an element sits; the stores put them back in order.
pub const SPLIT: [usize; 16] = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15];

/// Sixteen values in element order as the two halves of a split pair.
#[inline(always)]
pub fn to_split<T: Copy>(x: [T; 16]) -> ([T; 8], [T; 8]) {
    let (mut lo, mut hi) = ([x[0]; 8], [x[0]; 8]);
    for j in 0..8 {
        lo[j] = x[SPLIT[j]];
        hi[j] = x[SPLIT[8 + j]];
    }
    (lo, hi)
}

/// The halves of a split pair back in element order.
#[inline(always)]
pub fn from_split<T: Copy>(lo: [T; 8], hi: [T; 8]) -> [T; 16] {
    let mut x = [lo[0]; 16];
    for j in 0..8 {
        x[SPLIT[j]] = lo[j];
        x[SPLIT[8 + j]] = hi[j];
    }
    x
}

/// The instruction sets a task can be compiled for, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Plain Rust: every operation a loop over the lanes.
    Portable,
    /// AVX2 and FMA (x86-64).
    Avx2,
    /// AVX2 and FMA, with AVX-512 BF16's f32 → bf16 conversion (and the
    /// AVX-512 VL and DQ instructions around it).
    Avx512Bf16,
}

impl Level {
    /// Every level, in order.
    pub const ALL: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512Bf16];
}

static LIMIT: AtomicU8 = AtomicU8::new(Level::Avx512Bf16 as u8);

/// Makes every later [`run`] use at most `level` (for tests that compare the
/// paths, and benchmarks); `Level::Avx512Bf16` lifts the limit.
pub fn set_limit(level: Level) {
    LIMIT.store(level as u8, Ordering::Relaxed);
}

/// The level [`run`] uses now: the best this CPU has, within the limit.
#[inline]
pub fn level() -> Level {
    let limit = LIMIT.load(Ordering::Relaxed);
    #[cfg(target_arch = "x86_64")]
    if limit >= Level::Avx2 as u8 && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2") {
        let bf16 = std::is_x86_feature_detected!("avx512bf16")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512dq");
        return if limit >= Level::Avx512Bf16 as u8 && bf16 { Level::Avx512Bf16 } else { Level::Avx2 };
    }
    let _ = limit;
    Level::Portable
}

/// Runs `task` with the best instruction set this CPU has.
#[inline]
pub fn run<T: Task>(task: T) -> T::Out {
    let level = level();
    // SAFETY (both): `level` detected the features these regions are compiled for.
    #[cfg(target_arch = "x86_64")]
    if T::AVX512 && level == Level::Avx512Bf16 {
        return unsafe { run_avx512_bf16(task) };
    }
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx2 {
        return unsafe { run_avx2(task) };
    }
    let _ = level;
    task.run::<Portable>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<T: Task>(task: T) -> T::Out {
    task.run::<avx2::Avx2<false>>()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512dq,avx512bf16")]
fn run_avx512_bf16<T: Task>(task: T) -> T::Out {
    task.run::<avx2::Avx2<true>>()
}

/// Eight lanes as an array: each operation a loop over the lanes.
#[derive(Clone, Copy)]
struct Portable([f32; 8]);

impl Portable {
    #[inline(always)]
    fn zip(self, o: Portable, f: impl Fn(f32, f32) -> f32) -> Portable {
        let mut r = self.0;
        for (r, o) in r.iter_mut().zip(o.0) {
            *r = f(*r, o);
        }
        Portable(r)
    }
}

impl Add for Portable {
    type Output = Portable;
    #[inline(always)]
    fn add(self, o: Portable) -> Portable {
        self.zip(o, |a, b| a + b)
    }
}

impl Sub for Portable {
    type Output = Portable;
    #[inline(always)]
    fn sub(self, o: Portable) -> Portable {
        self.zip(o, |a, b| a - b)
    }
}

impl Mul for Portable {
    type Output = Portable;
    #[inline(always)]
    fn mul(self, o: Portable) -> Portable {
        self.zip(o, |a, b| a * b)
    }
}

impl Neg for Portable {
    type Output = Portable;
    #[inline(always)]
    fn neg(self) -> Portable {
        self.zip(self, |a, _| -a)
    }
}

impl Num for Portable {
    #[inline(always)]
    fn splat(x: f32) -> Portable {
        Portable([x; 8])
    }
    #[inline(always)]
    fn mul_add(self, a: Portable, b: Portable) -> Portable {
        let mut r = self.0;
        for ((r, a), b) in r.iter_mut().zip(a.0).zip(b.0) {
            *r = r.mul_add(a, b);
        }
        Portable(r)
    }
}

impl Vector for Portable {
    #[inline(always)]
    fn load(x: &[f32; 8]) -> Portable {
        Portable(*x)
    }
    #[inline(always)]
    fn store(self, to: &mut [f32; 8]) {
        *to = self.0;
    }
    #[inline(always)]
    fn fold(self) -> f32 {
        let h = self.0;
        ((h[0] + h[4]) + (h[2] + h[6])) + ((h[1] + h[5]) + (h[3] + h[7]))
    }
    #[inline(always)]
    fn sqrt_f64(mut x: [f64; 8]) -> [f64; 8] {
        for x in &mut x {
            *x = x.sqrt();
        }
        x
    }
    #[inline(always)]
    fn div_f64(mut a: [f64; 8], b: [f64; 8]) -> [f64; 8] {
        for (a, b) in a.iter_mut().zip(b) {
            *a /= b;
        }
        a
    }
    #[inline(always)]
    fn to_bf16(self) -> [u16; 8] {
        let mut r = [0; 8];
        for (r, x) in r.iter_mut().zip(self.0) {
            *r = crate::cpu::bf16_bits_rne(x);
        }
        r
    }
    #[inline(always)]
    fn project_f64(self, r: Portable, k: f64) -> (Portable, Portable) {
        let (mut p, mut q) = ([0.0; 8], [0.0; 8]);
        for (((p, q), c), r) in p.iter_mut().zip(&mut q).zip(self.0).zip(r.0) {
            let par = k * c as f64;
            (*p, *q) = (par as f32, (r as f64 - par) as f32);
        }
        (Portable(p), Portable(q))
    }
}

/// The AVX2 vector (`Avx2<true>` also rounds to bf16 with AVX-512 BF16).
/// Private to this file: its values are made only inside a task that [`run`]
/// dispatched after detecting its features, so its intrinsics always run on a
/// CPU that has them (that makes its `unsafe` sound), and in that region they
/// inline into the task's code.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Num, Vector};
    use std::arch::x86_64::*;
    use std::ops::{Add, Mul, Neg, Sub};

    #[derive(Clone, Copy)]
    pub(super) struct Avx2<const HW_BF16: bool>(__m256);

    impl<const B: bool> Avx2<B> {
        /// In the AVX-512 BF16 region, one instruction rounds as we do
        /// (nearest even, NaNs quieted) except that it flushes subnormal
        /// inputs to zero: a vector with a subnormal gets `None` and takes
        /// [`Self::bf16_in_low_halves`]. (One `vfpclassps` finds them:
        /// category 0x20 is "denormal".)
        #[inline(always)]
        fn hardware_bf16(self) -> Option<__m128i> {
            // SAFETY: see the type's comment (`B` only in the AVX-512 BF16 region).
            unsafe {
                if B && _mm256_fpclass_ps_mask::<0x20>(self.0) == 0 {
                    return Some(std::mem::transmute::<__m128bh, __m128i>(_mm256_cvtneps_pbh(self.0)));
                }
            }
            None
        }

        /// Each lane's bf16 bits in its low 16 bits (the high 16 zero):
        /// `(bits + 0x7fff + lsb) >> 16`, or `(bits >> 16) | 0x40` for a NaN.
        #[inline(always)]
        fn bf16_in_low_halves(self) -> __m256i {
            // SAFETY: see the type's comment.
            unsafe {
                let high = _mm256_srli_epi32::<16>(_mm256_castps_si256(self.0));
                let quiet = _mm256_or_si256(high, _mm256_set1_epi32(0x40));
                let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(self.0, self.0));
                _mm256_blendv_epi8(self.bf16_rounded_in_low_halves(), quiet, nan)
            }
        }

        /// [`Self::bf16_in_low_halves`] for lanes that are not NaN.
        #[inline(always)]
        fn bf16_rounded_in_low_halves(self) -> __m256i {
            // SAFETY: see the type's comment.
            unsafe {
                let bits = _mm256_castps_si256(self.0);
                let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
                let bias = _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff));
                _mm256_srli_epi32::<16>(_mm256_add_epi32(bits, bias))
            }
        }

        /// Both vectors' lanes rounded ([`Self::bf16_in_low_halves`]) and
        /// packed within 128-bit halves. One compare finds a NaN in either,
        /// so the NaN blend is paid only where there is one (a tenth of a
        /// bf16 apply's instructions).
        #[inline(always)]
        fn bf16_packed(lo: Self, hi: Self) -> __m256i {
            // SAFETY: see the type's comment.
            unsafe {
                let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(lo.0, hi.0);
                if _mm256_testz_ps(nan, nan) == 1 {
                    _mm256_packus_epi32(lo.bf16_rounded_in_low_halves(), hi.bf16_rounded_in_low_halves())
                } else {
                    _mm256_packus_epi32(lo.bf16_in_low_halves(), hi.bf16_in_low_halves())
                }
            }
        }
    }

    impl<const B: bool> Add for Avx2<B> {
        type Output = Self;
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            // SAFETY (every block below): see the type's comment.
            Self(unsafe { _mm256_add_ps(self.0, o.0) })
        }
    }

    impl<const B: bool> Sub for Avx2<B> {
        type Output = Self;
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            Self(unsafe { _mm256_sub_ps(self.0, o.0) })
        }
    }

    impl<const B: bool> Mul for Avx2<B> {
        type Output = Self;
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            Self(unsafe { _mm256_mul_ps(self.0, o.0) })
        }
    }

    impl<const B: bool> Neg for Avx2<B> {
        type Output = Self;
        #[inline(always)]
        fn neg(self) -> Self {
            // Flips the sign bit, as scalar negation does (NaNs included).
            Self(unsafe { _mm256_xor_ps(self.0, _mm256_set1_ps(-0.0)) })
        }
    }

    impl<const B: bool> Num for Avx2<B> {
        #[inline(always)]
        fn splat(x: f32) -> Self {
            Self(unsafe { _mm256_set1_ps(x) })
        }
        #[inline(always)]
        fn mul_add(self, a: Self, b: Self) -> Self {
            Self(unsafe { _mm256_fmadd_ps(self.0, a.0, b.0) })
        }
    }

    impl<const B: bool> Vector for Avx2<B> {
        #[inline(always)]
        fn load(x: &[f32; 8]) -> Self {
            Self(unsafe { _mm256_loadu_ps(x.as_ptr()) })
        }
        #[inline(always)]
        fn store(self, to: &mut [f32; 8]) {
            unsafe { _mm256_storeu_ps(to.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn fold(self) -> f32 {
            unsafe {
                // [l0+l4, l1+l5, l2+l6, l3+l7], then [.0+.2, .1+.3], then .0+.1.
                let quad = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps(self.0, 1));
                let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
                _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
            }
        }
        #[inline(always)]
        fn fold8(v: [Self; 8]) -> [f32; 8] {
            let mut r = [0.0; 8];
            unsafe {
                // Each sum keeps `fold`'s operands (the lower lanes first).
                // [l0+l4, l1+l5, l2+l6, l3+l7] of two vectors, one per half.
                let quads = |a: Self, b: Self| {
                    let low = _mm256_permute2f128_ps::<0x20>(a.0, b.0);
                    let high = _mm256_permute2f128_ps::<0x31>(a.0, b.0);
                    _mm256_add_ps(low, high)
                };
                let (q01, q23, q45, q67) = (quads(v[0], v[1]), quads(v[2], v[3]), quads(v[4], v[5]), quads(v[6], v[7]));
                // [.0+.2, .1+.3] of four: [0, 0, 2, 2 | 1, 1, 3, 3] (and 4–7).
                let pairs = |a: __m256, b: __m256| {
                    let first = _mm256_shuffle_ps::<0b01_00_01_00>(a, b);
                    let second = _mm256_shuffle_ps::<0b11_10_11_10>(a, b);
                    _mm256_add_ps(first, second)
                };
                let (p0123, p4567) = (pairs(q01, q23), pairs(q45, q67));
                // .0+.1 of eight: [0, 2, 4, 6 | 1, 3, 5, 7], then in order.
                let first = _mm256_shuffle_ps::<0b10_00_10_00>(p0123, p4567);
                let second = _mm256_shuffle_ps::<0b11_01_11_01>(p0123, p4567);
                let sums = _mm256_add_ps(first, second);
                let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
                _mm256_storeu_ps(r.as_mut_ptr(), _mm256_permutevar8x32_ps(sums, order));
            }
            r
        }
        #[inline(always)]
        fn fold_halves(lo: Self, hi: Self) -> Self {
            // [lo's low half | hi's low half] + [lo's high half | hi's high half].
            unsafe {
                let low = _mm256_permute2f128_ps::<0x20>(lo.0, hi.0);
                let high = _mm256_permute2f128_ps::<0x31>(lo.0, hi.0);
                Self(_mm256_add_ps(low, high))
            }
        }
        #[inline(always)]
        fn sqrt_f64(x: [f64; 8]) -> [f64; 8] {
            // Plain offsets, not iterators: in a large task the inliner may
            // leave an iterator's constructor as a call outside these features.
            let mut r = [0.0; 8];
            unsafe {
                let (x, out) = (x.as_ptr(), r.as_mut_ptr());
                _mm256_storeu_pd(out, _mm256_sqrt_pd(_mm256_loadu_pd(x)));
                _mm256_storeu_pd(out.add(4), _mm256_sqrt_pd(_mm256_loadu_pd(x.add(4))));
            }
            r
        }
        #[inline(always)]
        fn div_f64(a: [f64; 8], b: [f64; 8]) -> [f64; 8] {
            let mut r = [0.0; 8];
            unsafe {
                let (a, b, out) = (a.as_ptr(), b.as_ptr(), r.as_mut_ptr());
                _mm256_storeu_pd(out, _mm256_div_pd(_mm256_loadu_pd(a), _mm256_loadu_pd(b)));
                _mm256_storeu_pd(out.add(4), _mm256_div_pd(_mm256_loadu_pd(a.add(4)), _mm256_loadu_pd(b.add(4))));
            }
            r
        }
        #[inline(always)]
        fn to_bf16(self) -> [u16; 8] {
            let mut r = [0u16; 8];
            unsafe {
                if let Some(h) = self.hardware_bf16() {
                    _mm_storeu_si128(r.as_mut_ptr().cast(), h);
                    return r;
                }
                let bits = self.bf16_in_low_halves();
                let packed = _mm_packus_epi32(_mm256_castsi256_si128(bits), _mm256_extracti128_si256::<1>(bits));
                _mm_storeu_si128(r.as_mut_ptr().cast(), packed);
            }
            r
        }
        #[inline(always)]
        fn to_bf16_pair(lo: Self, hi: Self) -> [u16; 16] {
            let mut r = [0u16; 16];
            unsafe {
                if let (Some(l), Some(h)) = (lo.hardware_bf16(), hi.hardware_bf16()) {
                    _mm256_storeu_si256(r.as_mut_ptr().cast(), _mm256_set_m128i(h, l));
                    return r;
                }
                // The pack works within 128-bit halves ([lo 0–3, hi 0–3, lo 4–7,
                // hi 4–7]); the permute puts the four quarters back in order.
                let packed = Self::bf16_packed(lo, hi);
                _mm256_storeu_si256(r.as_mut_ptr().cast(), _mm256_permute4x64_epi64::<0b11_01_10_00>(packed));
            }
            r
        }
        #[inline(always)]
        fn from_bf16_split(x: &[u16; 16]) -> (Self, Self) {
            unsafe {
                // Zero below each bf16, within each 128-bit half: the f32 it is.
                let v = _mm256_loadu_si256(x.as_ptr().cast());
                let zero = _mm256_setzero_si256();
                let lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, v));
                let hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, v));
                (Self(lo), Self(hi))
            }
        }
        #[inline(always)]
        fn load_split(x: &[f32; 16]) -> (Self, Self) {
            unsafe {
                let p = x.as_ptr();
                (Self(_mm256_loadu2_m128(p.add(8), p)), Self(_mm256_loadu2_m128(p.add(12), p.add(4))))
            }
        }
        #[inline(always)]
        fn to_bf16_split(lo: Self, hi: Self) -> [u16; 16] {
            let mut r = [0u16; 16];
            unsafe {
                if let (Some(l), Some(h)) = (lo.hardware_bf16(), hi.hardware_bf16()) {
                    // l: elements 0–3, 8–11; h: 4–7, 12–15.
                    let (first, second) = (_mm_unpacklo_epi64(l, h), _mm_unpackhi_epi64(l, h));
                    _mm256_storeu_si256(r.as_mut_ptr().cast(), _mm256_set_m128i(second, first));
                    return r;
                }
                // The pack within 128-bit halves puts them in element order.
                _mm256_storeu_si256(r.as_mut_ptr().cast(), Self::bf16_packed(lo, hi));
            }
            r
        }
        #[inline(always)]
        fn project_f64(self, r: Self, k: f64) -> (Self, Self) {
            // Each half widened to four f64 (exact), multiplied and subtracted
            // there, rounded back (nearest even, as `as f32`). No closures: they
            // would compile outside this region's features.
            unsafe {
                let k = _mm256_set1_pd(k);
                let (c_lo, c_hi) = (_mm256_castps256_ps128(self.0), _mm256_extractf128_ps::<1>(self.0));
                let (r_lo, r_hi) = (_mm256_castps256_ps128(r.0), _mm256_extractf128_ps::<1>(r.0));
                let p_lo = _mm256_mul_pd(k, _mm256_cvtps_pd(c_lo));
                let p_hi = _mm256_mul_pd(k, _mm256_cvtps_pd(c_hi));
                let q_lo = _mm256_sub_pd(_mm256_cvtps_pd(r_lo), p_lo);
                let q_hi = _mm256_sub_pd(_mm256_cvtps_pd(r_hi), p_hi);
                let p = _mm256_set_m128(_mm256_cvtpd_ps(p_hi), _mm256_cvtpd_ps(p_lo));
                let q = _mm256_set_m128(_mm256_cvtpd_ps(q_hi), _mm256_cvtpd_ps(q_lo));
                (Self(p), Self(q))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;

    struct Fold([f32; 8], [f64; 8], [f32; 8], [f32; 8]);

    impl Task for Fold {
        const AVX512: bool = true;
        type Out = (f32, [f32; 8], [f64; 8], [[u16; 8]; 2], [u16; 16], [[f32; 8]; 2], ([u16; 16], [[f32; 8]; 2]));
        #[inline(always)]
        fn run<V: Vector>(self) -> Self::Out {
            let (v, w) = (V::load(&self.0), V::splat(-1.5));
            let mut out = [0.0; 8];
            (v.mul_add(w, -v) * v - w + v).store(&mut out);
            let rounded = [V::load(&self.2).to_bf16(), V::load(&self.3).to_bf16()];
            let pair = V::to_bf16_pair(V::load(&self.2), V::load(&self.3));
            let mut projected = [[0.0; 8]; 2];
            let (p, q) = v.project_f64(V::load(&self.2), 0.3);
            p.store(&mut projected[0]);
            q.store(&mut projected[1]);
            // The split pair: widened from bf16 bits, multiplied by one (exact), rounded back.
            let mut bits = [0u16; 16];
            bits[..8].copy_from_slice(&rounded[0]);
            bits[8..].copy_from_slice(&rounded[1]);
            let (lo, hi) = V::from_bf16_split(&bits);
            let mut widened = [[0.0; 8]; 2];
            lo.store(&mut widened[0]);
            hi.store(&mut widened[1]);
            // The same lanes loaded from f32 in split order.
            let mut values = [0.0f32; 16];
            for (v, b) in values.iter_mut().zip(bits) {
                *v = f32::from_bits((b as u32) << 16);
            }
            let (l, h) = V::load_split(&values);
            let mut loaded = [[0.0; 8]; 2];
            l.store(&mut loaded[0]);
            h.store(&mut loaded[1]);
            assert_eq!(loaded.map(|v| v.map(f32::to_bits)), widened.map(|v| v.map(f32::to_bits)));
            let split = (V::to_bf16_split(lo * V::splat(1.0), hi * V::splat(1.0)), widened);
            (v.fold(), out, V::div_f64(V::sqrt_f64(self.1.map(f64::abs)), self.1), rounded, pair, projected, split)
        }
    }

    /// Two vectors rounded to bf16 together, in element order and from split order.
    struct RoundPair([f32; 8], [f32; 8]);

    impl Task for RoundPair {
        const AVX512: bool = true;
        type Out = ([u16; 16], [u16; 16]);
        #[inline(always)]
        fn run<V: Vector>(self) -> Self::Out {
            let (lo, hi) = (V::load(&self.0), V::load(&self.1));
            (V::to_bf16_pair(lo, hi), V::to_bf16_split(lo, hi))
        }
    }

    /// Pairs rounded together take one path when neither has a NaN and
    /// another when either has one, and at the AVX-512 BF16 level one
    /// instruction per vector without a subnormal: all are the scalar
    /// rounding, lane by lane (at the level set now).
    fn pairs_round_as_the_scalar_rounding(level: Level) {
        let tie = |k: u32| f32::from_bits(0x3f80_0000 | (k << 15));
        let finite = [tie(1), -tie(3), 1e-40, -0.0, f32::MAX, f32::NEG_INFINITY, 3.0e38, -1.0 / 3.0];
        let other = [0.0, 1.0e-45, tie(5), -tie(7), 65504.0, f32::INFINITY, -2.5e-38, 1.0 / 7.0];
        let mut one_nan = other;
        one_nan[6] = -f32::NAN;
        let mut signalling = finite;
        signalling[2] = f32::from_bits(0x7f80_0001);
        // No subnormal in either vector: the AVX-512 BF16 level rounds each in one instruction.
        let normal = [tie(1), -tie(3), f32::MAX, -0.0, f32::NEG_INFINITY, 3.0e38, -1.0 / 3.0, 1.5e-38];
        let normal_nans = [0.0, tie(5), -tie(7), -f32::NAN, f32::INFINITY, f32::from_bits(0x7f80_0001), 65504.0, 1.0];
        let pairs =
            [(finite, other), (finite, one_nan), (signalling, other), (one_nan, signalling), (normal, normal_nans)];
        for (a, b) in pairs {
            let (pair, split) = run(RoundPair(black_box(a), black_box(b)));
            let in_order: Vec<u16> = a.iter().chain(&b).map(|&x| crate::cpu::bf16_bits_rne(x)).collect();
            assert_eq!(pair.to_vec(), in_order, "{level:?}");
            let from: Vec<u16> = from_split(a, b).map(crate::cpu::bf16_bits_rne).to_vec();
            assert_eq!(split.to_vec(), from, "{level:?}");
        }
    }

    struct FoldEight([[f32; 8]; 8]);

    impl Task for FoldEight {
        type Out = [f32; 8];
        #[inline(always)]
        fn run<V: Vector>(self) -> [f32; 8] {
            V::fold8(self.0.map(|v| V::load(&v)))
        }
    }

    struct FoldHalves([f32; 8], [f32; 8]);

    impl Task for FoldHalves {
        type Out = [f32; 8];
        #[inline(always)]
        fn run<V: Vector>(self) -> [f32; 8] {
            let mut r = [0.0; 8];
            V::fold_halves(V::load(&self.0), V::load(&self.1)).store(&mut r);
            r
        }
    }

    /// Eight vectors for `fold8`, and each one's `fold` in scalar steps.
    fn fold8_case() -> ([[f32; 8]; 8], [f32; 8]) {
        // Magnitudes far apart (each addition rounds), signed zeros, infinities
        // and NaNs (which NaN a sum of two returns is not specified: any NaN is one).
        let nan = |payload: u32| f32::from_bits(0x7fc0_0000 | payload);
        let mut v = [[0.0f32; 8]; 8];
        let mut state = 0x2545_f491u32;
        for (g, lanes) in v.iter_mut().enumerate() {
            for (l, x) in lanes.iter_mut().enumerate() {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *x = (state >> 8) as f32 / (1 << 24) as f32 * 10f32.powi((l as i32 * 3 + g as i32) % 13 - 6);
                if state.is_multiple_of(3) {
                    *x = -*x;
                }
            }
        }
        v[1] = [-0.0; 8];
        v[2][3] = f32::INFINITY;
        v[2][7] = f32::NEG_INFINITY;
        v[3][0] = nan(1);
        v[3][4] = nan(2);
        v[4][1] = nan(3);
        v[4][5] = -nan(4);
        v[5][6] = nan(5);
        v[5][2] = nan(6);
        // Computed at run time (constant folding may give a NaN other bits).
        (v, black_box(v).map(|h| ((h[0] + h[4]) + (h[2] + h[6])) + ((h[1] + h[5]) + (h[3] + h[7]))))
    }

    #[test]
    fn every_level_computes_the_scalar_bits() {
        let x = [1e-30, -3.25, 7.0, f32::MAX, -0.0, 2.5e-38, 1.0 / 3.0, -1e7];
        let d = [1e-300, -3.25, 7.0, f64::MAX, -5e-324, 2.0, 1.0 / 3.0, -1e7];
        // NaNs, infinity, ties to even (1 + 2⁻⁸ down, 1 + 3·2⁻⁸ up), a subnormal, the largest f32.
        let tie = |k: u32| f32::from_bits(0x3f80_0000 | (k << 15));
        let r = [f32::NAN, -f32::NAN, f32::NEG_INFINITY, tie(1), tie(3), -0.0, 1e-40, f32::MAX];
        // The same without the subnormal (a signalling NaN and the smallest normal in its place),
        // so that the hardware conversion rounds the whole vector.
        let normal = [f32::from_bits(0x7f80_0001), 1.1754944e-38, -1e-38, tie(5), -tie(7), 0.0, 65504.0, -f32::MAX];
        let h = x;
        let fold = ((h[0] + h[4]) + (h[2] + h[6])) + ((h[1] + h[5]) + (h[3] + h[7]));
        let each = x.map(|v| (v.mul_add(-1.5, -v) * v + 1.5 + v).to_bits());
        let q = d.map(|d| (d.abs().sqrt() / d).to_bits());
        let par = x.map(|c| 0.3 * c as f64);
        let p = par.map(|p| (p as f32).to_bits());
        let perp: Vec<u32> = r.iter().zip(par).map(|(r, p)| ((*r as f64 - p) as f32).to_bits()).collect();
        let bf16 = [r.map(crate::cpu::bf16_bits_rne), normal.map(crate::cpu::bf16_bits_rne)];
        let (eight, folds) = fold8_case();
        let best = level();
        for level in Level::ALL {
            set_limit(level);
            // Only this test sets the limit in this crate's tests.
            assert_eq!(super::level(), level.min(best));
            let (f, out, quotients, rounded, pair, projected, split) =
                run(Fold(black_box(x), black_box(d), black_box(r), black_box(normal)));
            assert_eq!(split.0, pair, "{level:?}");
            let lanes: Vec<u32> = split.1.concat().iter().map(|x| x.to_bits()).collect();
            let expected: Vec<u32> = SPLIT.iter().map(|&e| (pair[e] as u32) << 16).collect();
            assert_eq!(lanes, expected, "{level:?}");
            assert_eq!(projected[0].map(f32::to_bits), p, "{level:?}");
            assert_eq!(projected[1].map(f32::to_bits).to_vec(), perp, "{level:?}");
            assert_eq!(rounded, bf16, "{level:?}");
            assert_eq!(pair[..8], bf16[0], "{level:?}");
            assert_eq!(pair[8..], bf16[1], "{level:?}");
            pairs_round_as_the_scalar_rounding(level);
            let bits = |x: f32| if x.is_nan() { f32::NAN.to_bits() } else { x.to_bits() };
            assert_eq!(run(FoldEight(black_box(eight))).map(bits), folds.map(bits), "{level:?}");
            // Sixteen lanes in split order folded to eight: element i plus element i + 8.
            let halves = run(FoldHalves(black_box(eight[0]), black_box(eight[2])));
            let sixteen = from_split(eight[0], eight[2]);
            let expected: Vec<u32> = (0..8).map(|i| bits(sixteen[i] + sixteen[i + 8])).collect();
            assert_eq!(halves.map(bits).to_vec(), expected, "{level:?}");
            assert_eq!(f.to_bits(), fold.to_bits(), "{level:?}");
            assert_eq!(out.map(f32::to_bits), each, "{level:?}");
            assert_eq!(quotients.map(f64::to_bits), q, "{level:?}");
        }
        set_limit(Level::Avx512Bf16);
    }
}
