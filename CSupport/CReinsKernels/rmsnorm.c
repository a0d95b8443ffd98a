// rmsnorm.c — root-mean-square layer normalisation (Zhang & Sennrich, arXiv 1910.07467), Llama's norm.
//   forward:  rstd = 1/√(mean(x²) + eps), x̂ = x·rstd, y = x̂·w                   (rstd saved per row)
//   backward: g = dy·w;  dx += rstd·(g - x̂·mean(g·x̂));  dw += Σ_rows dy·x̂
#include "rk_internal.h"

// The same loops compiled for each instruction set: the row sums accumulate in float, in lanes the compiler
// vectorises for the target it is given.
#define RMS_FORWARD_BODY                                                                                           \
    for (int i = 0; i < N; i++) {                                                                                   \
        const float *x = inp + RK_IDX(i, 0, C);                                                                     \
        float *y = out + RK_IDX(i, 0, C);                                                                           \
        float ss = 0.0f;                                                                                            \
        _Pragma("clang loop vectorize(enable) interleave(enable)") for (int j = 0; j < C; j++) ss += x[j] * x[j];  \
        float s = 1.0f / sqrtf(ss / (float)C + eps);                                                                \
        if (w) {                                                                                                    \
            _Pragma("clang loop vectorize(enable)") for (int j = 0; j < C; j++) y[j] = x[j] * s * w[j];            \
        } else {                                                                                                    \
            _Pragma("clang loop vectorize(enable)") for (int j = 0; j < C; j++) y[j] = x[j] * s;                   \
        }                                                                                                           \
        if (rstd) rstd[i] = s;                                                                                      \
    }
#define RMS_BACKWARD_BODY                                                                                          \
    for (int i = 0; i < N; i++) {                                                                                   \
        const float *x = inp + RK_IDX(i, 0, C), *dy = dout + RK_IDX(i, 0, C);                                       \
        float s = rstd[i], gx = 0.0f;                                                                               \
        _Pragma("clang loop vectorize(enable) interleave(enable)") for (int j = 0; j < C; j++) gx +=               \
            dy[j] * (w ? w[j] : 1.0f) * x[j];                                                                       \
        float c = gx * s * s / (float)C; /* mean(g·x̂)·rstd, applied to x */                                        \
        if (dinp) {                                                                                                 \
            float *dx = dinp + RK_IDX(i, 0, C);                                                                     \
            _Pragma("clang loop vectorize(enable)") for (int j = 0; j < C; j++) dx[j] +=                           \
                s * (dy[j] * (w ? w[j] : 1.0f) - x[j] * c);                                                         \
        }                                                                                                           \
        if (dw) {                                                                                                   \
            _Pragma("clang loop vectorize(enable)") for (int j = 0; j < C; j++) dw[j] += dy[j] * x[j] * s;         \
        }                                                                                                           \
    }

static void rms_fwd_scalar(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps) {
    RMS_FORWARD_BODY
}
static void rms_bwd_scalar(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                           const float *rstd, int N, int C) {
    RMS_BACKWARD_BODY
}
#if RK_X86
static RK_AVX2 void rms_fwd_avx2(float *out, float *rstd, const float *inp, const float *w, int N, int C, float eps) {
    RMS_FORWARD_BODY
}
static RK_AVX2 void rms_bwd_avx2(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                                 const float *rstd, int N, int C) {
    RMS_BACKWARD_BODY
}
static RK_AVX512 void rms_fwd_avx512(float *out, float *rstd, const float *inp, const float *w, int N, int C,
                                     float eps) {
    RMS_FORWARD_BODY
}
static RK_AVX512 void rms_bwd_avx512(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                                     const float *rstd, int N, int C) {
    RMS_BACKWARD_BODY
}
#endif

void rk_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps) {
#if RK_X86
    int isa = rk_isa_active();
    if (isa >= RK_ISA_AVX512) { rms_fwd_avx512(out, rstd, inp, weight, N, C, eps); return; }
    if (isa >= RK_ISA_AVX2) { rms_fwd_avx2(out, rstd, inp, weight, N, C, eps); return; }
#endif
    rms_fwd_scalar(out, rstd, inp, weight, N, C, eps);
}
void rk_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                         const float *rstd, int N, int C) {
#if RK_X86
    int isa = rk_isa_active();
    if (isa >= RK_ISA_AVX512) { rms_bwd_avx512(dinp, dweight, dout, inp, weight, rstd, N, C); return; }
    if (isa >= RK_ISA_AVX2) { rms_bwd_avx2(dinp, dweight, dout, inp, weight, rstd, N, C); return; }
#endif
    rms_bwd_scalar(dinp, dweight, dout, inp, weight, rstd, N, C);
}

// reference: one element at a time, sums in double, straight from the formulas above.
void rk_rmsnorm_forward_ref(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps) {
    for (int i = 0; i < N; i++) {
        double ss = 0;
        for (int j = 0; j < C; j++) ss += (double)inp[RK_IDX(i, j, C)] * inp[RK_IDX(i, j, C)];
        float s = (float)(1.0 / sqrt(ss / C + eps));
        for (int j = 0; j < C; j++) out[RK_IDX(i, j, C)] = inp[RK_IDX(i, j, C)] * s * (weight ? weight[j] : 1.0f);
        if (rstd) rstd[i] = s;
    }
}
void rk_rmsnorm_backward_ref(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                             const float *rstd, int N, int C) {
    for (int i = 0; i < N; i++) {
        double s = rstd[i], mean_gx = 0;
        for (int j = 0; j < C; j++)
            mean_gx += (double)dout[RK_IDX(i, j, C)] * (weight ? weight[j] : 1.0f) * inp[RK_IDX(i, j, C)] * s;
        mean_gx /= C;
        for (int j = 0; j < C; j++) {
            double xh = inp[RK_IDX(i, j, C)] * s, g = (double)dout[RK_IDX(i, j, C)] * (weight ? weight[j] : 1.0f);
            if (dinp) dinp[RK_IDX(i, j, C)] += (float)(s * (g - xh * mean_gx));
            if (dweight) dweight[j] += (float)(dout[RK_IDX(i, j, C)] * xh);
        }
    }
}
