// layernorm.c — layer normalisation over the last axis (Ba, Kiros & Hinton, arXiv 1607.06450).
//   forward:  μ = mean(x), rstd = 1/√(var(x) + eps), x̂ = (x - μ)·rstd, y = x̂·w + b     (two passes over x for
//             an accurate variance; μ and rstd are saved per row)
//   backward: g = dy·w;  dx += rstd·(g - mean(g) - x̂·mean(g·x̂));  dw += Σ_rows dy·x̂;  db += Σ_rows dy
#include "rk_internal.h"

static void ln_fwd_scalar(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b,
                          int N, int C, float eps) {
    for (int i = 0; i < N; i++) {
        const float *x = inp + RK_IDX(i, 0, C);
        float *y = out + RK_IDX(i, 0, C);
        float m = 0.0f;
        for (int j = 0; j < C; j++) m += x[j];
        m /= (float)C;
        float v = 0.0f;
        for (int j = 0; j < C; j++) { float d = x[j] - m; v += d * d; }
        v /= (float)C;
        float s = 1.0f / sqrtf(v + eps);
        for (int j = 0; j < C; j++) y[j] = (x[j] - m) * s * (w ? w[j] : 1.0f) + (b ? b[j] : 0.0f);
        if (mean) mean[i] = m;
        if (rstd) rstd[i] = s;
    }
}
static void ln_bwd_scalar(float *dinp, float *dw, float *db, const float *dout, const float *inp, const float *w,
                          const float *mean, const float *rstd, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *x = inp + RK_IDX(i, 0, C), *dy = dout + RK_IDX(i, 0, C);
        float m = mean[i], s = rstd[i];
        float gmean = 0.0f, gxmean = 0.0f;
        for (int j = 0; j < C; j++) {
            float xh = (x[j] - m) * s, g = dy[j] * (w ? w[j] : 1.0f);
            gmean += g;
            gxmean += g * xh;
        }
        gmean /= (float)C;
        gxmean /= (float)C;
        for (int j = 0; j < C; j++) {
            float xh = (x[j] - m) * s, g = dy[j] * (w ? w[j] : 1.0f);
            if (dinp) dinp[RK_IDX(i, j, C)] += s * (g - gmean - xh * gxmean);
            if (dw) dw[j] += dy[j] * xh;
            if (db) db[j] += dy[j];
        }
    }
}

#if RK_X86
static RK_AVX2 void ln_fwd_avx2(float *out, float *mean, float *rstd, const float *inp, const float *w,
                                const float *b, int N, int C, float eps) {
    for (int i = 0; i < N; i++) {
        const float *x = inp + RK_IDX(i, 0, C);
        float *y = out + RK_IDX(i, 0, C);
        __m256 acc = _mm256_setzero_ps();
        int j = 0;
        for (; j + 8 <= C; j += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + j));
        float m = rk_hsum256(acc);
        for (; j < C; j++) m += x[j];
        m /= (float)C;
        __m256 vm = _mm256_set1_ps(m);
        acc = _mm256_setzero_ps();
        float v = 0.0f;
        for (j = 0; j + 8 <= C; j += 8) {
            __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + j), vm);
            acc = _mm256_fmadd_ps(d, d, acc);
        }
        v = rk_hsum256(acc);
        for (; j < C; j++) { float d = x[j] - m; v += d * d; }
        v /= (float)C;
        float s = 1.0f / sqrtf(v + eps);
        __m256 vs = _mm256_set1_ps(s);
        for (j = 0; j + 8 <= C; j += 8) {
            __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm), vs);
            __m256 ww = w ? _mm256_loadu_ps(w + j) : _mm256_set1_ps(1.0f);
            __m256 bb = b ? _mm256_loadu_ps(b + j) : _mm256_setzero_ps();
            _mm256_storeu_ps(y + j, _mm256_fmadd_ps(xh, ww, bb));
        }
        for (; j < C; j++) y[j] = (x[j] - m) * s * (w ? w[j] : 1.0f) + (b ? b[j] : 0.0f);
        if (mean) mean[i] = m;
        if (rstd) rstd[i] = s;
    }
}
static RK_AVX2 void ln_bwd_avx2(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                                const float *w, const float *mean, const float *rstd, int N, int C) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int i = 0; i < N; i++) {
        const float *x = inp + RK_IDX(i, 0, C), *dy = dout + RK_IDX(i, 0, C);
        float m = mean[i], s = rstd[i];
        __m256 vm = _mm256_set1_ps(m), vs = _mm256_set1_ps(s);
        __m256 ag = _mm256_setzero_ps(), agx = _mm256_setzero_ps();
        int j = 0;
        for (; j + 8 <= C; j += 8) {
            __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm), vs);
            __m256 g = _mm256_mul_ps(_mm256_loadu_ps(dy + j), w ? _mm256_loadu_ps(w + j) : one);
            ag = _mm256_add_ps(ag, g);
            agx = _mm256_fmadd_ps(g, xh, agx);
        }
        float gmean = rk_hsum256(ag), gxmean = rk_hsum256(agx);
        for (; j < C; j++) {
            float xh = (x[j] - m) * s, g = dy[j] * (w ? w[j] : 1.0f);
            gmean += g;
            gxmean += g * xh;
        }
        gmean /= (float)C;
        gxmean /= (float)C;
        __m256 vgm = _mm256_set1_ps(gmean), vgx = _mm256_set1_ps(gxmean);
        for (j = 0; j + 8 <= C; j += 8) {
            __m256 xh = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm), vs);
            __m256 d = _mm256_loadu_ps(dy + j);
            if (dinp) {
                __m256 g = _mm256_mul_ps(d, w ? _mm256_loadu_ps(w + j) : one);
                __m256 t = _mm256_fnmadd_ps(xh, vgx, _mm256_sub_ps(g, vgm));
                float *p = dinp + RK_IDX(i, j, C);
                _mm256_storeu_ps(p, _mm256_fmadd_ps(vs, t, _mm256_loadu_ps(p)));
            }
            if (dw) _mm256_storeu_ps(dw + j, _mm256_fmadd_ps(d, xh, _mm256_loadu_ps(dw + j)));
            if (db) _mm256_storeu_ps(db + j, _mm256_add_ps(d, _mm256_loadu_ps(db + j)));
        }
        for (; j < C; j++) {
            float xh = (x[j] - m) * s, g = dy[j] * (w ? w[j] : 1.0f);
            if (dinp) dinp[RK_IDX(i, j, C)] += s * (g - gmean - xh * gxmean);
            if (dw) dw[j] += dy[j] * xh;
            if (db) db[j] += dy[j];
        }
    }
}
#endif

// inp, out (N,C); weight, bias (C); mean, rstd (N)
void rk_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                          const float *bias, int N, int C, float eps) {
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX2) { ln_fwd_avx2(out, mean, rstd, inp, weight, bias, N, C, eps); return; }
#endif
    ln_fwd_scalar(out, mean, rstd, inp, weight, bias, N, C, eps);
}
void rk_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                           const float *weight, const float *mean, const float *rstd, int N, int C) {
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX2) {
        ln_bwd_avx2(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
        return;
    }
#endif
    ln_bwd_scalar(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}
// reference: the same formulas, one element at a time.
void rk_layernorm_forward_ref(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                              const float *bias, int N, int C, float eps) {
    ln_fwd_scalar(out, mean, rstd, inp, weight, bias, N, C, eps);
}
void rk_layernorm_backward_ref(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                               const float *weight, const float *mean, const float *rstd, int N, int C) {
    ln_bwd_scalar(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}
