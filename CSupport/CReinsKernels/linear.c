// linear.c — the dense layer y = x·Wᵀ + b (OpenBLAS sgemm for batches, kernels of our own for one row), and the bias
// gradient it shares with other layers.
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

// ---- one row: y (OC) = W (OC,C) · x (C) [+ bias] ------------------------------------------------------------------
// A decoding step's product reads every weight once; it is as fast as the memory streams W. Four weight rows share
// each load of x; one accumulator per row, summed across lanes at the end of the row.
static void gemv_rows_scalar(float *y, const float *w, const float *x, const float *bias, int C, int OC) {
    for (int o = 0; o < OC; o++) {
        const float *r = w + RK_IDX(o, 0, C);
        float s = 0.0f;
        for (int c = 0; c < C; c++) s += r[c] * x[c];
        y[o] = (bias ? bias[o] : 0.0f) + s;
    }
}
#if RK_X86
// The next four weight rows' line at this column, asked for while these four are summed: one thread streaming 200
// distinct 576 x 1536 float32 weights (700 MB, from memory) read 12-13.5 GB/s without it, 15 with it.
// (Past the weight's end it is a hint to an address outside it, never a fault; computed as an integer so that the C
// pointer stays in bounds.)
static inline void prefetch_next_rows(const float *p, int C) {
    uintptr_t n = (uintptr_t)p + (size_t)4 * C * sizeof(float);
    for (int r = 0; r < 4; r++) _mm_prefetch((const char *)(n + (size_t)r * C * sizeof(float)), _MM_HINT_T0);
}
static RK_AVX2 void gemv_rows_avx2(float *y, const float *w, const float *x, const float *bias, int C, int OC) {
    int o = 0;
    for (; o + 4 <= OC; o += 4) {
        const float *r0 = w + RK_IDX(o, 0, C), *r1 = r0 + C, *r2 = r1 + C, *r3 = r2 + C;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int c = 0;
        for (; c + 8 <= C; c += 8) {
            if (c % 16 == 0) prefetch_next_rows(r0 + c, C);
            __m256 xv = _mm256_loadu_ps(x + c);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + c), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + c), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r2 + c), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r3 + c), xv, a3);
        }
        float s0 = rk_hsum256(a0), s1 = rk_hsum256(a1), s2 = rk_hsum256(a2), s3 = rk_hsum256(a3);
        for (; c < C; c++) {
            s0 += r0[c] * x[c];
            s1 += r1[c] * x[c];
            s2 += r2[c] * x[c];
            s3 += r3[c] * x[c];
        }
        float b[4] = {0, 0, 0, 0};
        if (bias) memcpy(b, bias + o, sizeof b);
        y[o] = b[0] + s0, y[o + 1] = b[1] + s1, y[o + 2] = b[2] + s2, y[o + 3] = b[3] + s3;
    }
    gemv_rows_scalar(y + o, w + RK_IDX(o, 0, C), x, bias ? bias + o : NULL, C, OC - o);
}
static RK_AVX512 void gemv_rows_avx512(float *y, const float *w, const float *x, const float *bias, int C, int OC) {
    int o = 0;
    const __mmask16 tail = (__mmask16)((1u << (C % 16)) - 1);
    for (; o + 4 <= OC; o += 4) {
        const float *r0 = w + RK_IDX(o, 0, C), *r1 = r0 + C, *r2 = r1 + C, *r3 = r2 + C;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int c = 0;
        for (; c + 16 <= C; c += 16) {
            prefetch_next_rows(r0 + c, C);
            __m512 xv = _mm512_loadu_ps(x + c);
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(r0 + c), xv, a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(r1 + c), xv, a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(r2 + c), xv, a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(r3 + c), xv, a3);
        }
        if (tail) {
            __m512 xv = _mm512_maskz_loadu_ps(tail, x + c);
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, r0 + c), xv, a0);
            a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, r1 + c), xv, a1);
            a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, r2 + c), xv, a2);
            a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, r3 + c), xv, a3);
        }
        float b[4] = {0, 0, 0, 0};
        if (bias) memcpy(b, bias + o, sizeof b);
        y[o] = b[0] + _mm512_reduce_add_ps(a0), y[o + 1] = b[1] + _mm512_reduce_add_ps(a1);
        y[o + 2] = b[2] + _mm512_reduce_add_ps(a2), y[o + 3] = b[3] + _mm512_reduce_add_ps(a3);
    }
    gemv_rows_scalar(y + o, w + RK_IDX(o, 0, C), x, bias ? bias + o : NULL, C, OC - o);
}
#endif

// ---- one row through a (C, ldw) weight's columns: y (n) = x (C) · W[:, 0..n) [+ bias] ----------------------------------
// GPT-2's Conv1D layout: the output is a weighted sum of weight rows, four rows per pass over y (which stays in L1)
// while each weight row streams once, contiguously.
static void gemv_cols_start(float *y, const float *bias, int n) {
    for (int j = 0; j < n; j++) y[j] = bias ? bias[j] : 0.0f;
}
// Adds weight rows c0..<C: all of them in the scalar kernel, the ones left after the last four in the others.
static void gemv_cols_add_rows(float *y, const float *w, const float *x, int c0, int C, int n, int ldw) {
    for (int c = c0; c < C; c++) {
        const float *r = w + RK_IDX(c, 0, ldw);
        for (int j = 0; j < n; j++) y[j] += x[c] * r[j];
    }
}
static void gemv_cols_scalar(float *y, const float *w, const float *x, const float *bias, int C, int n, int ldw) {
    gemv_cols_start(y, bias, n);
    gemv_cols_add_rows(y, w, x, 0, C, n, ldw);
}
#if RK_X86
static RK_AVX2 void gemv_cols_avx2(float *y, const float *w, const float *x, const float *bias, int C, int n, int ldw) {
    gemv_cols_start(y, bias, n);
    int c = 0;
    for (; c + 4 <= C; c += 4) {
        const float *r0 = w + RK_IDX(c, 0, ldw), *r1 = r0 + ldw, *r2 = r1 + ldw, *r3 = r2 + ldw;
        __m256 x0 = _mm256_set1_ps(x[c]), x1 = _mm256_set1_ps(x[c + 1]), x2 = _mm256_set1_ps(x[c + 2]),
               x3 = _mm256_set1_ps(x[c + 3]);
        int j = 0;
        for (; j + 8 <= n; j += 8) {
            __m256 a = _mm256_loadu_ps(y + j);
            a = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + j), x0, a);
            a = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + j), x1, a);
            a = _mm256_fmadd_ps(_mm256_loadu_ps(r2 + j), x2, a);
            a = _mm256_fmadd_ps(_mm256_loadu_ps(r3 + j), x3, a);
            _mm256_storeu_ps(y + j, a);
        }
        for (; j < n; j++) y[j] += x[c] * r0[j] + x[c + 1] * r1[j] + x[c + 2] * r2[j] + x[c + 3] * r3[j];
    }
    gemv_cols_add_rows(y, w, x, c, C, n, ldw);
}
static RK_AVX512 void gemv_cols_avx512(float *y, const float *w, const float *x, const float *bias, int C, int n,
                                       int ldw) {
    gemv_cols_start(y, bias, n);
    const __mmask16 tail = (__mmask16)((1u << (n % 16)) - 1);
    const int whole = n - n % 16;
    int c = 0;
    for (; c + 4 <= C; c += 4) {
        const float *r0 = w + RK_IDX(c, 0, ldw), *r1 = r0 + ldw, *r2 = r1 + ldw, *r3 = r2 + ldw;
        __m512 x0 = _mm512_set1_ps(x[c]), x1 = _mm512_set1_ps(x[c + 1]), x2 = _mm512_set1_ps(x[c + 2]),
               x3 = _mm512_set1_ps(x[c + 3]);
        for (int j = 0; j < whole; j += 16) {
            __m512 a = _mm512_loadu_ps(y + j);
            a = _mm512_fmadd_ps(_mm512_loadu_ps(r0 + j), x0, a);
            a = _mm512_fmadd_ps(_mm512_loadu_ps(r1 + j), x1, a);
            a = _mm512_fmadd_ps(_mm512_loadu_ps(r2 + j), x2, a);
            a = _mm512_fmadd_ps(_mm512_loadu_ps(r3 + j), x3, a);
            _mm512_storeu_ps(y + j, a);
        }
        if (tail) {
            __m512 a = _mm512_maskz_loadu_ps(tail, y + whole);
            a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, r0 + whole), x0, a);
            a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, r1 + whole), x1, a);
            a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, r2 + whole), x2, a);
            a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, r3 + whole), x3, a);
            _mm512_mask_storeu_ps(y + whole, tail, a);
        }
    }
    gemv_cols_add_rows(y, w, x, c, C, n, ldw);
}
#endif

void rk_gemv_cols(float *y, const float *weight, const float *x, const float *bias, int C, int n, int ldw) {
#if RK_X86
    int isa = rk_isa_active();
    if (isa >= RK_ISA_AVX512) { gemv_cols_avx512(y, weight, x, bias, C, n, ldw); return; }
    if (isa >= RK_ISA_AVX2) { gemv_cols_avx2(y, weight, x, bias, C, n, ldw); return; }
#endif
    gemv_cols_scalar(y, weight, x, bias, C, n, ldw);
}

void rk_gemv_rows(float *y, const float *weight, const float *x, const float *bias, int C, int OC) {
#if RK_X86
    int isa = rk_isa_active();
    if (isa >= RK_ISA_AVX512) { gemv_rows_avx512(y, weight, x, bias, C, OC); return; }
    if (isa >= RK_ISA_AVX2) { gemv_rows_avx2(y, weight, x, bias, C, OC); return; }
#endif
    gemv_rows_scalar(y, weight, x, bias, C, OC);
}

// ---- linear ---------------------------------------------------------------------------------------------------
// inp is (N,C); weight is (OC,C), or (C,OC) if w_transposed; out is (N,OC).
void rk_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int N, int C, int OC, int w_transposed) {
    if (N == 1) { // one row (a decoding step): a matrix-vector product streams W once, which is all it can cost
        if (w_transposed) rk_gemv_cols(out, weight, inp, bias, C, OC, OC);
        else rk_gemv_rows(out, weight, inp, bias, C, OC);
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
