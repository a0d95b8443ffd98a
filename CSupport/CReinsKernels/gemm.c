// gemm.c — C (M,N) = [C +] A (M,K) · op(B) for products with many rows (a training step's frozen layers, a long
// prompt), op(B) = B stored (K,N), or Bᵀ with B stored (N,K) (PyTorch's [out, in] weight).
//
// The output goes in panels of 48 columns; each panel's 8-row tiles keep 8 x 48 sums in 24 AVX-512 registers, each
// step of the reduction one broadcast of A per row against three vectors of the panel. A is read where it is; the
// panel of B is read where it is when stored (K,N) and whole, else copied once per call into `pack` (48·K floats:
// the transposed panel of a (N,K) weight, or the last panel padded with zeros) and reused by every tile. The caller
// shares (row range, panel range) pieces between its threads. OpenBLAS instead packs both operands in blocks at every
// call: 7% of a SmolLM2-135M LoRA training step, where this kernel copies each [out, in] weight once per product
// (~1.5% of the step, from the transposition's own speed).
#include "rk_internal.h"
#include <stdlib.h>
#include <string.h>

#define NR 48
#define MR 8
#define KC 768

int rk_gemm_panels_count(int N) { return N <= 0 ? 0 : (int)(((long long)N + NR - 1) / NR); }

static int check(int M, int N, int K, int ldc, int lda, int ldb, int bt, int row_begin, int row_end,
                 int panel_begin, int panel_end) {
    if (M < 0 || N < 0 || K < 0 || ldc < N || lda < K || ldb < (bt ? K : N) || row_begin < 0 || row_end > M ||
        row_begin > row_end || panel_begin < 0 || panel_end > rk_gemm_panels_count(N) || panel_begin > panel_end)
        return RK_ERR_ARG;
    return RK_OK;
}

static void panels_scalar(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int N, int K, int bt,
                          int accumulate, int i0, int i1, int p0, int p1) {
    int j1 = p1 * NR < N ? p1 * NR : N;
    for (int i = i0; i < i1; i++)
        for (int j = p0 * NR; j < j1; j++) {
            float s = 0.0f;
            for (int k = 0; k < K; k++) s += A[RK_IDX(i, k, lda)] * (bt ? B[RK_IDX(j, k, ldb)] : B[RK_IDX(k, j, ldb)]);
            C[RK_IDX(i, j, ldc)] = accumulate ? C[RK_IDX(i, j, ldc)] + s : s;
        }
}

int rk_gemm_panels_ref(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M, int N, int K,
                       int b_transposed, int accumulate, int row_begin, int row_end, int panel_begin, int panel_end) {
    if (check(M, N, K, ldc, lda, ldb, b_transposed, row_begin, row_end, panel_begin, panel_end) != RK_OK)
        return RK_ERR_ARG;
    panels_scalar(C, ldc, A, lda, B, ldb, N, K, b_transposed, accumulate, row_begin, row_end, panel_begin, panel_end);
    return RK_OK;
}

#if RK_X86
// Eight rows of A (lda apart) against a panel of B (K rows of 48, ldb apart) into C's 8 x 48 tile (ldc apart), the
// columns beyond the panel's width masked off.
static RK_AVX512 void tile8(int K, const float *A, size_t lda, const float *B, size_t ldb, float *C, size_t ldc,
                            int accumulate, __mmask16 m0, __mmask16 m1, __mmask16 m2) {
    __m512 c[MR][3];
    for (int i = 0; i < MR; i++) {
        float *ci = C + i * ldc;
        c[i][0] = accumulate ? _mm512_maskz_loadu_ps(m0, ci) : _mm512_setzero_ps();
        c[i][1] = accumulate ? _mm512_maskz_loadu_ps(m1, ci + 16) : _mm512_setzero_ps();
        c[i][2] = accumulate ? _mm512_maskz_loadu_ps(m2, ci + 32) : _mm512_setzero_ps();
    }
    const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * lda, *a3 = A + 3 * lda, *a4 = A + 4 * lda, *a5 = A + 5 * lda,
                *a6 = A + 6 * lda, *a7 = A + 7 * lda;
    for (int k = 0; k < K; k++) {
        const float *b = B + (size_t)k * ldb;
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), b2 = _mm512_loadu_ps(b + 32), x;
#define RK_GEMM_ROW(i, a)                                                                                          \
    x = _mm512_set1_ps(a[k]);                                                                                       \
    c[i][0] = _mm512_fmadd_ps(x, b0, c[i][0]);                                                                      \
    c[i][1] = _mm512_fmadd_ps(x, b1, c[i][1]);                                                                      \
    c[i][2] = _mm512_fmadd_ps(x, b2, c[i][2]);
        RK_GEMM_ROW(0, a0) RK_GEMM_ROW(1, a1) RK_GEMM_ROW(2, a2) RK_GEMM_ROW(3, a3)
        RK_GEMM_ROW(4, a4) RK_GEMM_ROW(5, a5) RK_GEMM_ROW(6, a6) RK_GEMM_ROW(7, a7)
#undef RK_GEMM_ROW
    }
    for (int i = 0; i < MR; i++) {
        float *ci = C + i * ldc;
        _mm512_mask_storeu_ps(ci, m0, c[i][0]);
        _mm512_mask_storeu_ps(ci + 16, m1, c[i][1]);
        _mm512_mask_storeu_ps(ci + 32, m2, c[i][2]);
    }
}

// Fewer than eight rows: one row at a time.
static RK_AVX512 void tile_rows(int rows, int K, const float *A, size_t lda, const float *B, size_t ldb, float *C,
                                size_t ldc, int accumulate, __mmask16 m0, __mmask16 m1, __mmask16 m2) {
    for (int i = 0; i < rows; i++) {
        const float *a = A + i * lda;
        float *ci = C + i * ldc;
        __m512 c0 = accumulate ? _mm512_maskz_loadu_ps(m0, ci) : _mm512_setzero_ps();
        __m512 c1 = accumulate ? _mm512_maskz_loadu_ps(m1, ci + 16) : _mm512_setzero_ps();
        __m512 c2 = accumulate ? _mm512_maskz_loadu_ps(m2, ci + 32) : _mm512_setzero_ps();
        for (int k = 0; k < K; k++) {
            const float *b = B + (size_t)k * ldb;
            __m512 x = _mm512_set1_ps(a[k]);
            c0 = _mm512_fmadd_ps(x, _mm512_loadu_ps(b), c0);
            c1 = _mm512_fmadd_ps(x, _mm512_loadu_ps(b + 16), c1);
            c2 = _mm512_fmadd_ps(x, _mm512_loadu_ps(b + 32), c2);
        }
        _mm512_mask_storeu_ps(ci, m0, c0);
        _mm512_mask_storeu_ps(ci + 16, m1, c1);
        _mm512_mask_storeu_ps(ci + 32, m2, c2);
    }
}

// dst[c·ldd + r] = src[r·lds + c] for a 16 x 16 block: pairs of rows interleaved by floats, then by pairs, then the
// 128-bit lanes gathered in two rounds.
static RK_AVX512 void transpose16(const float *src, size_t lds, float *dst, size_t ldd) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * lds);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]), c = _mm512_castps_pd(t[i + 2]),
                d = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int i = 0; i < 16; i += 8)
        for (int m = 0; m < 4; m++) {
            t[i + m] = _mm512_shuffle_f32x4(r[i + m], r[i + 4 + m], 0x88);
            t[i + 4 + m] = _mm512_shuffle_f32x4(r[i + m], r[i + 4 + m], 0xdd);
        }
    for (int m = 0; m < 8; m++) {
        r[m] = _mm512_shuffle_f32x4(t[m], t[8 + m], 0x88);
        r[8 + m] = _mm512_shuffle_f32x4(t[m], t[8 + m], 0xdd);
    }
    for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + i * ldd, r[i]);
}

// dst = srcᵀ: whole 16 x 16 blocks transposed in registers, the edges element by element.
static RK_AVX512 void transpose_avx512(float *dst, size_t ldd, const float *src, size_t lds, int rows, int cols) {
    int rw = rows / 16 * 16, cw = cols / 16 * 16;
    for (int r = 0; r < rw; r += 16)
        for (int c = 0; c < cw; c += 16) transpose16(src + RK_IDX(r, c, lds), lds, dst + RK_IDX(c, r, ldd), ldd);
    for (int r = 0; r < rows; r++)
        for (int c = r < rw ? cw : 0; c < cols; c++) dst[RK_IDX(c, r, ldd)] = src[RK_IDX(r, c, lds)];
}

// The panel of op(B) = Bᵀ (B's rows j0 .. j0 + nc, each ldb apart) as K rows of 48, zero beyond nc.
static RK_AVX512 void pack_transposed(float *pack, const float *B, size_t ldb, int j0, int nc, int K) {
    for (int k = 0; k < K; k++) memset(pack + RK_IDX(k, nc, NR), 0, sizeof(float) * (size_t)(NR - nc));
    transpose_avx512(pack, NR, B + (size_t)j0 * ldb, ldb, nc, K);
}

static inline __mmask16 lanes(int n) { return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

static RK_AVX512 void panels_avx512(float *C, int ldc, const float *A, int lda, const float *B, int ldb_, int N, int K,
                                    int bt, int accumulate, int i0, int i1, int p0, int p1, float *pack) {
    for (int p = p0; p < p1; p++) {
        int j0 = p * NR, nc = N - j0 < NR ? N - j0 : NR;
        const float *panel = B + j0;
        size_t ldb = (size_t)ldb_;
        if (bt || nc < NR) {
            // The panel as K rows of 48, zero beyond its width: B's rows j0.. transposed, or its columns copied.
            if (bt) {
                pack_transposed(pack, B, (size_t)ldb_, j0, nc, K);
            } else {
                for (int k = 0; k < K; k++) {
                    memcpy(pack + RK_IDX(k, 0, NR), B + RK_IDX(k, j0, ldb_), sizeof(float) * (size_t)nc);
                    memset(pack + RK_IDX(k, nc, NR), 0, sizeof(float) * (size_t)(NR - nc));
                }
            }
            panel = pack;
            ldb = NR;
        }
        __mmask16 m0 = lanes(nc), m1 = lanes(nc - 16), m2 = lanes(nc - 32);
        // A long reduction (an output layer's input gradient: 49152) goes in blocks of at most KC, so that a tile's
        // rows of A stay in L1 and the panel's block of B in L2 while every tile reads them.
        int blocks = (K + KC - 1) / KC, kc = blocks > 0 ? (K + blocks - 1) / blocks : 0;
        for (int k0 = 0; k0 < K || k0 == 0; k0 += kc) {
            int kn = K - k0 < kc ? K - k0 : kc, acc = accumulate || k0 > 0;
            const float *a = A + k0, *b = panel + (size_t)k0 * ldb;
            int i = i0;
            for (; i + MR <= i1; i += MR)
                tile8(kn, a + RK_IDX(i, 0, lda), (size_t)lda, b, ldb, C + RK_IDX(i, j0, ldc), (size_t)ldc, acc, m0, m1,
                      m2);
            if (i < i1)
                tile_rows(i1 - i, kn, a + RK_IDX(i, 0, lda), (size_t)lda, b, ldb, C + RK_IDX(i, j0, ldc), (size_t)ldc,
                          acc, m0, m1, m2);
            if (K == 0) break;
        }
    }
}
#endif

#if RK_X86
// ---- small products (attention's per-head blocks) -----------------------------------------------------------------
// Loops over a tile's rows and vectors are unrolled whole, so that its sums stay in registers (GCC, unlike clang,
// spills them at -O2 unless told).
#define RK_UNROLL _Pragma("GCC unroll 8")

// R rows of A against up to 64 columns of B (NV vectors, the last masked to its width): R x NV sums in registers, each
// step of the reduction NV vectors of B and one broadcast of A per row. R and NV are constants after inlining (the
// dispatch below instantiates every pair), so the sums stay in registers; 6 x 4 keeps 24 of the 32.
static inline __attribute__((always_inline)) RK_AVX512 void small_tile(const int R, const int NV, int K, const float *A,
                                                                        size_t ars, size_t aks, const float *B,
                                                                        size_t ldb, float *C, size_t ldc, float alpha,
                                                                        int accumulate, __mmask16 last) {
    __m512 c[6][4];
    RK_UNROLL for (int i = 0; i < R; i++)
        RK_UNROLL for (int v = 0; v < NV; v++) c[i][v] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        const float *b = B + (size_t)k * ldb, *a = A + (size_t)k * aks;
        __m512 bv[4];
        RK_UNROLL for (int v = 0; v < NV; v++)
            bv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(last, b + 16 * v) : _mm512_loadu_ps(b + 16 * v);
        RK_UNROLL for (int i = 0; i < R; i++) {
            __m512 x = _mm512_set1_ps(a[(size_t)i * ars]);
            RK_UNROLL for (int v = 0; v < NV; v++) c[i][v] = _mm512_fmadd_ps(x, bv[v], c[i][v]);
        }
    }
    __m512 al = _mm512_set1_ps(alpha);
    RK_UNROLL for (int i = 0; i < R; i++)
        RK_UNROLL for (int v = 0; v < NV; v++) {
            __mmask16 m = v == NV - 1 ? last : (__mmask16)0xFFFF;
            float *ci = C + (size_t)i * ldc + 16 * v;
            __m512 r = _mm512_mul_ps(al, c[i][v]);
            if (accumulate) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, ci));
            _mm512_mask_storeu_ps(ci, m, r);
        }
}

#define RK_SMALL_TILE(R, NV)                                                                                         \
    static RK_AVX512 void small_tile_##R##_##NV(int K, const float *A, size_t ars, size_t aks, const float *B,       \
                                                size_t ldb, float *C, size_t ldc, float alpha, int accumulate,       \
                                                __mmask16 last) {                                                   \
        small_tile(R, NV, K, A, ars, aks, B, ldb, C, ldc, alpha, accumulate, last);                                  \
    }
#define RK_SMALL_TILES(R) RK_SMALL_TILE(R, 1) RK_SMALL_TILE(R, 2) RK_SMALL_TILE(R, 3) RK_SMALL_TILE(R, 4)
RK_SMALL_TILES(1)
RK_SMALL_TILES(2)
RK_SMALL_TILES(3)
RK_SMALL_TILES(4)
RK_SMALL_TILES(5)
RK_SMALL_TILES(6)
#undef RK_SMALL_TILES
#undef RK_SMALL_TILE

typedef void (*small_tile_fn)(int, const float *, size_t, size_t, const float *, size_t, float *, size_t, float, int,
                              __mmask16);
#define RK_SMALL_ROW(R) {small_tile_##R##_1, small_tile_##R##_2, small_tile_##R##_3, small_tile_##R##_4}
static const small_tile_fn small_tiles[6][4] = {RK_SMALL_ROW(1), RK_SMALL_ROW(2), RK_SMALL_ROW(3),
                                                RK_SMALL_ROW(4), RK_SMALL_ROW(5), RK_SMALL_ROW(6)};
#undef RK_SMALL_ROW

// Column blocks of 64 outside, tiles of at most 6 rows inside: a block of B (K x 64) is read by every tile while it is
// in cache. The rows are shared evenly between the tiles (32 rows: 6, 6, 5, 5, 5, 5 rather than five of 6 and one of
// 2, whose few sums per vector of B loaded leave the tile waiting on loads).
static RK_AVX512 void small_product_avx512(float *C, size_t ldc, const float *A, size_t ars, size_t aks,
                                           const float *B, size_t ldb, int M, int N, int K, float alpha,
                                           int accumulate) {
    int tiles = (M + 5) / 6, base = M / tiles, larger = M % tiles;
    for (int n0 = 0; n0 < N; n0 += 64) {
        int nc = N - n0 < 64 ? N - n0 : 64, nv = (nc + 15) / 16;
        __mmask16 last = lanes(nc - 16 * (nv - 1));
        for (int t = 0, i0 = 0; t < tiles; t++) {
            int r = base + (t < larger);
            small_tiles[r - 1][nv - 1](K, A + (size_t)i0 * ars, ars, aks, B + n0, ldb, C + (size_t)i0 * ldc + n0, ldc,
                                       alpha, accumulate, last);
            i0 += r;
        }
    }
}
#endif

#if RK_X86
static int own_products_wanted = -1;
#endif

int rk_own_products(void) {
#if RK_X86
    if (rk_isa_active() < RK_ISA_AVX512) return 0;
    // Read once (a benign race: every thread computes the same value).
    int wanted = __atomic_load_n(&own_products_wanted, __ATOMIC_RELAXED);
    if (wanted < 0) {
        const char *e = getenv("REINS_GEMM");
        wanted = !(e && strcmp(e, "openblas") == 0);
        __atomic_store_n(&own_products_wanted, wanted, __ATOMIC_RELAXED);
    }
    return wanted;
#else
    return 0;
#endif
}

void rk__small_product(float *C, size_t ldc, const float *A, size_t ars, size_t aks, const float *B, size_t ldb, int M,
                       int N, int K, float alpha, int accumulate) {
    if (M <= 0 || N <= 0) return;
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX512) {
        small_product_avx512(C, ldc, A, ars, aks, B, ldb, M, N, K, alpha, accumulate);
        return;
    }
#endif
    for (int i = 0; i < M; i++)
        for (int n = 0; n < N; n++) {
            float s = 0.0f;
            for (int k = 0; k < K; k++) s += A[(size_t)i * ars + (size_t)k * aks] * B[RK_IDX(k, n, ldb)];
            C[RK_IDX(i, n, ldc)] = alpha * s + (accumulate ? C[RK_IDX(i, n, ldc)] : 0.0f);
        }
}

void rk__transpose(float *dst, size_t ldd, const float *src, size_t lds, int rows, int cols) {
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX512) {
        transpose_avx512(dst, ldd, src, lds, rows, cols);
        return;
    }
#endif
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[RK_IDX(c, r, ldd)] = src[RK_IDX(r, c, lds)];
}

int rk_gemm_panels(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M, int N, int K,
                   int b_transposed, int accumulate, int row_begin, int row_end, int panel_begin, int panel_end,
                   float *pack) {
    if (check(M, N, K, ldc, lda, ldb, b_transposed, row_begin, row_end, panel_begin, panel_end) != RK_OK)
        return RK_ERR_ARG;
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX512) {
        if (!pack && (b_transposed || N % NR != 0)) return RK_ERR_ARG;
        panels_avx512(C, ldc, A, lda, B, ldb, N, K, b_transposed, accumulate, row_begin, row_end, panel_begin,
                      panel_end, pack);
        return RK_OK;
    }
#endif
    (void)pack; // the scalar loop reads op(B) where it is
    panels_scalar(C, ldc, A, lda, B, ldb, N, K, b_transposed, accumulate, row_begin, row_end, panel_begin, panel_end);
    return RK_OK;
}
