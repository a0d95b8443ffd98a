// swiglu.c — SiLU (Elfwing et al., arXiv 1702.03118) and SwiGLU (Shazeer, arXiv 2002.05202), Llama's feed-forward
// gate: out = silu(g)·u with silu(g) = g·σ(g);  dg += dout·u·σ(g)·(1 + g·(1 - σ(g)));  du += dout·silu(g).
#include "rk_internal.h"

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

static void swiglu_fwd_scalar(float *out, const float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = g[i] * sigmoidf(g[i]) * (u ? u[i] : 1.0f);
}
static void swiglu_bwd_scalar(float *dg, float *du, const float *dout, const float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float s = sigmoidf(g[i]), up = u ? u[i] : 1.0f;
        if (dg) dg[i] += dout[i] * up * s * (1.0f + g[i] * (1.0f - s));
        if (du) du[i] += dout[i] * g[i] * s;
    }
}

#if RK_X86
// σ(x) = 1/(1 + e^{-x}); e^{-x} saturates to +inf for very negative x, giving σ = 0 as it should.
static inline RK_AVX2 __m256 sigmoid256(__m256 x) {
    __m256 e = rk_exp256(_mm256_sub_ps(_mm256_setzero_ps(), x));
    return _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}
static RK_AVX2 void swiglu_fwd_avx2(float *out, const float *g, const float *u, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i), y = _mm256_mul_ps(x, sigmoid256(x));
        if (u) y = _mm256_mul_ps(y, _mm256_loadu_ps(u + i));
        _mm256_storeu_ps(out + i, y);
    }
    swiglu_fwd_scalar(out + i, g + i, u ? u + i : NULL, n - i);
}
static RK_AVX2 void swiglu_bwd_avx2(float *dg, float *du, const float *dout, const float *g, const float *u, size_t n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i), s = sigmoid256(x), d = _mm256_loadu_ps(dout + i);
        __m256 up = u ? _mm256_loadu_ps(u + i) : one;
        if (dg) {
            __m256 ds = _mm256_mul_ps(s, _mm256_fmadd_ps(x, _mm256_sub_ps(one, s), one));
            _mm256_storeu_ps(dg + i, _mm256_fmadd_ps(_mm256_mul_ps(d, up), ds, _mm256_loadu_ps(dg + i)));
        }
        if (du) _mm256_storeu_ps(du + i, _mm256_fmadd_ps(d, _mm256_mul_ps(x, s), _mm256_loadu_ps(du + i)));
    }
    swiglu_bwd_scalar(dg ? dg + i : NULL, du ? du + i : NULL, dout + i, g + i, u ? u + i : NULL, n - i);
}
static inline RK_AVX512 __m512 sigmoid512(__m512 x) {
    __m512 e = rk_exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}
static RK_AVX512 void swiglu_fwd_avx512(float *out, const float *g, const float *u, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(g + i), y = _mm512_mul_ps(x, sigmoid512(x));
        if (u) y = _mm512_mul_ps(y, _mm512_loadu_ps(u + i));
        _mm512_storeu_ps(out + i, y);
    }
    swiglu_fwd_scalar(out + i, g + i, u ? u + i : NULL, n - i);
}
static RK_AVX512 void swiglu_bwd_avx512(float *dg, float *du, const float *dout, const float *g, const float *u,
                                        size_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_loadu_ps(g + i), s = sigmoid512(x), d = _mm512_loadu_ps(dout + i);
        __m512 up = u ? _mm512_loadu_ps(u + i) : one;
        if (dg) {
            __m512 ds = _mm512_mul_ps(s, _mm512_fmadd_ps(x, _mm512_sub_ps(one, s), one));
            _mm512_storeu_ps(dg + i, _mm512_fmadd_ps(_mm512_mul_ps(d, up), ds, _mm512_loadu_ps(dg + i)));
        }
        if (du) _mm512_storeu_ps(du + i, _mm512_fmadd_ps(d, _mm512_mul_ps(x, s), _mm512_loadu_ps(du + i)));
    }
    swiglu_bwd_scalar(dg ? dg + i : NULL, du ? du + i : NULL, dout + i, g + i, u ? u + i : NULL, n - i);
}
#endif

void rk_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
#if RK_X86
    int isa = rk_isa_active();
    if (isa >= RK_ISA_AVX512) { swiglu_fwd_avx512(out, gate, up, n); return; }
    if (isa >= RK_ISA_AVX2) { swiglu_fwd_avx2(out, gate, up, n); return; }
#endif
    swiglu_fwd_scalar(out, gate, up, n);
}
void rk_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n) {
#if RK_X86
    int isa = rk_isa_active();
    if (isa >= RK_ISA_AVX512) { swiglu_bwd_avx512(dgate, dup, dout, gate, up, n); return; }
    if (isa >= RK_ISA_AVX2) { swiglu_bwd_avx2(dgate, dup, dout, gate, up, n); return; }
#endif
    swiglu_bwd_scalar(dgate, dup, dout, gate, up, n);
}
// reference: in double, σ from its definition.
void rk_swiglu_forward_ref(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double g = gate[i], s = 1.0 / (1.0 + exp(-g));
        out[i] = (float)(g * s * (up ? up[i] : 1.0));
    }
}
void rk_swiglu_backward_ref(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double g = gate[i], s = 1.0 / (1.0 + exp(-g)), u = up ? up[i] : 1.0;
        if (dgate) dgate[i] += (float)(dout[i] * u * (s + g * s * (1.0 - s)));
        if (dup) dup[i] += (float)(dout[i] * g * s);
    }
}
