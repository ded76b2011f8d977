// Prelude shared by every kernel file: element types, conversions, the
// canonical lane fold and the parameter structs. The runtime prepends it to
// each kernel file before NVRTC compiles it, so no file includes a header
// (NVRTC 13 has no cuda_fp16.h on its default search path).
//
// Compiled with --fmad=false: the compiler never contracts a*b+c into an fma;
// every fma is written out (__fmaf_rn / __fma_rn), as the CPU evaluator does.

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// The canonical reduction (cfg-core/src/reduce.rs): 256 lanes per 8192-element segment.
#define LANES 256
#define SEGMENT 8192
#define PER_LANE (SEGMENT / LANES)
#define MAX_TERMS 8
#define MAX_FORMS 4
#define MAX_DOTS 4

// 16-bit floats are carried as their bits; only the conversions know the format.
struct bf16 { u16 bits; };
struct f16 { u16 bits; };

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }
__device__ __forceinline__ float to_f32(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}

// Round to nearest even, as half's from_f32 and the CPU evaluator do.
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ f16 from_f32<f16>(float x) {
    f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
    return h;
}
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) {
    bf16 h;
#if __CUDA_ARCH__ >= 800
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));
    // cvt gives the canonical NaN; half keeps the payload's top bits. Match half.
    u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) h.bits = (u16)((u >> 16) | 0x40u);
#else
    u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        h.bits = (u16)((u >> 16) | 0x40u);
    } else {
        h.bits = (u16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
#endif
    return h;
}

__device__ __forceinline__ float fma32(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma64(double a, double b, double c) { return __fma_rn(a, b, c); }
__device__ __forceinline__ float mul32(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float add32(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub32(float a, float b) { return __fsub_rn(a, b); }

// Up to MAX_FORMS linear forms over up to MAX_TERMS branches, evaluated at once.
// Branches are in the program's order; a form's terms are the set bits of its
// mask, visited in branch order (the program keeps terms sorted by branch), so
// `acc = w0*x0; acc = fma(wk, xk, acc)` follows the canonical order: `first`
// is the branch of a form's first term (-1: no term, the form is zero).
struct Forms {
    const void* x[MAX_TERMS];
    float w[MAX_FORMS][MAX_TERMS];
    u32 mask[MAX_FORMS];
    int first[MAX_FORMS];
    int branches;
    int forms;
};

// Kernels copy their Forms into shared memory so that a loop over branches
// (not unrolled: it keeps the code small) can index it.
#define SHARED_FORMS(sp, p) \
    __shared__ Forms sp; \
    if (threadIdx.x == 0) sp = p; \
    __syncthreads();

// Adds branch b's value x to the first NF forms' accumulators.
template <int NF>
__device__ __forceinline__ void accumulate(const Forms& p, int b, float x, float* acc) {
#pragma unroll
    for (int f = 0; f < NF; ++f) {
        if (f < p.forms && ((p.mask[f] >> b) & 1u))
            acc[f] = b == p.first[f] ? mul32(p.w[f][b], x) : fma32(p.w[f][b], x, acc[f]);
    }
}

// Reduction groups (cfg-core Groups): kind 0 = contiguous groups of `len`
// (token, sample, tensor), kind 1 = channel groups (stride `width`).
struct Groups {
    i64 count;
    i64 len;
    i64 width;
    i64 per_sample;
    int channel;
    int pad;
};

__device__ __forceinline__ i64 group_index(const Groups& g, i64 group, i64 k) {
    if (g.channel) return (group / g.width) * g.per_sample + k * g.width + group % g.width;
    return group * g.len + k;
}

__device__ __forceinline__ i64 group_of(const Groups& g, i64 i) {
    if (g.channel) return (i / g.per_sample) * g.width + i % g.width;
    return i / (g.len > 0 ? g.len : 1);
}

// Folds the lanes of a 256-thread block, lane = threadIdx.x, by the canonical
// tree lane[l] += lane[l+s], s = 128..1. The last five steps are warp shuffles
// (lane l receives lane l+s, as the tree does). `sh` holds LANES values.
// Every thread gets the folded value.
template <typename T>
__device__ __forceinline__ T block_fold(T v, T* sh) {
    const int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
#pragma unroll
    for (int s = LANES / 2; s >= 32; s >>= 1) {
        if (t < s) sh[t] = sh[t] + sh[t + s];
        __syncthreads();
    }
    T r = 0;
    if (t < 32) {
        r = sh[t];
#pragma unroll
        for (int s = 16; s >= 1; s >>= 1) r = r + __shfl_down_sync(0xffffffffu, r, s);
        if (t == 0) sh[0] = r;
    }
    __syncthreads();
    r = sh[0];
    __syncthreads();
    return r;
}

// A grid-wide barrier for cooperative launches (every block is resident).
// `state[0]` counts arrivals, `state[1]` is the generation; both start at 0
// and are left ready for the next launch.
__device__ __forceinline__ void grid_barrier(u32* state) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const u32 blocks = gridDim.x * gridDim.y * gridDim.z;
        volatile u32* gen = state + 1;
        const u32 seen = *gen;
        __threadfence();
        if (atomicAdd(state, 1u) == blocks - 1) {
            atomicExch(state, 0u);
            __threadfence();
            atomicAdd(state + 1, 1u);
        } else {
            while (*gen == seen) {
            }
        }
        __threadfence();
    }
    __syncthreads();
}

// Output pointers of up to MAX_FORMS forms.
struct Outs {
    void* o[MAX_FORMS];
};

// Eight consecutive elements as f32; p + i is 16-byte aligned.
template <typename T> __device__ __forceinline__ void load8(const T* p, i64 i, float* v);
template <> __device__ __forceinline__ void load8<float>(const float* p, i64 i, float* v) {
    const float4 a = *(const float4*)(p + i);
    const float4 b = *(const float4*)(p + i + 4);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
template <typename H> __device__ __forceinline__ void load8_half(const H* p, i64 i, float* v) {
    const uint4 a = *(const uint4*)(p + i);
    const u32 w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        H lo, hi;
        lo.bits = (u16)(w[k] & 0xffffu);
        hi.bits = (u16)(w[k] >> 16);
        v[2 * k] = to_f32(lo);
        v[2 * k + 1] = to_f32(hi);
    }
}
template <> __device__ __forceinline__ void load8<bf16>(const bf16* p, i64 i, float* v) { load8_half(p, i, v); }
template <> __device__ __forceinline__ void load8<f16>(const f16* p, i64 i, float* v) { load8_half(p, i, v); }

// The first NF forms of `p` at elements base..base+7 of n: every branch read
// once (16-byte loads when `full`), terms accumulated in branch order.
template <typename I, int NF>
__device__ __forceinline__ void combine8(const Forms& p, i64 base, i64 n, bool full, float (*acc)[NF]) {
#pragma unroll
    for (int e = 0; e < 8; ++e)
#pragma unroll
        for (int f = 0; f < NF; ++f) acc[e][f] = 0.0f;
    for (int b = 0; b < p.branches; ++b) {
        const I* x = (const I*)p.x[b];
        float v[8];
        if (full) {
            load8<I>(x, base, v);
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) v[e] = base + e < n ? to_f32(x[base + e]) : 0.0f;
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) accumulate<NF>(p, b, v[e], acc[e]);
    }
}

// Stores eight f32 values rounded to T at p + i (16-byte aligned).
template <typename T> __device__ __forceinline__ void store8(T* p, i64 i, const float* v);
template <> __device__ __forceinline__ void store8<float>(float* p, i64 i, const float* v) {
    *(float4*)(p + i) = make_float4(v[0], v[1], v[2], v[3]);
    *(float4*)(p + i + 4) = make_float4(v[4], v[5], v[6], v[7]);
}
template <typename H> __device__ __forceinline__ void store8_half(H* p, i64 i, const float* v) {
    u32 w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const u32 lo = from_f32<H>(v[2 * k]).bits;
        const u32 hi = from_f32<H>(v[2 * k + 1]).bits;
        w[k] = lo | (hi << 16);
    }
    *(uint4*)(p + i) = make_uint4(w[0], w[1], w[2], w[3]);
}
template <> __device__ __forceinline__ void store8<bf16>(bf16* p, i64 i, const float* v) { store8_half(p, i, v); }
template <> __device__ __forceinline__ void store8<f16>(f16* p, i64 i, const float* v) { store8_half(p, i, v); }

// Instantiates an extern "C" kernel NAME_<in>_<out> for every dtype pair.
#define FOR_EACH_IO(MAKE) \
    MAKE(f32, f32, float, float) \
    MAKE(f32, f16, float, f16) \
    MAKE(f32, bf16, float, bf16) \
    MAKE(f16, f32, f16, float) \
    MAKE(f16, f16, f16, f16) \
    MAKE(bf16, f32, bf16, float) \
    MAKE(bf16, bf16, bf16, bf16)

// The same for kernels whose output has the input's dtype (final results).
#define FOR_EACH_SAME(MAKE) \
    MAKE(f32, f32, float, float) \
    MAKE(f16, f16, f16, f16) \
    MAKE(bf16, bf16, bf16, bf16)
