// attention.c — scaled dot-product attention over split heads (Vaswani et al., arXiv 1706.03762), forward and
// backward, one head (b,h) at a time: its products on Reins's own AVX-512 kernel (rk__small_product, with K and V
// transposed once per key/value head for the products that read them as Kᵀ, Vᵀ), else — other instruction sets,
// REINS_GEMM=openblas — on OpenBLAS sgemm. Not here: the Q/K/V projections and splitting heads.
//   S = scale·Q·Kᵀ (T,Tk), masked;  P = softmax(S) row-wise;  O = P·V (T,hs);  lse_i = log Σ_j e^{S_ij}
// Backward recomputes P from lse (nothing of size T·Tk is kept between the passes):
//   dV += Pᵀ·dO;  dP = dO·Vᵀ;  D_i = dO_i·O_i (= Σ_j P_ij dP_ij);  dS = P ⊙ (dP - D);
//   dQ += scale·dS·K;  dK += scale·dSᵀ·Q
// Query i may see key j when (no causal mask or j <= i + causal_offset), key_mask[b, j] != 0 and, with a sliding
// window w > 0 under the causal mask, j > i + causal_offset - w.
// Grouped-query attention: query head h reads key/value head h / (NH / NKV) of its batch row, in place (K and V are
// never copied per query head); dK and dV of a key/value head sum the gradients of its whole group.
// With dropout on the probabilities (mask M, kept entries scaled by 1/(1-p), M' = M/(1-p)): O = (P ⊙ M')·V, and
//   dV += (P ⊙ M')ᵀ·dO;  dS = P ⊙ (dP ⊙ M' - D) with D_i = dO_i·O_i still (= Σ_j P_ij M'_ij dP_ij).
#include "rk_internal.h"
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

// The number of leading keys query i may see under the causal mask (all Tk without it).
static inline int visible_keys(int i, int Tk, int causal, int causal_offset) {
    if (!causal) return Tk;
    long lim = (long)i + causal_offset + 1;
    return lim < 0 ? 0 : (lim > Tk ? Tk : (int)lim);
}
// The first key query i may see: those before it fall out of the sliding window (0 without one).
static inline int first_key(int i, int Tk, int causal, int causal_offset, int window) {
    if (!causal || window <= 0) return 0;
    long lo = (long)i + causal_offset - window + 1;
    return lo < 0 ? 0 : (lo > Tk ? Tk : (int)lo);
}
// Where head bh's keys and values start: its group's key/value head in the same batch row.
static inline size_t kv_offset(int bh, int NH, int NKV, int Tk, int hs) {
    int b = bh / NH, h = bh % NH;
    return RK_IDX((size_t)b * NKV + (size_t)(h / (NH / NKV)), 0, (size_t)Tk * hs);
}

// Turns scores lo..<lim of row s into probabilities in place and zeroes the rest of s[0..<width) (the columns the
// value GEMM reads); returns the row's log-sum-exp, or -inf (and a zero row) if no key is visible.
static float softmax_row(float *s, const int32_t *kmask, int lo, int lim, int width) {
    for (int j = 0; j < lo && j < lim; j++) s[j] = -INFINITY;
    if (kmask)
        for (int j = 0; j < lim; j++)
            if (!kmask[j]) s[j] = -INFINITY;
    float m = lim > 0 ? rk__row_max(s, lim) : -INFINITY;
    if (m == -INFINITY) { // nothing visible: a zero row
        memset(s, 0, sizeof(float) * (size_t)width);
        return -INFINITY;
    }
    float sum = rk__row_expsum(s, s, m, lim);
    float r = 1.0f / sum;
    for (int j = 0; j < lim; j++) s[j] *= r;
    if (lim < width) memset(s + lim, 0, sizeof(float) * (size_t)(width - lim));
    return m + logf(sum);
}

// The dropout factor M'_ij of probability (bh, i, j): 1/(1-p) if kept, else 0.
static inline float drop_factor(const rk_attention_dropout *d, size_t index) {
    return rk_uniform(d->seed, d->offset + index) >= d->p ? 1.0f / (1.0f - d->p) : 0.0f;
}
static inline int dropping(const rk_attention_dropout *d) { return d && d->p > 0.0f; }

// A block of one query row (decoding: one new position against the cache) computes S = scale·q·Kᵀ and o = p·V with
// its own loops: two BLAS calls per head per token cost more in dispatch than the arithmetic (a step decoding 8 rows of
// a 30-layer model with 9 heads made 4320 of them).
static void scores_one_row(float *S, const float *q, const float *k, int kc, int hs, float scale) {
    for (int j = 0; j < kc; j++) {
        const float *kj = k + (size_t)j * hs;
        float d = 0.0f;
        for (int c = 0; c < hs; c++) d += q[c] * kj[c];
        S[j] = scale * d;
    }
}
static void values_one_row(float *o, const float *P, const float *v, int kc, int hs) {
    memset(o, 0, sizeof(float) * (size_t)hs);
    for (int j = 0; j < kc; j++) {
        const float *vj = v + (size_t)j * hs;
        float p = P[j];
        if (p != 0.0f)
            for (int c = 0; c < hs; c++) o[c] += p * vj[c];
    }
}
#if RK_X86
// The dot products of four keys at once (four independent chains), reduced together: hs 64 costs two horizontal
// sums' shuffles per four keys instead of one per key.
static RK_AVX2 void scores_one_row_avx2(float *S, const float *q, const float *k, int kc, int hs, float scale) {
    int j = 0;
    for (; j + 4 <= kc; j += 4) {
        const float *k0 = k + (size_t)j * hs, *k1 = k0 + hs, *k2 = k1 + hs, *k3 = k2 + hs;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int c = 0;
        for (; c + 8 <= hs; c += 8) {
            __m256 qc = _mm256_loadu_ps(q + c);
            a0 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k0 + c), a0);
            a1 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k1 + c), a1);
            a2 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k2 + c), a2);
            a3 = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k3 + c), a3);
        }
        // [a0 a1 a2 a3] summed within each: pairwise adds leave lane i of each half holding key i's partial sums.
        __m256 h01 = _mm256_hadd_ps(a0, a1), h23 = _mm256_hadd_ps(a2, a3), h = _mm256_hadd_ps(h01, h23);
        __m128 d = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        float out[4];
        _mm_storeu_ps(out, d);
        for (; c < hs; c++) {
            float qc = q[c];
            out[0] += qc * k0[c];
            out[1] += qc * k1[c];
            out[2] += qc * k2[c];
            out[3] += qc * k3[c];
        }
        for (int i = 0; i < 4; i++) S[j + i] = scale * out[i];
    }
    for (; j < kc; j++) {
        const float *kj = k + (size_t)j * hs;
        __m256 a = _mm256_setzero_ps();
        int c = 0;
        for (; c + 8 <= hs; c += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(kj + c), a);
        float d = rk_hsum256(a);
        for (; c < hs; c++) d += q[c] * kj[c];
        S[j] = scale * d;
    }
}
// The output in registers, 64 columns at a time (8 accumulators), over every key: one load of each value row and no
// store per key.
static RK_AVX2 void values_one_row_avx2(float *o, const float *P, const float *v, int kc, int hs) {
    int c0 = 0;
    for (; c0 + 64 <= hs; c0 += 64) {
        __m256 a[8];
        for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_ps();
        for (int j = 0; j < kc; j++) {
            float p = P[j];
            if (p == 0.0f) continue;
            const float *vj = v + (size_t)j * hs + c0;
            __m256 pv = _mm256_set1_ps(p);
            for (int i = 0; i < 8; i++) a[i] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vj + 8 * i), a[i]);
        }
        for (int i = 0; i < 8; i++) _mm256_storeu_ps(o + c0 + 8 * i, a[i]);
    }
    for (; c0 + 8 <= hs; c0 += 8) {
        __m256 a = _mm256_setzero_ps();
        for (int j = 0; j < kc; j++)
            if (P[j] != 0.0f) a = _mm256_fmadd_ps(_mm256_set1_ps(P[j]), _mm256_loadu_ps(v + (size_t)j * hs + c0), a);
        _mm256_storeu_ps(o + c0, a);
    }
    for (; c0 < hs; c0++) {
        float a = 0.0f;
        for (int j = 0; j < kc; j++)
            if (P[j] != 0.0f) a += P[j] * v[(size_t)j * hs + c0];
        o[c0] = a;
    }
}
#endif
static void scores_one(float *S, const float *q, const float *k, int kc, int hs, float scale) {
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX2) { scores_one_row_avx2(S, q, k, kc, hs, scale); return; }
#endif
    scores_one_row(S, q, k, kc, hs, scale);
}
static void values_one(float *o, const float *P, const float *v, int kc, int hs) {
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX2) { values_one_row_avx2(o, P, v, kc, hs); return; }
#endif
    values_one_row(o, P, v, kc, hs);
}

// Query rows go in blocks of RK_ATTN_ROWS under a causal mask: a block only needs the keys its last row can see,
// so the score and value GEMMs skip the masked upper triangle (about 40% of the work at T = 256).
#define RK_ATTN_ROWS 32
// Without a causal mask every row sees every key, so all T rows form one block: 4x fewer (and larger) GEMM calls.
static inline int row_block(int T, int causal) { return causal ? RK_ATTN_ROWS : (T > 0 ? T : 1); }

// q (B,NH,T,hs), k v (B,NKV,Tk,hs), out (B,NH,T,hs), lse (B,NH,T), key_mask (B,Tk); scratch T*Tk
void rk_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                          const int32_t *key_mask, int B, int NH, int NKV, int T, int Tk, int hs, float scale,
                          int causal, int causal_offset, int window, const rk_attention_dropout *drop, int bh_begin,
                          int bh_end, float *scratch) {
    rk_attention_forward_rows(out, lse, q, k, v, key_mask, B, NH, NKV, T, Tk, Tk, hs, scale, causal, causal_offset,
                              window, drop, bh_begin, bh_end, scratch);
}

// The same with k and v (B,NKV,kv_rows,hs) of which each head's first Tk rows are keys (a KV cache with room to grow).
void rk_attention_forward_rows(float *out, float *lse, const float *q, const float *k, const float *v,
                               const int32_t *key_mask, int B, int NH, int NKV, int T, int Tk, int kv_rows, int hs,
                               float scale, int causal, int causal_offset, int window,
                               const rk_attention_dropout *drop, int bh_begin, int bh_end, float *scratch) {
    (void)B;
    // Own products: Kᵀ (hs, Tk) of the key/value head last transposed (a group's query heads share it).
    float *kt = rk_own_products() && T > 1 && Tk > 0 ? malloc(sizeof(float) * (size_t)hs * (size_t)Tk) : NULL;
    size_t kt_of = SIZE_MAX;
    for (int bh = bh_begin; bh < bh_end; bh++) {
        int b = bh / NH;
        size_t ko = kv_offset(bh, NH, NKV, kv_rows, hs);
        const float *qh = q + RK_IDX(bh, 0, (size_t)T * hs), *kh = k + ko, *vh = v + ko;
        float *oh = out + RK_IDX(bh, 0, (size_t)T * hs);
        const int32_t *km = key_mask ? key_mask + RK_IDX(b, 0, Tk) : NULL;
        for (int i0 = 0; i0 < T; i0 += row_block(T, causal)) {
            int rows = T - i0 < row_block(T, causal) ? T - i0 : row_block(T, causal);
            int kc = visible_keys(i0 + rows - 1, Tk, causal, causal_offset); // keys any row of the block sees
            float *S = scratch + RK_IDX(i0, 0, Tk);
            if (kc == 0) { // nothing visible for the whole block
                for (int i = i0; i < i0 + rows; i++) lse[RK_IDX(bh, i, T)] = -INFINITY;
                memset(oh + RK_IDX(i0, 0, hs), 0, sizeof(float) * (size_t)rows * hs);
                continue;
            }
            // S (rows,kc) = scale · Q_block · K[:kc]ᵀ
            if (rows == 1) scores_one(S, qh + RK_IDX(i0, 0, hs), kh, kc, hs, scale);
            else if (kt) {
                if (kt_of != ko) {
                    rk__transpose(kt, (size_t)Tk, kh, (size_t)hs, Tk, hs);
                    kt_of = ko;
                }
                rk__small_product(S, (size_t)Tk, qh + RK_IDX(i0, 0, hs), (size_t)hs, 1, kt, (size_t)Tk, rows, kc,
                                  hs, scale, 0);
            } else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kc, hs, scale, qh + RK_IDX(i0, 0, hs), hs, kh,
                            hs, 0.0f, S, Tk);
            for (int i = 0; i < rows; i++) {
                float *p = S + RK_IDX(i, 0, Tk);
                lse[RK_IDX(bh, i0 + i, T)] =
                    softmax_row(p, km, first_key(i0 + i, Tk, causal, causal_offset, window),
                                visible_keys(i0 + i, Tk, causal, causal_offset), kc);
                if (dropping(drop)) {
                    size_t base = ((size_t)bh * T + (size_t)(i0 + i)) * (size_t)Tk;
                    for (int j = 0; j < kc; j++) p[j] *= drop_factor(drop, base + (size_t)j);
                }
            }
            // O_block (rows,hs) = P (rows,kc) · V[:kc]
            if (rows == 1) values_one(oh + RK_IDX(i0, 0, hs), S, vh, kc, hs);
            else if (kt)
                rk__small_product(oh + RK_IDX(i0, 0, hs), (size_t)hs, S, (size_t)Tk, 1, vh, (size_t)hs, rows, hs, kc,
                                  1.0f, 0);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, kc, 1.0f, S, Tk, vh, hs, 0.0f,
                            oh + RK_IDX(i0, 0, hs), hs);
        }
    }
    free(kt);
}

// scratch: 2*T*Tk + T. dk and dv of a key/value head gather its whole group: callers that split heads over threads
// split at group boundaries (multiples of NH / NKV).
void rk_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                           const float *v, const float *out, const float *lse, const int32_t *key_mask,
                           int B, int NH, int NKV, int T, int Tk, int hs, float scale, int causal, int causal_offset,
                           int window, const rk_attention_dropout *drop, int bh_begin, int bh_end, float *scratch) {
    (void)B;
    if (!dq && !dk && !dv) return;
    float *P = scratch, *dS = scratch + (size_t)T * Tk, *D = dS + (size_t)T * Tk;
    // Own products: Kᵀ and Vᵀ (hs, Tk each) of the key/value head last transposed (Vᵀ only for dP, when dQ or dK
    // is wanted).
    float *kt = rk_own_products() && Tk > 0 ? malloc(sizeof(float) * 2 * (size_t)hs * (size_t)Tk) : NULL,
          *vt = kt ? kt + (size_t)hs * Tk : NULL;
    size_t kt_of = SIZE_MAX;
    for (int bh = bh_begin; bh < bh_end; bh++) {
        int b = bh / NH;
        size_t qo = RK_IDX(bh, 0, (size_t)T * hs), ko = kv_offset(bh, NH, NKV, Tk, hs);
        const int32_t *km = key_mask ? key_mask + RK_IDX(b, 0, Tk) : NULL;
        if (kt && kt_of != ko) {
            rk__transpose(kt, (size_t)Tk, k + ko, (size_t)hs, Tk, hs);
            if (dq || dk) rk__transpose(vt, (size_t)Tk, v + ko, (size_t)hs, Tk, hs);
            kt_of = ko;
        }
        for (int i0 = 0; i0 < T; i0 += row_block(T, causal)) {
            int rows = T - i0 < row_block(T, causal) ? T - i0 : row_block(T, causal);
            int kc = visible_keys(i0 + rows - 1, Tk, causal, causal_offset);
            if (kc == 0) continue; // no key visible: no gradient flows through this block
            float *Pb = P + RK_IDX(i0, 0, Tk), *dSb = dS + RK_IDX(i0, 0, Tk);
            const float *qb = q + qo + RK_IDX(i0, 0, hs), *gb = dout + qo + RK_IDX(i0, 0, hs);
            // P recomputed: e^{scale·q·k - lse} on visible keys, 0 elsewhere (within the block's kc columns).
            if (kt)
                rk__small_product(Pb, (size_t)Tk, qb, (size_t)hs, 1, kt, (size_t)Tk, rows, kc, hs, scale, 0);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kc, hs, scale, qb, hs, k + ko, hs, 0.0f, Pb,
                            Tk);
            for (int i = 0; i < rows; i++) {
                float *p = Pb + RK_IDX(i, 0, Tk), l = lse[RK_IDX(bh, i0 + i, T)];
                int lim = l == -INFINITY ? 0 : visible_keys(i0 + i, Tk, causal, causal_offset);
                if (lim > 0) rk__row_expsum(p, p, l, lim);
                for (int j = 0, lo = first_key(i0 + i, Tk, causal, causal_offset, window); j < lo && j < lim; j++)
                    p[j] = 0.0f;
                if (km)
                    for (int j = 0; j < lim; j++)
                        if (!km[j]) p[j] = 0.0f;
                if (lim < kc) memset(p + lim, 0, sizeof(float) * (size_t)(kc - lim));
            }
            // dV[:kc] += (P ⊙ M')ᵀ · dO_block; with dropout the dropped P is built in dS's buffer first
            if (dv) {
                const float *Pv = Pb;
                if (dropping(drop)) {
                    for (int i = 0; i < rows; i++) {
                        size_t base = ((size_t)bh * T + (size_t)(i0 + i)) * (size_t)Tk;
                        const float *p = Pb + RK_IDX(i, 0, Tk);
                        float *pd = dSb + RK_IDX(i, 0, Tk);
                        for (int j = 0; j < kc; j++) pd[j] = p[j] * drop_factor(drop, base + (size_t)j);
                    }
                    Pv = dSb;
                }
                if (kt)
                    rk__small_product(dv + ko, (size_t)hs, Pv, 1, (size_t)Tk, gb, (size_t)hs, kc, hs, rows, 1.0f, 1);
                else
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kc, hs, rows, 1.0f, Pv, Tk, gb, hs, 1.0f,
                                dv + ko, hs);
            }
            if (!dq && !dk) continue;
            // dP (rows,kc) = dO_block · V[:kc]ᵀ, then dS = P ⊙ (dP - D) in place, D_i = dO_i · O_i
            if (kt)
                rk__small_product(dSb, (size_t)Tk, gb, (size_t)hs, 1, vt, (size_t)Tk, rows, kc, hs, 1.0f, 0);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, kc, hs, 1.0f, gb, hs, v + ko, hs, 0.0f, dSb,
                            Tk);
            for (int i = 0; i < rows; i++) {
                const float *o = out + qo + RK_IDX(i0 + i, 0, hs), *g = gb + RK_IDX(i, 0, hs);
                float d = 0.0f;
                for (int c = 0; c < hs; c++) d += o[c] * g[c];
                D[i0 + i] = d;
                float *ds = dSb + RK_IDX(i, 0, Tk);
                const float *p = Pb + RK_IDX(i, 0, Tk);
                if (dropping(drop)) {
                    size_t base = ((size_t)bh * T + (size_t)(i0 + i)) * (size_t)Tk;
                    for (int j = 0; j < kc; j++) ds[j] = p[j] * (ds[j] * drop_factor(drop, base + (size_t)j) - d);
                } else {
#pragma clang loop vectorize(enable)
                    for (int j = 0; j < kc; j++) ds[j] = p[j] * (ds[j] - d);
                }
            }
            // dQ_block += scale · dS · K[:kc];  dK[:kc] += scale · dSᵀ · Q_block
            if (dq && kt)
                rk__small_product(dq + qo + RK_IDX(i0, 0, hs), (size_t)hs, dSb, (size_t)Tk, 1, k + ko, (size_t)hs, rows,
                                  hs, kc, scale, 1);
            else if (dq)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hs, kc, scale, dSb, Tk, k + ko, hs, 1.0f,
                            dq + qo + RK_IDX(i0, 0, hs), hs);
            if (dk && kt)
                rk__small_product(dk + ko, (size_t)hs, dSb, 1, (size_t)Tk, qb, (size_t)hs, kc, hs, rows, scale, 1);
            else if (dk)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kc, hs, rows, scale, dSb, Tk, qb, hs, 1.0f, dk + ko, hs);
        }
    }
    free(kt);
}

// ---- reference: one query row at a time, scores recomputed wherever needed -----------------------------------
static int ref_visible(int i, int j, const int32_t *km, int Tk, int causal, int off, int w) {
    return j < visible_keys(i, Tk, causal, off) && j >= first_key(i, Tk, causal, off, w) && (!km || km[j]);
}
static float ref_score(const float *qi, const float *kj, int hs, float scale) {
    float s = 0.0f;
    for (int c = 0; c < hs; c++) s += qi[c] * kj[c];
    return s * scale;
}
static float ref_lse(const float *qi, const float *kh, const int32_t *km, int i, int Tk, int hs, float scale,
                     int causal, int off, int w) {
    float m = -INFINITY;
    for (int j = 0; j < Tk; j++)
        if (ref_visible(i, j, km, Tk, causal, off, w)) {
            float s = ref_score(qi, kh + RK_IDX(j, 0, hs), hs, scale);
            if (isnan(s)) return NAN;  // a NaN score makes the row NaN (as the kernels' row maximum does)
            m = s > m ? s : m;
        }
    if (m == -INFINITY) return -INFINITY;
    float sum = 0.0f;
    for (int j = 0; j < Tk; j++)
        if (ref_visible(i, j, km, Tk, causal, off, w)) sum += expf(ref_score(qi, kh + RK_IDX(j, 0, hs), hs, scale) - m);
    return m + logf(sum);
}
void rk_attention_forward_ref(float *out, float *lse, const float *q, const float *k, const float *v,
                              const int32_t *key_mask, int B, int NH, int NKV, int T, int Tk, int hs, float scale,
                              int causal, int causal_offset, int window, const rk_attention_dropout *drop) {
    for (int bh = 0; bh < B * NH; bh++) {
        const float *kh = k + kv_offset(bh, NH, NKV, Tk, hs), *vh = v + kv_offset(bh, NH, NKV, Tk, hs);
        const int32_t *km = key_mask ? key_mask + RK_IDX(bh / NH, 0, Tk) : NULL;
        for (int i = 0; i < T; i++) {
            const float *qi = q + RK_IDX(bh, 0, (size_t)T * hs) + RK_IDX(i, 0, hs);
            float *oi = out + RK_IDX(bh, 0, (size_t)T * hs) + RK_IDX(i, 0, hs);
            float l = ref_lse(qi, kh, km, i, Tk, hs, scale, causal, causal_offset, window);
            lse[RK_IDX(bh, i, T)] = l;
            for (int c = 0; c < hs; c++) oi[c] = 0.0f;
            if (l == -INFINITY) continue;
            for (int j = 0; j < Tk; j++) {
                if (!ref_visible(i, j, km, Tk, causal, causal_offset, window)) continue;
                float p = expf(ref_score(qi, kh + RK_IDX(j, 0, hs), hs, scale) - l);
                if (dropping(drop)) p *= drop_factor(drop, ((size_t)bh * T + i) * Tk + j);
                for (int c = 0; c < hs; c++) oi[c] += p * vh[RK_IDX(j, c, hs)];
            }
        }
    }
}
void rk_attention_backward_ref(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const float *out, const float *lse, const int32_t *key_mask,
                               int B, int NH, int NKV, int T, int Tk, int hs, float scale, int causal,
                               int causal_offset, int window, const rk_attention_dropout *drop) {
    (void)out;
    for (int bh = 0; bh < B * NH; bh++) {
        size_t qo = RK_IDX(bh, 0, (size_t)T * hs), ko = kv_offset(bh, NH, NKV, Tk, hs);
        const int32_t *km = key_mask ? key_mask + RK_IDX(bh / NH, 0, Tk) : NULL;
        for (int i = 0; i < T; i++) {
            const float *qi = q + qo + RK_IDX(i, 0, hs), *gi = dout + qo + RK_IDX(i, 0, hs);
            float l = lse[RK_IDX(bh, i, T)];
            if (l == -INFINITY) continue;
            // D_i = Σ_j P_ij dP_ij with dP_ij = M'_ij · dO_i·V_j, here straight from the definition
            float D = 0.0f;
            for (int j = 0; j < Tk; j++) {
                if (!ref_visible(i, j, km, Tk, causal, causal_offset, window)) continue;
                float p = expf(ref_score(qi, k + ko + RK_IDX(j, 0, hs), hs, scale) - l);
                float m = 1.0f;
                if (dropping(drop)) m = drop_factor(drop, ((size_t)bh * T + i) * Tk + j);
                D += p * m * ref_score(gi, v + ko + RK_IDX(j, 0, hs), hs, 1.0f);
            }
            for (int j = 0; j < Tk; j++) {
                if (!ref_visible(i, j, km, Tk, causal, causal_offset, window)) continue;
                const float *kj = k + ko + RK_IDX(j, 0, hs), *vj = v + ko + RK_IDX(j, 0, hs);
                float p = expf(ref_score(qi, kj, hs, scale) - l);
                float m = 1.0f;
                if (dropping(drop)) m = drop_factor(drop, ((size_t)bh * T + i) * Tk + j);
                float dp = m * ref_score(gi, vj, hs, 1.0f);
                float ds = p * (dp - D);
                for (int c = 0; c < hs; c++) {
                    if (dv) dv[ko + RK_IDX(j, c, hs)] += p * m * gi[c];
                    if (dq) dq[qo + RK_IDX(i, c, hs)] += scale * ds * kj[c];
                    if (dk) dk[ko + RK_IDX(j, c, hs)] += scale * ds * qi[c];
                }
            }
        }
    }
}
