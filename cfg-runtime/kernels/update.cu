// The sampler updates of cfg-runtime/src/scheduler.rs and the initial latents,
// for the device-resident sampling loop. Compiled after common.cu and
// philox.cu (it draws its noise with their philox_block and box_muller).
//
// The update is the CPU's f64 arithmetic, operation for operation; with
// --fmad=false nothing is contracted, so for the same prediction the new
// latents are bit-identical to the CPU's. The noise (initial latents and the
// ancestral sampler) goes through CUDA's f64 log/cos/sin, which can round one
// f32 ulp away from the CPU's in rare elements (see philox.cu).

#define SPACE_EPS 0
#define SPACE_V 1
#define SPACE_X0 2

#define SAMPLER_EULER 0
#define SAMPLER_DDIM 1
#define SAMPLER_ANCESTRAL 2

// Mirrors `UpdateArgs` in cfg-runtime/src/device_sample.rs.
struct UpdateArgs {
    double t;       // flow time of the latents
    double t_next;  // flow time after the step
    double keep;    // ancestral: sqrt(t'^2 - c^2)
    double c;       // ancestral: noise coefficient
    u64 seed;
    i64 n;          // elements
    u32 step;       // Philox step word
    u32 stream;     // Philox stream word (the output's index)
    int space;      // SPACE_*
    int kind;       // SAMPLER_*
};

// The four normals of Philox block b, as the CPU's `normals` gives them.
__device__ __forceinline__ void normals4(u64 seed, u32 step, u32 stream, i64 b, float z[4]) {
    const uint4 w = philox_block(seed, step, stream, (u64)b);
    box_muller(w.x, w.y, &z[0], &z[1]);
    box_muller(w.z, w.w, &z[2], &z[3]);
}

// x = t0 * z, z the normals of (seed, step, stream): the CPU's initial latents
// (the runtime passes its INIT_STEP word).
extern "C" __global__ void __launch_bounds__(256)
    init_latents(u64 seed, u32 step, u32 stream, double t0, float* x, i64 n) {
    const i64 blocks = (n + 3) / 4;
    for (i64 b = (i64)blockIdx.x * blockDim.x + threadIdx.x; b < blocks; b += (i64)gridDim.x * blockDim.x) {
        float z[4];
        normals4(seed, step, stream, b, z);
        for (int l = 0; l < 4 && 4 * b + l < n; ++l) x[4 * b + l] = (float)(t0 * (double)z[l]);
    }
}

// One thread per Philox block of four elements (so each block is drawn once).
// (x0, eps) from a prediction p in `space` at latents xi, as scheduler.rs `split`.
__device__ __forceinline__ void split(int space, double t, double xi, double p, double* x0, double* eps) {
    if (space == SPACE_EPS) {
        *x0 = (xi - t * p) / (1.0 - t);
        *eps = p;
    } else if (space == SPACE_V) {
        *x0 = xi - t * p;
        *eps = xi + (1.0 - t) * p;
    } else {
        *x0 = p;
        *eps = (xi - (1.0 - t) * p) / t;
    }
}

// `renoise` null: the plain update. Otherwise CFG++: x0 from `pred`, eps from
// `renoise` (scheduler.rs `Sampler::update`, operation for operation).
template <typename T>
__device__ __forceinline__ void update(float* x, const T* pred, const T* renoise, const UpdateArgs& a) {
    const i64 blocks = (a.n + 3) / 4;
    for (i64 b = (i64)blockIdx.x * blockDim.x + threadIdx.x; b < blocks; b += (i64)gridDim.x * blockDim.x) {
        float z[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (a.kind == SAMPLER_ANCESTRAL) normals4(a.seed, a.step, a.stream, b, z);
        for (int l = 0; l < 4 && 4 * b + l < a.n; ++l) {
            const i64 i = 4 * b + l;
            const double xi = (double)x[i];
            const double p = (double)to_f32(pred[i]);
            double x0, eps;
            split(a.space, a.t, xi, p, &x0, &eps);
            double next;
            if (renoise != nullptr) {
                double x0_r, eps_r;
                split(a.space, a.t, xi, (double)to_f32(renoise[i]), &x0_r, &eps_r);
                if (a.kind == SAMPLER_ANCESTRAL) {
                    next = (1.0 - a.t_next) * x0 + a.keep * eps_r + a.c * (double)z[l];
                } else {
                    next = (1.0 - a.t_next) * x0 + a.t_next * eps_r;
                }
            } else if (a.kind == SAMPLER_EULER) {
                next = xi + (a.t_next - a.t) * (eps - x0);
            } else if (a.kind == SAMPLER_DDIM) {
                next = (1.0 - a.t_next) * x0 + a.t_next * eps;
            } else {
                next = (1.0 - a.t_next) * x0 + a.keep * eps + a.c * (double)z[l];
            }
            x[i] = (float)next;
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) update_f32(float* x, const float* pred, const float* renoise, UpdateArgs a) {
    update<float>(x, pred, renoise, a);
}
extern "C" __global__ void __launch_bounds__(256) update_f16(float* x, const f16* pred, const f16* renoise, UpdateArgs a) {
    update<f16>(x, pred, renoise, a);
}
extern "C" __global__ void __launch_bounds__(256) update_bf16(float* x, const bf16* pred, const bf16* renoise, UpdateArgs a) {
    update<bf16>(x, pred, renoise, a);
}
