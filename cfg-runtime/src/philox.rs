//! Philox4x32-10 (Salmon et al. 2011), the counter-based generator behind every
//! random number the runtime draws, so that all ranks draw the same noise with
//! no communication.
//!
//! The exact mapping (a CUDA kernel must reproduce the integers bit for bit):
//! - key `k = [seed as u32, (seed >> 32) as u32]`;
//! - counter `c = [block as u32, (block >> 32) as u32, step, stream]`, where
//!   element `i` of a tensor lies in `block = i / 4`, lane `i % 4` of the
//!   generator's output `[x0, x1, x2, x3]`; `step` is the sampling step
//!   ([`INIT_STEP`] for the initial latents) and `stream` the output's index;
//! - 10 rounds; each round maps `(c0, c1, c2, c3)` to
//!   `(hi(M1·c2) ^ c1 ^ k0, lo(M1·c2), hi(M0·c0) ^ c3 ^ k1, lo(M0·c0))`,
//!   and the key is bumped by `(W0, W1)` between rounds (wrapping);
//! - normals by Box–Muller in f64 on the pairs `(x0, x1)` and `(x2, x3)`:
//!   `u1 = ((a >> 8) + 1)·2⁻²⁴ ∈ (0, 1]`, `u2 = (b >> 8)·2⁻²⁴ ∈ [0, 1)`,
//!   `r = sqrt(−2 ln u1)`, lanes `r·cos(2π u2)` and `r·sin(2π u2)`, rounded to f32,
//!   with `ln`, `sin` and `cos` from [`cfg_core::portable_math`] (the CUDA
//!   kernel uses their twins, so the normals are bit-identical there too).

use cfg_core::portable_math;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The `step` counter word of the initial latents.
pub const INIT_STEP: u32 = u32::MAX;

#[inline]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// One Philox4x32-10 block: four random words for `counter` under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

fn box_muller(a: u32, b: u32) -> (f32, f32) {
    let scale = 1.0 / (1u64 << 24) as f64;
    let u1 = ((a >> 8) as f64 + 1.0) * scale;
    let u2 = (b >> 8) as f64 * scale;
    let r = (-2.0 * portable_math::ln(u1)).sqrt();
    let (s, c) = portable_math::sin_cos_turns(u2);
    ((r * c) as f32, (r * s) as f32)
}

/// Standard normals for elements `start..start + out.len()` of the stream
/// `(seed, step, stream)`; element `i` is the same whatever `start` is.
pub fn normals(seed: u64, step: u32, stream: u32, start: usize, out: &mut [f32]) {
    let key = [seed as u32, (seed >> 32) as u32];
    for (j, o) in out.iter_mut().enumerate() {
        let i = start + j;
        let block = (i / 4) as u64;
        let x = philox4x32_10([block as u32, (block >> 32) as u32, step, stream], key);
        let (z0, z1) = box_muller(x[0], x[1]);
        let (z2, z3) = box_muller(x[2], x[3]);
        *o = [z0, z1, z2, z3][i % 4];
    }
}

/// `n` standard normals of the stream `(seed, step, stream)`, in parallel.
pub fn normal_vec(seed: u64, step: u32, stream: u32, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    cfg_core::par::for_each_chunk_mut(&mut out, 4096, |c, chunk| normals(seed, step, stream, c * 4096, chunk));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers_of_random123() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn an_element_does_not_depend_on_where_the_slice_starts() {
        let all = normal_vec(7, 3, 1, 10_000);
        let mut part = vec![0.0; 37];
        normals(7, 3, 1, 4097, &mut part);
        assert_eq!(&all[4097..4097 + 37], part.as_slice());
    }

    #[test]
    fn normals_have_unit_moments() {
        let v = normal_vec(1, 0, 0, 200_000);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "{mean} {var}");
    }
}
