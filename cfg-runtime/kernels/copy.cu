// Bench and selftest helpers: a plain copy with the combine's access pattern
// (one of the bandwidths `cfg bench` reports kernels against), a stream hold,
// and poison fills.

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

// Holds the stream for `ns` nanoseconds (one thread): while it runs the host
// queues the measured work, so the timed interval holds no host time.
extern "C" __global__ void hold_ns(u64 ns) {
    u64 start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        __nanosleep(1000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
}

// Fills `n` 16-bit words with a poison pattern (the odd tail of a 16-bit buffer).
extern "C" __global__ void __launch_bounds__(256) poison_u16(u16* dst, i64 n, u16 pattern) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = pattern;
}

// Fills `n` 32-bit words with a poison pattern (selftest writes it before each run).
extern "C" __global__ void __launch_bounds__(256) poison_u32(u32* dst, i64 n, u32 pattern) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = pattern;
}
