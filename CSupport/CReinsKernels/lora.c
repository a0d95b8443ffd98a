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
// 4-bit: element k (0...31) of the group of 16 bytes at `p` (the nibble as stored, less 8), without its scale. A's
// groups go row by row (row j's group g at j·groups + g), Bᵀ's group by group (group g of rank row j at g·r + j).
static inline int q4_at(const uint8_t *p, int k) { return (int)((k & 16) ? p[k & 15] >> 4 : p[k & 15] & 15) - 8; }
#define Q4_GROUPS(n) (((n) + 31) / 32)
#define A_Q4(j, k) ((float)q4_at(A + ((size_t)(j) * Q4_GROUPS(in) + ((k) >> 5)) * 16, (k) & 31) \
                    * as[(size_t)(j) * Q4_GROUPS(in) + ((k) >> 5)])
#define BT_Q4(o, j) ((float)q4_at(B + ((size_t)((o) >> 5) * r + (j)) * 16, (o) & 31) * bs[(size_t)((o) >> 5) * r + (j)])

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

void rk_lora_rows_q4_ref(float *y, const float *x, int rows, int T, int in, int out, const uint8_t *const *a,
                         const float *const *a_scale, const uint8_t *const *b, const float *const *bt_scale,
                         const int *rank, const float *scale, float *work) {
    LORA_ROWS_REF_BODY(uint8_t, A_Q4, BT_Q4, const float *as = a_scale[row]; const float *bs = bt_scale[row];)
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
// Two rows of the same rank (at most LORA_PAIR_RANK) in step: their A rows against their inputs in one loop, their Bᵀ
// rows into their outputs in another, so that each adapter's few tens of KB stream from memory alongside the other's
// (two streams in flight instead of one; each row's weights are read once per step, cold).
#define LORA_PAIR_RANK 64
static RK_AVX2 void lora_pair_q8_avx2(float *y, const float *x, int row, int T, int in, int out,
                                      const int8_t *const *a, const float *const *a_scale, const int8_t *const *bt,
                                      const float *const *bt_scale, int r, const float *scale) {
    const int8_t *A0 = a[row], *A1 = a[row + 1], *B0 = bt[row], *B1 = bt[row + 1];
    const float *as0 = a_scale[row], *as1 = a_scale[row + 1], *bs0 = bt_scale[row], *bs1 = bt_scale[row + 1];
    float w0[LORA_PAIR_RANK], w1[LORA_PAIR_RANK];
    for (int t = 0; t < T; t++) {
        const float *x0 = x + ((size_t)row * T + t) * in, *x1 = x + ((size_t)(row + 1) * T + t) * in;
        float *y0 = y + ((size_t)row * T + t) * out, *y1 = y + ((size_t)(row + 1) * T + t) * out;
        for (int j = 0; j < r; j++) {
            const int8_t *a0 = A0 + (size_t)j * in, *a1 = A1 + (size_t)j * in;
            __m256 s0 = _mm256_setzero_ps(), s1 = s0, u0 = s0, u1 = s0;
            int k = 0;
            for (; k + 16 <= in; k += 16) {
                if ((k & 63) == 0) {
                    _mm_prefetch((const char *)(a0 + k) + 1024, _MM_HINT_T0);
                    _mm_prefetch((const char *)(a1 + k) + 1024, _MM_HINT_T0);
                }
                s0 = _mm256_fmadd_ps(load_i8x8(a0 + k), _mm256_loadu_ps(x0 + k), s0);
                s1 = _mm256_fmadd_ps(load_i8x8(a0 + k + 8), _mm256_loadu_ps(x0 + k + 8), s1);
                u0 = _mm256_fmadd_ps(load_i8x8(a1 + k), _mm256_loadu_ps(x1 + k), u0);
                u1 = _mm256_fmadd_ps(load_i8x8(a1 + k + 8), _mm256_loadu_ps(x1 + k + 8), u1);
            }
            float s = rk_hsum256(_mm256_add_ps(s0, s1)), u = rk_hsum256(_mm256_add_ps(u0, u1));
            for (; k < in; k++) {
                s += (float)a0[k] * x0[k];
                u += (float)a1[k] * x1[k];
            }
            // As the one-row loop: the rank value times the row's scale, then the two weight scales.
            w0[j] = s * scale[row] * as0[j] * bs0[j];
            w1[j] = u * scale[row + 1] * as1[j] * bs1[j];
        }
        for (int j = 0; j < r; j++) {
            const int8_t *b0 = B0 + (size_t)j * out, *b1 = B1 + (size_t)j * out;
            __m256 v0 = _mm256_set1_ps(w0[j]), v1 = _mm256_set1_ps(w1[j]);
            int o = 0;
            for (; o + 8 <= out; o += 8) {
                if ((o & 63) == 0) {
                    _mm_prefetch((const char *)(b0 + o) + 1024, _MM_HINT_T0);
                    _mm_prefetch((const char *)(b1 + o) + 1024, _MM_HINT_T0);
                }
                _mm256_storeu_ps(y0 + o, _mm256_fmadd_ps(load_i8x8(b0 + o), v0, _mm256_loadu_ps(y0 + o)));
                _mm256_storeu_ps(y1 + o, _mm256_fmadd_ps(load_i8x8(b1 + o), v1, _mm256_loadu_ps(y1 + o)));
            }
            for (; o < out; o++) {
                y0[o] += (float)b0[o] * w0[j];
                y1[o] += (float)b1[o] * w1[j];
            }
        }
    }
}
static RK_AVX2 void lora_rows_q8_avx2(float *y, const float *x, int rows, int T, int in, int out,
                                      const int8_t *const *a, const float *const *a_scale, const int8_t *const *bt,
                                      const float *const *bt_scale, const int *rank, const float *scale, float *work) {
    for (int row = 0; row < rows; row++) {
        if (!a[row]) continue;
        const int8_t *A = a[row], *Bt = bt[row];
        const float *as = a_scale[row], *bs = bt_scale[row];
        int r = rank[row];
        if (row + 1 < rows && a[row + 1] && rank[row + 1] == r && r <= LORA_PAIR_RANK) {
            lora_pair_q8_avx2(y, x, row, T, in, out, a, a_scale, bt, bt_scale, r, scale);
            row++;
            continue;
        }
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

// 4-bit integers in groups of 32, each group with its scale. One loop over rows, positions and groups for every
// instruction set (LORA_Q4_KERNEL); each supplies a rank value's whole groups (the dot of A's row with x, each group
// scaled by its scale) and one group of 32 outputs (every rank row's group times its rank value and scale added in).
// A partial last group goes element by element.
#define LORA_Q4_KERNEL(NAME, TARGET, RANK_VALUE, OUTPUT_GROUP)                                                      \
    static TARGET void NAME(float *y, const float *x, int rows, int T, int in, int out, const uint8_t *const *a,    \
                            const float *const *a_scale, const uint8_t *const *bt, const float *const *bt_scale,   \
                            const int *rank, const float *scale, float *work) {                                    \
        const int gin = Q4_GROUPS(in), fin = in / 32, fout = out / 32;                                             \
        for (int row = 0; row < rows; row++) {                                                                     \
            if (!a[row]) continue;                                                                                 \
            const uint8_t *A = a[row], *B = bt[row];                                                               \
            const float *as = a_scale[row], *bs = bt_scale[row];                                                   \
            int r = rank[row];                                                                                     \
            for (int t = 0; t < T; t++) {                                                                          \
                const float *xr = x + ((size_t)row * T + t) * in;                                                  \
                float *yr = y + ((size_t)row * T + t) * out;                                                       \
                for (int j = 0; j < r; j++) {                                                                      \
                    float s = RANK_VALUE(A + (size_t)j * gin * 16, as + (size_t)j * gin, xr, fin);                 \
                    for (int k = fin * 32; k < in; k++) s += A_Q4(j, k) * xr[k];                                   \
                    work[j] = s * scale[row];                                                                      \
                }                                                                                                  \
                for (int g = 0; g < fout; g++)                                                                     \
                    OUTPUT_GROUP(B + (size_t)g * r * 16, bs + (size_t)g * r, work, r, yr + g * 32);                \
                for (int o = fout * 32; o < out; o++)                                                              \
                    for (int j = 0; j < r; j++) yr[o] += BT_Q4(o, j) * work[j];                                    \
            }                                                                                                      \
        }                                                                                                          \
    }

// AVX2: a group's 16 bytes split into their low and high nibbles, less 8, widened 8 at a time; the 32 outputs of a
// group in four registers while every rank row's group is added in (its bytes one stream, 16·r bytes a group; the
// outputs loaded and stored once).
static inline RK_AVX2 void q4_group(const uint8_t *p, __m256 v[4]) {
    __m128i bytes = _mm_loadu_si128((const __m128i *)p), mask = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
    __m128i lo = _mm_sub_epi8(_mm_and_si128(bytes, mask), eight);
    __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask), eight);
    v[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
    v[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
    v[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
    v[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}
static inline RK_AVX2 float q4_rank_value_avx2(const uint8_t *aj, const float *sj, const float *xr, int groups) {
    __m256 sum = _mm256_setzero_ps(), v[4];
    for (int g = 0; g < groups; g++) {
        if ((g & 3) == 0) _mm_prefetch((const char *)(aj + g * 16) + 1024, _MM_HINT_T0);
        q4_group(aj + g * 16, v);
        const float *xg = xr + g * 32;
        __m256 s0 = _mm256_mul_ps(v[0], _mm256_loadu_ps(xg));
        __m256 s1 = _mm256_mul_ps(v[1], _mm256_loadu_ps(xg + 8));
        s0 = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xg + 16), s0);
        s1 = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xg + 24), s1);
        sum = _mm256_fmadd_ps(_mm256_add_ps(s0, s1), _mm256_set1_ps(sj[g]), sum);
    }
    return rk_hsum256(sum);
}
static inline RK_AVX2 void q4_output_group_avx2(const uint8_t *bg, const float *sg, const float *work, int r,
                                                float *yg) {
    __m256 acc[4], v[4];
    for (int q = 0; q < 4; q++) acc[q] = _mm256_loadu_ps(yg + 8 * q);
    for (int j = 0; j < r; j++) {
        if ((j & 3) == 0) _mm_prefetch((const char *)(bg + j * 16) + 1024, _MM_HINT_T0);
        q4_group(bg + j * 16, v);
        __m256 w = _mm256_set1_ps(work[j] * sg[j]);
        for (int q = 0; q < 4; q++) acc[q] = _mm256_fmadd_ps(v[q], w, acc[q]);
    }
    for (int q = 0; q < 4; q++) _mm256_storeu_ps(yg + 8 * q, acc[q]);
}
LORA_Q4_KERNEL(lora_rows_q4_avx2, RK_AVX2, q4_rank_value_avx2, q4_output_group_avx2)

// AVX-512: a group's 16 bytes widened to 16 lanes once; each lane's low nibble (element i) and high nibble (element
// i + 16) made floats by placing the nibble in the mantissa of 2²³ and subtracting 2²³ + 8 (exact), so a group of 32
// costs 9 instructions before its two multiply-adds, against 20 in the AVX2 form. A's even and odd groups, and Bᵀ's
// even and odd rank rows, go into separate registers (two chains of multiply-adds in flight; named registers, not an
// array indexed by parity, which the compiler kept in memory: measured 1.4x slower).
static inline RK_AVX512 void q4_group512(const uint8_t *p, __m512 *lo, __m512 *hi) {
    __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)), magic = _mm512_set1_epi32(0x4B000000);
    __m512 offset = _mm512_set1_ps(8388616.0f);
    __m512i low = _mm512_and_si512(bytes, _mm512_set1_epi32(15)), high = _mm512_srli_epi32(bytes, 4);
    *lo = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_or_si512(low, magic)), offset);
    *hi = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_or_si512(high, magic)), offset);
}
// A group's dot with its 32 inputs, in 16 lanes; a group times w added into the 32 outputs in lo, hi.
static inline RK_AVX512 __m512 q4_dot512(const uint8_t *p, const float *x) {
    __m512 lo, hi;
    q4_group512(p, &lo, &hi);
    return _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(x)));
}
static inline RK_AVX512 void q4_add512(const uint8_t *p, float w, __m512 *lo, __m512 *hi) {
    __m512 l, h, wv = _mm512_set1_ps(w);
    q4_group512(p, &l, &h);
    *lo = _mm512_fmadd_ps(l, wv, *lo);
    *hi = _mm512_fmadd_ps(h, wv, *hi);
}
static inline RK_AVX512 float q4_rank_value_avx512(const uint8_t *aj, const float *sj, const float *xr, int groups) {
    __m512 even = _mm512_setzero_ps(), odd = even;
    int g = 0;
    for (; g + 2 <= groups; g += 2) {
        if ((g & 3) == 0) _mm_prefetch((const char *)(aj + g * 16) + 1024, _MM_HINT_T0);
        const float *xg = xr + g * 32;
        even = _mm512_fmadd_ps(q4_dot512(aj + g * 16, xg), _mm512_set1_ps(sj[g]), even);
        odd = _mm512_fmadd_ps(q4_dot512(aj + g * 16 + 16, xg + 32), _mm512_set1_ps(sj[g + 1]), odd);
    }
    if (g < groups) even = _mm512_fmadd_ps(q4_dot512(aj + g * 16, xr + g * 32), _mm512_set1_ps(sj[g]), even);
    return _mm512_reduce_add_ps(_mm512_add_ps(even, odd));
}
static inline RK_AVX512 void q4_output_group_avx512(const uint8_t *bg, const float *sg, const float *work, int r,
                                                    float *yg) {
    // Even rank rows into e0, e1; odd ones into o0, o1.
    __m512 e0 = _mm512_loadu_ps(yg), e1 = _mm512_loadu_ps(yg + 16), o0 = _mm512_setzero_ps(), o1 = o0;
    int j = 0;
    for (; j + 2 <= r; j += 2) {
        if ((j & 3) == 0) _mm_prefetch((const char *)(bg + j * 16) + 1024, _MM_HINT_T0);
        q4_add512(bg + j * 16, work[j] * sg[j], &e0, &e1);
        q4_add512(bg + j * 16 + 16, work[j + 1] * sg[j + 1], &o0, &o1);
    }
    if (j < r) q4_add512(bg + j * 16, work[j] * sg[j], &e0, &e1);
    _mm512_storeu_ps(yg, _mm512_add_ps(e0, o0));
    _mm512_storeu_ps(yg + 16, _mm512_add_ps(e1, o1));
}
LORA_Q4_KERNEL(lora_rows_q4_avx512, RK_AVX512, q4_rank_value_avx512, q4_output_group_avx512)
#endif

void rk_lora_rows_q4(float *y, const float *x, int rows, int T, int in, int out, const uint8_t *const *a,
                     const float *const *a_scale, const uint8_t *const *bt, const float *const *bt_scale,
                     const int *rank, const float *scale, float *work) {
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX512) {
        lora_rows_q4_avx512(y, x, rows, T, in, out, a, a_scale, bt, bt_scale, rank, scale, work);
        return;
    }
    if (rk_isa_active() >= RK_ISA_AVX2) {
        lora_rows_q4_avx2(y, x, rows, T, in, out, a, a_scale, bt, bt_scale, rank, scale, work);
        return;
    }
#endif
    rk_lora_rows_q4_ref(y, x, rows, T, in, out, a, a_scale, bt, bt_scale, rank, scale, work);
}

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
