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
    double t;                // flow time
    double a;                // 1 - t
    i64 items;               // batch * tokens
    i64 tokens;
    int parts;
    int comps;               // J
    int dim;                 // D, the joint dims of all outputs
    int isolate;             // responsibilities per output instead of joint
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

template <typename T>
__device__ __forceinline__ void gmm_predict(const GmmArgs& g) {
    const i64 jd = (i64)g.comps * g.dim;
    const double* mean = (const double*)g.table;
    const double* var = mean + jd;
    const double* log_var = var + jd;
    const double* coef = log_var + jd;
    const double* log_weight = coef + jd;
    const u32* allowed = (const u32*)g.allowed;
    // Per output (or joint, in row 0) logits, then responsibilities, of the
    // allowed components; idx[c] is the component of slot c.
    double lp[GMM_MAX_PARTS][GMM_MAX_COMPONENTS];
    int idx[GMM_MAX_COMPONENTS];
    for (i64 item = (i64)blockIdx.x * blockDim.x + threadIdx.x; item < g.items;
         item += (i64)gridDim.x * blockDim.x) {
        const u32 mask = allowed[item / g.tokens];
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
        for (int p = 0; p < g.parts; ++p) {
            const double* r = lp[g.isolate ? p : 0];
            const float* x = (const float*)g.x[p] + item * g.part_dim[p];
            T* out = (T*)g.out[p] + item * g.part_dim[p];
            for (int k = 0; k < g.part_dim[p]; ++k) {
                const double xk = (double)x[k];
                double x0 = 0.0;
                for (int c = 0; c < n; ++c) {
                    const i64 jk = (i64)idx[c] * g.dim + g.part_offset[p] + k;
                    x0 += r[c] * (mean[jk] + coef[jk] * (xk - g.a * mean[jk]));
                }
                double value = x0;
                if (g.space[p] == GMM_V) {
                    value = (xk - x0) / g.t;
                } else if (g.space[p] == GMM_EPS) {
                    value = (xk - g.a * x0) / g.t;
                }
                out[k] = from_f32<T>((float)value);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) gmm_predict_f32(GmmArgs g) { gmm_predict<float>(g); }
extern "C" __global__ void __launch_bounds__(128) gmm_predict_f16(GmmArgs g) { gmm_predict<f16>(g); }
extern "C" __global__ void __launch_bounds__(128) gmm_predict_bf16(GmmArgs g) { gmm_predict<bf16>(g); }
