// Philox4x32-10, mapped exactly as cfg-runtime/src/philox.rs: key = seed,
// counter = (block lo, block hi, step, stream), element i = lane i % 4 of
// block i / 4. The integers are bit-identical to the CPU generator's.

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

__device__ __forceinline__ uint4 philox4x32_10(uint4 c, u32 k0, u32 k1) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) { k0 += PHILOX_W0; k1 += PHILOX_W1; }
        const u32 hi0 = __umulhi(PHILOX_M0, c.x), lo0 = PHILOX_M0 * c.x;
        const u32 hi1 = __umulhi(PHILOX_M1, c.z), lo1 = PHILOX_M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0);
    }
    return c;
}

__device__ __forceinline__ uint4 philox_block(u64 seed, u32 step, u32 stream, u64 block) {
    return philox4x32_10(make_uint4((u32)block, (u32)(block >> 32), step, stream), (u32)seed, (u32)(seed >> 32));
}

// out[i] = the generator's word for element i.
extern "C" __global__ void __launch_bounds__(256) philox_u32(u64 seed, u32 step, u32 stream, u32* out, i64 n) {
    const i64 blocks = (n + 3) / 4;
    for (i64 b = (i64)blockIdx.x * blockDim.x + threadIdx.x; b < blocks; b += (i64)gridDim.x * blockDim.x) {
        const uint4 x = philox_block(seed, step, stream, (u64)b);
        const u32 w[4] = {x.x, x.y, x.z, x.w};
        for (int l = 0; l < 4 && 4 * b + l < n; ++l) out[4 * b + l] = w[l];
    }
}

// Box-Muller in f64 on (x0, x1) and (x2, x3), as the CPU does, with the
// portable log and sin/cos (portable_math.cu): the CPU's bits.
__device__ __forceinline__ void box_muller(u32 a, u32 b, float* z0, float* z1) {
    const double scale = 1.0 / 16777216.0;
    const double u1 = __dmul_rn(__dadd_rn((double)(a >> 8), 1.0), scale);
    const double u2 = __dmul_rn((double)(b >> 8), scale);
    const double r = __dsqrt_rn(__dmul_rn(-2.0, pm_log(u1)));
    double s, c;
    pm_sin_cos_turns(u2, &s, &c);
    *z0 = (float)__dmul_rn(r, c);
    *z1 = (float)__dmul_rn(r, s);
}

extern "C" __global__ void __launch_bounds__(256) philox_normal_f32(u64 seed, u32 step, u32 stream, float* out, i64 n) {
    const i64 blocks = (n + 3) / 4;
    for (i64 b = (i64)blockIdx.x * blockDim.x + threadIdx.x; b < blocks; b += (i64)gridDim.x * blockDim.x) {
        const uint4 x = philox_block(seed, step, stream, (u64)b);
        float z[4];
        box_muller(x.x, x.y, &z[0], &z[1]);
        box_muller(x.z, x.w, &z[2], &z[3]);
        for (int l = 0; l < 4 && 4 * b + l < n; ++l) out[4 * b + l] = z[l];
    }
}
