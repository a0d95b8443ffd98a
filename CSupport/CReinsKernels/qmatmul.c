// qmatmul.c — products with a weight that stays in its quantized blocks (a frozen GGUF base).
//
// The integer route (llama.cpp's): the activations are quantized to 8-bit blocks of 32 (one float scale d = max|x|/127
// per block, values rounded to nearest even), and each weight block's small integers are multiplied with them in
// integer arithmetic; the block's float scales are applied once per block. For a type with a minimum (Q4_1, Q5_1, the
// K types) the minimum multiplies the block's sum of activation integers, kept with the block.
//   out[n, o] = Σ_blocks  d_w·d_x·Σ_j q_w[j]·q_x[j]  (+ m_w·d_x·Σ_j q_x[j])
// The activation blocks also keep the sums of their two halves (Q6_K scales 16 elements at a time).
//
// The float route (dequantize a panel of weight rows, then sgemm) lives in ReinsTensor; it is the exact one.
#include "rk_internal.h"
#include <string.h>

// ---- activations to 8-bit blocks --------------------------------------------------------------------------------
static inline void quantize_block_scalar(rk_q8_block *b, const float *x) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    int s0 = 0, s1 = 0;
    for (int j = 0; j < 32; j++) {
        int q = (int)nearbyintf(x[j] * id);
        b->q[j] = (int8_t)q;
        if (j < 16) s0 += q; else s1 += q;
    }
    b->d = d;
    b->sum16[0] = (int16_t)s0;
    b->sum16[1] = (int16_t)s1;
}

void rk_quantize_q8_ref(rk_q8_block *out, const float *x, int N, int C) {
    int nb = C / 32;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < nb; k++) quantize_block_scalar(out + RK_IDX(n, k, nb), x + RK_IDX(n, 32 * k, C));
}

#if RK_X86
static RK_AVX2 void quantize_q8_avx2(rk_q8_block *out, const float *x, int N, int C) {
    int nb = C / 32;
    const __m256 signbit = _mm256_set1_ps(-0.0f);
    for (int n = 0; n < N; n++) {
        for (int k = 0; k < nb; k++) {
            const float *p = x + RK_IDX(n, 32 * k, C);
            rk_q8_block *b = out + RK_IDX(n, k, nb);
            __m256 v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8), v2 = _mm256_loadu_ps(p + 16),
                   v3 = _mm256_loadu_ps(p + 24);
            __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(signbit, v0), _mm256_andnot_ps(signbit, v1)),
                                     _mm256_max_ps(_mm256_andnot_ps(signbit, v2), _mm256_andnot_ps(signbit, v3)));
            float amax = rk_hmax256(m);
            float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            __m256 s = _mm256_set1_ps(id);
#define RK_NEAREST (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
            __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, s), RK_NEAREST));
            __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, s), RK_NEAREST));
            __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, s), RK_NEAREST));
            __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, s), RK_NEAREST));
            __m256i s01 = _mm256_add_epi32(i0, i1), s23 = _mm256_add_epi32(i2, i3);
            __m128i a = _mm_add_epi32(_mm256_castsi256_si128(s01), _mm256_extracti128_si256(s01, 1));
            __m128i c = _mm_add_epi32(_mm256_castsi256_si128(s23), _mm256_extracti128_si256(s23, 1));
            a = _mm_hadd_epi32(a, c);
            a = _mm_hadd_epi32(a, a); // lanes: sum(first 16), sum(last 16), ...
            // Pack 32 int32 to int8 in element order: packs interleave 128-bit lanes, a permute restores the order.
            __m256i p01 = _mm256_packs_epi32(i0, i1), p23 = _mm256_packs_epi32(i2, i3);
            __m256i packed = _mm256_packs_epi16(p01, p23);
            packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)b->q, packed);
            b->d = d;
            b->sum16[0] = (int16_t)_mm_extract_epi32(a, 0);
            b->sum16[1] = (int16_t)_mm_extract_epi32(a, 1);
        }
    }
}
#endif

int rk_quantize_q8(rk_q8_block *out, const float *x, int N, int C) {
    if (C % 32 != 0 || N < 0) return RK_ERR_ARG;
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX2) { quantize_q8_avx2(out, x, N, C); return RK_OK; }
#endif
    rk_quantize_q8_ref(out, x, N, C);
    return RK_OK;
}

// ---- block dot products, scalar ---------------------------------------------------------------------------------
static inline float half_at(const uint8_t *p) { return rk_half_to_float((uint16_t)(p[0] | (p[1] << 8))); }
static inline uint32_t load32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline void k_scale_min(const uint8_t *s, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// The dot of one weight row (nb32 activation blocks long) with one activation row, scalar.
static float row_dot_scalar(const uint8_t *w, const rk_q8_block *x, int nb32, int type) {
    float acc = 0.0f;
    switch (type) {
    case RK_GGML_Q4_0: case RK_GGML_Q4_1: case RK_GGML_Q5_0: case RK_GGML_Q5_1: case RK_GGML_Q8_0: {
        size_t bb = rk_quant_block_bytes(type);
        for (int k = 0; k < nb32; k++, w += bb) {
            const rk_q8_block *b = x + k;
            int s = 0, sx = b->sum16[0] + b->sum16[1];
            float d = half_at(w), m = 0.0f;
            if (type == RK_GGML_Q8_0) {
                for (int j = 0; j < 32; j++) s += (int)((const int8_t *)(w + 2))[j] * b->q[j];
            } else if (type == RK_GGML_Q4_0 || type == RK_GGML_Q4_1) {
                const uint8_t *qs = w + (type == RK_GGML_Q4_0 ? 2 : 4);
                for (int j = 0; j < 16; j++) s += (qs[j] & 0x0F) * b->q[j] + (qs[j] >> 4) * b->q[j + 16];
                if (type == RK_GGML_Q4_0) s -= 8 * sx; else m = half_at(w + 2);
            } else {
                int off = type == RK_GGML_Q5_0 ? 2 : 4;
                uint32_t qh = load32(w + off);
                const uint8_t *qs = w + off + 4;
                for (int j = 0; j < 16; j++) {
                    int lo = (qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
                    int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
                    s += lo * b->q[j] + hi * b->q[j + 16];
                }
                if (type == RK_GGML_Q5_0) s -= 16 * sx; else m = half_at(w + 2);
            }
            acc += d * b->d * (float)s + m * b->d * (float)sx;
        }
        return acc;
    }
    case RK_GGML_Q4_K: case RK_GGML_Q5_K: {
        size_t bb = rk_quant_block_bytes(type);
        for (int k = 0; k < nb32 / 8; k++, w += bb) {
            float d = half_at(w), dmin = half_at(w + 2);
            const uint8_t *sc = w + 4, *qh = w + 16, *qs = type == RK_GGML_Q4_K ? w + 16 : w + 48;
            for (int sb = 0; sb < 8; sb++) {
                const rk_q8_block *b = x + 8 * k + sb;
                int scale, mn, s = 0;
                k_scale_min(sc, sb, &scale, &mn);
                const uint8_t *q = qs + 32 * (sb / 2);
                int shift = 4 * (sb & 1);
                for (int l = 0; l < 32; l++) {
                    int v = (q[l] >> shift) & 0x0F;
                    if (type == RK_GGML_Q5_K) v |= ((qh[l] >> sb) & 1) << 4;
                    s += v * b->q[l];
                }
                acc += d * (float)scale * b->d * (float)s - dmin * (float)mn * b->d * (float)(b->sum16[0] + b->sum16[1]);
            }
        }
        return acc;
    }
    case RK_GGML_Q6_K: {
        for (int k = 0; k < nb32 / 8; k++, w += 210) {
            const uint8_t *ql = w, *qh = w + 128;
            const int8_t *sc = (const int8_t *)(w + 192);
            float d = half_at(w + 208);
            for (int sb = 0; sb < 8; sb++) {
                const rk_q8_block *b = x + 8 * k + sb;
                int s[2] = {0, 0};
                for (int l = 0; l < 32; l++) {
                    int i = 32 * sb + l, h = i >> 7, r = i & 127;
                    int lo = (ql[64 * h + (r & 63)] >> (4 * (r >> 6))) & 0x0F;
                    int hi = (qh[32 * h + (r & 31)] >> (2 * (r >> 5))) & 3;
                    s[l >> 4] += ((lo | (hi << 4)) - 32) * b->q[l];
                }
                acc += d * b->d * ((float)sc[2 * sb] * (float)s[0] + (float)sc[2 * sb + 1] * (float)s[1]);
            }
        }
        return acc;
    }
    default: return 0.0f;
    }
}

#if RK_X86
// ---- block dot products, AVX2 (Q4_0, Q4_1, Q8_0: the types small models ship in) --------------------------------
static inline RK_AVX2 __m256i nibbles32(const uint8_t *qs) {
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F)); // elements 0..15 then 16..31
}
static inline RK_AVX2 __m256 dot_u8_s8(__m256i u, __m256i s) {
    __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
    return _mm256_cvtepi32_ps(p);
}
static RK_AVX2 float row_dot_avx2(const uint8_t *w, const rk_q8_block *x, int nb32, int type) {
    __m256 acc = _mm256_setzero_ps();
    float extra = 0.0f;
    switch (type) {
    case RK_GGML_Q4_0:
        for (int k = 0; k < nb32; k++, w += 18) {
            __m256i q = _mm256_sub_epi8(nibbles32(w + 2), _mm256_set1_epi8(8));
            __m256i xq = _mm256_loadu_si256((const __m256i *)x[k].q);
            __m256 p = dot_u8_s8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xq, q));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(half_at(w) * x[k].d), p, acc);
        }
        break;
    case RK_GGML_Q4_1:
        for (int k = 0; k < nb32; k++, w += 20) {
            __m256i xq = _mm256_loadu_si256((const __m256i *)x[k].q);
            __m256 p = dot_u8_s8(nibbles32(w + 4), xq);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(half_at(w) * x[k].d), p, acc);
            extra += half_at(w + 2) * x[k].d * (float)(x[k].sum16[0] + x[k].sum16[1]);
        }
        break;
    case RK_GGML_Q8_0:
        for (int k = 0; k < nb32; k++, w += 34) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(w + 2));
            __m256i xq = _mm256_loadu_si256((const __m256i *)x[k].q);
            __m256 p = dot_u8_s8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xq, q));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(half_at(w) * x[k].d), p, acc);
        }
        break;
    default: return row_dot_scalar(w, x, nb32, type);
    }
    return rk_hsum256(acc) + extra;
}
#endif

static int row_dot_checks(int type, int C) {
    size_t be = rk_quant_block_elements(type);
    if (be < 32 || C % (int)be != 0) return RK_ERR_ARG;
    return RK_OK;
}

int rk_qmatmul_q8_ref(float *out, const rk_q8_block *xq, const void *w, int type, int N, int C, int OC,
                      int row_begin, int row_end) {
    if (row_dot_checks(type, C) != RK_OK) return RK_ERR_ARG;
    size_t row_bytes = (size_t)C / rk_quant_block_elements(type) * rk_quant_block_bytes(type);
    int nb = C / 32;
    for (int o = row_begin; o < row_end; o++)
        for (int n = 0; n < N; n++)
            out[RK_IDX(n, o, OC)] = row_dot_scalar((const uint8_t *)w + o * row_bytes, xq + RK_IDX(n, 0, nb), nb, type);
    return RK_OK;
}

int rk_qmatmul_q8(float *out, const rk_q8_block *xq, const void *w, int type, int N, int C, int OC, int row_begin,
                  int row_end) {
    if (row_dot_checks(type, C) != RK_OK) return RK_ERR_ARG;
    size_t row_bytes = (size_t)C / rk_quant_block_elements(type) * rk_quant_block_bytes(type);
    int nb = C / 32;
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX2) {
        for (int o = row_begin; o < row_end; o++)
            for (int n = 0; n < N; n++)
                out[RK_IDX(n, o, OC)] = row_dot_avx2((const uint8_t *)w + o * row_bytes, xq + RK_IDX(n, 0, nb), nb, type);
        return RK_OK;
    }
#endif
    return rk_qmatmul_q8_ref(out, xq, w, type, N, C, OC, row_begin, row_end);
}
