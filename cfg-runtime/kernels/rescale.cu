// Fused combine + whole-group rescale for contiguous groups (per sample or
// whole tensor): std rescale, norm cap and renorm, with g = form 0 and
// r = form 1 of `p` computed from the branches.
//
// Two passes (any size): `group_stats_*` reduces every segment (one block per
// segment, canonical lanes) and its last block turns the segment sums into
// group factors; `group_apply_*` recomputes g and scales it.
// One pass (`group_coop_*`, cooperative launch, one block per segment, every
// block resident): g stays in registers across two grid barriers.

struct GroupArgs {
    FactorArgs f;
    i64 groups;
    i64 len;       // elements per group
    i64 nseg;      // segments per group
    i64 n;         // groups * len
};

// The four sums of a segment, in order: sum r, |r|^2, sum g, |g|^2.
#define FUSED_SUMS 4

// Which of the four sums a factor kind reads, in its order.
__device__ __forceinline__ int fused_sum(int kind, int q) {
    if (kind == K_STD) return q;
    return q == 0 ? 1 : 3;
}

// Reduces this block's segment. Keeps g in `keep` (PER_LANE values) when given.
template <typename I>
__device__ __forceinline__ void segment_sums(const Forms& p, const GroupArgs& a, float* segs, float* keep) {
    __shared__ float sh[LANES];
    const i64 group = blockIdx.x / a.nseg, seg = blockIdx.x % a.nseg;
    const i64 start = group * a.len + seg * SEGMENT + threadIdx.x;
    const i64 left = a.len - seg * SEGMENT - threadIdx.x;   // elements of this lane: m*LANES < left
    float acc[PER_LANE][2];
#pragma unroll
    for (int m = 0; m < PER_LANE; ++m) { acc[m][0] = 0.0f; acc[m][1] = 0.0f; }
    for (int b = 0; b < p.branches; ++b) {
        const I* x = (const I*)p.x[b];
        // All of the branch's loads first, unconditionally (past the group's
        // end a lane reads the group's first element and ignores it), so that
        // they are in flight at once.
        float xv[PER_LANE];
#pragma unroll
        for (int m = 0; m < PER_LANE; ++m)
            xv[m] = to_f32(x[(i64)LANES * m < left ? start + (i64)LANES * m : group * a.len]);
#pragma unroll
        for (int m = 0; m < PER_LANE; ++m)
            if ((i64)LANES * m < left) accumulate<2>(p, b, xv[m], acc[m]);
    }
    float r1 = 0.0f, rr = 0.0f, g1 = 0.0f, gg = 0.0f;
#pragma unroll
    for (int m = 0; m < PER_LANE; ++m) {
        if ((i64)LANES * m < left) {
            const float gv = acc[m][0], rv = acc[m][1];
            r1 = fma32(rv, 1.0f, r1);
            rr = fma32(rv, rv, rr);
            g1 = fma32(gv, 1.0f, g1);
            gg = fma32(gv, gv, gg);
        }
        if (keep) keep[m] = acc[m][0];
    }
    const float sums[FUSED_SUMS] = {block_fold<float>(r1, sh), block_fold<float>(rr, sh), block_fold<float>(g1, sh),
                                    block_fold<float>(gg, sh)};
    if (threadIdx.x == 0) {
#pragma unroll
        for (int q = 0; q < FUSED_SUMS; ++q) segs[(q * a.groups + group) * a.nseg + seg] = sums[q];
    }
}

// The sum of `count` segment sums in f64, in segment order. Other blocks wrote
// them: read through L2 (ld.cg), 32 at a time so the loads overlap.
__device__ __forceinline__ double segment_total(const float* s, i64 count) {
    constexpr int BATCH = 32;
    double total = 0.0;
    for (i64 i0 = 0; i0 < count; i0 += BATCH) {
        float v[BATCH];
#pragma unroll
        for (int j = 0; j < BATCH; ++j) v[j] = __ldcg(s + (i0 + j < count ? i0 + j : 0));
#pragma unroll
        for (int j = 0; j < BATCH; ++j)
            if (i0 + j < count) total += (double)v[j];
    }
    return total;
}

// One block (every thread) computes every group's factor from the segment
// sums: a thread per (group, sum), then a thread per group.
__device__ __forceinline__ void group_factors(const GroupArgs& a, const float* segs, double* factors) {
    __shared__ double totals[LANES];
    const int n = kind_sums(a.f.kind);
    const int q = threadIdx.x % MAX_DOTS;
    for (i64 first = 0; first < a.groups; first += LANES / MAX_DOTS) {
        const i64 group = first + threadIdx.x / MAX_DOTS;
        double total = 0.0;
        if (group < a.groups && q < n)
            total = segment_total(segs + (fused_sum(a.f.kind, q) * a.groups + group) * a.nseg, a.nseg);
        totals[threadIdx.x] = total;
        __syncthreads();
        if (q == 0 && group < a.groups) factors[group] = group_factor(a.f, &totals[threadIdx.x]);
        __syncthreads();
    }
}

template <typename I>
__device__ __forceinline__ void group_stats_body(const Forms& p0, const GroupArgs& a, float* segs, double* factors,
                                                 u32* ticket) {
    SHARED_FORMS(p, p0)
    __shared__ bool last;
    segment_sums<I>(p, a, segs, 0);
    if (threadIdx.x == 0) {
        __threadfence();
        const u32 blocks = gridDim.x;
        last = atomicAdd(ticket, 1u) == blocks - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    group_factors(a, segs, factors);
    if (threadIdx.x == 0) *ticket = 0;   // ready for the next launch
}

template <typename I, typename O>
__device__ __forceinline__ void group_apply_body(const Forms& p0, const GroupArgs& a, const double* factors, O* out, int vec) {
    SHARED_FORMS(p, p0)
    const i64 chunks = (a.n + 7) / 8;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        const i64 base = c * 8;
        const bool full = vec && base + 8 <= a.n;
        float acc[8][1];
        combine8<I, 1>(p, base, a.n, full, acc);
        // One division per eight elements: they span at most two groups when len >= 8.
        const i64 g0 = base / a.len, next = (g0 + 1) * a.len;
        const float f0 = (float)factors[g0 < a.groups ? g0 : a.groups - 1];
        const float f1 = (float)factors[g0 + 1 < a.groups ? g0 + 1 : a.groups - 1];
        float r[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            float f;
            if (a.len >= 8) {
                f = base + e < next ? f0 : f1;
            } else {
                const i64 group = (base + e) / a.len;
                f = (float)factors[group < a.groups ? group : a.groups - 1];
            }
            r[e] = mul32(acc[e][0], f);
        }
        if (full) {
            store8<O>(out, base, r);
        } else {
            for (int e = 0; e < 8; ++e)
                if (base + e < a.n) out[base + e] = from_f32<O>(r[e]);
        }
    }
}

template <typename I, typename O>
__device__ __forceinline__ void group_coop_body(const Forms& p0, const GroupArgs& a, float* segs, double* factors,
                                                u32* barrier, O* out) {
    SHARED_FORMS(p, p0)
    float keep[PER_LANE];
    segment_sums<I>(p, a, segs, keep);
    grid_barrier(barrier);
    if (blockIdx.x == 0) group_factors(a, segs, factors);
    grid_barrier(barrier);
    const i64 group = blockIdx.x / a.nseg, seg = blockIdx.x % a.nseg;
    const float f = (float)((const volatile double*)factors)[group];
#pragma unroll
    for (int m = 0; m < PER_LANE; ++m) {
        const i64 k = seg * SEGMENT + threadIdx.x + (i64)LANES * m;
        if (k < a.len) out[group * a.len + k] = from_f32<O>(mul32(keep[m], f));
    }
}

// The reducing kernels ask for two resident blocks per multiprocessor (at most
// 128 registers), as renorm_token.cu's do, for the same reason.
#define MAKE_GROUP(IN, OUT, I, O) \
    extern "C" __global__ void __launch_bounds__(256) group_apply_##IN##_##OUT(const Forms p, const GroupArgs a, const double* factors, O* out, int vec) { \
        group_apply_body<I, O>(p, a, factors, out, vec); \
    } \
    extern "C" __global__ void __launch_bounds__(256, 2) group_coop_##IN##_##OUT(const Forms p, const GroupArgs a, float* segs, double* factors, u32* barrier, O* out) { \
        group_coop_body<I, O>(p, a, segs, factors, barrier, out); \
    }
FOR_EACH_SAME(MAKE_GROUP)

#define MAKE_STATS(IN, I) \
    extern "C" __global__ void __launch_bounds__(256, 2) group_stats_##IN(const Forms p, const GroupArgs a, float* segs, double* factors, u32* ticket) { \
        group_stats_body<I>(p, a, segs, factors, ticket); \
    }
MAKE_STATS(f32, float)
MAKE_STATS(f16, f16)
MAKE_STATS(bf16, bf16)
