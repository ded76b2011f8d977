// exp, log and sin/cos of a turn in f64 from exactly rounded operations only:
// the twin of cfg-core/src/portable_math.rs, line for line, so the GPU gets
// the CPU's bits (CUDA's own exp/log/sin/cos differ from glibc's by an ulp).
// Compiled after common.cu. Change both files together.

#define PM_SHIFTER 6755399441055744.0
#define PM_INV_LN2 1.4426950408889634
#define PM_LN2_HI 0.6931471803691238
#define PM_LN2_LO 1.9082149292705877e-10
#define PM_EXP_MAX 709.782712893384
#define PM_EXP_MIN -745.1332191019412
#define PM_SQRT2 1.4142135623730951
#define PM_TAU_HI 6.283185307179586
#define PM_TAU_LO 2.4492935982947064e-16

__device__ const double PM_EXP_TAYLOR[12] = {
    1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0,
    1.0 / 5040.0,       1.0 / 720.0,       1.0 / 120.0,      1.0 / 24.0,      1.0 / 6.0,      0.5};
__device__ const double PM_LN_ATANH[10] = {2.0 / 21.0, 2.0 / 19.0, 2.0 / 17.0, 2.0 / 15.0, 2.0 / 13.0,
                                           2.0 / 11.0, 2.0 / 9.0,  2.0 / 7.0,  2.0 / 5.0,  2.0 / 3.0};
__device__ const double PM_SIN_TAYLOR[8] = {1.0 / 355687428096000.0, -1.0 / 1307674368000.0, 1.0 / 6227020800.0,
                                            -1.0 / 39916800.0,       1.0 / 362880.0,          -1.0 / 5040.0,
                                            1.0 / 120.0,             -1.0 / 6.0};
__device__ const double PM_COS_TAYLOR[8] = {-1.0 / 6402373705728000.0, 1.0 / 20922789888000.0, -1.0 / 87178291200.0,
                                            1.0 / 479001600.0,         -1.0 / 3628800.0,       1.0 / 40320.0,
                                            -1.0 / 720.0,              1.0 / 24.0};

__device__ __forceinline__ double pm_horner(const double* c, int n, double x) {
    double p = c[0];
    for (int i = 1; i < n; ++i) p = __fma_rn(p, x, c[i]);
    return p;
}

__device__ __forceinline__ double pm_pow2(long long k) { return __longlong_as_double((k + 1023) << 52); }

__device__ double pm_exp(double x) {
    if (x != x) return x;
    if (x > PM_EXP_MAX) return __longlong_as_double(0x7ff0000000000000ll);
    if (x < PM_EXP_MIN) return 0.0;
    const double k = __dsub_rn(__fma_rn(x, PM_INV_LN2, PM_SHIFTER), PM_SHIFTER);
    const double r = __fma_rn(-k, PM_LN2_LO, __fma_rn(-k, PM_LN2_HI, x));
    const double p = __dadd_rn(__fma_rn(pm_horner(PM_EXP_TAYLOR, 12, r), __dmul_rn(r, r), r), 1.0);
    const long long ki = (long long)k;
    const long long k1 = ki / 2;
    return __dmul_rn(__dmul_rn(p, pm_pow2(k1)), pm_pow2(ki - k1));
}

__device__ double pm_log(double x) {
    if (x != x || x < 0.0) return __longlong_as_double(0x7ff8000000000000ll);
    if (x == 0.0) return __longlong_as_double(0xfff0000000000000ll);
    if (x == __longlong_as_double(0x7ff0000000000000ll)) return x;
    long long e = 0;
    if (x < 2.2250738585072014e-308) {
        x = __dmul_rn(x, 18014398509481984.0);
        e = -54;
    }
    const unsigned long long bits = (unsigned long long)__double_as_longlong(x);
    e += (long long)((bits >> 52) & 0x7ff) - 1023;
    double m = __longlong_as_double((long long)((bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull));
    if (m > PM_SQRT2) {
        m = __dmul_rn(m, 0.5);
        e += 1;
    }
    const double f = __dsub_rn(m, 1.0);
    const double s = __ddiv_rn(f, __dadd_rn(2.0, f));
    const double z = __dmul_rn(s, s);
    const double r = __dmul_rn(z, pm_horner(PM_LN_ATANH, 10, z));
    const double hfsq = __dmul_rn(__dmul_rn(0.5, f), f);
    const double ln_m = __dsub_rn(f, __dsub_rn(hfsq, __dmul_rn(s, __dadd_rn(hfsq, r))));
    const double ed = (double)e;
    return __fma_rn(ed, PM_LN2_HI, __fma_rn(ed, PM_LN2_LO, ln_m));
}

// (sin 2πu, cos 2πu) for u in [0, 1] a multiple of 2^-24 or coarser.
__device__ void pm_sin_cos_turns(double u, double* sin_out, double* cos_out) {
    const double q = __dsub_rn(__dadd_rn(__dmul_rn(4.0, u), PM_SHIFTER), PM_SHIFTER);
    const double f = __fma_rn(q, -0.25, u);
    const double x = __fma_rn(f, PM_TAU_HI, __dmul_rn(f, PM_TAU_LO));
    const double x2 = __dmul_rn(x, x);
    const double s = __fma_rn(__dmul_rn(x2, x), pm_horner(PM_SIN_TAYLOR, 8, x2), x);
    const double c = __fma_rn(__dmul_rn(x2, x2), pm_horner(PM_COS_TAYLOR, 8, x2), __fma_rn(-0.5, x2, 1.0));
    switch (((long long)q) & 3) {
        case 0: *sin_out = s; *cos_out = c; break;
        case 1: *sin_out = c; *cos_out = -s; break;
        case 2: *sin_out = -s; *cos_out = -c; break;
        default: *sin_out = -c; *cos_out = s; break;
    }
}
