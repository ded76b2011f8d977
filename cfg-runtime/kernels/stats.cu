// The generic statistics path over f32 values already on the device:
// per-segment canonical dots, per-group factors, and scaling by group.
// Used for any reduction group (token, channel, sample, tensor) and any width.

// Sources of a dot's operands: the two inputs, the constant one, or x - y (f32).
#define SRC_X 0
#define SRC_Y 1
#define SRC_ONE 2
#define SRC_X_MINUS_Y 3

struct Dots {
    int count;
    int a[MAX_DOTS];
    int b[MAX_DOTS];
};

__device__ __forceinline__ float pick(int src, float x, float y) {
    switch (src) {
    case SRC_X: return x;
    case SRC_Y: return y;
    case SRC_ONE: return 1.0f;
    default: return sub32(x, y);
    }
}

// One block per (group, segment): blockIdx.x = group * nseg + seg. Writes the
// folded f32 lane sum of dot d to out[(d * groups + group) * nseg + seg].
extern "C" __global__ void __launch_bounds__(256) seg_dots_f32(const float* x, const float* y, const Groups g, const Dots d,
                                                               i64 nseg, float* out) {
    __shared__ float sh[LANES];
    const i64 group = blockIdx.x / nseg, seg = blockIdx.x % nseg;
    const i64 start = seg * SEGMENT;
    float lanes[MAX_DOTS] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int m = 0; m < PER_LANE; ++m) {
        const i64 k = start + threadIdx.x + (i64)LANES * m;
        if (k >= g.len) break;
        const i64 i = group_index(g, group, k);
        const float xv = x[i];
        const float yv = y ? y[i] : 0.0f;
#pragma unroll
        for (int q = 0; q < MAX_DOTS; ++q)
            if (q < d.count) lanes[q] = fma32(pick(d.a[q], xv, yv), pick(d.b[q], xv, yv), lanes[q]);
    }
#pragma unroll
    for (int q = 0; q < MAX_DOTS; ++q) {
        if (q >= d.count) break;
        const float s = block_fold<float>(lanes[q], sh);
        if (threadIdx.x == 0) out[(q * g.count + group) * nseg + seg] = s;
    }
}

// The same with products and lanes in f64 (APG's projection): x·y and y·y.
extern "C" __global__ void __launch_bounds__(256) seg_dots_f64(const float* x, const float* y, const Groups g, i64 nseg,
                                                               double* out) {
    __shared__ double sh[LANES];
    const i64 group = blockIdx.x / nseg, seg = blockIdx.x % nseg;
    const i64 start = seg * SEGMENT;
    double xy = 0.0, yy = 0.0;
    for (int m = 0; m < PER_LANE; ++m) {
        const i64 k = start + threadIdx.x + (i64)LANES * m;
        if (k >= g.len) break;
        const i64 i = group_index(g, group, k);
        const double xv = (double)x[i], yv = (double)y[i];
        xy = fma64(xv, yv, xy);
        yy = fma64(yv, yv, yy);
    }
    const double s0 = block_fold<double>(xy, sh);
    const double s1 = block_fold<double>(yy, sh);
    if (threadIdx.x == 0) {
        out[group * nseg + seg] = s0;
        out[(g.count + group) * nseg + seg] = s1;
    }
}

// Sums segment `seg` of dot q for `group`, segments in order, in f64.
__device__ __forceinline__ double sum_segments(const void* segs, int f64, i64 groups, i64 nseg, int q, i64 group) {
    double total = 0.0;
    const i64 base = (q * groups + group) * nseg;
    for (i64 s = 0; s < nseg; ++s)
        total += f64 ? ((const volatile double*)segs)[base + s] : (double)((const volatile float*)segs)[base + s];
    return total;
}

// One thread per group: the group's factor from its segment sums.
extern "C" __global__ void __launch_bounds__(256) finalize(const void* segs, int f64, i64 groups, i64 nseg,
                                                           const FactorArgs a, double* factors) {
    const i64 group = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (group >= groups) return;
    double s[MAX_DOTS];
    const int n = kind_sums(a.kind);
    for (int q = 0; q < MAX_DOTS; ++q) s[q] = q < n ? sum_segments(segs, f64, groups, nseg, q, group) : 0.0;
    factors[group] = group_factor(a, s);
}

// out[i] = x[i] * factor[group_of(i)] in f32, rounded to O.
template <typename O>
__device__ __forceinline__ void scale_body(const float* x, const double* factors, const Groups& g, O* out, i64 n) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = from_f32<O>(mul32(x[i], (float)factors[group_of(g, i)]));
}

#define MAKE_SCALE(OUT, O) \
    extern "C" __global__ void __launch_bounds__(256) scale_groups_##OUT(const float* x, const double* factors, const Groups g, O* out, i64 n) { \
        scale_body<O>(x, factors, g, out, n); \
    }
MAKE_SCALE(f32, float)
MAKE_SCALE(f16, f16)
MAKE_SCALE(bf16, bf16)
