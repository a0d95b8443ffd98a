// gelu.c — GELU activations, forward and backward, plain and fused with a bias add.
//   exact (BERT):      y = x·Φ(x) = ½x(1 + erf(x/√2))                      dy/dx = Φ(x) + x·φ(x)
//   tanh (GPT-2):      y = ½x(1 + tanh u),  u = √(2/π)(x + 0.044715x³)     dy/dx = ½(1+tanh u) + ½x(1-tanh²u)·u'
// reference: Hendrycks & Gimpel, arXiv 1606.08415.
#include "rk_internal.h"

#define RK_SQRT1_2 0.70710678118654752440f
#define RK_INV_SQRT_2PI 0.39894228040143267794f
#define RK_SQRT_2_OVER_PI 0.79788456080286535588f
#define RK_GELU_K 0.044715f

static inline float gelu_value(float x, int approx) {
    if (approx) {
        float u = RK_SQRT_2_OVER_PI * (x + RK_GELU_K * x * x * x);
        return 0.5f * x * (1.0f + tanhf(u));
    }
    return 0.5f * x * (1.0f + erff(x * RK_SQRT1_2));
}
static inline float gelu_slope(float x, int approx) {
    if (approx) {
        float u = RK_SQRT_2_OVER_PI * (x + RK_GELU_K * x * x * x);
        float t = tanhf(u);
        float du = RK_SQRT_2_OVER_PI * (1.0f + 3.0f * RK_GELU_K * x * x);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
    }
    return 0.5f * (1.0f + erff(x * RK_SQRT1_2)) + x * RK_INV_SQRT_2PI * expf(-0.5f * x * x);
}

#if RK_X86
static inline RK_AVX2 __m256 gelu_value256(__m256 x, int approx) {
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    __m256 t;
    if (approx) {
        __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
        __m256 u = _mm256_mul_ps(_mm256_set1_ps(RK_SQRT_2_OVER_PI), _mm256_fmadd_ps(_mm256_set1_ps(RK_GELU_K), x3, x));
        t = rk_tanh256(u);
    } else {
        t = rk_erf256(_mm256_mul_ps(x, _mm256_set1_ps(RK_SQRT1_2)));
    }
    return _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, t));
}
static inline RK_AVX2 __m256 gelu_slope256(__m256 x, int approx) {
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    __m256 xx = _mm256_mul_ps(x, x);
    if (approx) {
        __m256 u = _mm256_mul_ps(_mm256_set1_ps(RK_SQRT_2_OVER_PI),
                                 _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(RK_GELU_K), xx), x, x));
        __m256 t = rk_tanh256(u);
        __m256 du = _mm256_mul_ps(_mm256_set1_ps(RK_SQRT_2_OVER_PI),
                                  _mm256_fmadd_ps(_mm256_set1_ps(3.0f * RK_GELU_K), xx, one));
        __m256 sech2 = _mm256_fnmadd_ps(t, t, one);
        return _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(half, x), sech2), du, _mm256_mul_ps(half, _mm256_add_ps(one, t)));
    }
    __m256 gauss; // e^{-x²/2}, from inside erf(x/√2)
    __m256 cdf = _mm256_mul_ps(half, _mm256_add_ps(one, rk_erf_gauss256(_mm256_mul_ps(x, _mm256_set1_ps(RK_SQRT1_2)), &gauss)));
    __m256 pdf = _mm256_mul_ps(_mm256_set1_ps(RK_INV_SQRT_2PI), gauss);
    return _mm256_fmadd_ps(x, pdf, cdf);
}
// The row loops below take an optional bias so that the plain and fused kernels share one body.
static RK_AVX2 void gelu_fwd_avx2(float *out, const float *inp, const float *bias, size_t rows, size_t C, int approx) {
    for (size_t i = 0; i < rows; i++) {
        const float *x = inp + i * C;
        float *y = out + i * C;
        size_t j = 0;
        for (; j + 8 <= C; j += 8) {
            __m256 v = _mm256_loadu_ps(x + j);
            if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + j));
            _mm256_storeu_ps(y + j, gelu_value256(v, approx));
        }
        for (; j < C; j++) y[j] = gelu_value(x[j] + (bias ? bias[j] : 0.0f), approx);
    }
}
static RK_AVX2 void gelu_bwd_avx2(float *dinp, float *dbias, const float *dout, const float *inp, const float *bias,
                                  size_t rows, size_t C, int approx) {
    for (size_t i = 0; i < rows; i++) {
        const float *x = inp + i * C, *dy = dout + i * C;
        float *dx = dinp ? dinp + i * C : NULL;
        size_t j = 0;
        for (; j + 8 <= C; j += 8) {
            __m256 v = _mm256_loadu_ps(x + j);
            if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + j));
            __m256 g = _mm256_mul_ps(gelu_slope256(v, approx), _mm256_loadu_ps(dy + j));
            if (dx) _mm256_storeu_ps(dx + j, _mm256_add_ps(_mm256_loadu_ps(dx + j), g));
            if (dbias) _mm256_storeu_ps(dbias + j, _mm256_add_ps(_mm256_loadu_ps(dbias + j), g));
        }
        for (; j < C; j++) {
            float g = gelu_slope(x[j] + (bias ? bias[j] : 0.0f), approx) * dy[j];
            if (dx) dx[j] += g;
            if (dbias) dbias[j] += g;
        }
    }
}

static inline RK_AVX512 __m512 gelu_value512(__m512 x, int approx) {
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    __m512 t;
    if (approx) {
        __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
        t = rk_tanh512(_mm512_mul_ps(_mm512_set1_ps(RK_SQRT_2_OVER_PI), _mm512_fmadd_ps(_mm512_set1_ps(RK_GELU_K), x3, x)));
    } else {
        t = rk_erf512(_mm512_mul_ps(x, _mm512_set1_ps(RK_SQRT1_2)));
    }
    return _mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_add_ps(one, t));
}
static inline RK_AVX512 __m512 gelu_slope512(__m512 x, int approx) {
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    __m512 xx = _mm512_mul_ps(x, x);
    if (approx) {
        __m512 u = _mm512_mul_ps(_mm512_set1_ps(RK_SQRT_2_OVER_PI),
                                 _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(RK_GELU_K), xx), x, x));
        __m512 t = rk_tanh512(u);
        __m512 du = _mm512_mul_ps(_mm512_set1_ps(RK_SQRT_2_OVER_PI),
                                  _mm512_fmadd_ps(_mm512_set1_ps(3.0f * RK_GELU_K), xx, one));
        __m512 sech2 = _mm512_fnmadd_ps(t, t, one);
        return _mm512_fmadd_ps(_mm512_mul_ps(_mm512_mul_ps(half, x), sech2), du, _mm512_mul_ps(half, _mm512_add_ps(one, t)));
    }
    __m512 gauss; // e^{-x²/2}, from inside erf(x/√2)
    __m512 cdf = _mm512_mul_ps(half, _mm512_add_ps(one, rk_erf_gauss512(_mm512_mul_ps(x, _mm512_set1_ps(RK_SQRT1_2)), &gauss)));
    __m512 pdf = _mm512_mul_ps(_mm512_set1_ps(RK_INV_SQRT_2PI), gauss);
    return _mm512_fmadd_ps(x, pdf, cdf);
}
static RK_AVX512 void gelu_fwd_avx512(float *out, const float *inp, const float *bias, size_t rows, size_t C, int approx) {
    for (size_t i = 0; i < rows; i++) {
        const float *x = inp + i * C;
        float *y = out + i * C;
        size_t j = 0;
        for (; j + 16 <= C; j += 16) {
            __m512 v = _mm512_loadu_ps(x + j);
            if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + j));
            _mm512_storeu_ps(y + j, gelu_value512(v, approx));
        }
        for (; j < C; j++) y[j] = gelu_value(x[j] + (bias ? bias[j] : 0.0f), approx);
    }
}
static RK_AVX512 void gelu_bwd_avx512(float *dinp, float *dbias, const float *dout, const float *inp,
                                      const float *bias, size_t rows, size_t C, int approx) {
    for (size_t i = 0; i < rows; i++) {
        const float *x = inp + i * C, *dy = dout + i * C;
        float *dx = dinp ? dinp + i * C : NULL;
        size_t j = 0;
        for (; j + 16 <= C; j += 16) {
            __m512 v = _mm512_loadu_ps(x + j);
            if (bias) v = _mm512_add_ps(v, _mm512_loadu_ps(bias + j));
            __m512 g = _mm512_mul_ps(gelu_slope512(v, approx), _mm512_loadu_ps(dy + j));
            if (dx) _mm512_storeu_ps(dx + j, _mm512_add_ps(_mm512_loadu_ps(dx + j), g));
            if (dbias) _mm512_storeu_ps(dbias + j, _mm512_add_ps(_mm512_loadu_ps(dbias + j), g));
        }
        for (; j < C; j++) {
            float g = gelu_slope(x[j] + (bias ? bias[j] : 0.0f), approx) * dy[j];
            if (dx) dx[j] += g;
            if (dbias) dbias[j] += g;
        }
    }
}
#endif

static void gelu_fwd_scalar(float *out, const float *inp, const float *bias, size_t rows, size_t C, int approx) {
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < C; j++) out[i * C + j] = gelu_value(inp[i * C + j] + (bias ? bias[j] : 0.0f), approx);
}
static void gelu_bwd_scalar(float *dinp, float *dbias, const float *dout, const float *inp, const float *bias,
                            size_t rows, size_t C, int approx) {
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < C; j++) {
            float g = gelu_slope(inp[i * C + j] + (bias ? bias[j] : 0.0f), approx) * dout[i * C + j];
            if (dinp) dinp[i * C + j] += g;
            if (dbias) dbias[j] += g;
        }
}

static void gelu_fwd(float *out, const float *inp, const float *bias, size_t rows, size_t C, int approx) {
#if RK_X86
    int isa = rk_isa_active();
    if (isa >= RK_ISA_AVX512) { gelu_fwd_avx512(out, inp, bias, rows, C, approx); return; }
    if (isa >= RK_ISA_AVX2) { gelu_fwd_avx2(out, inp, bias, rows, C, approx); return; }
#endif
    gelu_fwd_scalar(out, inp, bias, rows, C, approx);
}
static void gelu_bwd(float *dinp, float *dbias, const float *dout, const float *inp, const float *bias, size_t rows,
                     size_t C, int approx) {
#if RK_X86
    int isa = rk_isa_active();
    if (isa >= RK_ISA_AVX512) { gelu_bwd_avx512(dinp, dbias, dout, inp, bias, rows, C, approx); return; }
    if (isa >= RK_ISA_AVX2) { gelu_bwd_avx2(dinp, dbias, dout, inp, bias, rows, C, approx); return; }
#endif
    gelu_bwd_scalar(dinp, dbias, dout, inp, bias, rows, C, approx);
}

// inp, out, dout, dinp are (n) — treated as one row.
void rk_gelu_forward(float *out, const float *inp, size_t n, int approx) { gelu_fwd(out, inp, NULL, 1, n, approx); }
void rk_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n, int approx) {
    if (dinp) gelu_bwd(dinp, NULL, dout, inp, NULL, 1, n, approx);
}
// inp, out are (N,C); bias is (C).
void rk_bias_gelu_forward(float *out, const float *inp, const float *bias, int N, int C, int approx) {
    gelu_fwd(out, inp, bias, (size_t)N, (size_t)C, approx);
}
void rk_bias_gelu_backward(float *dinp, float *dbias, const float *dout, const float *inp, const float *bias,
                           int N, int C, int approx) {
    if (dinp || dbias) gelu_bwd(dinp, dbias, dout, inp, bias, (size_t)N, (size_t)C, approx);
}

// reference: libm erff/tanhf, one element at a time.
void rk_gelu_forward_ref(float *out, const float *inp, size_t n, int approx) {
    for (size_t i = 0; i < n; i++) out[i] = gelu_value(inp[i], approx);
}
void rk_gelu_backward_ref(float *dinp, const float *dout, const float *inp, size_t n, int approx) {
    for (size_t i = 0; i < n; i++) dinp[i] += gelu_slope(inp[i], approx) * dout[i];
}
void rk_bias_gelu_forward_ref(float *out, const float *inp, const float *bias, int N, int C, int approx) {
    gelu_fwd_scalar(out, inp, bias, (size_t)N, (size_t)C, approx);
}
void rk_bias_gelu_backward_ref(float *dinp, float *dbias, const float *dout, const float *inp, const float *bias,
                               int N, int C, int approx) {
    gelu_bwd_scalar(dinp, dbias, dout, inp, bias, (size_t)N, (size_t)C, approx);
}
