// attention.c — scaled dot-product attention over split heads (Vaswani et al., arXiv 1706.03762), forward and
// backward, one head (b,h) at a time on OpenBLAS sgemm. Not here: the Q/K/V projections and splitting heads.
//   S = scale·Q·Kᵀ (T,Tk), masked;  P = softmax(S) row-wise;  O = P·V (T,hs);  lse_i = log Σ_j e^{S_ij}
// Backward recomputes P from lse (nothing of size T·Tk is kept between the passes):
//   dV += Pᵀ·dO;  dP = dO·Vᵀ;  D_i = dO_i·O_i (= Σ_j P_ij dP_ij);  dS = P ⊙ (dP - D);
//   dQ += scale·dS·K;  dK += scale·dSᵀ·Q
// Query i may see key j when (no causal mask or j <= i + causal_offset) and key_mask[b, j] != 0.
#include "rk_internal.h"
#include <cblas.h>
#include <string.h>

// The number of leading keys query i may see under the causal mask (all Tk without it).
static inline int visible_keys(int i, int Tk, int causal, int causal_offset) {
    if (!causal) return Tk;
    long lim = (long)i + causal_offset + 1;
    return lim < 0 ? 0 : (lim > Tk ? Tk : (int)lim);
}

// Turns the score row s (Tk) into probabilities in place; returns the row's log-sum-exp (-inf if no key is visible).
static float softmax_row(float *s, const int32_t *kmask, int lim, int Tk) {
    if (kmask)
        for (int j = 0; j < lim; j++)
            if (!kmask[j]) s[j] = -INFINITY;
    float m = lim > 0 ? rk__row_max(s, lim) : -INFINITY;
    if (m == -INFINITY) { // nothing visible: a zero row
        memset(s, 0, sizeof(float) * (size_t)Tk);
        return -INFINITY;
    }
    float sum = rk__row_expsum(s, s, m, lim);
    float r = 1.0f / sum;
    for (int j = 0; j < lim; j++) s[j] *= r;
    if (lim < Tk) memset(s + lim, 0, sizeof(float) * (size_t)(Tk - lim));
    return m + logf(sum);
}

// q (B,NH,T,hs), k v (B,NH,Tk,hs), out (B,NH,T,hs), lse (B,NH,T), key_mask (B,Tk); scratch T*Tk
void rk_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                          const int32_t *key_mask, int B, int NH, int T, int Tk, int hs, float scale,
                          int causal, int causal_offset, int bh_begin, int bh_end, float *scratch) {
    (void)B;
    for (int bh = bh_begin; bh < bh_end; bh++) {
        int b = bh / NH;
        const float *qh = q + RK_IDX(bh, 0, (size_t)T * hs), *kh = k + RK_IDX(bh, 0, (size_t)Tk * hs),
                    *vh = v + RK_IDX(bh, 0, (size_t)Tk * hs);
        const int32_t *km = key_mask ? key_mask + RK_IDX(b, 0, Tk) : NULL;
        float *S = scratch;
        // S (T,Tk) = scale · Qh · Khᵀ
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, Tk, hs, scale, qh, hs, kh, hs, 0.0f, S, Tk);
        for (int i = 0; i < T; i++)
            lse[RK_IDX(bh, i, T)] = softmax_row(S + RK_IDX(i, 0, Tk), km, visible_keys(i, Tk, causal, causal_offset), Tk);
        // O (T,hs) = P · Vh
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, Tk, 1.0f, S, Tk, vh, hs, 0.0f,
                    out + RK_IDX(bh, 0, (size_t)T * hs), hs);
    }
}

// scratch: 2*T*Tk + T
void rk_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                           const float *v, const float *out, const float *lse, const int32_t *key_mask,
                           int B, int NH, int T, int Tk, int hs, float scale, int causal, int causal_offset,
                           int bh_begin, int bh_end, float *scratch) {
    (void)B;
    if (!dq && !dk && !dv) return;
    float *P = scratch, *dS = scratch + (size_t)T * Tk, *D = dS + (size_t)T * Tk;
    for (int bh = bh_begin; bh < bh_end; bh++) {
        int b = bh / NH;
        size_t qo = RK_IDX(bh, 0, (size_t)T * hs), ko = RK_IDX(bh, 0, (size_t)Tk * hs);
        const int32_t *km = key_mask ? key_mask + RK_IDX(b, 0, Tk) : NULL;
        // P recomputed: e^{scale·q·k - lse} on visible keys, 0 elsewhere.
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, Tk, hs, scale, q + qo, hs, k + ko, hs, 0.0f, P, Tk);
        for (int i = 0; i < T; i++) {
            float *p = P + RK_IDX(i, 0, Tk), l = lse[RK_IDX(bh, i, T)];
            int lim = l == -INFINITY ? 0 : visible_keys(i, Tk, causal, causal_offset);
            if (lim > 0) rk__row_expsum(p, p, l, lim);
            if (km)
                for (int j = 0; j < lim; j++)
                    if (!km[j]) p[j] = 0.0f;
            if (lim < Tk) memset(p + lim, 0, sizeof(float) * (size_t)(Tk - lim));
        }
        // dV (Tk,hs) += Pᵀ · dO
        if (dv)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Tk, hs, T, 1.0f, P, Tk, dout + qo, hs, 1.0f, dv + ko, hs);
        if (!dq && !dk) continue;
        // dP (T,Tk) = dO · Vᵀ, then dS = P ⊙ (dP - D) in place
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, Tk, hs, 1.0f, dout + qo, hs, v + ko, hs, 0.0f, dS, Tk);
        for (int i = 0; i < T; i++) {
            const float *o = out + qo + RK_IDX(i, 0, hs), *g = dout + qo + RK_IDX(i, 0, hs);
            float d = 0.0f;
            for (int c = 0; c < hs; c++) d += o[c] * g[c];
            D[i] = d;
        }
        for (int i = 0; i < T; i++) {
            float *ds = dS + RK_IDX(i, 0, Tk);
            const float *p = P + RK_IDX(i, 0, Tk);
            float d = D[i];
#pragma clang loop vectorize(enable)
            for (int j = 0; j < Tk; j++) ds[j] = p[j] * (ds[j] - d);
        }
        // dQ (T,hs) += scale · dS · K;  dK (Tk,hs) += scale · dSᵀ · Q
        if (dq) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, Tk, scale, dS, Tk, k + ko, hs, 1.0f, dq + qo, hs);
        if (dk) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Tk, hs, T, scale, dS, Tk, q + qo, hs, 1.0f, dk + ko, hs);
    }
}

// ---- reference: one query row at a time, scores recomputed wherever needed -----------------------------------
static int ref_visible(int i, int j, const int32_t *km, int Tk, int causal, int off) {
    return j < visible_keys(i, Tk, causal, off) && (!km || km[j]);
}
static float ref_score(const float *qi, const float *kj, int hs, float scale) {
    float s = 0.0f;
    for (int c = 0; c < hs; c++) s += qi[c] * kj[c];
    return s * scale;
}
static float ref_lse(const float *qi, const float *kh, const int32_t *km, int i, int Tk, int hs, float scale,
                     int causal, int off) {
    float m = -INFINITY;
    for (int j = 0; j < Tk; j++)
        if (ref_visible(i, j, km, Tk, causal, off)) {
            float s = ref_score(qi, kh + RK_IDX(j, 0, hs), hs, scale);
            m = s > m ? s : m;
        }
    if (m == -INFINITY) return -INFINITY;
    float sum = 0.0f;
    for (int j = 0; j < Tk; j++)
        if (ref_visible(i, j, km, Tk, causal, off)) sum += expf(ref_score(qi, kh + RK_IDX(j, 0, hs), hs, scale) - m);
    return m + logf(sum);
}
void rk_attention_forward_ref(float *out, float *lse, const float *q, const float *k, const float *v,
                              const int32_t *key_mask, int B, int NH, int T, int Tk, int hs, float scale,
                              int causal, int causal_offset) {
    for (int bh = 0; bh < B * NH; bh++) {
        const float *kh = k + RK_IDX(bh, 0, (size_t)Tk * hs), *vh = v + RK_IDX(bh, 0, (size_t)Tk * hs);
        const int32_t *km = key_mask ? key_mask + RK_IDX(bh / NH, 0, Tk) : NULL;
        for (int i = 0; i < T; i++) {
            const float *qi = q + RK_IDX(bh, 0, (size_t)T * hs) + RK_IDX(i, 0, hs);
            float *oi = out + RK_IDX(bh, 0, (size_t)T * hs) + RK_IDX(i, 0, hs);
            float l = ref_lse(qi, kh, km, i, Tk, hs, scale, causal, causal_offset);
            lse[RK_IDX(bh, i, T)] = l;
            for (int c = 0; c < hs; c++) oi[c] = 0.0f;
            if (l == -INFINITY) continue;
            for (int j = 0; j < Tk; j++) {
                if (!ref_visible(i, j, km, Tk, causal, causal_offset)) continue;
                float p = expf(ref_score(qi, kh + RK_IDX(j, 0, hs), hs, scale) - l);
                for (int c = 0; c < hs; c++) oi[c] += p * vh[RK_IDX(j, c, hs)];
            }
        }
    }
}
void rk_attention_backward_ref(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const float *out, const float *lse, const int32_t *key_mask,
                               int B, int NH, int T, int Tk, int hs, float scale, int causal, int causal_offset) {
    (void)out;
    for (int bh = 0; bh < B * NH; bh++) {
        size_t qo = RK_IDX(bh, 0, (size_t)T * hs), ko = RK_IDX(bh, 0, (size_t)Tk * hs);
        const int32_t *km = key_mask ? key_mask + RK_IDX(bh / NH, 0, Tk) : NULL;
        for (int i = 0; i < T; i++) {
            const float *qi = q + qo + RK_IDX(i, 0, hs), *gi = dout + qo + RK_IDX(i, 0, hs);
            float l = lse[RK_IDX(bh, i, T)];
            if (l == -INFINITY) continue;
            // D_i = Σ_j P_ij dP_ij, here straight from the definition
            float D = 0.0f;
            for (int j = 0; j < Tk; j++) {
                if (!ref_visible(i, j, km, Tk, causal, causal_offset)) continue;
                float p = expf(ref_score(qi, k + ko + RK_IDX(j, 0, hs), hs, scale) - l);
                D += p * ref_score(gi, v + ko + RK_IDX(j, 0, hs), hs, 1.0f);
            }
            for (int j = 0; j < Tk; j++) {
                if (!ref_visible(i, j, km, Tk, causal, causal_offset)) continue;
                const float *kj = k + ko + RK_IDX(j, 0, hs), *vj = v + ko + RK_IDX(j, 0, hs);
                float p = expf(ref_score(qi, kj, hs, scale) - l);
                float dp = ref_score(gi, vj, hs, 1.0f);
                float ds = p * (dp - D);
                for (int c = 0; c < hs; c++) {
                    if (dv) dv[ko + RK_IDX(j, c, hs)] += p * gi[c];
                    if (dq) dq[qo + RK_IDX(i, c, hs)] += scale * ds * kj[c];
                    if (dk) dk[ko + RK_IDX(j, c, hs)] += scale * ds * qi[c];
                }
            }
        }
    }
}
