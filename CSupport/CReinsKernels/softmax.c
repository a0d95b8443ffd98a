// softmax.c — softmax over the last axis, and fused log-softmax cross-entropy with an ignore index.
//   softmax:  y = e^{x - max} / Σ e^{x - max};   dx += y ⊙ (dy - Σ dy⊙y)
//   cross-entropy per row: loss = lse - x[t] with lse = max + log Σ e^{x - max};
//                          dx += scale·(e^{x - lse} - onehot(t))   (probabilities recomputed from the saved lse)
#include "rk_internal.h"
#include <string.h>

// ---- row primitives: max, Σ e^{x-c} (optionally storing the exponentials), scaling ----------------------------
// The row maxima are NaN when the row has a NaN (a comparison alone would skip it, and a softmax, cross-entropy or
// attention row of NaN would then read as finite, or as a row with nothing visible).
static float row_max_scalar(const float *x, int C) {
    float m = -INFINITY;
    for (int j = 0; j < C; j++) {
        if (isnan(x[j])) return NAN;
        m = x[j] > m ? x[j] : m;
    }
    return m;
}
static float row_expsum_scalar(float *y, const float *x, float c, int C) {
    float s = 0.0f;
    for (int j = 0; j < C; j++) {
        float e = expf(x[j] - c);
        if (y) y[j] = e;
        s += e;
    }
    return s;
}
#if RK_X86
static RK_AVX2 float row_max_avx2(const float *x, int C) {
    __m256 m = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= C; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        m = _mm256_max_ps(m, v);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    if (_mm256_movemask_ps(nan)) return NAN;
    float r = rk_hmax256(m);
    for (; j < C; j++) {
        if (isnan(x[j])) return NAN;
        r = x[j] > r ? x[j] : r;
    }
    return r;
}
static RK_AVX2 float row_expsum_avx2(float *y, const float *x, float c, int C) {
    __m256 vc = _mm256_set1_ps(c), a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int j = 0;
    for (; j + 16 <= C; j += 16) {
        __m256 e0 = rk_exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), vc));
        __m256 e1 = rk_exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vc));
        if (y) { _mm256_storeu_ps(y + j, e0); _mm256_storeu_ps(y + j + 8, e1); }
        a0 = _mm256_add_ps(a0, e0);
        a1 = _mm256_add_ps(a1, e1);
    }
    for (; j + 8 <= C; j += 8) {
        __m256 e = rk_exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), vc));
        if (y) _mm256_storeu_ps(y + j, e);
        a0 = _mm256_add_ps(a0, e);
    }
    float s = rk_hsum256(_mm256_add_ps(a0, a1));
    for (; j < C; j++) {
        float e = expf(x[j] - c);
        if (y) y[j] = e;
        s += e;
    }
    return s;
}
static RK_AVX2 void row_scale_avx2(float *y, float s, int C) {
    __m256 vs = _mm256_set1_ps(s);
    int j = 0;
    for (; j + 8 <= C; j += 8) _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(y + j), vs));
    for (; j < C; j++) y[j] *= s;
}
static RK_AVX2 float row_dot_avx2(const float *a, const float *b, int C) {
    __m256 acc = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= C; j += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), acc);
    float s = rk_hsum256(acc);
    for (; j < C; j++) s += a[j] * b[j];
    return s;
}
// dx += y ⊙ (dy - dot)
static RK_AVX2 void softmax_grad_row_avx2(float *dx, const float *dy, const float *y, float dot, int C) {
    __m256 vd = _mm256_set1_ps(dot);
    int j = 0;
    for (; j + 8 <= C; j += 8) {
        __m256 g = _mm256_mul_ps(_mm256_loadu_ps(y + j), _mm256_sub_ps(_mm256_loadu_ps(dy + j), vd));
        _mm256_storeu_ps(dx + j, _mm256_add_ps(_mm256_loadu_ps(dx + j), g));
    }
    for (; j < C; j++) dx[j] += y[j] * (dy[j] - dot);
}
// dx += scale · e^{x - lse}
static RK_AVX2 void ce_grad_row_avx2(float *dx, const float *x, float lse, float scale, int C) {
    __m256 vl = _mm256_set1_ps(lse), vs = _mm256_set1_ps(scale);
    int j = 0;
    for (; j + 8 <= C; j += 8) {
        __m256 p = rk_exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), vl));
        _mm256_storeu_ps(dx + j, _mm256_fmadd_ps(vs, p, _mm256_loadu_ps(dx + j)));
    }
    for (; j < C; j++) dx[j] += scale * expf(x[j] - lse);
}
// dx = scale · e^{x - lse}  (dx may be x: each element is read before it is written)
static RK_AVX2 void ce_grad_set_row_avx2(float *dx, const float *x, float lse, float scale, int C) {
    __m256 vl = _mm256_set1_ps(lse), vs = _mm256_set1_ps(scale);
    int j = 0;
    for (; j + 8 <= C; j += 8)
        _mm256_storeu_ps(dx + j, _mm256_mul_ps(vs, rk_exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), vl))));
    for (; j < C; j++) dx[j] = scale * expf(x[j] - lse);
}

// AVX-512: the rows of a language model's output layer (tens of thousands of classes) go through these.
static RK_AVX512 float row_max_avx512(const float *x, int C) {
    __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
    __mmask16 nan = 0;
    int j = 0;
    for (; j + 32 <= C; j += 32) {
        __m512 v0 = _mm512_loadu_ps(x + j), v1 = _mm512_loadu_ps(x + j + 16);
        m0 = _mm512_max_ps(m0, v0);
        m1 = _mm512_max_ps(m1, v1);
        nan |= _mm512_cmp_ps_mask(v0, v1, _CMP_UNORD_Q);
    }
    if (j + 16 <= C) {
        __m512 v = _mm512_loadu_ps(x + j);
        m0 = _mm512_max_ps(m0, v);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        j += 16;
    }
    if (j < C) {
        __m512 v = _mm512_mask_loadu_ps(m1, (__mmask16)((1u << (C - j)) - 1), x + j);
        m1 = _mm512_max_ps(m1, v);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    }
    if (nan) return NAN;
    return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}
static RK_AVX512 float row_expsum_avx512(float *y, const float *x, float c, int C) {
    __m512 vc = _mm512_set1_ps(c), a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int j = 0;
    for (; j + 32 <= C; j += 32) {
        __m512 e0 = rk_exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j), vc));
        __m512 e1 = rk_exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j + 16), vc));
        if (y) { _mm512_storeu_ps(y + j, e0); _mm512_storeu_ps(y + j + 16, e1); }
        a0 = _mm512_add_ps(a0, e0);
        a1 = _mm512_add_ps(a1, e1);
    }
    for (; j < C; j += 16) {
        __mmask16 k = C - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - j)) - 1);
        __m512 e = _mm512_maskz_mov_ps(k, rk_exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vc)));
        if (y) _mm512_mask_storeu_ps(y + j, k, e);
        a0 = _mm512_add_ps(a0, e);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}
static RK_AVX512 void ce_grad_set_row_avx512(float *dx, const float *x, float lse, float scale, int C) {
    __m512 vl = _mm512_set1_ps(lse), vs = _mm512_set1_ps(scale);
    for (int j = 0; j < C; j += 16) {
        __mmask16 k = C - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - j)) - 1);
        __m512 p = rk_exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), vl));
        _mm512_mask_storeu_ps(dx + j, k, _mm512_mul_ps(vs, p));
    }
}
#define SIMD (rk_isa_active() >= RK_ISA_AVX2)
#define SIMD512 (rk_isa_active() >= RK_ISA_AVX512)
#else
#define SIMD 0
#endif

float rk__row_max(const float *x, int C) {
#if RK_X86
    if (SIMD512) return row_max_avx512(x, C);
    if (SIMD) return row_max_avx2(x, C);
#endif
    return row_max_scalar(x, C);
}
float rk__row_expsum(float *y, const float *x, float c, int C) {
#if RK_X86
    if (SIMD512) return row_expsum_avx512(y, x, c, C);
    if (SIMD) return row_expsum_avx2(y, x, c, C);
#endif
    return row_expsum_scalar(y, x, c, C);
}

// ---- softmax: inp, out (N,C) ------------------------------------------------------------------------------------
void rk_softmax_forward(float *out, const float *inp, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *x = inp + RK_IDX(i, 0, C);
        float *y = out + RK_IDX(i, 0, C);
        float s = rk__row_expsum(y, x, rk__row_max(x, C), C);
#if RK_X86
        if (SIMD) { row_scale_avx2(y, 1.0f / s, C); continue; }
#endif
        float r = 1.0f / s;
        for (int j = 0; j < C; j++) y[j] *= r;
    }
}
void rk_softmax_backward(float *dinp, const float *dout, const float *out, int N, int C) {
    if (!dinp) return;
    for (int i = 0; i < N; i++) {
        const float *dy = dout + RK_IDX(i, 0, C), *y = out + RK_IDX(i, 0, C);
        float *dx = dinp + RK_IDX(i, 0, C);
#if RK_X86
        if (SIMD) { softmax_grad_row_avx2(dx, dy, y, row_dot_avx2(dy, y, C), C); continue; }
#endif
        float dot = 0.0f;
        for (int j = 0; j < C; j++) dot += dy[j] * y[j];
        for (int j = 0; j < C; j++) dx[j] += y[j] * (dy[j] - dot);
    }
}
void rk_softmax_forward_ref(float *out, const float *inp, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *x = inp + RK_IDX(i, 0, C);
        float *y = out + RK_IDX(i, 0, C);
        float s = row_expsum_scalar(y, x, row_max_scalar(x, C), C);
        for (int j = 0; j < C; j++) y[j] /= s;
    }
}
void rk_softmax_backward_ref(float *dinp, const float *dout, const float *out, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *dy = dout + RK_IDX(i, 0, C), *y = out + RK_IDX(i, 0, C);
        float dot = 0.0f;
        for (int j = 0; j < C; j++) dot += dy[j] * y[j];
        for (int j = 0; j < C; j++) dinp[RK_IDX(i, j, C)] += y[j] * (dy[j] - dot);
    }
}

// ---- cross-entropy: logits (N,V), targets (N), losses (N), lse (N) ---------------------------------------------
static int check_targets(const int32_t *targets, int N, int V, int ignore_index, int *bad_row) {
    for (int i = 0; i < N; i++) {
        int t = targets[i];
        if (t != ignore_index && (t < 0 || t >= V)) {
            if (bad_row) *bad_row = i;
            return RK_ERR_INDEX;
        }
    }
    return RK_OK;
}
static int ce_forward(float *losses, float *lse, const float *logits, const int32_t *targets, int N, int V,
                      int ignore_index, int *bad_row, int use_simd) {
    if (check_targets(targets, N, V, ignore_index, bad_row) != RK_OK) return RK_ERR_INDEX;
    for (int i = 0; i < N; i++) {
        const float *x = logits + RK_IDX(i, 0, V);
        float m = use_simd ? rk__row_max(x, V) : row_max_scalar(x, V);
        float s = use_simd ? rk__row_expsum(NULL, x, m, V) : row_expsum_scalar(NULL, x, m, V);
        float l = m + logf(s);
        lse[i] = l;
        losses[i] = targets[i] == ignore_index ? 0.0f : l - x[targets[i]];
    }
    return RK_OK;
}
int rk_crossentropy_forward(float *losses, float *lse, const float *logits, const int32_t *targets, int N, int V,
                            int ignore_index, int *bad_row) {
    return ce_forward(losses, lse, logits, targets, N, V, ignore_index, bad_row, 1);
}
int rk_crossentropy_forward_ref(float *losses, float *lse, const float *logits, const int32_t *targets, int N, int V,
                                int ignore_index, int *bad_row) {
    return ce_forward(losses, lse, logits, targets, N, V, ignore_index, bad_row, 0);
}
void rk_crossentropy_backward(float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                              float scale, int N, int V, int ignore_index) {
    if (!dlogits) return;
    for (int i = 0; i < N; i++) {
        if (targets[i] == ignore_index) continue;
        const float *x = logits + RK_IDX(i, 0, V);
        float *dx = dlogits + RK_IDX(i, 0, V);
#if RK_X86
        if (SIMD) ce_grad_row_avx2(dx, x, lse[i], scale, V);
        else
#endif
            for (int j = 0; j < V; j++) dx[j] += scale * expf(x[j] - lse[i]);
        dx[targets[i]] -= scale;
    }
}
void rk_crossentropy_gradient(float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                              float scale, int N, int V, int ignore_index) {
    for (int i = 0; i < N; i++) {
        const float *x = logits + RK_IDX(i, 0, V);
        float *dx = dlogits + RK_IDX(i, 0, V);
        if (targets[i] == ignore_index) {
            memset(dx, 0, sizeof(float) * (size_t)V);
            continue;
        }
#if RK_X86
        if (SIMD512) ce_grad_set_row_avx512(dx, x, lse[i], scale, V);
        else if (SIMD) ce_grad_set_row_avx2(dx, x, lse[i], scale, V);
        else
#endif
            for (int j = 0; j < V; j++) dx[j] = scale * expf(x[j] - lse[i]);
        dx[targets[i]] -= scale;
    }
}
void rk_crossentropy_gradient_ref(float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                                  float scale, int N, int V, int ignore_index) {
    for (int i = 0; i < N; i++)
        for (int j = 0; j < V; j++) {
            float p = expf(logits[RK_IDX(i, j, V)] - lse[i]);
            dlogits[RK_IDX(i, j, V)] =
                targets[i] == ignore_index ? 0.0f : scale * (p - (j == targets[i] ? 1.0f : 0.0f));
        }
}
void rk_crossentropy_backward_ref(float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                                  float scale, int N, int V, int ignore_index) {
    for (int i = 0; i < N; i++) {
        if (targets[i] == ignore_index) continue;
        for (int j = 0; j < V; j++) {
            float p = expf(logits[RK_IDX(i, j, V)] - lse[i]);
            dlogits[RK_IDX(i, j, V)] += scale * (p - (j == targets[i] ? 1.0f : 0.0f));
        }
    }
}
