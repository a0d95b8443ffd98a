// lora.c — the LoRA linear layer as one op (Hu et al., arXiv 2106.09685):
//   out (N,OC) = inp (N,C)·Wᵀ + b + s·(inp·Aᵀ)·Bᵀ,  A (r,C), B (OC,r), xa = inp·Aᵀ (N,r) kept for backward
// backward, with g = s·dout·B (N,r):
//   dB += s·doutᵀ·xa;  dA += gᵀ·inp;  dinp += dout·W + g·A;  dW += doutᵀ·inp;  db += Σ_rows dout
// A frozen base passes NULL for dW and db and pays for neither GEMM; a NULL weight leaves the base's products (the
// forward one, dinp's dout·W) to the caller. Not here: LoRA dropout (a separate op on inp).
#include "rk_internal.h"
#include <cblas.h>

void rk_lora_forward(float *out, float *xa, const float *inp, const float *weight, const float *bias,
                     const float *A, const float *Bm, int N, int C, int OC, int r, float scale, int w_transposed) {
    if (weight) rk_linear_forward(out, inp, weight, bias, N, C, OC, w_transposed);
    // xa (N,r) = inp · Aᵀ
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, r, C, 1.0f, inp, C, A, C, 0.0f, xa, r);
    // out += s · xa · Bᵀ
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, r, scale, xa, r, Bm, r, 1.0f, out, OC);
}

// scratch (N,r)
void rk_lora_backward(float *dinp, float *dweight, float *dbias, float *dA, float *dB, const float *dout,
                      const float *inp, const float *weight, const float *A, const float *Bm, const float *xa,
                      float *scratch, int N, int C, int OC, int r, float scale, int w_transposed) {
    rk_linear_backward(weight ? dinp : NULL, dweight, dbias, dout, inp, weight, N, C, OC, w_transposed);
    // dB (OC,r) += s · doutᵀ · xa
    if (dB) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, r, N, scale, dout, OC, xa, r, 1.0f, dB, r);
    if (!dA && !dinp) return;
    // g (N,r) = s · dout · B
    float *g = scratch;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, r, OC, scale, dout, OC, Bm, r, 0.0f, g, r);
    // dA (r,C) += gᵀ · inp
    if (dA) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, C, N, 1.0f, g, r, inp, C, 1.0f, dA, C);
    // dinp (N,C) += g · A
    if (dinp) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, r, 1.0f, g, r, A, C, 1.0f, dinp, C);
}

// reference: the formula element by element, xa recomputed where needed.
void rk_lora_forward_ref(float *out, float *xa, const float *inp, const float *weight, const float *bias,
                         const float *A, const float *Bm, int N, int C, int OC, int r, float scale, int w_transposed) {
    rk_linear_forward_ref(out, inp, weight, bias, N, C, OC, w_transposed);
    for (int i = 0; i < N; i++) {
        for (int a = 0; a < r; a++) {
            float s = 0.0f;
            for (int c = 0; c < C; c++) s += inp[RK_IDX(i, c, C)] * A[RK_IDX(a, c, C)];
            xa[RK_IDX(i, a, r)] = s;
        }
        for (int o = 0; o < OC; o++) {
            float s = 0.0f;
            for (int a = 0; a < r; a++) s += xa[RK_IDX(i, a, r)] * Bm[RK_IDX(o, a, r)];
            out[RK_IDX(i, o, OC)] += scale * s;
        }
    }
}
void rk_lora_backward_ref(float *dinp, float *dweight, float *dbias, float *dA, float *dB, const float *dout,
                          const float *inp, const float *weight, const float *A, const float *Bm, const float *xa,
                          int N, int C, int OC, int r, float scale, int w_transposed) {
    rk_linear_backward_ref(dinp, dweight, dbias, dout, inp, weight, N, C, OC, w_transposed);
    for (int i = 0; i < N; i++)
        for (int a = 0; a < r; a++) {
            float g = 0.0f; // g_ia = s · Σ_o dout_io B_oa
            for (int o = 0; o < OC; o++) {
                g += dout[RK_IDX(i, o, OC)] * Bm[RK_IDX(o, a, r)];
                if (dB) dB[RK_IDX(o, a, r)] += scale * dout[RK_IDX(i, o, OC)] * xa[RK_IDX(i, a, r)];
            }
            g *= scale;
            for (int c = 0; c < C; c++) {
                if (dA) dA[RK_IDX(a, c, C)] += g * inp[RK_IDX(i, c, C)];
                if (dinp) dinp[RK_IDX(i, c, C)] += g * A[RK_IDX(a, c, C)];
            }
        }
}

// The rows kernels, once per element type of the adapter weights (float32; half precision or 8-bit integers with B
// transposed): for each row with an adapter, work (r) = scale·A·x, then y += B·work. A_AT(j, k) is A's element
// (j, k) as a float, B_AT(o, j) B's; ELEM is the stored type; SETUP runs once per row (the 8-bit rows' scales).
#define LORA_ROWS_REF_BODY(ELEM, A_AT, B_AT, SETUP)                                                                 \
    for (int row = 0; row < rows; row++) {                                                                          \
        if (!a[row]) continue;                                                                                      \
        const ELEM *A = a[row], *B = b[row];                                                                        \
        int r = rank[row];                                                                                          \
        SETUP                                                                                                       \
        for (int t = 0; t < T; t++) {                                                                               \
            const float *xr = x + ((size_t)row * T + t) * in;                                                       \
            float *yr = y + ((size_t)row * T + t) * out;                                                            \
            for (int j = 0; j < r; j++) {                                                                           \
                float s = 0;                                                                                        \
                for (int k = 0; k < in; k++) s += A_AT(j, k) * xr[k];                                               \
                work[j] = s * scale[row];                                                                           \
            }                                                                                                       \
            for (int o = 0; o < out; o++) {                                                                         \
                float s = 0;                                                                                        \
                for (int j = 0; j < r; j++) s += B_AT(o, j) * work[j];                                              \
                yr[o] += s;                                                                                         \
            }                                                                                                       \
        }                                                                                                           \
    }

// The element accessors (of A, B, in, r and out in scope), for the references and the AVX2 kernels' tails.
#define A_F32(j, k) A[(size_t)(j) * in + (k)]
#define B_F32(o, j) B[(size_t)(o) * r + (j)]
#define A_F16(j, k) rk_half_to_float(A[(size_t)(j) * in + (k)])
#define BT_F16(o, j) rk_half_to_float(B[(size_t)(j) * out + (o)])
#define A_Q8(j, k) ((float)A[(size_t)(j) * in + (k)] * as[j])
#define BT_Q8(o, j) ((float)B[(size_t)(j) * out + (o)] * bs[j])

void rk_lora_rows_ref(float *y, const float *x, int rows, int T, int in, int out, const float *const *a,
                      const float *const *b, const int *rank, const float *scale, float *work) {
    LORA_ROWS_REF_BODY(float, A_F32, B_F32, )
}

void rk_lora_rows_f16_ref(float *y, const float *x, int rows, int T, int in, int out, const uint16_t *const *a,
                          const uint16_t *const *b, const int *rank, const float *scale, float *work) {
    LORA_ROWS_REF_BODY(uint16_t, A_F16, BT_F16, )
}

void rk_lora_rows_q8_ref(float *y, const float *x, int rows, int T, int in, int out, const int8_t *const *a,
                         const float *const *a_scale, const int8_t *const *b, const float *const *bt_scale,
                         const int *rank, const float *scale, float *work) {
    LORA_ROWS_REF_BODY(int8_t, A_Q8, BT_Q8, const float *as = a_scale[row]; const float *bs = bt_scale[row];)
}

#if RK_X86
#define RK_AVX2H __attribute__((target("avx2,fma,f16c")))
static inline RK_AVX2 __m256 load_float8(const float *p) { return _mm256_loadu_ps(p); }
static inline RK_AVX2H __m256 load_half8(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
// work (r) = scale·A·x for one row: each A row's dot with x in two 8-wide accumulators, A widened by LOAD8 and A_AT
// as it is read. Each module's weights are a few tens of KB read once per row, too short for the hardware prefetcher
// to reach memory speed on its own: both kernels prefetch 1 KB ahead (measured: the demo's LoRA shape, 8 rows, 37.6
// -> 25.4-29.6 ms a step).
#define LORA_RANK_VALUES_AVX2(LOAD8, A_AT)                                                                          \
    for (int j = 0; j < r; j++) {                                                                                   \
        __m256 s0 = _mm256_setzero_ps(), s1 = s0;                                                                   \
        int k = 0;                                                                                                  \
        for (; k + 16 <= in; k += 16) {                                                                             \
            _mm_prefetch((const char *)(A + (size_t)j * in + k) + 1024, _MM_HINT_T0);                               \
            s0 = _mm256_fmadd_ps(LOAD8(A + (size_t)j * in + k), _mm256_loadu_ps(xr + k), s0);                       \
            s1 = _mm256_fmadd_ps(LOAD8(A + (size_t)j * in + k + 8), _mm256_loadu_ps(xr + k + 8), s1);               \
        }                                                                                                           \
        float s = rk_hsum256(_mm256_add_ps(s0, s1));                                                                \
        for (; k < in; k++) s += A_AT(j, k) * xr[k];                                                                \
        work[j] = s * scale[row];                                                                                   \
    }

// float32: each output's dot of its B row (rank long) with the rank values 8 at a time, summed across lanes once
// (plain C leaves that loop scalar: a float reduction is not reordered without fast-math, and it is most of the work
// for a wide layer).
static RK_AVX2 void lora_rows_avx2(float *y, const float *x, int rows, int T, int in, int out, const float *const *a,
                                   const float *const *b, const int *rank, const float *scale, float *work) {
    for (int row = 0; row < rows; row++) {
        if (!a[row]) continue;
        const float *A = a[row], *B = b[row];
        int r = rank[row];
        for (int t = 0; t < T; t++) {
            const float *xr = x + ((size_t)row * T + t) * in;
            float *yr = y + ((size_t)row * T + t) * out;
            LORA_RANK_VALUES_AVX2(load_float8, A_F32)
            for (int o = 0; o < out; o++) {
                const float *bo = B + (size_t)o * r;
                if ((o * r & 15) == 0) _mm_prefetch((const char *)bo + 1024, _MM_HINT_T0);
                int j = 0;
                float s = 0;
                if (r >= 8) {
                    __m256 v = _mm256_setzero_ps();
                    for (; j + 8 <= r; j += 8) v = _mm256_fmadd_ps(_mm256_loadu_ps(bo + j), _mm256_loadu_ps(work + j), v);
                    s = rk_hsum256(v);
                }
                for (; j < r; j++) s += bo[j] * work[j];
                yr[o] += s;
            }
        }
    }
}

// Half precision, widened 8 at a time (F16C) as read: half the bytes from memory. B comes transposed ([rank, out]),
// read in its memory order, one rank row at a time added into the outputs (in L1): one stream the prefetcher
// follows rather than rank streams at once, and no sum across lanes per output.
static RK_AVX2H void lora_rows_f16_avx2(float *y, const float *x, int rows, int T, int in, int out,
                                        const uint16_t *const *a, const uint16_t *const *bt, const int *rank,
                                        const float *scale, float *work) {
    for (int row = 0; row < rows; row++) {
        if (!a[row]) continue;
        const uint16_t *A = a[row], *Bt = bt[row];
        int r = rank[row];
        for (int t = 0; t < T; t++) {
            const float *xr = x + ((size_t)row * T + t) * in;
            float *yr = y + ((size_t)row * T + t) * out;
            LORA_RANK_VALUES_AVX2(load_half8, A_F16)
            for (int j = 0; j < r; j++) {
                const uint16_t *bj = Bt + (size_t)j * out;
                __m256 w = _mm256_set1_ps(work[j]);
                int o = 0;
                for (; o + 8 <= out; o += 8) {
                    if ((o & 31) == 0) _mm_prefetch((const char *)(bj + o) + 1024, _MM_HINT_T0);
                    _mm256_storeu_ps(yr + o, _mm256_fmadd_ps(load_half8(bj + o), w, _mm256_loadu_ps(yr + o)));
                }
                for (; o < out; o++) yr[o] += rk_half_to_float(bj[o]) * work[j];
            }
        }
    }
}

// 8-bit integers, each row of A and of Bᵀ with its scale: a quarter of float32's bytes. The rank values are summed
// over the integers as stored (widened 8 at a time) and the two scales applied once per rank value; prefetched 1 KB
// ahead as the others.
static inline RK_AVX2 __m256 load_i8x8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
#define A_I8(j, k) ((float)A[(size_t)(j) * in + (k)])
static RK_AVX2 void lora_rows_q8_avx2(float *y, const float *x, int rows, int T, int in, int out,
                                      const int8_t *const *a, const float *const *a_scale, const int8_t *const *bt,
                                      const float *const *bt_scale, const int *rank, const float *scale, float *work) {
    for (int row = 0; row < rows; row++) {
        if (!a[row]) continue;
        const int8_t *A = a[row], *Bt = bt[row];
        const float *as = a_scale[row], *bs = bt_scale[row];
        int r = rank[row];
        for (int t = 0; t < T; t++) {
            const float *xr = x + ((size_t)row * T + t) * in;
            float *yr = y + ((size_t)row * T + t) * out;
            LORA_RANK_VALUES_AVX2(load_i8x8, A_I8)
            for (int j = 0; j < r; j++) {
                const int8_t *bj = Bt + (size_t)j * out;
                float wj = work[j] * as[j] * bs[j];
                __m256 w = _mm256_set1_ps(wj);
                int o = 0;
                for (; o + 8 <= out; o += 8) {
                    if ((o & 63) == 0) _mm_prefetch((const char *)(bj + o) + 1024, _MM_HINT_T0);
                    _mm256_storeu_ps(yr + o, _mm256_fmadd_ps(load_i8x8(bj + o), w, _mm256_loadu_ps(yr + o)));
                }
                for (; o < out; o++) yr[o] += (float)bj[o] * wj;
            }
        }
    }
}
#endif

void rk_lora_rows_f16(float *y, const float *x, int rows, int T, int in, int out, const uint16_t *const *a,
                      const uint16_t *const *bt, const int *rank, const float *scale, float *work) {
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX2) { lora_rows_f16_avx2(y, x, rows, T, in, out, a, bt, rank, scale, work); return; }
#endif
    rk_lora_rows_f16_ref(y, x, rows, T, in, out, a, bt, rank, scale, work);
}

void rk_lora_rows_q8(float *y, const float *x, int rows, int T, int in, int out, const int8_t *const *a,
                     const float *const *a_scale, const int8_t *const *bt, const float *const *bt_scale,
                     const int *rank, const float *scale, float *work) {
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX2) {
        lora_rows_q8_avx2(y, x, rows, T, in, out, a, a_scale, bt, bt_scale, rank, scale, work);
        return;
    }
#endif
    rk_lora_rows_q8_ref(y, x, rows, T, in, out, a, a_scale, bt, bt_scale, rank, scale, work);
}

void rk_lora_rows(float *y, const float *x, int rows, int T, int in, int out, const float *const *a,
                  const float *const *b, const int *rank, const float *scale, float *work) {
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX2) { lora_rows_avx2(y, x, rows, T, in, out, a, b, rank, scale, work); return; }
#endif
    rk_lora_rows_ref(y, x, rows, T, in, out, a, b, rank, scale, work);
}
