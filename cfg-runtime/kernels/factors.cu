// Per-group factors from canonical sums, in f64, exactly as cfg-core/src/cpu.rs
// computes them (renorm_factor, norm_cap_factor, std_from_sums, rescale_factor,
// zero_star_alpha, apg_clip_factor, apg_projection, cosine; for magnitude_scale
// only the norm ratio, the host applies the exp).
// The result is stored as a double; f32 factors are stored already rounded to f32.

#define K_RENORM 0      // sums: |r|^2, |g|^2
#define K_NORM_CAP 1    // sums: |r|^2, |g|^2
#define K_STD 2         // sums: sum r, |r|^2, sum g, |g|^2
#define K_ZERO_STAR 3   // sums: <c,u>, |u|^2
#define K_MAGNITUDE 4   // sums: |c-u|^2, |u|^2 (factor: their norms' ratio)
#define K_APG_CLIP 5    // sums: |d|^2
#define K_APG_PROJ 6    // sums (f64 lanes): <d,c>, |c|^2
#define K_COSINE 7      // sums: <a,b>, |a|^2, |b|^2
#define K_TCFG_ALPHA 8  // sums: |c|^2, <c,u>, |u|^2 (factor: alpha of u' = alpha c + beta u)
#define K_TCFG_BETA 9   // sums: as K_TCFG_ALPHA (factor: beta)
#define K_REJECT 10     // sums: <x,d>, |d|^2 (factor: <x,d>/|d|^2, 0 where |d| = 0)

struct FactorArgs {
    double p0;      // eps | ratio | phi | scale | threshold
    double p1;      // renorm lower clamp | magnitude alpha
    double p2;      // renorm upper clamp
    i64 len;        // elements per group (std's n)
    int kind;
    int has_lo;
    int has_hi;
    int pad;
};

__device__ __forceinline__ double std_from_sums(double s1, double s2, i64 n) {
    if (n < 2) return 0.0;
    const double dn = (double)n;
    return sqrt(fmax((s2 - s1 * s1 / dn) / (dn - 1.0), 0.0));
}

// TCFG's coefficient (alpha or beta) of u' = alpha c + beta u, rounded to f32,
// exactly as cfg-core/src/tcfg.rs (top_eigenvector, tcfg_coefficients).
__device__ __forceinline__ double tcfg_coefficient(const double* s, int beta) {
    const double h = 0.5 * (s[0] - s[2]);
    const double r = sqrt(h * h + s[1] * s[1]);
    const double w0 = h >= 0.0 ? h + r : s[1];
    const double w1 = h >= 0.0 ? s[1] : r - h;
    const double n2 = w0 * w0 + w1 * w1;
    if (n2 == 0.0) return 0.0;
    return (double)(float)((beta ? w1 : w0) * w1 / n2);
}

// s[] are the group's sums in the order listed for the kind.
__device__ __forceinline__ double group_factor(const FactorArgs& a, const double* s) {
    switch (a.kind) {
    case K_RENORM: {
        const double nr = sqrt(s[0]), ng = sqrt(s[1]);
        const double den = ng + a.p0;
        if (den == 0.0) return 1.0;
        double f = nr / den;
        if (a.has_lo) f = fmax(f, a.p1);
        if (a.has_hi) f = fmin(f, a.p2);
        return (double)(float)f;
    }
    case K_NORM_CAP: {
        const double nr = sqrt(s[0]), ng = sqrt(s[1]);
        if (ng > a.p0 * nr) return (double)(float)(a.p0 * nr / ng);
        return 1.0;
    }
    case K_STD: {
        const double sr = std_from_sums(s[0], s[1], a.len);
        const double sg = std_from_sums(s[2], s[3], a.len);
        if (sg == 0.0) return 1.0;
        return (double)(float)(a.p0 * sr / sg + (1.0 - a.p0));
    }
    case K_ZERO_STAR:
        return (double)(float)(s[0] / (s[1] + 1e-8));
    case K_MAGNITUDE: {
        // Only the ratio ‖Δ‖/‖u‖ (correctly rounded sqrt and division): the
        // host applies exp, since CUDA's f64 exp may differ from the CPU's by
        // an ulp, which could move the f32 scale.
        const double nd = sqrt(s[0]), nu = sqrt(s[1]);
        return nu > 0.0 ? nd / nu : __longlong_as_double(0x7ff0000000000000ll);
    }
    case K_APG_CLIP: {
        const double norm = sqrt(s[0]);
        if (norm == 0.0) return 1.0;
        return (double)(float)fmin(a.p0 / norm, 1.0);
    }
    case K_APG_PROJ: {
        const double n = fmax(sqrt(s[1]), 1e-12);
        return s[0] / (n * n);
    }
    case K_COSINE: {
        const double den = sqrt(s[1] * s[2]);
        return den == 0.0 ? 0.0 : s[0] / den;
    }
    case K_TCFG_ALPHA:
        return tcfg_coefficient(s, 0);
    case K_TCFG_BETA:
        return tcfg_coefficient(s, 1);
    case K_REJECT:
        return s[1] == 0.0 ? 0.0 : (double)(float)(s[0] / s[1]);
    }
    return 1.0;
}

// How many sums a kind reads.
__device__ __forceinline__ int kind_sums(int kind) {
    switch (kind) {
    case K_STD: return 4;
    case K_APG_CLIP: return 1;
    case K_COSINE: return 3;
    case K_TCFG_ALPHA: return 3;
    case K_TCFG_BETA: return 3;
    default: return 2;
    }
}
