// The N-way weighted linear combine: up to MAX_FORMS forms over up to
// MAX_TERMS branches in one pass, each branch read once. Eight elements per
// thread with 16-byte loads when every pointer is aligned (`vec`).
// `combine1_*` holds one form's accumulators only: fewer registers, more
// resident threads, more loads in flight for the common single-result case.

template <typename I, typename O, int NF>
__device__ __forceinline__ void combine_body(const Forms& p0, const Outs& o, i64 n, int vec) {
    SHARED_FORMS(p, p0)
    const i64 chunks = (n + 7) / 8;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x; c < chunks; c += stride) {
        const i64 base = c * 8;
        const bool full = vec && base + 8 <= n;
        float acc[8][NF];
        combine8<I, NF>(p, base, n, full, acc);
#pragma unroll
        for (int f = 0; f < NF; ++f) {
            if (f >= p.forms) break;
            float r[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) r[e] = acc[e][f];
            O* out = (O*)o.o[f];
            if (full) {
                store8<O>(out, base, r);
            } else {
                for (int e = 0; e < 8; ++e)
                    if (base + e < n) out[base + e] = from_f32<O>(r[e]);
            }
        }
    }
}

#define MAKE_COMBINE(IN, OUT, I, O) \
    extern "C" __global__ void __launch_bounds__(256) combine_##IN##_##OUT(const Forms p, const Outs o, i64 n, int vec) { \
        combine_body<I, O, MAX_FORMS>(p, o, n, vec); \
    } \
    extern "C" __global__ void __launch_bounds__(256) combine1_##IN##_##OUT(const Forms p, const Outs o, i64 n, int vec) { \
        combine_body<I, O, 1>(p, o, n, vec); \
    }
FOR_EACH_IO(MAKE_COMBINE)
