// FDG's stages on planar f32 images (sample, plane, row, column), one thread
// per output element, each formula exactly as cfg-core/src/fdg.rs writes it
// (blur5, down2, up_taps/lerp, gather/scatter). Per-level guidance reuses
// guidance.cu's cfg_delta and apg_combine, and stats.cu's factors.

#define GRID_LOOP(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// cfg_core::layout::Spatial.
struct FdgSpatial {
    i64 batch_stride;
    i64 planes;
    i64 size[3];
    i64 stride[3];
    i64 height;
    i64 row_stride;
    i64 width;
    i64 col_stride;
};

// The native index of planar element i.
__device__ __forceinline__ i64 fdg_native(const FdgSpatial& s, i64 i) {
    const i64 hw = s.height * s.width;
    const i64 img = i / hw, r = i % hw;
    const i64 y = r / s.width, x = r % s.width;
    const i64 b = img / s.planes;
    i64 rest = img % s.planes, off = 0;
    for (int k = 2; k >= 0; --k) {
        off += (rest % s.size[k]) * s.stride[k];
        rest /= s.size[k];
    }
    return b * s.batch_stride + off + y * s.row_stride + x * s.col_stride;
}

extern "C" __global__ void __launch_bounds__(256) fdg_gather(const float* x, const FdgSpatial s, float* out, i64 n) {
    GRID_LOOP(i, n) out[i] = x[fdg_native(s, i)];
}

extern "C" __global__ void __launch_bounds__(256) fdg_scatter(const float* planar, const FdgSpatial s, float* out,
                                                              i64 n) {
    GRID_LOOP(i, n) out[fdg_native(s, i)] = planar[i];
}

__device__ __forceinline__ i64 fdg_reflect(i64 i, i64 n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

// The 5-tap binomial blur along one axis: taps -2..2 in order, mul then fma.
__device__ __forceinline__ float fdg_blur5(const float* x, i64 step, i64 i, i64 n) {
    const float taps[5] = {0.0625f, 0.25f, 0.375f, 0.25f, 0.0625f};
    float acc = mul32(taps[0], x[fdg_reflect(i - 2, n) * step]);
    for (int k = 1; k < 5; ++k) acc = fma32(taps[k], x[fdg_reflect(i + k - 2, n) * step], acc);
    return acc;
}

// Blur within each row (along the columns) of images of h x w.
extern "C" __global__ void __launch_bounds__(256) fdg_blur_rows(const float* src, float* dst, i64 h, i64 w, i64 n) {
    GRID_LOOP(i, n) {
        const i64 x = i % w;
        dst[i] = fdg_blur5(src + (i - x), 1, x, w);
    }
}

// Blur within each column (along the rows) of images of h x w.
extern "C" __global__ void __launch_bounds__(256) fdg_blur_cols(const float* src, float* dst, i64 h, i64 w, i64 n) {
    GRID_LOOP(i, n) {
        const i64 img = i / (h * w), r = i % (h * w);
        const i64 y = r / w, x = r % w;
        dst[i] = fdg_blur5(src + img * h * w + x, w, y, h);
    }
}

// The 2 x 2 mean from images of h x w into h/2 x w/2: 0.25*((a + b) + (c + d)).
extern "C" __global__ void __launch_bounds__(256) fdg_down(const float* src, float* dst, i64 h, i64 w, i64 n) {
    const i64 ho = h / 2, wo = w / 2;
    GRID_LOOP(i, n) {
        const i64 img = i / (ho * wo), r = i % (ho * wo);
        const i64 y = r / wo, x = r % wo;
        const float* s = src + img * h * w;
        const float a = s[2 * y * w + 2 * x], b = s[2 * y * w + 2 * x + 1];
        const float c = s[(2 * y + 1) * w + 2 * x], d = s[(2 * y + 1) * w + 2 * x + 1];
        dst[i] = mul32(0.25f, add32(add32(a, b), add32(c, d)));
    }
}

__device__ __forceinline__ float fdg_lerp(float near, float far) { return fma32(0.75f, near, mul32(0.25f, far)); }

// Bilinear x2 from images of h x w into 2h x 2w: along the columns in the near
// and the far source row, then between them.
extern "C" __global__ void __launch_bounds__(256) fdg_upsample(const float* src, float* dst, i64 h, i64 w, i64 n) {
    const i64 ho = 2 * h, wo = 2 * w;
    GRID_LOOP(i, n) {
        const i64 img = i / (ho * wo), r = i % (ho * wo);
        const i64 y = r / wo, x = r % wo;
        const i64 ya = y / 2, yb = (y % 2 == 0) ? (ya > 0 ? ya - 1 : 0) : (ya + 1 < h ? ya + 1 : h - 1);
        const i64 xa = x / 2, xb = (x % 2 == 0) ? (xa > 0 ? xa - 1 : 0) : (xa + 1 < w ? xa + 1 : w - 1);
        const float* s = src + img * h * w;
        const float ta = fdg_lerp(s[ya * w + xa], s[ya * w + xb]);
        const float tb = fdg_lerp(s[yb * w + xa], s[yb * w + xb]);
        dst[i] = fdg_lerp(ta, tb);
    }
}

// out = a - b.
extern "C" __global__ void __launch_bounds__(256) fdg_sub(const float* a, const float* b, float* out, i64 n) {
    GRID_LOOP(i, n) out[i] = sub32(a[i], b[i]);
}

// out = a + b.
extern "C" __global__ void __launch_bounds__(256) fdg_add(const float* a, const float* b, float* out, i64 n) {
    GRID_LOOP(i, n) out[i] = add32(a[i], b[i]);
}
