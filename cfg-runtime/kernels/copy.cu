// A plain device copy with the combine's access pattern: the bandwidth that
// `cfg bench` reports kernels against.

extern "C" __global__ void __launch_bounds__(256) copy_u16(const u16* src, u16* dst, i64 n, int vec) {
    const i64 chunks = (n + 7) / 8;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        const i64 base = c * 8;
        if (vec && base + 8 <= n) {
            *(uint4*)(dst + base) = *(const uint4*)(src + base);
        } else {
            for (i64 i = base; i < base + 8 && i < n; ++i) dst[i] = src[i];
        }
    }
}

// Fills `n` 32-bit words with a poison pattern (selftest writes it before each run).
extern "C" __global__ void __launch_bounds__(256) poison_u32(u32* dst, i64 n, u32 pattern) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = pattern;
}
