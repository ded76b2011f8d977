// The analytic Gaussian-mixture denoiser of models/gmm/src/model.rs on the
// device: one thread per (sample, token). Compiled after the runtime's
// common.cu (types, from_f32), with --fmad=false.
//
// The arithmetic is the CPU model's, in f64, operation for operation and in
// the same order. The host passes the per-step tables it computes in f64
// (variances, their logs, posterior coefficients, log weights), so the only
// transcendental functions here are the softmax's exp and log, the portable
// ones (portable_math.cu) the CPU model uses too: predictions are bit-identical.

#define GMM_MAX_PARTS 4
#define GMM_MAX_COMPONENTS 32

#define GMM_EPS 0
#define GMM_V 1
#define GMM_X0 2

// Mirrors `GmmArgs` in models/gmm/src/cuda.rs.
struct GmmArgs {
    u64 x[GMM_MAX_PARTS];    // const float*: latents of each output, [batch, tokens, dim]
    u64 out[GMM_MAX_PARTS];  // T*: predictions of each output, same layout
    u64 table;               // const double*: mean, var, log var, coef (J x D each), log weight (J)
    u64 allowed;             // const u32*: per sample, bit j set when component j is allowed
    u64 nag_table;           // NAG's negative context: its table and masks (when nag != 0)
    u64 nag_allowed;
    double t;                // flow time
    double a;                // 1 - t
    double nag_scale;        // NAG: s, tau, alpha
    double nag_tau;
    double nag_alpha;
    i64 items;               // batch * tokens
    i64 tokens;
    int parts;
    int comps;               // J
    int dim;                 // D, the joint dims of all outputs
    int isolate;             // responsibilities per output instead of joint
    int nag;                 // combine with the negative context's posterior mean (NAG)
    int part_dim[GMM_MAX_PARTS];
    int part_offset[GMM_MAX_PARTS];
    int space[GMM_MAX_PARTS];  // GMM_EPS, GMM_V, GMM_X0
};

__device__ __forceinline__ double neg_inf() { return __longlong_as_double(0xfff0000000000000ll); }

// v[i] <- exp(v[i] - log_sum_exp(v)), as the CPU's `softmax`.
__device__ __forceinline__ void softmax(double* v, int n) {
    double m = neg_inf();
    for (int i = 0; i < n; ++i) m = fmax(m, v[i]);
    double lse = m;
    if (m != neg_inf()) {
        double s = 0.0;
        for (int i = 0; i < n; ++i) s += pm_exp(v[i] - m);
        lse = m + pm_log(s);
    }
    for (int i = 0; i < n; ++i) v[i] = pm_exp(v[i] - lse);
}

// One token's responsibilities under one condition (its table and mask):
// per output (or joint, in row 0) of the allowed components; idx[c] is the
// component of slot c. Returns the number of slots.
__device__ __forceinline__ int responsibilities(const GmmArgs& g, const double* table, u32 mask, i64 item,
                                                double lp[GMM_MAX_PARTS][GMM_MAX_COMPONENTS],
                                                int idx[GMM_MAX_COMPONENTS]) {
    const i64 jd = (i64)g.comps * g.dim;
    const double* mean = table;
    const double* var = mean + jd;
    const double* log_var = var + jd;
    const double* log_weight = log_var + 2 * jd;
    int n = 0;
    for (int j = 0; j < g.comps; ++j) {
        if (!((mask >> j) & 1u)) continue;
        idx[n] = j;
        for (int p = 0; p < g.parts; ++p) {
            const float* x = (const float*)g.x[p] + item * g.part_dim[p];
            double acc = 0.0;
            for (int k = 0; k < g.part_dim[p]; ++k) {
                const i64 jk = (i64)j * g.dim + g.part_offset[p] + k;
                const double z = (double)x[k] - g.a * mean[jk];
                acc -= 0.5 * (z * z / var[jk] + log_var[jk]);
            }
            lp[p][n] = acc;
        }
        ++n;
    }
    if (g.isolate) {
        for (int p = 0; p < g.parts; ++p) {
            for (int c = 0; c < n; ++c) lp[p][c] = log_weight[idx[c]] + lp[p][c];
            softmax(lp[p], n);
        }
    } else {
        for (int c = 0; c < n; ++c) {
            double s = 0.0;
            for (int p = 0; p < g.parts; ++p) s += lp[p][c];
            lp[0][c] = log_weight[idx[c]] + s;
        }
        softmax(lp[0], n);
    }
    return n;
}

// E[x0 | x_t] of output dim k (joint dim jk0 + k) from responsibilities r.
__device__ __forceinline__ double posterior_mean(const GmmArgs& g, const double* table, const double* r,
                                                 const int* idx, int n, int jk0, double xk) {
    const i64 jd = (i64)g.comps * g.dim;
    const double* mean = table;
    const double* coef = mean + 3 * jd;
    double x0 = 0.0;
    for (int c = 0; c < n; ++c) {
        const i64 jk = (i64)idx[c] * g.dim + jk0;
        x0 += r[c] * (mean[jk] + coef[jk] * (xk - g.a * mean[jk]));
    }
    return x0;
}

__device__ __forceinline__ double in_space(const GmmArgs& g, int p, double xk, double x0) {
    if (g.space[p] == GMM_V) return (xk - x0) / g.t;
    if (g.space[p] == GMM_EPS) return (xk - g.a * x0) / g.t;
    return x0;
}

template <typename T>
__device__ __forceinline__ void gmm_predict(const GmmArgs& g) {
    const double* table = (const double*)g.table;
    const double* nag_table = (const double*)g.nag_table;
    double lp[GMM_MAX_PARTS][GMM_MAX_COMPONENTS];
    int idx[GMM_MAX_COMPONENTS];
    double lpn[GMM_MAX_PARTS][GMM_MAX_COMPONENTS];
    int idxn[GMM_MAX_COMPONENTS];
    for (i64 item = (i64)blockIdx.x * blockDim.x + threadIdx.x; item < g.items;
         item += (i64)gridDim.x * blockDim.x) {
        const i64 sample = item / g.tokens;
        const int n = responsibilities(g, table, ((const u32*)g.allowed)[sample], item, lp, idx);
        const int nn = g.nag ? responsibilities(g, nag_table, ((const u32*)g.nag_allowed)[sample], item, lpn, idxn) : 0;
        for (int p = 0; p < g.parts; ++p) {
            const double* r = lp[g.isolate ? p : 0];
            const double* rn = lpn[g.isolate ? p : 0];
            const float* x = (const float*)g.x[p] + item * g.part_dim[p];
            T* out = (T*)g.out[p] + item * g.part_dim[p];
            double factor = 0.0;
            if (g.nag) {
                // NAG per token and output: the L1 norms first, then the blend.
                double l1_positive = 0.0, l1_guided = 0.0;
                for (int k = 0; k < g.part_dim[p]; ++k) {
                    const double xk = (double)x[k];
                    const double zp = posterior_mean(g, table, r, idx, n, g.part_offset[p] + k, xk);
                    const double zn = posterior_mean(g, nag_table, rn, idxn, nn, g.part_offset[p] + k, xk);
                    l1_positive += fabs(zp);
                    l1_guided += fabs(zp * g.nag_scale - zn * (g.nag_scale - 1.0));
                }
                const double ratio = fmax(l1_guided, 1e-6) / fmax(l1_positive, 1e-6);
                factor = fmin(ratio, g.nag_tau) / ratio;
            }
            for (int k = 0; k < g.part_dim[p]; ++k) {
                const double xk = (double)x[k];
                double x0 = posterior_mean(g, table, r, idx, n, g.part_offset[p] + k, xk);
                if (g.nag) {
                    const double zn = posterior_mean(g, nag_table, rn, idxn, nn, g.part_offset[p] + k, xk);
                    const double guided = x0 * g.nag_scale - zn * (g.nag_scale - 1.0);
                    x0 = guided * factor * g.nag_alpha + x0 * (1.0 - g.nag_alpha);
                }
                out[k] = from_f32<T>((float)in_space(g, p, xk, x0));
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) gmm_predict_f32(GmmArgs g) { gmm_predict<float>(g); }
extern "C" __global__ void __launch_bounds__(128) gmm_predict_f16(GmmArgs g) { gmm_predict<f16>(g); }
extern "C" __global__ void __launch_bounds__(128) gmm_predict_bf16(GmmArgs g) { gmm_predict<bf16>(g); }
