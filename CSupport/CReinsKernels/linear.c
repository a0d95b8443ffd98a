// linear.c — the dense layer y = x·Wᵀ + b on OpenBLAS sgemm, and the bias gradient it shares with other layers.
// Not here: threading policy (OpenBLAS threads itself; callers decide how many threads it may use).
#include "rk_internal.h"
#include <cblas.h>
#include <string.h>

// ---- bias gradient: dbias (C) += Σ_rows dout ------------------------------------------------------------------
static void bias_backward_scalar(float *dbias, const float *dout, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *d = dout + RK_IDX(i, 0, C);
        for (int j = 0; j < C; j++) dbias[j] += d[j];
    }
}
#if RK_X86
// Columns in blocks of 32 so that four accumulators stay in registers while the rows stream past.
static RK_AVX2 void bias_backward_avx2(float *dbias, const float *dout, int N, int C) {
    int j = 0;
    for (; j + 32 <= C; j += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < N; i++) {
            const float *d = dout + RK_IDX(i, j, C);
            a0 = _mm256_add_ps(a0, _mm256_loadu_ps(d));
            a1 = _mm256_add_ps(a1, _mm256_loadu_ps(d + 8));
            a2 = _mm256_add_ps(a2, _mm256_loadu_ps(d + 16));
            a3 = _mm256_add_ps(a3, _mm256_loadu_ps(d + 24));
        }
        _mm256_storeu_ps(dbias + j, _mm256_add_ps(_mm256_loadu_ps(dbias + j), a0));
        _mm256_storeu_ps(dbias + j + 8, _mm256_add_ps(_mm256_loadu_ps(dbias + j + 8), a1));
        _mm256_storeu_ps(dbias + j + 16, _mm256_add_ps(_mm256_loadu_ps(dbias + j + 16), a2));
        _mm256_storeu_ps(dbias + j + 24, _mm256_add_ps(_mm256_loadu_ps(dbias + j + 24), a3));
    }
    for (; j < C; j++) {
        float s = 0.0f;
        for (int i = 0; i < N; i++) s += dout[RK_IDX(i, j, C)];
        dbias[j] += s;
    }
}
#endif

void rk_bias_backward(float *dbias, const float *dout, int N, int C) {
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX2) { bias_backward_avx2(dbias, dout, N, C); return; }
#endif
    bias_backward_scalar(dbias, dout, N, C);
}

// ---- linear ---------------------------------------------------------------------------------------------------
// inp is (N,C); weight is (OC,C), or (C,OC) if w_transposed; out is (N,OC).
void rk_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int N, int C, int OC, int w_transposed) {
    if (N == 1) { // one row (a decoding step): a matrix-vector product streams W once, which is all it can cost
        if (bias) memcpy(out, bias, sizeof(float) * (size_t)OC);
        cblas_sgemv(CblasRowMajor, w_transposed ? CblasTrans : CblasNoTrans, w_transposed ? C : OC, w_transposed ? OC : C,
                    1.0f, weight, w_transposed ? OC : C, inp, 1, bias ? 1.0f : 0.0f, out, 1);
        return;
    }
    // out = bias + inp · Wᵀ  (W (OC,C): transpose flag;  W (C,OC): plain product). The bias rows are written first
    // and the product accumulated onto them (beta 1): one pass over the output fewer than zeroing it (beta 0) and
    // adding the bias afterwards.
    if (bias)
        for (int i = 0; i < N; i++) memcpy(out + RK_IDX(i, 0, OC), bias, sizeof(float) * (size_t)OC);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, w_transposed ? CblasNoTrans : CblasTrans, N, OC, C, 1.0f, inp, C,
                weight, w_transposed ? OC : C, bias ? 1.0f : 0.0f, out, OC);
}

void rk_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                        const float *weight, int N, int C, int OC, int w_transposed) {
    // dinp (N,C) += dout (N,OC) · W (OC,C)
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, w_transposed ? CblasTrans : CblasNoTrans, N, C, OC, 1.0f, dout, OC,
                    weight, w_transposed ? OC : C, 1.0f, dinp, C);
    if (dweight) {
        if (w_transposed) // dW (C,OC) += inpᵀ · dout
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, OC, N, 1.0f, inp, C, dout, OC, 1.0f, dweight, OC);
        else // dW (OC,C) += doutᵀ · inp
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    }
    if (dbias) rk_bias_backward(dbias, dout, N, OC);
}

// reference: out[i,o] = b[o] + Σ_c inp[i,c]·W[o,c]
void rk_linear_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                           int N, int C, int OC, int w_transposed) {
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) {
            float s = bias ? bias[o] : 0.0f;
            for (int c = 0; c < C; c++)
                s += inp[RK_IDX(i, c, C)] * (w_transposed ? weight[RK_IDX(c, o, OC)] : weight[RK_IDX(o, c, C)]);
            out[RK_IDX(i, o, OC)] = s;
        }
}

void rk_linear_backward_ref(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                            const float *weight, int N, int C, int OC, int w_transposed) {
    for (int i = 0; i < N; i++)
        for (int o = 0; o < OC; o++) {
            float d = dout[RK_IDX(i, o, OC)];
            if (dbias) dbias[o] += d;
            for (int c = 0; c < C; c++) {
                size_t w = w_transposed ? RK_IDX(c, o, OC) : RK_IDX(o, c, C);
                if (dinp) dinp[RK_IDX(i, c, C)] += d * weight[w];
                if (dweight) dweight[w] += d * inp[RK_IDX(i, c, C)];
            }
        }
}
