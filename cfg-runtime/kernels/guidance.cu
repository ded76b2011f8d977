// Element-wise steps of the non-linear operators, on f32 values, after their
// per-sample statistics are known (factors indexed by group): CFG-Zero*,
// magnitude-aware guidance and APG. Formulas follow cfg-core/src/cpu.rs.

#define GRID_LOOP(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// ua = alpha*u; out = fma(s, c - ua, original ? c : ua).
extern "C" __global__ void __launch_bounds__(256) zero_star(const float* c, const float* u, const double* alpha,
                                                            const Groups g, float s, int original, float* out, i64 n) {
    GRID_LOOP(i, n) {
        const float ua = mul32((float)alpha[group_of(g, i)], u[i]);
        out[i] = fma32(s, sub32(c[i], ua), original ? c[i] : ua);
    }
}

// out = fma(scale, c - u, u).
extern "C" __global__ void __launch_bounds__(256) magnitude_aware(const float* c, const float* u, const double* scale,
                                                                  const Groups g, float* out, i64 n) {
    GRID_LOOP(i, n) out[i] = fma32((float)scale[group_of(g, i)], sub32(c[i], u[i]), u[i]);
}

// APG's running average: d = c - u; running = use_prev ? fma(beta, prev, d) : d.
// `running` becomes the next step's momentum (device-resident state).
extern "C" __global__ void __launch_bounds__(256) apg_running(const float* c, const float* u, const float* prev,
                                                              int use_prev, float beta, float* running, i64 n) {
    GRID_LOOP(i, n) {
        const float d = sub32(c[i], u[i]);
        running[i] = use_prev ? fma32(beta, prev[i], d) : d;
    }
}

// APG's projection on c (f64): par = coef*c; perp = d - par;
// out = fma(s, fma(eta, par, perp), original ? c : u) in f32.
extern "C" __global__ void __launch_bounds__(256) apg_combine(const float* c, const float* u, const float* d,
                                                              const double* coef, const Groups g, float eta, float s,
                                                              int original, float* out, i64 n) {
    GRID_LOOP(i, n) {
        const double par = coef[group_of(g, i)] * (double)c[i];
        const double perp = (double)d[i] - par;
        const float update = fma32(eta, (float)par, (float)perp);
        out[i] = fma32(s, update, original ? c[i] : u[i]);
    }
}

// TCFG: up = fma(alpha, c, beta*u); out = fma(s, c - up, original ? c : up).
extern "C" __global__ void __launch_bounds__(256) tcfg(const float* c, const float* u, const double* alpha,
                                                       const double* beta, const Groups g, float s, int original,
                                                       float* out, i64 n) {
    GRID_LOOP(i, n) {
        const i64 k = group_of(g, i);
        const float up = fma32((float)alpha[k], c[i], mul32((float)beta[k], u[i]));
        out[i] = fma32(s, sub32(c[i], up), original ? c[i] : up);
    }
}

// APG-Mix's CFG phase (the momentum advanced by apg_running): out = fma(s, c - u, original ? c : u).
extern "C" __global__ void __launch_bounds__(256) cfg_delta(const float* c, const float* u, float s, int original,
                                                            float* out, i64 n) {
    GRID_LOOP(i, n) out[i] = fma32(s, sub32(c[i], u[i]), original ? c[i] : u[i]);
}

// Perp-Neg's rejection: out = fma(-k, d, x), k = <x,d>/|d|^2 per group.
extern "C" __global__ void __launch_bounds__(256) reject(const float* x, const float* d, const double* k,
                                                         const Groups g, float* out, i64 n) {
    GRID_LOOP(i, n) out[i] = fma32(-(float)k[group_of(g, i)], d[i], x[i]);
}

// MAGI-1's chunked combination: the weights of element i's frame chunk,
// w = weights + 3*chunk; out = fma(w2, u, fma(w1, prefix, w0*c)).
extern "C" __global__ void __launch_bounds__(256) chunked(const float* c, const float* prefix, const float* u,
                                                          const float* weights, i64 frames, i64 stride,
                                                          i64 chunk_frames, float* out, i64 n) {
    GRID_LOOP(i, n) {
        const float* w = weights + 3 * ((i / stride) % frames / chunk_frames);
        out[i] = fma32(w[2], u[i], fma32(w[1], prefix[i], mul32(w[0], c[i])));
    }
}
