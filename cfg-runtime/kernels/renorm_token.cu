// Fused combine + per-token renorm in one pass: out = g * clamp(|r|/(|g|+eps), lo, hi)
// for each token (last dim, width <= SEGMENT), where g = form 0 and r = form 1
// of `p`. g stays in registers between the reduction and the store.
//
// Canonical order: a token is one segment; lane l (of 256) accumulates
// elements l, l+256, ... with fma. A team of TEAM threads handles a token;
// thread t owns lanes t + TEAM*j (j < 256/TEAM), so the tree steps
// s >= TEAM happen inside a thread, the others across the team.

struct RenormArgs {
    double eps;
    double lo;     // lower clamp (when has_lo)
    double hi;     // upper clamp (when has_hi)
    i64 tokens;
    int width;
    int has_lo;
    int has_hi;
    int pad;
};

// renorm_factor of cfg-core/src/cpu.rs, in f64.
__device__ __forceinline__ float renorm_factor(double nr, double ng, const RenormArgs& a) {
    const double den = ng + a.eps;
    if (den == 0.0) return 1.0f;
    double f = nr / den;
    if (a.has_lo) f = fmax(f, a.lo);
    if (a.has_hi) f = fmin(f, a.hi);
    return (float)f;
}

// Folds the LPT lanes a thread holds (lane t + TEAM*j) over the whole team.
// TEAM is 32 (a warp) or 256 (the block; `sh` has LANES slots).
template <int TEAM>
__device__ __forceinline__ float team_fold(float* lanes, float* sh) {
    constexpr int LPT = LANES / TEAM;
#pragma unroll
    for (int s = LPT / 2; s >= 1; s >>= 1) {
#pragma unroll
        for (int j = 0; j < s; ++j) lanes[j] = lanes[j] + lanes[j + s];
    }
    if (TEAM == LANES) return block_fold<float>(lanes[0], sh);
    float r = lanes[0];
#pragma unroll
    for (int s = 16; s >= 1; s >>= 1) r = r + __shfl_down_sync(0xffffffffu, r, s);
    return __shfl_sync(0xffffffffu, r, 0);
}

template <typename I, typename O, int TEAM>
__device__ __forceinline__ void renorm_token_body(const Forms& p0, O* out, const RenormArgs& a) {
    constexpr int LPT = LANES / TEAM;       // lanes per thread
    constexpr int MMAX = PER_LANE / LPT;    // elements per lane kept in registers
    constexpr int V = MMAX * LPT;           // values per thread (32)
    SHARED_FORMS(p, p0)
    __shared__ float sh[LANES];
    const int teams_per_block = blockDim.x / TEAM;
    const int t = threadIdx.x % TEAM;
    const i64 token = (i64)blockIdx.x * teams_per_block + threadIdx.x / TEAM;
    // Every thread reaches the folds (their barriers and shuffles); dead teams only skip memory.
    const bool live = token < a.tokens;
    const i64 row = (live ? token : 0) * a.width;
    // Value v = m * LPT + j is element k = t + TEAM*j + LANES*m of the token: lane t + TEAM*j.
    float acc[V][2];
#pragma unroll
    for (int v = 0; v < V; ++v) { acc[v][0] = 0.0f; acc[v][1] = 0.0f; }
    for (int b = 0; b < p.branches; ++b) {
        const I* x = (const I*)p.x[b];
        // Every load of the branch first, unconditionally (an element outside
        // the token reads the token's first one, then is ignored), so that
        // they are all in flight at once; a guarded load would wait for each.
        float xv[V];
#pragma unroll
        for (int v = 0; v < V; ++v) {
            const int k = t + TEAM * (v % LPT) + LANES * (v / LPT);
            xv[v] = to_f32(x[row + (live && k < a.width ? k : 0)]);
        }
#pragma unroll
        for (int v = 0; v < V; ++v) {
            const int k = t + TEAM * (v % LPT) + LANES * (v / LPT);
            if (live && k < a.width) accumulate<2>(p, b, xv[v], acc[v]);
        }
    }
    float lg[LPT], lr[LPT];
#pragma unroll
    for (int j = 0; j < LPT; ++j) { lg[j] = 0.0f; lr[j] = 0.0f; }
#pragma unroll
    for (int v = 0; v < V; ++v) {   // in m order for each lane
        const int k = t + TEAM * (v % LPT) + LANES * (v / LPT);
        if (live && k < a.width) {
            lg[v % LPT] = fma32(acc[v][0], acc[v][0], lg[v % LPT]);
            lr[v % LPT] = fma32(acc[v][1], acc[v][1], lr[v % LPT]);
        }
    }
    const double ng = sqrt((double)team_fold<TEAM>(lg, sh));
    const double nr = sqrt((double)team_fold<TEAM>(lr, sh));
    const float f = renorm_factor(nr, ng, a);
    if (!live) return;
#pragma unroll
    for (int v = 0; v < V; ++v) {
        const int k = t + TEAM * (v % LPT) + LANES * (v / LPT);
        if (k < a.width) out[row + k] = from_f32<O>(mul32(acc[v][0], f));
    }
}

// Warp per token: width <= 1024. Block per token: width <= 8192.
// At least two blocks per multiprocessor (at most 128 registers): unbounded,
// the compiler took 232 for the loads in flight, one block per
// multiprocessor, and the kernel was slower (measured on an H200).
#define MAKE_RENORM_TOKEN(IN, OUT, I, O) \
    extern "C" __global__ void __launch_bounds__(256, 2) renorm_token_warp_##IN##_##OUT(const Forms p, O* out, const RenormArgs a) { \
        renorm_token_body<I, O, 32>(p, out, a); \
    } \
    extern "C" __global__ void __launch_bounds__(256, 2) renorm_token_block_##IN##_##OUT(const Forms p, O* out, const RenormArgs a) { \
        renorm_token_body<I, O, 256>(p, out, a); \
    }
FOR_EACH_SAME(MAKE_RENORM_TOKEN)
