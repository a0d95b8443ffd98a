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
// A block with a NaN gets the scale NaN, so that every product that reads it is NaN (as the float product would be)
// rather than finite: fmaxf and the vector max skip a NaN.
static inline void quantize_block_scalar(rk_q8_block *b, const float *x) {
    float amax = 0.0f;
    int nan = 0;
    for (int j = 0; j < 32; j++) {
        nan |= isnan(x[j]);
        amax = fmaxf(amax, fabsf(x[j]));
    }
    float d = nan ? NAN : amax / 127.0f, id = !nan && d != 0.0f ? 1.0f / d : 0.0f;
    int s0 = 0, s1 = 0;
    for (int j = 0; j < 32; j++) {
        float v = x[j] * id;  // NaN for a NaN, or for an infinity over an infinite scale: 0, not a conversion of NaN
        int q = v == v ? (int)nearbyintf(v) : 0;
        b->q[j] = (int8_t)q;
        if (j < 16) s0 += q; else s1 += q;
    }
    b->d = d;
    b->ds = d * (float)(s0 + s1);
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
            __m256 nan = _mm256_or_ps(_mm256_cmp_ps(v0, v1, _CMP_UNORD_Q), _mm256_cmp_ps(v2, v3, _CMP_UNORD_Q));
            float amax = rk_hmax256(m);
            // A NaN: the scale NaN (as in quantize_block_scalar), the integers whatever the conversions give.
            float d = _mm256_movemask_ps(nan) ? NAN : amax / 127.0f, id = d == d && d != 0.0f ? 1.0f / d : 0.0f;
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
            b->ds = d * (float)(b->sum16[0] + b->sum16[1]);
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
    case RK_GGML_Q4_0: case RK_GGML_Q4_1: case RK_GGML_Q5_0: case RK_GGML_Q5_1: case RK_GGML_Q8_0:
    case RK_GGML_IQ4_NL: {
        size_t bb = rk_quant_block_bytes(type);
        for (int k = 0; k < nb32; k++, w += bb) {
            const rk_q8_block *b = x + k;
            int s = 0, sx = b->sum16[0] + b->sum16[1];
            float d = half_at(w), m = 0.0f;
            if (type == RK_GGML_Q8_0) {
                for (int j = 0; j < 32; j++) s += (int)((const int8_t *)(w + 2))[j] * b->q[j];
            } else if (type == RK_GGML_IQ4_NL) {
                for (int j = 0; j < 16; j++)
                    s += rk__iq4_values[w[2 + j] & 0x0F] * b->q[j] + rk__iq4_values[w[2 + j] >> 4] * b->q[j + 16];
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
            acc += d * b->d * (float)s + m * b->ds;
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
    case RK_GGML_Q2_K: case RK_GGML_Q3_K: {
        // Two scales per activation block (one per 16 elements); Q2_K's minimums multiply the halves' sums.
        size_t bb = rk_quant_block_bytes(type);
        for (int k = 0; k < nb32 / 8; k++, w += bb) {
            const uint8_t *qs = type == RK_GGML_Q2_K ? w + 16 : w + 32;
            float d = half_at(type == RK_GGML_Q2_K ? w + 80 : w + 108), dmin = half_at(w + 82); // dmin: Q2_K only
            for (int sb = 0; sb < 8; sb++) {
                const rk_q8_block *b = x + 8 * k + sb;
                int s[2] = {0, 0};
                for (int l = 0; l < 32; l++) {
                    int q = rk__k_two_bits(qs, 32 * sb + l);
                    if (type == RK_GGML_Q3_K) q -= ((w[l] >> sb) & 1) ? 0 : 4;
                    s[l >> 4] += q * b->q[l];
                }
                if (type == RK_GGML_Q3_K) {
                    acc += d * b->d * ((float)rk__q3_k_scale(w + 96, 2 * sb) * (float)s[0] +
                                       (float)rk__q3_k_scale(w + 96, 2 * sb + 1) * (float)s[1]);
                } else {
                    int s0 = w[2 * sb], s1 = w[2 * sb + 1];
                    acc += d * b->d * (float)((s0 & 0x0F) * s[0] + (s1 & 0x0F) * s[1]) -
                           dmin * b->d * (float)((s0 >> 4) * b->sum16[0] + (s1 >> 4) * b->sum16[1]);
                }
            }
        }
        return acc;
    }
    case RK_GGML_IQ4_XS: {
        for (int k = 0; k < nb32 / 8; k++, w += 136) {
            float d = half_at(w);
            for (int sb = 0; sb < 8; sb++) {
                const rk_q8_block *b = x + 8 * k + sb;
                const uint8_t *qs = w + 8 + 16 * sb;
                int s = 0;
                for (int j = 0; j < 16; j++)
                    s += rk__iq4_values[qs[j] & 0x0F] * b->q[j] + rk__iq4_values[qs[j] >> 4] * b->q[j + 16];
                acc += d * b->d * (float)(rk__iq4_xs_scale(w, sb) * s);
            }
        }
        return acc;
    }
    default: return 0.0f;
    }
}

#if RK_X86
// ---- block dot products, AVX2 and AVX-512 VNNI (Q4_0, Q4_1, Q8_0: the types small models ship in) ---------------
// One activation row: two weight rows at a time (pair_*). Several activation rows (a batch being decoded, a prompt):
// two weight rows against a tile of up to 4 activation rows (tile_*), so that each weight block is unpacked and its
// half-precision scales converted once for the whole tile rather than once per row.
#define RK_AVX2Q __attribute__((target("avx2,fma,f16c")))
#define RK_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

static inline RK_AVX2Q __m256i nibbles32(const uint8_t *qs) {
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F)); // elements 0..15 then 16..31
}
// Q5's fifth bits (bit j of the 32-bit word at p: element j) as 0x10 in byte j, to OR onto nibbles32's bytes.
static inline RK_AVX2Q __m256i fifth_bits32(const uint8_t *p) {
    uint32_t qh;
    memcpy(&qh, p, 4);
    // Byte j takes the word's byte j/8 (the shuffle stays in each 128-bit half, and every half holds the word)...
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh),
                                    _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2,
                                                     2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    // ...and keeps its bit j % 8.
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit), _mm256_set1_epi8(0x10));
}
static inline RK_AVX2Q __m256i fives32(const uint8_t *qh, const uint8_t *qs) {
    return _mm256_or_si256(nibbles32(qs), fifth_bits32(qh));
}
// Bit `bit` of each byte of v moved onto bit `to` (both 0-7, constants after inlining), the byte's other bits clear:
// one 16-bit shift, then a mask per byte. The bits a shift carries across a byte boundary land on bits 0 .. to-bit-1
// (a left shift) or 8-(bit-to) .. 7 (a right shift) of the other byte, never on bit `to`, and the mask drops them.
static inline RK_AVX2Q __m256i bit_moved(__m256i v, int bit, int to) {
    __m256i at = bit < to ? _mm256_slli_epi16(v, to - bit) : bit > to ? _mm256_srli_epi16(v, bit - to) : v;
    return _mm256_and_si256(at, _mm256_set1_epi8((char)(1 << to)));
}
// Bit `bit` of each byte of v as 0x10 (a fifth bit).
static inline RK_AVX2Q __m256i bit_as_16(__m256i v, int bit) { return bit_moved(v, bit, 4); }
// Bytes 0..15 as the IQ4 grid's values (signed).
static inline RK_AVX2Q __m256i iq4_grid(__m256i idx) {
    __m256i grid = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)rk__iq4_values));
    return _mm256_shuffle_epi8(grid, idx);
}
// Bytes 0..15 as the IQ4 grid's values plus 128 (unsigned: 1..241), for vpdpbusd.
static inline RK_AVX2Q __m256i iq4_grid_offset(__m256i idx) {
    return _mm256_xor_si256(iq4_grid(idx), _mm256_set1_epi8((char)0x80));
}
// A step's 32 bytes as their low and their high nibbles, each 32 bytes 0..15.
static inline RK_AVX2Q void nibbles_step(__m256i v, __m256i *lo, __m256i *hi) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    *lo = _mm256_and_si256(v, low4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
}
// A step of 5-bit values 0..31: v's nibbles, bit `bit` of each byte of `fifth` the low nibbles' fifth bit and bit
// `bit` + 1 the high ones'.
static inline RK_AVX2Q void fives_step(__m256i v, __m256i fifth, int bit, __m256i *lo, __m256i *hi) {
    nibbles_step(v, lo, hi);
    *lo = _mm256_or_si256(*lo, bit_as_16(fifth, bit));
    *hi = _mm256_or_si256(*hi, bit_as_16(fifth, bit + 1));
}
static inline RK_AVX2Q float half_f16c(const uint8_t *p) { return _cvtsh_ss((unsigned short)(p[0] | (p[1] << 8))); }

static inline RK_AVX2Q float hsum8(__m256 v) { return rk_hsum256(v); }

// Two weight rows against one activation row, two blocks per step: four independent accumulators (so that no
// multiply-add waits on the one before it), and the eight half-precision scales of a step converted at once. Q4_1's
// nibbles are already unsigned; Q4_0 and Q8_0 move the weight's sign onto the activation so that the multiply is
// unsigned × signed.
#define PAIR_BODY(DOT, TYPE, BB)                                                                                    \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;                                                     \
    __m128 e = _mm_setzero_ps();                                                                                    \
    int k = 0;                                                                                                      \
    for (; k + 1 < nb; k += 2) {                                                                                    \
        const uint8_t *p0 = w0 + BB * k, *p1 = w1 + BB * k;                                                         \
        __m256i x0 = _mm256_loadu_si256((const __m256i *)x[k].q), x1 = _mm256_loadu_si256((const __m256i *)x[k + 1].q); \
        __m256i u00, u01, u10, u11, s00, s01, s10, s11;                                                             \
        UNPACK_##TYPE(p0, x0, u00, s00) UNPACK_##TYPE(p0 + BB, x1, u01, s01)                                        \
        UNPACK_##TYPE(p1, x0, u10, s10) UNPACK_##TYPE(p1 + BB, x1, u11, s11)                                        \
        __m256 f = _mm256_cvtph_ps(_mm_setr_epi16(                                                                  \
            (short)(p0[0] | p0[1] << 8), (short)(p0[2] | p0[3] << 8), (short)(p0[BB] | p0[BB + 1] << 8),             \
            (short)(p0[BB + 2] | p0[BB + 3] << 8), (short)(p1[0] | p1[1] << 8), (short)(p1[2] | p1[3] << 8),         \
            (short)(p1[BB] | p1[BB + 1] << 8), (short)(p1[BB + 2] | p1[BB + 3] << 8)));                             \
        float fs[8];                                                                                                \
        _mm256_storeu_ps(fs, f);                                                                                    \
        __m256 xd0 = _mm256_set1_ps(x[k].d), xd1 = _mm256_set1_ps(x[k + 1].d);                                      \
        a0 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(fs[0]), xd0), _mm256_cvtepi32_ps(DOT(u00, s00)), a0);     \
        b0 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(fs[2]), xd1), _mm256_cvtepi32_ps(DOT(u01, s01)), b0);     \
        a1 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(fs[4]), xd0), _mm256_cvtepi32_ps(DOT(u10, s10)), a1);     \
        b1 = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(fs[6]), xd1), _mm256_cvtepi32_ps(DOT(u11, s11)), b1);     \
        if (TYPE_HAS_MIN_##TYPE)                                                                                    \
            e = _mm_fmadd_ps(_mm_setr_ps(fs[1], fs[3], fs[5], fs[7]),                                               \
                             _mm_setr_ps(x[k].ds, x[k + 1].ds, x[k].ds, x[k + 1].ds), e);                           \
    }                                                                                                               \
    float es[4];                                                                                                    \
    _mm_storeu_ps(es, e);                                                                                           \
    float r0 = hsum8(_mm256_add_ps(a0, b0)) + es[0] + es[1], r1 = hsum8(_mm256_add_ps(a1, b1)) + es[2] + es[3];    \
    for (; k < nb; k++) { /* an odd last block */                                                                   \
        const uint8_t *p0 = w0 + BB * k, *p1 = w1 + BB * k;                                                         \
        __m256i x0 = _mm256_loadu_si256((const __m256i *)x[k].q), u0, s0, u1, s1;                                   \
        UNPACK_##TYPE(p0, x0, u0, s0) UNPACK_##TYPE(p1, x0, u1, s1)                                                 \
        r0 += half_f16c(p0) * x[k].d * hsum8(_mm256_cvtepi32_ps(DOT(u0, s0)));                                      \
        r1 += half_f16c(p1) * x[k].d * hsum8(_mm256_cvtepi32_ps(DOT(u1, s1)));                                      \
        if (TYPE_HAS_MIN_##TYPE) { r0 += half_f16c(p0 + 2) * x[k].ds; r1 += half_f16c(p1 + 2) * x[k].ds; }          \
    }                                                                                                               \
    out[0] = r0;                                                                                                    \
    out[1] = r1;

#define UNPACK_Q4_1(p, x, u, sx) u = nibbles32((p) + 4); sx = x;
#define UNPACK_Q4_0(p, x, u, sx) { __m256i q_ = _mm256_sub_epi8(nibbles32((p) + 2), _mm256_set1_epi8(8)); \
    u = _mm256_sign_epi8(q_, q_); sx = _mm256_sign_epi8(x, q_); }
#define UNPACK_Q8_0(p, x, u, sx) { __m256i q_ = _mm256_loadu_si256((const __m256i *)((p) + 2)); \
    u = _mm256_sign_epi8(q_, q_); sx = _mm256_sign_epi8(x, q_); }
#define UNPACK_IQ4_NL(p, x, u, sx) { __m256i q_ = iq4_grid(nibbles32((p) + 2)); \
    u = _mm256_sign_epi8(q_, q_); sx = _mm256_sign_epi8(x, q_); }
#define UNPACK_Q5_1(p, x, u, sx) u = fives32((p) + 4, (p) + 8); sx = x;
#define UNPACK_Q5_0(p, x, u, sx) { __m256i q_ = _mm256_sub_epi8(fives32((p) + 2, (p) + 6), _mm256_set1_epi8(16)); \
    u = _mm256_sign_epi8(q_, q_); sx = _mm256_sign_epi8(x, q_); }
#define TYPE_HAS_MIN_Q5_1 1
#define TYPE_HAS_MIN_Q5_0 0
#define TYPE_HAS_MIN_Q4_1 1
#define TYPE_HAS_MIN_Q4_0 0
#define TYPE_HAS_MIN_Q8_0 0
#define TYPE_HAS_MIN_IQ4_NL 0
static inline RK_AVX2Q __m256i dot_avx2_i(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
static inline RK_VNNI __m256i dot_vnni_i(__m256i u, __m256i s) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s); }

#define PAIR_FUNCTIONS(SUFFIX, ATTR, DOT)                                                                           \
    static ATTR void pair_q4_1_##SUFFIX(float *out, const uint8_t *w0, const uint8_t *w1, const rk_q8_block *x, int nb) { \
        PAIR_BODY(DOT, Q4_1, 20)                                                                                    \
    }                                                                                                               \
    static ATTR void pair_q4_0_##SUFFIX(float *out, const uint8_t *w0, const uint8_t *w1, const rk_q8_block *x, int nb) { \
        PAIR_BODY(DOT, Q4_0, 18)                                                                                    \
    }                                                                                                               \
    static ATTR void pair_q8_0_##SUFFIX(float *out, const uint8_t *w0, const uint8_t *w1, const rk_q8_block *x, int nb) { \
        PAIR_BODY(DOT, Q8_0, 34)                                                                                    \
    }
PAIR_FUNCTIONS(avx2, RK_AVX2Q, dot_avx2_i)
PAIR_FUNCTIONS(vnni, RK_VNNI, dot_vnni_i)
// Q5_0 and Q5_1 (llama.cpp's fallbacks in Q4_K_M / Q5_K_M files for rows that are not whole super-blocks): AVX2 only.
static RK_AVX2Q void pair_q5_1_avx2(float *out, const uint8_t *w0, const uint8_t *w1, const rk_q8_block *x, int nb) {
    PAIR_BODY(dot_avx2_i, Q5_1, 24)
}
static RK_AVX2Q void pair_q5_0_avx2(float *out, const uint8_t *w0, const uint8_t *w1, const rk_q8_block *x, int nb) {
    PAIR_BODY(dot_avx2_i, Q5_0, 22)
}
// IQ4_NL (the fallback in llama.cpp's Q2_K, Q3_K and IQ4_XS files for rows that are not whole super-blocks): each
// block's indices looked up in the grid (one vpshufb), then as Q8_0. AVX2 only.
static RK_AVX2Q void pair_iq4_nl_avx2(float *out, const uint8_t *w0, const uint8_t *w1, const rk_q8_block *x, int nb) {
    PAIR_BODY(dot_avx2_i, IQ4_NL, 18)
}

// Two weight rows × R activation rows (R ≤ 4, a constant after inlining): 2R float accumulators, one block at a
// time. The weight block's integers are loaded once (LOADQ), each activation row's block once for both weight rows;
// PREP gives the (unsigned, signed) operands of the integer product. A type's per-block constant term is
// min·(d_x·Σq_x) = min·ds: Q4_1's minimum; Q4_0 is taken as unsigned nibbles with the minimum −8·d (Σ(q−8)x =
// Σqx − 8Σx), so that it needs no sign juggling; Q8_0 moves the weight's sign onto the activation.
#define TILE_BODY(DOT, TYPE, BB, R)                                                                                 \
    __m256 c0[R], c1[R];                                                                                            \
    float e0[R], e1[R];                                                                                             \
    for (int r = 0; r < R; r++) { c0[r] = _mm256_setzero_ps(); c1[r] = c0[r]; e0[r] = 0.0f; e1[r] = 0.0f; }         \
    for (int k = 0; k < nb; k++) {                                                                                  \
        const uint8_t *p0 = w0 + BB * k, *p1 = w1 + BB * k;                                                         \
        __m256i q0 = LOADQ_##TYPE(p0), q1 = LOADQ_##TYPE(p1);                                                       \
        __m256 d0 = _mm256_set1_ps(half_f16c(p0)), d1 = _mm256_set1_ps(half_f16c(p1));                              \
        float m0 = MIN_##TYPE(p0), m1 = MIN_##TYPE(p1);                                                             \
        for (int r = 0; r < R; r++) {                                                                               \
            const rk_q8_block *b = x + (size_t)r * ldx + k;                                                         \
            __m256i xr = _mm256_loadu_si256((const __m256i *)b->q), u0, s0, u1, s1;                                  \
            PREP_##TYPE(q0, xr, u0, s0) PREP_##TYPE(q1, xr, u1, s1)                                                 \
            __m256 xd = _mm256_broadcast_ss(&b->d);                                                                 \
            c0[r] = _mm256_fmadd_ps(_mm256_mul_ps(d0, xd), _mm256_cvtepi32_ps(DOT(u0, s0)), c0[r]);                 \
            c1[r] = _mm256_fmadd_ps(_mm256_mul_ps(d1, xd), _mm256_cvtepi32_ps(DOT(u1, s1)), c1[r]);                 \
            e0[r] += m0 * b->ds;                                                                                    \
            e1[r] += m1 * b->ds;                                                                                    \
        }                                                                                                           \
    }                                                                                                               \
    for (int r = 0; r < R; r++) {                                                                                   \
        out[(size_t)r * ldo] = hsum8(c0[r]) + e0[r];                                                                \
        if (two) out[(size_t)r * ldo + 1] = hsum8(c1[r]) + e1[r];                                                   \
    }

#define LOADQ_Q4_1(p) nibbles32((p) + 4)
#define LOADQ_Q4_0(p) nibbles32((p) + 2)
#define LOADQ_Q8_0(p) _mm256_loadu_si256((const __m256i *)((p) + 2))
#define LOADQ_Q5_1(p) fives32((p) + 4, (p) + 8)
#define LOADQ_Q5_0(p) fives32((p) + 2, (p) + 6)
#define MIN_Q5_1(p) half_f16c((p) + 2)
#define MIN_Q5_0(p) (-16.0f * half_f16c(p))
#define PREP_Q5_1(q, x, u, s) u = q; s = x;
#define PREP_Q5_0(q, x, u, s) u = q; s = x;
#define MIN_Q4_1(p) half_f16c((p) + 2)
#define MIN_Q4_0(p) (-8.0f * half_f16c(p))
#define MIN_Q8_0(p) 0.0f
#define PREP_Q4_1(q, x, u, s) u = q; s = x;
#define PREP_Q4_0(q, x, u, s) u = q; s = x;
#define PREP_Q8_0(q, x, u, s) u = _mm256_sign_epi8(q, q); s = _mm256_sign_epi8(x, q);
#define LOADQ_IQ4_NL(p) iq4_grid(nibbles32((p) + 2))
#define MIN_IQ4_NL(p) 0.0f
#define PREP_IQ4_NL(q, x, u, s) PREP_Q8_0(q, x, u, s)

// out[r·ldo + {0, 1}] for activation rows x + r·ldx (r < R) against weight rows w0, w1 (`two` = 0: w1 is w0, and
// only column 0 is written).
#define TILE_FUNCTION(SUFFIX, ATTR, DOT, TYPE, BB, R)                                                               \
    static ATTR void tile_##TYPE##_##R##_##SUFFIX(float *out, size_t ldo, const uint8_t *w0, const uint8_t *w1,       \
                                                  int two, const rk_q8_block *x, size_t ldx, int nb) {              \
        TILE_BODY(DOT, TYPE, BB, R)                                                                                 \
    }
#define TILE_FUNCTIONS(SUFFIX, ATTR, DOT, TYPE, BB)                                                                 \
    TILE_FUNCTION(SUFFIX, ATTR, DOT, TYPE, BB, 2)                                                                   \
    TILE_FUNCTION(SUFFIX, ATTR, DOT, TYPE, BB, 3)                                                                   \
    TILE_FUNCTION(SUFFIX, ATTR, DOT, TYPE, BB, 4)
TILE_FUNCTIONS(avx2, RK_AVX2Q, dot_avx2_i, Q4_1, 20)
TILE_FUNCTIONS(avx2, RK_AVX2Q, dot_avx2_i, Q4_0, 18)
TILE_FUNCTIONS(avx2, RK_AVX2Q, dot_avx2_i, Q8_0, 34)
TILE_FUNCTIONS(avx2, RK_AVX2Q, dot_avx2_i, Q5_1, 24)
TILE_FUNCTIONS(avx2, RK_AVX2Q, dot_avx2_i, Q5_0, 22)
TILE_FUNCTIONS(avx2, RK_AVX2Q, dot_avx2_i, IQ4_NL, 18)
TILE_FUNCTIONS(vnni, RK_VNNI, dot_vnni_i, Q4_1, 20)
TILE_FUNCTIONS(vnni, RK_VNNI, dot_vnni_i, Q4_0, 18)
TILE_FUNCTIONS(vnni, RK_VNNI, dot_vnni_i, Q8_0, 34)

typedef void (*tile_fn)(float *, size_t, const uint8_t *, const uint8_t *, int, const rk_q8_block *, size_t, int);
// The tile functions for 2, 3 and 4 rows (index R − 2).
static void tile_functions(int type, int vnni, tile_fn f[3]) {
#define RK_SET_TILES(TYPE)                                                                                          \
    if (vnni) { f[0] = tile_##TYPE##_2_vnni; f[1] = tile_##TYPE##_3_vnni; f[2] = tile_##TYPE##_4_vnni; }            \
    else { f[0] = tile_##TYPE##_2_avx2; f[1] = tile_##TYPE##_3_avx2; f[2] = tile_##TYPE##_4_avx2; }
    switch (type) {
    case RK_GGML_Q4_1: RK_SET_TILES(Q4_1) break;
    case RK_GGML_Q4_0: RK_SET_TILES(Q4_0) break;
    case RK_GGML_Q5_1: f[0] = tile_Q5_1_2_avx2; f[1] = tile_Q5_1_3_avx2; f[2] = tile_Q5_1_4_avx2; break;
    case RK_GGML_Q5_0: f[0] = tile_Q5_0_2_avx2; f[1] = tile_Q5_0_3_avx2; f[2] = tile_Q5_0_4_avx2; break;
    case RK_GGML_IQ4_NL: f[0] = tile_IQ4_NL_2_avx2; f[1] = tile_IQ4_NL_3_avx2; f[2] = tile_IQ4_NL_4_avx2; break;
    default: RK_SET_TILES(Q8_0) break;
    }
#undef RK_SET_TILES
}

typedef void (*pair_fn)(float *, const uint8_t *, const uint8_t *, const rk_q8_block *, int);
static pair_fn pair_function(int type, int vnni) {
    switch (type) {
    case RK_GGML_Q4_1: return vnni ? pair_q4_1_vnni : pair_q4_1_avx2;
    case RK_GGML_Q4_0: return vnni ? pair_q4_0_vnni : pair_q4_0_avx2;
    case RK_GGML_Q8_0: return vnni ? pair_q8_0_vnni : pair_q8_0_avx2;
    case RK_GGML_Q5_1: return pair_q5_1_avx2;
    case RK_GGML_Q5_0: return pair_q5_0_avx2;
    case RK_GGML_IQ4_NL: return pair_iq4_nl_avx2;
    default: return NULL;
    }
}
// ---- super-blocks of 256 (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS), AVX2 ----------------------------------------------
// A super-block of 256 values is eight sub-blocks of 32, one per activation block. Each sub-block is unpacked once per
// tile to 32 unsigned bytes (Q2_K 0..3, Q4_K 0..15, Q5_K 0..31, Q6_K 0..63; Q3_K's and IQ4_XS's signed values as their
// magnitudes, the signs put on the activations); its product with an activation row's block is scaled in integers by
// the sub-block's scale (vpmaddwd against the scale instead of ones: at most 2·127·127·32 for IQ4_XS, well inside 32
// bits; the types with a scale per 16 values — Q2_K, Q3_K, Q6_K — have the two in the two 128-bit halves, as
// vpmaddubsw keeps each half's pairs in its half), converted once and multiplied by d·d_x. The constant terms: Q4_K's
// and Q5_K's minimum, −dmin·m·d_x·Σq_x, and Q6_K's offset of 32, −32·d·d_x·(s₀·Σ₀q_x + s₁·Σ₁q_x) over the two halves,
// are scalar per sub-block (K_CONST); Q2_K's minimums are taken per super-block (K_SUPER, below).
#define K_BB_Q4_K 144
#define K_BB_Q5_K 176
#define K_BB_Q6_K 210
#define K_UNPACK_Q4_K(w)                                                                                            \
    for (int j = 0; j < 4; j++) {                                                                                   \
        __m256i v = _mm256_loadu_si256((const __m256i *)((w) + 16 + 32 * j));                                       \
        nibbles_step(v, &u[2 * j], &u[2 * j + 1]);                                                                  \
    }                                                                                                               \
    K_SCALES_MINS(w)
#define K_UNPACK_Q5_K(w)                                                                                            \
    {                                                                                                               \
        __m256i hb = _mm256_loadu_si256((const __m256i *)((w) + 16));                                               \
        for (int j = 0; j < 4; j++) {                                                                               \
            __m256i v = _mm256_loadu_si256((const __m256i *)((w) + 48 + 32 * j));                                   \
            fives_step(v, hb, 2 * j, &u[2 * j], &u[2 * j + 1]);                                                     \
        }                                                                                                           \
    }                                                                                                               \
    K_SCALES_MINS(w)
#define K_SCALES_MINS(w)                                                                                            \
    d = half_f16c(w);                                                                                               \
    {                                                                                                               \
        float dmin = half_f16c((w) + 2);                                                                            \
        for (int sb = 0; sb < 8; sb++) {                                                                            \
            int scale, mn;                                                                                          \
            k_scale_min((w) + 4, sb, &scale, &mn);                                                                  \
            sc[sb] = _mm256_set1_epi16((short)scale);                                                               \
            c[sb] = -dmin * (float)mn;                                                                              \
        }                                                                                                           \
    }
#define K_UNPACK_Q6_K(w)                                                                                            \
    d = half_f16c((w) + 208);                                                                                       \
    for (int h = 0; h < 2; h++) {                                                                                   \
        const uint8_t *ql = (w) + 64 * h;                                                                           \
        __m256i l0 = _mm256_loadu_si256((const __m256i *)ql), l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));   \
        __m256i hb = _mm256_loadu_si256((const __m256i *)((w) + 128 + 32 * h)), three = _mm256_set1_epi8(3);         \
        const __m256i low4 = _mm256_set1_epi8(0x0F);                                                                \
        for (int j = 0; j < 4; j++) {                                                                               \
            __m256i lo = _mm256_and_si256(j < 2 ? (j == 0 ? l0 : l1) : _mm256_srli_epi16(j == 2 ? l0 : l1, 4), low4); \
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * j), three);                                     \
            u[4 * h + j] = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));                                           \
        }                                                                                                           \
    }                                                                                                               \
    for (int sb = 0; sb < 8; sb++) {                                                                                \
        const int8_t *s6 = (const int8_t *)((w) + 192) + 2 * sb;                                                   \
        sc[sb] = _mm256_set_m128i(_mm_set1_epi16(s6[1]), _mm_set1_epi16(s6[0]));                                    \
        klo[sb] = s6[0];                                                                                            \
        khi[sb] = s6[1];                                                                                            \
    }
#define K_CONST_Q4_K(sb, b) c[sb] * (b)->ds
#define K_CONST_Q5_K(sb, b) c[sb] * (b)->ds
#define K_CONST_Q6_K(sb, b) -32.0f * d * (b)->d * (float)(klo[sb] * (b)->sum16[0] + khi[sb] * (b)->sum16[1])
// Q2_K, Q3_K and IQ4_XS: the sub-blocks' scales, decoded with vector operations (one scalar decode per scale cost
// more than the products of a row). k_scales16 turns 16 signed 8-bit scales, one per 16 values, into each sub-block's
// vpmaddwd operand: scale 2·sb on the low 128 bits, 2·sb + 1 on the high (vpmaddubsw keeps each half's pairs in its
// half). The 32-bit word sb of the widened scales holds the pair; a permute puts it in every word, a shuffle spreads
// its two halves over the two 128-bit halves.
static inline RK_AVX2Q void k_scales16(__m128i s8, __m256i out[8]) {
    __m256i s16 = _mm256_cvtepi8_epi16(s8);
    const __m256i pick = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                          2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    for (int sb = 0; sb < 8; sb++)
        out[sb] = _mm256_shuffle_epi8(_mm256_permutevar8x32_epi32(s16, _mm256_set1_epi32(sb)), pick);
}
// Q3_K's 16 scales from its 12 packed bytes (the layout of rk__q3_k_scale), four at a time in 32-bit words: scales
// 4i..4i+3 take their low nibbles from the low (i < 2) or high (i >= 2) nibbles of word i % 2, and their top two bits
// from bit pair i of each byte of word 2.
static inline RK_AVX2Q __m128i q3_k_scales(const uint8_t *s) {
    uint32_t a0, a1, t;
    memcpy(&a0, s, 4);
    memcpy(&a1, s + 4, 4);
    memcpy(&t, s + 8, 4);
    const uint32_t low4 = 0x0F0F0F0Fu, low2 = 0x03030303u;
    __m128i v = _mm_setr_epi32((int)((a0 & low4) | ((t & low2) << 4)), (int)((a1 & low4) | (((t >> 2) & low2) << 4)),
                               (int)(((a0 >> 4) & low4) | (((t >> 4) & low2) << 4)),
                               (int)(((a1 >> 4) & low4) | (((t >> 6) & low2) << 4)));
    return _mm_sub_epi8(v, _mm_set1_epi8(32));
}
// Q2_K and Q3_K: element 128h + 32s + l in bits 2s, 2s + 1 of byte 32h + l, so sub-block 4h + s is one shift of half
// h's 32 bytes. Q3_K's values q (-4..3: the low bits, with 4 taken off where the high bit is clear) are signed, so, as
// IQ4_XS's below, the weight is kept as its magnitude and each activation row takes its signs (K_PREP). Q2_K's values
// are 0..3 with a minimum per 16 elements, −dmin·m·d_x·Σq_x over each half: once per activation row and super-block
// (K_SUPER) for its 8 blocks at once, their halves' sums and scales gathered from the 8 activation blocks.
#define K_BB_Q2_K 84
#define K_BB_Q3_K 110
#define K_BB_IQ4_XS 136
#define K_LOW_BITS(q2, sb) _mm256_and_si256(_mm256_srli_epi16((q2)[(sb) >> 2], 2 * ((sb) & 3)), _mm256_set1_epi8(3))
#define K_UNPACK_Q2_K(w)                                                                                            \
    d = half_f16c((w) + 80);                                                                                        \
    {                                                                                                               \
        float dmin = half_f16c((w) + 82);                                                                           \
        __m256i q2[2] = {_mm256_loadu_si256((const __m256i *)((w) + 16)),                                           \
                         _mm256_loadu_si256((const __m256i *)((w) + 48))};                                          \
        for (int sb = 0; sb < 8; sb++) u[sb] = K_LOW_BITS(q2, sb);                                                  \
        __m128i s8 = _mm_loadu_si128((const __m128i *)(w));                                                         \
        k_scales16(_mm_and_si128(s8, _mm_set1_epi8(0x0F)), sc);                                                     \
        kmin = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), _mm_set1_epi8(0x0F)));                     \
        kneg = _mm256_set1_ps(-dmin);                                                                               \
    }
#define K_CONST_Q2_K(sb, b) 0.0f
// Word sb of kmin holds the minimums of sub-block sb's halves, the 16-bit pair m₀, m₁ that vpmaddwd multiplies with
// its block's Σ₀q_x, Σ₁q_x (sum16, one 32-bit word in rk_q8_block).
#define K_SUPER_Q2_K(r, xb)                                                                                         \
    {                                                                                                               \
        const int bs = (int)sizeof(rk_q8_block);                                                                    \
        const __m256i at = _mm256_setr_epi32(0, bs, 2 * bs, 3 * bs, 4 * bs, 5 * bs, 6 * bs, 7 * bs);                \
        __m256i sums = _mm256_i32gather_epi32((const int *)(const void *)(xb)->sum16, at, 1);                       \
        __m256 dx = _mm256_i32gather_ps(&(xb)->d, at, 1);                                                           \
        __m256 m = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(sums, kmin)), dx);                            \
        acc[r][0] = _mm256_fmadd_ps(m, kneg, acc[r][0]);                                                            \
    }
#define K_SUPER_Q3_K(r, xb) {}
#define K_SUPER_Q4_K(r, xb) {}
#define K_SUPER_Q5_K(r, xb) {}
#define K_SUPER_Q6_K(r, xb) {}
#define K_SUPER_IQ4_XS(r, xb) {}
#define K_UNPACK_Q3_K(w)                                                                                            \
    d = half_f16c((w) + 108);                                                                                       \
    {                                                                                                               \
        __m256i q2[2] = {_mm256_loadu_si256((const __m256i *)((w) + 32)),                                           \
                         _mm256_loadu_si256((const __m256i *)((w) + 64))};                                          \
        __m256i hm = _mm256_loadu_si256((const __m256i *)(w));                                                      \
        for (int sb = 0; sb < 8; sb++) {                                                                            \
            __m256i q = _mm256_or_si256(K_LOW_BITS(q2, sb), bit_moved(hm, sb, 2)); /* q + 4 */                      \
            sg[sb] = _mm256_sub_epi8(q, _mm256_set1_epi8(4));                                                       \
            u[sb] = _mm256_sign_epi8(sg[sb], sg[sb]);                                                               \
        }                                                                                                           \
        k_scales16(q3_k_scales((w) + 96), sc);                                                                      \
    }
#define K_CONST_Q3_K(sb, b) 0.0f
// IQ4_XS: each sub-block of 32 is IQ4_NL's 16 bytes with a 6-bit scale (offset 32), the same for its two halves.
#define K_UNPACK_IQ4_XS(w)                                                                                          \
    d = half_f16c(w);                                                                                               \
    {                                                                                                               \
        int8_t ls[8];                                                                                               \
        for (int sb = 0; sb < 8; sb++) {                                                                            \
            sg[sb] = iq4_grid(nibbles32((w) + 8 + 16 * sb));                                                        \
            u[sb] = _mm256_sign_epi8(sg[sb], sg[sb]);                                                               \
            ls[sb] = (int8_t)rk__iq4_xs_scale(w, sb);                                                               \
        }                                                                                                           \
        __m128i l8 = _mm_loadl_epi64((const __m128i *)ls);                                                          \
        k_scales16(_mm_unpacklo_epi8(l8, l8), sc);                                                                  \
    }
#define K_CONST_IQ4_XS(sb, b) 0.0f
// What each type's unpacking keeps besides the values (u), their scales (sc) and d: Q4_K's and Q5_K's minimum terms
// (c), Q6_K's two scales per sub-block (klo, khi), Q2_K's minimums (kmin, kneg), Q3_K's and IQ4_XS's signed values.
#define K_STATE_Q4_K float c[8];
#define K_STATE_Q5_K float c[8];
#define K_STATE_Q6_K int klo[8], khi[8];
#define K_STATE_Q2_K __m256i kmin; __m256 kneg;
#define K_STATE_Q3_K __m256i sg[8];
#define K_STATE_IQ4_XS __m256i sg[8];
#define K_PREP_IQ4_XS(sb, q) _mm256_sign_epi8(q, sg[sb])
#define K_PREP_Q2_K(sb, q) q
#define K_PREP_Q3_K(sb, q) _mm256_sign_epi8(q, sg[sb])
#define K_PREP_Q4_K(sb, q) q
#define K_PREP_Q5_K(sb, q) q
#define K_PREP_Q6_K(sb, q) q

// One weight row against R activation rows (R ≤ 4), out[r·ldo]; nsb super-blocks.
#define K_TILE_FUNCTION(TYPE, R)                                                                                    \
    static RK_AVX2Q void ktile_##TYPE##_##R(float *out, size_t ldo, const uint8_t *w, const rk_q8_block *x,         \
                                            size_t ldx, int nsb) {                                                  \
        __m256 acc[R][2];                                                                                           \
        float e[R];                                                                                                 \
        for (int r = 0; r < R; r++) { acc[r][0] = acc[r][1] = _mm256_setzero_ps(); e[r] = 0.0f; }                  \
        for (int k = 0; k < nsb; k++, w += K_BB_##TYPE) {                                                           \
            __m256i u[8], sc[8];                                                                                    \
            float d;                                                                                                \
            K_STATE_##TYPE                                                                                          \
            K_UNPACK_##TYPE(w)                                                                                      \
            for (int sb = 0; sb < 8; sb++)                                                                          \
                for (int r = 0; r < R; r++) {                                                                       \
                    const rk_q8_block *b = x + (size_t)r * ldx + 8 * k + sb;                                        \
                    __m256i q = K_PREP_##TYPE(sb, _mm256_loadu_si256((const __m256i *)b->q));                       \
                    __m256i i = _mm256_madd_epi16(_mm256_maddubs_epi16(u[sb], q), sc[sb]);                          \
                    acc[r][sb & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(d * b->d), acc[r][sb & 1]); \
                    e[r] += K_CONST_##TYPE(sb, b);                                                                  \
                }                                                                                                   \
            for (int r = 0; r < R; r++) K_SUPER_##TYPE(r, x + (size_t)r * ldx + 8 * k)                              \
        }                                                                                                           \
        for (int r = 0; r < R; r++) out[(size_t)r * ldo] = hsum8(_mm256_add_ps(acc[r][0], acc[r][1])) + e[r];      \
    }
#define K_TILE_FUNCTIONS(TYPE)                                                                                      \
    K_TILE_FUNCTION(TYPE, 1) K_TILE_FUNCTION(TYPE, 2) K_TILE_FUNCTION(TYPE, 3) K_TILE_FUNCTION(TYPE, 4)
K_TILE_FUNCTIONS(Q4_K)
K_TILE_FUNCTIONS(Q5_K)
K_TILE_FUNCTIONS(Q6_K)
K_TILE_FUNCTIONS(Q2_K)
K_TILE_FUNCTIONS(Q3_K)
K_TILE_FUNCTIONS(IQ4_XS)

typedef void (*ktile_fn)(float *, size_t, const uint8_t *, const rk_q8_block *, size_t, int);
// The K-quant tile functions for 1-4 rows (index R − 1); 0 for other types.
static int ktile_functions(int type, ktile_fn f[4]) {
#define RK_SET_KTILES(TYPE) { f[0] = ktile_##TYPE##_1; f[1] = ktile_##TYPE##_2; f[2] = ktile_##TYPE##_3; f[3] = ktile_##TYPE##_4; }
    switch (type) {
    case RK_GGML_Q4_K: RK_SET_KTILES(Q4_K) return 1;
    case RK_GGML_Q5_K: RK_SET_KTILES(Q5_K) return 1;
    case RK_GGML_Q6_K: RK_SET_KTILES(Q6_K) return 1;
    case RK_GGML_Q2_K: RK_SET_KTILES(Q2_K) return 1;
    case RK_GGML_Q3_K: RK_SET_KTILES(Q3_K) return 1;
    case RK_GGML_IQ4_XS: RK_SET_KTILES(IQ4_XS) return 1;
    default: return 0;
    }
#undef RK_SET_KTILES
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
#if RK_X86
    size_t row_bytes = (size_t)C / rk_quant_block_elements(type) * rk_quant_block_bytes(type);
    int nb = C / 32;
    int isa = rk_isa_active(), vnni = isa >= RK_ISA_AVX512 && rk_cpu_has_vnni();
    pair_fn pair = isa >= RK_ISA_AVX2 ? pair_function(type, vnni) : NULL; // NULL: not a 32-value block type
    if (pair) {
        tile_fn tile[3];
        tile_functions(type, vnni, tile);
        // Weight rows in pairs (an odd last row is paired with itself); each pair against every activation row while
        // its two weight rows are in L1: four activation rows at a time, then the 1-3 left.
        for (int o = row_begin; o < row_end; o += 2) {
            int o1 = o + 1 < row_end ? o + 1 : o;
            const uint8_t *w0 = (const uint8_t *)w + o * row_bytes, *w1 = (const uint8_t *)w + o1 * row_bytes;
            int n = 0;
            for (; n + 1 < N; n += 4) {
                int R = N - n < 4 ? N - n : 4;
                tile[R - 2](out + RK_IDX(n, o, OC), (size_t)OC, w0, w1, o1 != o, xq + RK_IDX(n, 0, nb), (size_t)nb, nb);
            }
            if (n < N) {
                float two[2];
                pair(two, w0, w1, xq + RK_IDX(n, 0, nb), nb);
                out[RK_IDX(n, o, OC)] = two[0];
                if (o1 != o) out[RK_IDX(n, o1, OC)] = two[1];
            }
        }
        return RK_OK;
    }
    ktile_fn ktile[4];
    if (isa >= RK_ISA_AVX2 && ktile_functions(type, ktile)) {
        // A weight row (a few super-blocks) against every activation row while it is in L1, four rows at a time.
        for (int o = row_begin; o < row_end; o++)
            for (int n = 0; n < N; n += 4) {
                int R = N - n < 4 ? N - n : 4;
                ktile[R - 1](out + RK_IDX(n, o, OC), (size_t)OC, (const uint8_t *)w + o * row_bytes,
                             xq + RK_IDX(n, 0, nb), (size_t)nb, nb / 8);
            }
        return RK_OK;
    }
#endif
    return rk_qmatmul_q8_ref(out, xq, w, type, N, C, OC, row_begin, row_end);
}

// ---- the exact route for a few rows: float32 products with each weight block dequantized on the fly -------------
// out (N,OC) columns [row_begin, row_end) = x (N,C) · Wᵀ with W's blocks dequantized exactly as rk_dequantize does
// (the same values the float route's panels hold), one block at a time into a buffer the size of a block, so
// decoding with exact products reads each weight once per token and holds no panel.
int rk_qmatvec_f32(float *out, const float *x, const void *w, int type, int N, int C, int OC, int row_begin,
                   int row_end) {
    size_t be = rk_quant_block_elements(type), bb = rk_quant_block_bytes(type);
    if (be == 0 || C % (int)be != 0 || N > 8) return RK_ERR_ARG;
    size_t row_bytes = (size_t)C / be * bb;
    float block[256], acc[8];
    for (int o = row_begin; o < row_end; o++) {
        const uint8_t *wo = (const uint8_t *)w + (size_t)o * row_bytes;
        for (int n = 0; n < N; n++) acc[n] = 0.0f;
        for (size_t k = 0; k < (size_t)C / be; k++) {
            rk_dequantize(block, wo + k * bb, be, type);
            for (int n = 0; n < N; n++) {
                const float *xn = x + RK_IDX(n, k * be, C);
                float s = 0.0f;
                for (size_t j = 0; j < be; j++) s += block[j] * xn[j];
                acc[n] += s;
            }
        }
        for (int n = 0; n < N; n++) out[RK_IDX(n, o, OC)] = acc[n];
    }
    return RK_OK;
}

// ---- weights interleaved by 8 rows: the kernel for batches --------------------------------------------------------
// For a batch (several activation rows) the block-at-a-time kernel above spends most of its instructions per block
// and per row on float work: converting a block's integer dot to float, scaling and accumulating it, for every weight
// row. With 8 weight rows interleaved, one 256-bit integer accumulator holds the dot products of 8 weight rows (one
// per 32-bit lane): each dpbusd multiplies 4 consecutive elements of each of the 8 rows with the same 4 activation
// bytes (broadcast), and the float work (one conversion, one scale, one multiply-add) is shared by the 8 rows.
//
// Layout: rows 8g..8g+7, block k, at ((g·nb + k) · 8 · block_bytes): the 8 half-precision scales d (16 bytes); for
// Q4_1 the 8 minimums m (16 bytes); then the quants, 32 bytes per step t, byte 4i + j of step t = byte 4t + j of row
// i's quants (Q4: 4 steps, the low nibbles elements 4t..4t+3 and the high nibbles 16+4t..16+4t+3; Q8_0: 8 steps,
// elements 4t..4t+3). Q5_0 and Q5_1: after the scales, the 8 rows' fifth bits (4 bytes a row, 32 in all, laid out
// as the steps' bytes: bit 2t of row i's byte j is the fifth bit of element 4t + j, bit 2t + 1 that of 16 + 4t + j),
// then the nibbles as Q4's. Q4_K, Q5_K and Q6_K (blocks of 256): the 8 rows' d (16 bytes; Q4_K and Q5_K then dmin,
// 16 bytes), their scales (12 bytes a row for Q4_K and Q5_K, 16 for Q6_K) transposed: byte s of row i at 8s + i,
// so that one 8-byte load holds a scale byte of all 8 rows; then 32-byte steps of 4 bytes a row: Q5_K's fifth
// bits (32 bytes a row: byte j of step t holds bit s for sub-block s's element 4t + j); Q4_K's and Q5_K's quants for
// each pair of sub-blocks (byte j of a row's step t: sub-block 2p's element 4t + j in the low nibble, 2p + 1's in the
// high); Q6_K's low nibbles (ql, 128 bytes a row) and then its two high bits (qh, 64 bytes a row). IQ4_XS (256): the
// 8 rows' d (16 bytes), their 6 scale bytes (scales_h, scales_l) transposed as Q4_K's, then each sub-block's 16
// bytes a row as IQ4_NL's four steps (32 steps in all). Q2_K: the 8 rows' d, dmin (16 bytes each), their 16 scale
// bytes transposed, then 16 steps of the 2-bit values (4 bytes a row: step 8h + t holds byte 32h + 4t + j of a row).
// Q3_K: d, the 12 scale bytes transposed, 8 steps of the high bits' mask, 16 steps of the low two bits, as Q2_K's.
// The same bytes as the row-major blocks, reordered (Q5_0's and Q5_1's fifth bits also within each row's 4 bytes).
static int pack8_type(int type) {
    return type == RK_GGML_Q4_0 || type == RK_GGML_Q4_1 || type == RK_GGML_Q5_0 || type == RK_GGML_Q5_1 ||
           type == RK_GGML_Q8_0 || type == RK_GGML_Q4_K || type == RK_GGML_Q5_K || type == RK_GGML_Q6_K ||
           type == RK_GGML_IQ4_NL || type == RK_GGML_IQ4_XS || type == RK_GGML_Q2_K || type == RK_GGML_Q3_K;
}
// A type's block parts: half-precision scales (1 or 2), bytes of fifth bits (0 or 4) and 32-byte quant steps.
static void pack8_parts(int type, int *scales, int *high, int *steps) {
    *scales = type == RK_GGML_Q4_1 || type == RK_GGML_Q5_1 ? 2 : 1;
    *high = type == RK_GGML_Q5_0 || type == RK_GGML_Q5_1 ? 4 : 0;
    *steps = type == RK_GGML_Q8_0 ? 8 : 4;
}

size_t rk_qpack8_bytes(int type, int OC, int C) {
    int be = (int)rk_quant_block_elements(type);
    if (!pack8_type(type) || OC <= 0 || C <= 0 || OC % 8 != 0 || C % be != 0) return 0;
    return (size_t)OC * (size_t)(C / be) * rk_quant_block_bytes(type);
}

// A Q5_0 / Q5_1 row's 32-bit word of fifth bits (bit e: element e) to its 4 interleaved bytes (bit 2t + h of byte j:
// element 16h + 4t + j), or back (unpack).
static void move_fifth_bits(uint8_t *p, uint8_t *b, int unpack) {
    uint32_t word = 0;
    uint8_t bytes[4] = {0, 0, 0, 0};
    if (unpack) memcpy(bytes, p, 4); else memcpy(&word, b, 4);
    for (int j = 0; j < 4; j++)
        for (int bit = 0; bit < 8; bit++) {
            int e = 16 * (bit & 1) + 4 * (bit >> 1) + j;
            if (unpack) word |= (uint32_t)((bytes[j] >> bit) & 1) << e;
            else bytes[j] |= (uint8_t)(((word >> e) & 1) << bit);
        }
    if (unpack) memcpy(b, &word, 4); else memcpy(p, bytes, 4);
}

// Row i's block b (row-major bytes) into, or (unpack) out of, the interleaved group block p.
static void pack8_block(uint8_t *p, uint8_t *b, int type, int i, int unpack) {
#define RK_MOVE(at_p, at_b, n) (unpack ? memcpy((at_b), (at_p), (n)) : memcpy((at_p), (at_b), (n)))
    if (type == RK_GGML_Q4_K || type == RK_GGML_Q5_K) {
        int high = type == RK_GGML_Q5_K ? 256 : 0; // Q5_K's fifth bits: 8 steps before the quants
        RK_MOVE(p + 2 * i, b, 2);
        RK_MOVE(p + 16 + 2 * i, b + 2, 2);
        for (int s = 0; s < 12; s++) RK_MOVE(p + 32 + 8 * s + i, b + 4 + s, 1); // the scales' bytes transposed
        for (int t = 0; t < high / 32; t++) RK_MOVE(p + 128 + 32 * t + 4 * i, b + 16 + 4 * t, 4);
        for (int j = 0; j < 4; j++)
            for (int t = 0; t < 8; t++)
                RK_MOVE(p + 128 + high + 256 * j + 32 * t + 4 * i, b + 16 + high / 8 + 32 * j + 4 * t, 4);
    } else if (type == RK_GGML_Q2_K) {
        RK_MOVE(p + 2 * i, b + 80, 2);
        RK_MOVE(p + 16 + 2 * i, b + 82, 2);
        for (int s = 0; s < 16; s++) RK_MOVE(p + 32 + 8 * s + i, b + s, 1);
        for (int t = 0; t < 16; t++) RK_MOVE(p + 160 + 32 * t + 4 * i, b + 16 + 4 * t, 4);
    } else if (type == RK_GGML_Q3_K) {
        RK_MOVE(p + 2 * i, b + 108, 2);
        for (int s = 0; s < 12; s++) RK_MOVE(p + 16 + 8 * s + i, b + 96 + s, 1);
        for (int t = 0; t < 8; t++) RK_MOVE(p + 112 + 32 * t + 4 * i, b + 4 * t, 4);    // the high bits' mask
        for (int t = 0; t < 16; t++) RK_MOVE(p + 368 + 32 * t + 4 * i, b + 32 + 4 * t, 4); // the low two bits
    } else if (type == RK_GGML_IQ4_XS) {
        RK_MOVE(p + 2 * i, b, 2);
        for (int s = 0; s < 6; s++) RK_MOVE(p + 16 + 8 * s + i, b + 2 + s, 1);
        for (int t = 0; t < 32; t++) RK_MOVE(p + 64 + 32 * t + 4 * i, b + 8 + 4 * t, 4);
    } else if (type == RK_GGML_Q6_K) {
        RK_MOVE(p + 2 * i, b + 208, 2);
        for (int s = 0; s < 16; s++) RK_MOVE(p + 16 + 8 * s + i, b + 192 + s, 1);
        for (int t = 0; t < 48; t++) RK_MOVE(p + 144 + 32 * t + 4 * i, b + 4 * t, 4); // ql, then qh
    } else {
        int scales, high, steps;
        pack8_parts(type, &scales, &high, &steps);
        for (int s = 0; s < scales; s++) RK_MOVE(p + 16 * s + 2 * i, b + 2 * s, 2);
        if (high) move_fifth_bits(p + 16 * scales + 4 * i, b + 2 * scales, unpack);
        for (int t = 0; t < steps; t++)
            RK_MOVE(p + 16 * scales + 8 * high + 32 * t + 4 * i, b + 2 * scales + high + 4 * t, 4);
    }
#undef RK_MOVE
}

int rk_qpack8(void *dst, const void *w, int type, int OC, int C) {
    if (rk_qpack8_bytes(type, OC, C) == 0) return RK_ERR_ARG;
    size_t bb = rk_quant_block_bytes(type);
    int nb = C / (int)rk_quant_block_elements(type);
    size_t row_bytes = (size_t)nb * bb;
    for (int g = 0; g < OC / 8; g++)
        for (int k = 0; k < nb; k++)
            for (int i = 0; i < 8; i++)
                pack8_block((uint8_t *)dst + ((size_t)g * nb + k) * 8 * bb,
                            (uint8_t *)w + (size_t)(8 * g + i) * row_bytes + (size_t)k * bb, type, i, 0);
    return RK_OK;
}

// Row i's block (row-major bytes) out of an interleaved group block p.
static void unpack8_block(uint8_t *b, const uint8_t *p, int type, int i) { pack8_block((uint8_t *)p, b, type, i, 1); }

int rk_qunpack8_rows(void *dst, const void *wp, int type, int OC, int C, int row_begin, int row_end) {
    if (rk_qpack8_bytes(type, OC, C) == 0 || row_begin < 0 || row_end > OC || row_begin > row_end) return RK_ERR_ARG;
    size_t bb = rk_quant_block_bytes(type);
    int nb = C / (int)rk_quant_block_elements(type);
    size_t row_bytes = (size_t)nb * bb;
    for (int o = row_begin; o < row_end; o++)
        for (int k = 0; k < nb; k++)
            unpack8_block((uint8_t *)dst + (size_t)(o - row_begin) * row_bytes + (size_t)k * bb,
                          (const uint8_t *)wp + ((size_t)(o / 8) * nb + k) * 8 * bb, type, o % 8);
    return RK_OK;
}

int rk_dequantize_packed8_rows(float *out, const void *wp, int type, int OC, int C, int row_begin, int row_end) {
    if (rk_qpack8_bytes(type, OC, C) == 0 || row_begin < 0 || row_end > OC || row_begin > row_end) return RK_ERR_ARG;
    // A row at a time through a stack buffer of 64 blocks of 32 values, or 10 of 256 (the row-major bytes), then
    // rk_dequantize.
    uint8_t tmp[64 * 34];
    size_t bb = rk_quant_block_bytes(type), be = rk_quant_block_elements(type);
    int nb = C / (int)be, chunk = (int)(sizeof tmp / bb);
    for (int o = row_begin; o < row_end; o++) {
        for (int k0 = 0; k0 < nb; k0 += chunk) {
            int n = nb - k0 < chunk ? nb - k0 : chunk;
            for (int k = 0; k < n; k++)
                unpack8_block(tmp + (size_t)k * bb, (const uint8_t *)wp + ((size_t)(o / 8) * nb + k0 + k) * 8 * bb, type, o % 8);
            rk_dequantize(out + (size_t)(o - row_begin) * C + be * (size_t)k0, tmp, (size_t)n * be, type);
        }
    }
    return RK_OK;
}

static int packed_scalar(float *out, const rk_q8_block *xq, const uint8_t *wp, int type, int N, int C, int OC,
                         int group_begin, int group_end) {
    // Undo the interleaving of one group's block into 8 row-major blocks, then the scalar row product.
    size_t bb = rk_quant_block_bytes(type);
    int per = (int)rk_quant_block_elements(type) / 32, nb = C / 32 / per; // activation blocks per weight block
    uint8_t block[256];
    for (int g = group_begin; g < group_end; g++)
        for (int n = 0; n < N; n++)
            for (int i = 0; i < 8; i++) {
                float acc = 0.0f;
                for (int k = 0; k < nb; k++) {
                    unpack8_block(block, wp + ((size_t)g * nb + k) * 8 * bb, type, i);
                    acc += row_dot_scalar(block, xq + RK_IDX(n, k * per, C / 32), per, type);
                }
                out[RK_IDX(n, 8 * g + i, OC)] = acc;
            }
    return RK_OK;
}

#if RK_X86
static inline RK_AVX2Q __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
static inline RK_AVX2Q __m256i dotacc_avx2(__m256i acc, __m256i u, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
static inline RK_VNNI __m256i dotacc_vnni(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }

// The same block of the next group of 8 weight rows, asked for while this one is computed: a group is a few KB and
// the rows' products take long enough per block that the hardware prefetcher alone leaves the kernel waiting on memory.
// (Past the last group it is a hint to an address outside the weights, never a fault; computed as an integer so that
// the C pointer stays in bounds.)
#define PREFETCH_NEXT_GROUP(p, nb, GB)                                                                              \
    for (int line = 0; line < (GB); line += 64)                                                                 \
        _mm_prefetch((const char *)((uintptr_t)(p) + (size_t)(nb) * (GB) + line), _MM_HINT_T0);
// One group of 8 weight rows against R activation rows (R ≤ 4 after inlining), out[r·ldo + 0..7].
// Q4_0's offset of 8 is taken off in integers (8·Σq_x per block, exact); Q4_1's minimum is a float term m·ds, as in
// the row-major kernels; Q8_0 moves the weight's sign onto the activation.
#define PACK8_BODY(DOTACC, TYPE, R)                                                                                 \
    enum { NA = R == 1 ? 4 : 2 };                                                                                   \
    __m256 acc[R];                                                                                                  \
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();                                                       \
    for (int k = 0; k < nb; k++, p += GB_##TYPE) {                                                                  \
        /* NA independent integer sums per row (a dpbusd waits ~5 cycles for the one before it on the same sum). */ \
        __m256i ia[R][NA];                                                                                          \
        for (int r = 0; r < R; r++)                                                                                 \
            for (int a = 0; a < NA; a++) ia[r][a] = _mm256_setzero_si256();                                         \
        PREFETCH_NEXT_GROUP(p, nb, GB_##TYPE)                                                                       \
        STEPS_##TYPE(DOTACC, R)                                                                                     \
        __m256i is[R];                                                                                              \
        for (int r = 0; r < R; r++) {                                                                               \
            is[r] = _mm256_add_epi32(ia[r][0], ia[r][1]);                                                           \
            if (NA == 4) is[r] = _mm256_add_epi32(is[r], _mm256_add_epi32(ia[r][NA - 2], ia[r][NA - 1]));           \
        }                                                                                                           \
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));                                           \
        for (int r = 0; r < R; r++) {                                                                               \
            const rk_q8_block *b = x + (size_t)r * ldx + k;                                                         \
            FIX_##TYPE(is[r], b)                                                                                    \
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is[r]), _mm256_mul_ps(dw, _mm256_broadcast_ss(&b->d)), acc[r]); \
            MIN_TERM_##TYPE(acc[r], p, b)                                                                           \
        }                                                                                                           \
    }                                                                                                               \
    for (int r = 0; r < R; r++) _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);

#define GB_Q4_1 160
#define GB_Q4_0 144
#define GB_Q8_0 272
#define STEPS_Q4(DOTACC, R, QOFF)                                                                                   \
    _Pragma("clang loop unroll(full)")                                                                              \
    for (int t = 0; t < 4; t++) {                                                                                   \
        __m256i v = _mm256_loadu_si256((const __m256i *)(p + QOFF + 32 * t));                                       \
        __m256i lo, hi;                                                                                            \
        nibbles_step(v, &lo, &hi);                                                                                 \
        int a0 = NA == 4 ? 2 * (t & 1) : 0;                                                                         \
        for (int r = 0; r < R; r++) {                                                                               \
            const int8_t *q = x[(size_t)r * ldx + k].q;                                                             \
            ia[r][a0] = DOTACC(ia[r][a0], lo, bcast4(q + 4 * t));                                                   \
            ia[r][a0 + 1] = DOTACC(ia[r][a0 + 1], hi, bcast4(q + 16 + 4 * t));                                      \
        }                                                                                                           \
    }
// Q5: the nibbles as Q4's, each step's fifth bits from the 8 rows' interleaved bytes (bit 2t, then 2t + 1, of each).
#define STEPS_Q5(DOTACC, R, HOFF)                                                                                   \
    {                                                                                                               \
        __m256i fifth = _mm256_loadu_si256((const __m256i *)(p + HOFF));                                            \
        _Pragma("clang loop unroll(full)")                                                                          \
        for (int t = 0; t < 4; t++) {                                                                               \
            __m256i v = _mm256_loadu_si256((const __m256i *)(p + HOFF + 32 + 32 * t));                              \
            __m256i lo, hi;                                                                                         \
            fives_step(v, fifth, 2 * t, &lo, &hi);                                                                  \
            for (int r = 0; r < R; r++) {                                                                           \
                const int8_t *q = x[(size_t)r * ldx + k].q;                                                         \
                ia[r][0] = DOTACC(ia[r][0], lo, bcast4(q + 4 * t));                                                 \
                ia[r][1] = DOTACC(ia[r][1], hi, bcast4(q + 16 + 4 * t));                                            \
            }                                                                                                       \
        }                                                                                                           \
    }
#define GB_Q5_0 176
#define GB_Q5_1 192
#define STEPS_Q5_0(DOTACC, R) STEPS_Q5(DOTACC, R, 16)
#define STEPS_Q5_1(DOTACC, R) STEPS_Q5(DOTACC, R, 32)
// c·Σq_x of an activation block: what a weight offset by c adds to the block's integer sum, taken off exactly.
static inline int block_offset(const rk_q8_block *b, int c) { return c * ((int)b->sum16[0] + (int)b->sum16[1]); }
#define FIX_Q5_0(i, b) i = _mm256_sub_epi32(i, _mm256_set1_epi32(block_offset(b, 16)));
#define FIX_Q5_1(i, b)
#define MIN_TERM_Q5_0(a, p, b)
#define MIN_TERM_Q5_1(a, p, b) MIN_TERM_Q4_1(a, p, b)
#define STEPS_Q4_1(DOTACC, R) STEPS_Q4(DOTACC, R, 32)
#define STEPS_Q4_0(DOTACC, R) STEPS_Q4(DOTACC, R, 16)
// Without VNNI: a 4-bit weight times an 8-bit activation, pairs summed by vpmaddubsw, is at most 2·15·128 = 3840 in
// magnitude, so a block's eight such products add up exactly in 16 bits (≤ 30720) and widen to 32 bits once per block
// (one vpmaddwd) instead of once per step: 17 integer operations per row and block instead of 24.
#define STEPS_Q4H(R, QOFF)                                                                                          \
    {                                                                                                               \
        __m256i h0[R], h1[R];                                                                                       \
        for (int r = 0; r < R; r++) h0[r] = h1[r] = _mm256_setzero_si256();                                         \
        _Pragma("clang loop unroll(full)")                                                                          \
        for (int t = 0; t < 4; t++) {                                                                               \
            __m256i v = _mm256_loadu_si256((const __m256i *)(p + QOFF + 32 * t));                                   \
            __m256i lo, hi;                                                                                        \
            nibbles_step(v, &lo, &hi);                                                                             \
            for (int r = 0; r < R; r++) {                                                                           \
                const int8_t *q = x[(size_t)r * ldx + k].q;                                                         \
                h0[r] = _mm256_add_epi16(h0[r], _mm256_maddubs_epi16(lo, bcast4(q + 4 * t)));                       \
                h1[r] = _mm256_add_epi16(h1[r], _mm256_maddubs_epi16(hi, bcast4(q + 16 + 4 * t)));                  \
            }                                                                                                       \
        }                                                                                                           \
        for (int r = 0; r < R; r++)                                                                                 \
            ia[r][0] = _mm256_madd_epi16(_mm256_add_epi16(h0[r], h1[r]), _mm256_set1_epi16(1));                     \
    }
#define GB_Q4_1H GB_Q4_1
#define GB_Q4_0H GB_Q4_0
#define STEPS_Q4_1H(DOTACC, R) STEPS_Q4H(R, 32)
#define STEPS_Q4_0H(DOTACC, R) STEPS_Q4H(R, 16)
#define FIX_Q4_1H FIX_Q4_1
#define FIX_Q4_0H FIX_Q4_0
#define MIN_TERM_Q4_1H MIN_TERM_Q4_1
#define MIN_TERM_Q4_0H MIN_TERM_Q4_0
#define STEPS_Q8_0(DOTACC, R)                                                                                       \
    _Pragma("clang loop unroll(full)")                                                                              \
    for (int t = 0; t < 8; t++) {                                                                                   \
        __m256i v = _mm256_loadu_si256((const __m256i *)(p + 16 + 32 * t)), u = _mm256_sign_epi8(v, v);             \
        for (int r = 0; r < R; r++)                                                                                 \
            ia[r][t % NA] = DOTACC(ia[r][t % NA], u, _mm256_sign_epi8(bcast4(x[(size_t)r * ldx + k].q + 4 * t), v)); \
    }
// Q8_0 with VNNI: the weight offset by 128 (v XOR 0x80 is v + 128 as an unsigned byte) against the activation as
// it is — vpdpbusd does not saturate — and 128·Σq_x taken off in integers (exact): no sign juggling per row.
#define GB_Q8_0X GB_Q8_0
#define STEPS_Q8_0X(DOTACC, R)                                                                                      \
    _Pragma("clang loop unroll(full)")                                                                              \
    for (int t = 0; t < 8; t++) {                                                                                   \
        __m256i u = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 16 + 32 * t)), _mm256_set1_epi8((char)0x80)); \
        for (int r = 0; r < R; r++)                                                                                 \
            ia[r][t % NA] = DOTACC(ia[r][t % NA], u, bcast4(x[(size_t)r * ldx + k].q + 4 * t));                     \
    }
// IQ4 (NL and XS): a step's nibbles looked up in the grid, in the form each instruction set multiplies. AVX2, as
// Q8_0: the weight's magnitude against the activation with the weight's sign (IQ4_WEIGHTS_avx2 leaves the signed
// values in lo, hi for IQ4_ACT). VNNI: the grid offset by 128 (unsigned, as vpdpbusd takes it) against the activation
// as it is, 128·Σq_x taken off in integers afterwards.
#define IQ4_WEIGHTS_avx2(lo, hi, ulo, uhi)                                                                          \
    lo = iq4_grid(lo);                                                                                              \
    hi = iq4_grid(hi);                                                                                              \
    ulo = _mm256_sign_epi8(lo, lo);                                                                                 \
    uhi = _mm256_sign_epi8(hi, hi);
#define IQ4_WEIGHTS_vnni(lo, hi, ulo, uhi)                                                                          \
    ulo = iq4_grid_offset(lo);                                                                                      \
    uhi = iq4_grid_offset(hi);
#define IQ4_ACT_avx2(a, g) _mm256_sign_epi8(a, g)
#define IQ4_ACT_vnni(a, g) (a)
// IQ4_NL: Q4_0's layout (one scale, four steps of nibbles). AVX2 on every x86 kernel level (IQ4_NL), VNNI (IQ4_NLX).
#define STEPS_IQ4(DOTACC, R, ISA)                                                                                   \
    _Pragma("clang loop unroll(full)")                                                                              \
    for (int t = 0; t < 4; t++) {                                                                                   \
        __m256i lo, hi, ulo, uhi;                                                                                   \
        nibbles_step(_mm256_loadu_si256((const __m256i *)(p + 16 + 32 * t)), &lo, &hi);                           \
        IQ4_WEIGHTS_##ISA(lo, hi, ulo, uhi)                                                                         \
        int a0 = NA == 4 ? 2 * (t & 1) : 0;                                                                         \
        for (int r = 0; r < R; r++) {                                                                               \
            const int8_t *q = x[(size_t)r * ldx + k].q;                                                             \
            ia[r][a0] = DOTACC(ia[r][a0], ulo, IQ4_ACT_##ISA(bcast4(q + 4 * t), lo));                               \
            ia[r][a0 + 1] = DOTACC(ia[r][a0 + 1], uhi, IQ4_ACT_##ISA(bcast4(q + 16 + 4 * t), hi));                  \
        }                                                                                                           \
    }
#define GB_IQ4_NL GB_Q4_0
#define STEPS_IQ4_NL(DOTACC, R) STEPS_IQ4(DOTACC, R, avx2)
#define FIX_IQ4_NL(i, b)
#define MIN_TERM_IQ4_NL(a, p, b)
#define GB_IQ4_NLX GB_Q4_0
#define STEPS_IQ4_NLX(DOTACC, R) STEPS_IQ4(DOTACC, R, vnni)
#define FIX_IQ4_NLX(i, b) FIX_Q8_0X(i, b)
#define MIN_TERM_IQ4_NLX(a, p, b)
#define FIX_Q8_0X(i, b) i = _mm256_sub_epi32(i, _mm256_set1_epi32(block_offset(b, 128)));
#define MIN_TERM_Q8_0X(a, p, b)
#define FIX_Q4_1(i, b)
#define FIX_Q4_0(i, b) i = _mm256_sub_epi32(i, _mm256_set1_epi32(block_offset(b, 8)));
#define FIX_Q8_0(i, b)
#define MIN_TERM_Q4_1(a, p, b)                                                                                      \
    a = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((p) + 16))), _mm256_broadcast_ss(&(b)->ds), a);
#define MIN_TERM_Q4_0(a, p, b)
#define MIN_TERM_Q8_0(a, p, b)

#define PACK8_FUNCTION(SUFFIX, ATTR, DOTACC, TYPE, R)                                                               \
    static ATTR void pack8_##TYPE##_##R##_##SUFFIX(float *out, size_t ldo, const uint8_t *p, const rk_q8_block *x,   \
                                                   size_t ldx, int nb) {                                            \
        PACK8_BODY(DOTACC, TYPE, R)                                                                                 \
    }
#define PACK8_FUNCTIONS(SUFFIX, ATTR, DOTACC, TYPE)                                                                 \
    PACK8_FUNCTION(SUFFIX, ATTR, DOTACC, TYPE, 1)                                                                   \
    PACK8_FUNCTION(SUFFIX, ATTR, DOTACC, TYPE, 2)                                                                   \
    PACK8_FUNCTION(SUFFIX, ATTR, DOTACC, TYPE, 3)                                                                   \
    PACK8_FUNCTION(SUFFIX, ATTR, DOTACC, TYPE, 4)
PACK8_FUNCTIONS(avx2, RK_AVX2Q, dotacc_avx2, Q4_1H)
PACK8_FUNCTIONS(avx2, RK_AVX2Q, dotacc_avx2, Q4_0H)
PACK8_FUNCTIONS(avx2, RK_AVX2Q, dotacc_avx2, Q8_0)
PACK8_FUNCTIONS(avx2, RK_AVX2Q, dotacc_avx2, Q5_0)
PACK8_FUNCTIONS(avx2, RK_AVX2Q, dotacc_avx2, Q5_1)
PACK8_FUNCTIONS(avx2, RK_AVX2Q, dotacc_avx2, IQ4_NL)
PACK8_FUNCTIONS(vnni, RK_VNNI, dotacc_vnni, Q4_1)
PACK8_FUNCTIONS(vnni, RK_VNNI, dotacc_vnni, Q4_0)
PACK8_FUNCTIONS(vnni, RK_VNNI, dotacc_vnni, Q8_0X)
PACK8_FUNCTIONS(vnni, RK_VNNI, dotacc_vnni, IQ4_NLX)

// Q4_1 without VNNI, eight activation rows per pass over a group's block: the weights' nibbles are split once for
// the eight rows instead of twice (two passes of four), and each row's products add up in one 16-bit sum per block
// (eight products of at most 3840). 8-9% faster than two passes of four on the 8-row steps of a server's batch.
static RK_AVX2Q void pack8_Q4_1H_8_avx2(float *out, size_t ldo, const uint8_t *p, const rk_q8_block *x, size_t ldx,
                                        int nb) {
    __m256 acc[8];
    for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int k = 0; k < nb; k++, p += GB_Q4_1) {
        PREFETCH_NEXT_GROUP(p, nb, GB_Q4_1)
        __m256i h[8];
        _Pragma("clang loop unroll(full)")
        for (int t = 0; t < 4; t++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(p + 32 + 32 * t));
            __m256i lo, hi;
            nibbles_step(v, &lo, &hi);
            _Pragma("clang loop unroll(full)")
            for (int r = 0; r < 8; r++) {
                const int8_t *q = x[(size_t)r * ldx + k].q;
                __m256i m = _mm256_add_epi16(_mm256_maddubs_epi16(lo, bcast4(q + 4 * t)),
                                             _mm256_maddubs_epi16(hi, bcast4(q + 16 + 4 * t)));
                h[r] = t == 0 ? m : _mm256_add_epi16(h[r], m);
            }
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        __m256 mins = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));
        _Pragma("clang loop unroll(full)")
        for (int r = 0; r < 8; r++) {
            const rk_q8_block *b = x + (size_t)r * ldx + k;
            __m256 i = _mm256_cvtepi32_ps(_mm256_madd_epi16(h[r], ones));
            acc[r] = _mm256_fmadd_ps(i, _mm256_mul_ps(dw, _mm256_broadcast_ss(&b->d)), acc[r]);
            acc[r] = _mm256_fmadd_ps(mins, _mm256_broadcast_ss(&b->ds), acc[r]);
        }
    }
    for (int r = 0; r < 8; r++) _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);
}

// Q5_0 and Q5_1, eight activation rows per pass over a group's block: the block's eight 5-bit steps are put
// together once (8 registers) and then serve the rows one after another, instead of once per pass of four rows.
// A 5-bit weight times an 8-bit activation, pairs summed by vpmaddubsw, is at most 2·31·128 = 7936 in magnitude, so
// the four products of the low (or high) halves add up exactly in 16 bits (≤ 31744) and each half widens once.
#define PACK8_Q5_8(TYPE, HOFF)                                                                                      \
    static RK_AVX2Q void pack8_##TYPE##_8_avx2(float *out, size_t ldo, const uint8_t *p, const rk_q8_block *x,      \
                                               size_t ldx, int nb) {                                                \
        __m256 acc[8];                                                                                              \
        for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();                                                   \
        const __m256i ones = _mm256_set1_epi16(1);                                                                  \
        for (int k = 0; k < nb; k++, p += GB_##TYPE) {                                                              \
            PREFETCH_NEXT_GROUP(p, nb, GB_##TYPE)                                                                   \
            __m256i fifth = _mm256_loadu_si256((const __m256i *)(p + HOFF)), lo[4], hi[4];                          \
            _Pragma("clang loop unroll(full)")                                                                      \
            for (int t = 0; t < 4; t++) {                                                                           \
                __m256i v = _mm256_loadu_si256((const __m256i *)(p + HOFF + 32 + 32 * t));                          \
                fives_step(v, fifth, 2 * t, &lo[t], &hi[t]);                                                        \
            }                                                                                                       \
            __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));                                       \
            _Pragma("clang loop unroll(full)")                                                                      \
            for (int r = 0; r < 8; r++) {                                                                           \
                const rk_q8_block *b = x + (size_t)r * ldx + k;                                                     \
                __m256i hl = _mm256_maddubs_epi16(lo[0], bcast4(b->q));                                             \
                __m256i hh = _mm256_maddubs_epi16(hi[0], bcast4(b->q + 16));                                        \
                _Pragma("clang loop unroll(full)")                                                                  \
                for (int t = 1; t < 4; t++) {                                                                       \
                    hl = _mm256_add_epi16(hl, _mm256_maddubs_epi16(lo[t], bcast4(b->q + 4 * t)));                   \
                    hh = _mm256_add_epi16(hh, _mm256_maddubs_epi16(hi[t], bcast4(b->q + 16 + 4 * t)));              \
                }                                                                                                   \
                __m256i is = _mm256_add_epi32(_mm256_madd_epi16(hl, ones), _mm256_madd_epi16(hh, ones));            \
                FIX_##TYPE(is, b)                                                                                   \
                __m256 scale = _mm256_mul_ps(dw, _mm256_broadcast_ss(&b->d));                                       \
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), scale, acc[r]);                                    \
                MIN_TERM_##TYPE(acc[r], p, b)                                                                       \
            }                                                                                                       \
        }                                                                                                           \
        for (int r = 0; r < 8; r++) _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);                                \
    }
PACK8_Q5_8(Q5_0, 16)
PACK8_Q5_8(Q5_1, 32)

// Q4_1 with VNNI, eight activation rows per pass over a group's block: the nibbles are split once for the eight rows,
// and each row keeps two integer sums (low and high nibbles) so that no vpdpbusd waits on the one before it.
// Written out rather than PACK8_BODY at R = 8: that body, whose row loops are not unrolled, ran 5-40% slower.
static RK_VNNI void pack8_Q4_1_8_vnni(float *out, size_t ldo, const uint8_t *p, const rk_q8_block *x, size_t ldx,
                                      int nb) {
    __m256 acc[8];
    for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
    for (int k = 0; k < nb; k++, p += GB_Q4_1) {
        __m256i lo_sum[8], hi_sum[8];
        for (int r = 0; r < 8; r++) lo_sum[r] = hi_sum[r] = _mm256_setzero_si256();
        PREFETCH_NEXT_GROUP(p, nb, GB_Q4_1)
        _Pragma("clang loop unroll(full)")
        for (int t = 0; t < 4; t++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(p + 32 + 32 * t));
            __m256i lo, hi;
            nibbles_step(v, &lo, &hi);
            _Pragma("clang loop unroll(full)")
            for (int r = 0; r < 8; r++) {
                const int8_t *q = x[(size_t)r * ldx + k].q;
                lo_sum[r] = _mm256_dpbusd_epi32(lo_sum[r], lo, bcast4(q + 4 * t));
                hi_sum[r] = _mm256_dpbusd_epi32(hi_sum[r], hi, bcast4(q + 16 + 4 * t));
            }
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        __m256 mins = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));
        _Pragma("clang loop unroll(full)")
        for (int r = 0; r < 8; r++) {
            const rk_q8_block *b = x + (size_t)r * ldx + k;
            __m256 i = _mm256_cvtepi32_ps(_mm256_add_epi32(lo_sum[r], hi_sum[r]));
            acc[r] = _mm256_fmadd_ps(i, _mm256_mul_ps(dw, _mm256_broadcast_ss(&b->d)), acc[r]);
            acc[r] = _mm256_fmadd_ps(mins, _mm256_broadcast_ss(&b->ds), acc[r]);
        }
    }
    for (int r = 0; r < 8; r++) _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);
}

// Q4_1 with VNNI on 512-bit registers: two groups of 8 weight rows side by side (outputs 8g..8g+15, one 16-wide
// register per activation row) against eight activation rows. Each activation broadcast and each vpdpbusd then serves
// sixteen weight rows instead of eight: half the instructions per product of the 8-row kernel above, whose sums fill
// only 256 bits.
static inline RK_VNNI __m512i bcast4_512(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}
static inline RK_VNNI __m512 halves16(const uint8_t *p, const uint8_t *q) {
    __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p)),
                                        _mm_loadu_si128((const __m128i *)q), 1);
    return _mm512_cvtph_ps(h);
}
// 32 bytes of each group of a pair, side by side in one register.
static inline RK_VNNI __m512i pair_step(const uint8_t *a, const uint8_t *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}
// The two blocks of the pair of groups after this one (two groups on), for kernels that take groups in pairs.
static inline void prefetch_next_pair(const uint8_t *p, const uint8_t *p2, int nb, int gb) {
    for (int line = 0; line < gb; line += 64) {
        _mm_prefetch((const char *)((uintptr_t)p + 2 * (size_t)nb * (size_t)gb + (size_t)line), _MM_HINT_T0);
        _mm_prefetch((const char *)((uintptr_t)p2 + 2 * (size_t)nb * (size_t)gb + (size_t)line), _MM_HINT_T0);
    }
}
static RK_VNNI void pack16_Q4_1_8_vnni(float *out, size_t ldo, const uint8_t *p, const rk_q8_block *x, size_t ldx,
                                       int nb) {
    const uint8_t *p2 = p + (size_t)nb * GB_Q4_1; // the next group's blocks
    __m512 acc[8];
    for (int r = 0; r < 8; r++) acc[r] = _mm512_setzero_ps();
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    for (int k = 0; k < nb; k++, p += GB_Q4_1, p2 += GB_Q4_1) {
        __m512i lo_sum[8], hi_sum[8];
        for (int r = 0; r < 8; r++) lo_sum[r] = hi_sum[r] = _mm512_setzero_si512();
        prefetch_next_pair(p, p2, nb, GB_Q4_1);
        _Pragma("clang loop unroll(full)")
        for (int t = 0; t < 4; t++) {
            __m512i v = pair_step(p + 32 + 32 * t, p2 + 32 + 32 * t);
            __m512i lo = _mm512_and_si512(v, low4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
            _Pragma("clang loop unroll(full)")
            for (int r = 0; r < 8; r++) {
                const int8_t *q = x[(size_t)r * ldx + k].q;
                lo_sum[r] = _mm512_dpbusd_epi32(lo_sum[r], lo, bcast4_512(q + 4 * t));
                hi_sum[r] = _mm512_dpbusd_epi32(hi_sum[r], hi, bcast4_512(q + 16 + 4 * t));
            }
        }
        __m512 dw = halves16(p, p2), mins = halves16(p + 16, p2 + 16);
        _Pragma("clang loop unroll(full)")
        for (int r = 0; r < 8; r++) {
            const rk_q8_block *b = x + (size_t)r * ldx + k;
            __m512 i = _mm512_cvtepi32_ps(_mm512_add_epi32(lo_sum[r], hi_sum[r]));
            acc[r] = _mm512_fmadd_ps(i, _mm512_mul_ps(dw, _mm512_set1_ps(b->d)), acc[r]);
            acc[r] = _mm512_fmadd_ps(mins, _mm512_set1_ps(b->ds), acc[r]);
        }
    }
    for (int r = 0; r < 8; r++) _mm512_storeu_ps(out + (size_t)r * ldo, acc[r]);
}

// Q8_0 with VNNI, eight activation rows per pass over a group's block (a tied output layer in a server's 8-row
// steps): each weight vector is offset once for the eight rows instead of twice (two passes of four); two integer
// sums per row, as in the Q4_1 kernel above.
static RK_VNNI void pack8_Q8_0X_8_vnni(float *out, size_t ldo, const uint8_t *p, const rk_q8_block *x, size_t ldx,
                                       int nb) {
    __m256 acc[8];
    for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int k = 0; k < nb; k++, p += GB_Q8_0) {
        __m256i even[8], odd[8];
        for (int r = 0; r < 8; r++) even[r] = odd[r] = _mm256_setzero_si256();
        PREFETCH_NEXT_GROUP(p, nb, GB_Q8_0)
        _Pragma("clang loop unroll(full)")
        for (int t = 0; t < 8; t++) {
            __m256i u = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 16 + 32 * t)), flip);
            _Pragma("clang loop unroll(full)")
            for (int r = 0; r < 8; r++) {
                __m256i q = bcast4(x[(size_t)r * ldx + k].q + 4 * t);
                if (t & 1) odd[r] = _mm256_dpbusd_epi32(odd[r], u, q);
                else even[r] = _mm256_dpbusd_epi32(even[r], u, q);
            }
        }
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        _Pragma("clang loop unroll(full)")
        for (int r = 0; r < 8; r++) {
            const rk_q8_block *b = x + (size_t)r * ldx + k;
            __m256i i = _mm256_add_epi32(even[r], odd[r]);
            FIX_Q8_0X(i, b)
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(dw, _mm256_broadcast_ss(&b->d)), acc[r]);
        }
    }
    for (int r = 0; r < 8; r++) _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);
}

// Q8_0 with VNNI on 512-bit registers, as pack16_Q4_1_8_vnni: two groups of 8 weight rows side by side against eight
// activation rows, so that each broadcast and each vpdpbusd serves sixteen weight rows.
static RK_VNNI void pack16_Q8_0X_8_vnni(float *out, size_t ldo, const uint8_t *p, const rk_q8_block *x, size_t ldx,
                                        int nb) {
    const uint8_t *p2 = p + (size_t)nb * GB_Q8_0; // the next group's blocks
    __m512 acc[8];
    for (int r = 0; r < 8; r++) acc[r] = _mm512_setzero_ps();
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int k = 0; k < nb; k++, p += GB_Q8_0, p2 += GB_Q8_0) {
        __m512i even[8], odd[8];
        for (int r = 0; r < 8; r++) even[r] = odd[r] = _mm512_setzero_si512();
        prefetch_next_pair(p, p2, nb, GB_Q8_0);
        _Pragma("clang loop unroll(full)")
        for (int t = 0; t < 8; t++) {
            __m512i v = pair_step(p + 16 + 32 * t, p2 + 16 + 32 * t);
            __m512i u = _mm512_xor_si512(v, flip);
            _Pragma("clang loop unroll(full)")
            for (int r = 0; r < 8; r++) {
                __m512i q = bcast4_512(x[(size_t)r * ldx + k].q + 4 * t);
                if (t & 1) odd[r] = _mm512_dpbusd_epi32(odd[r], u, q);
                else even[r] = _mm512_dpbusd_epi32(even[r], u, q);
            }
        }
        __m512 dw = halves16(p, p2);
        _Pragma("clang loop unroll(full)")
        for (int r = 0; r < 8; r++) {
            const rk_q8_block *b = x + (size_t)r * ldx + k;
            __m512i i = _mm512_sub_epi32(_mm512_add_epi32(even[r], odd[r]),
                                         _mm512_set1_epi32(block_offset(b, 128)));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(dw, _mm512_set1_ps(b->d)), acc[r]);
        }
    }
    for (int r = 0; r < 8; r++) _mm512_storeu_ps(out + (size_t)r * ldo, acc[r]);
}

// Q4_K interleaved by 8 rows, R activation rows (R ≤ 4): per super-block the 8 rows' d and dmin, and per sub-block
// their 6-bit scales and minimums as 8 floats (scale·d, m·dmin); each pair of sub-blocks is 8 steps of 32 bytes,
// the low nibbles sub-block 2p and the high ones 2p + 1. A step's products are at most 2·15·127 per 16-bit pair, so
// a sub-block's 8 steps add up exactly in 16 bits (≤ 30480) and widen once.
// Scale byte s of the 8 rows, one a byte (the scales are stored transposed).
static inline RK_AVX2Q __m128i k_scale_bytes(const uint8_t *scales, int s) {
    return _mm_loadl_epi64((const __m128i *)(scales + 8 * s));
}
// 8 unsigned bytes times the 8 floats f.
static inline RK_AVX2Q __m256 k_bytes_times(__m128i bytes, __m256 f) {
    return _mm256_mul_ps(f, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)));
}
// 8 signed bytes times the 8 floats f (Q6_K's scales).
static inline RK_AVX2Q __m256 k_signed_bytes_times(__m128i bytes, __m256 f) {
    return _mm256_mul_ps(f, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)));
}
// The 8 rows' scale and minimum of sub-block sb, decoded as k_scale_min decodes one row's, times d and dmin.
static inline RK_AVX2Q void k_scales_mins8(const uint8_t *scales, int sb, __m256 d, __m256 dmin, __m256 *sc, __m256 *mn) {
    const __m128i six = _mm_set1_epi8(63), low4 = _mm_set1_epi8(0x0F), top2 = _mm_set1_epi8(0x30);
    __m128i s, m;
    if (sb < 4) {
        s = _mm_and_si128(k_scale_bytes(scales, sb), six);
        m = _mm_and_si128(k_scale_bytes(scales, sb + 4), six);
    } else {
        // (byte >> 6) << 4 as one 16-bit shift by 2 and a mask: the bits carried in from the next byte land on 6-7.
        __m128i b = k_scale_bytes(scales, sb + 4);
        s = _mm_or_si128(_mm_and_si128(b, low4), _mm_and_si128(_mm_srli_epi16(k_scale_bytes(scales, sb - 4), 2), top2));
        m = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(b, 4), low4),
                         _mm_and_si128(_mm_srli_epi16(k_scale_bytes(scales, sb), 2), top2));
    }
    *sc = k_bytes_times(s, d);
    *mn = k_bytes_times(m, dmin);
}
// A pair of sub-blocks' integer sums s0, s1 for one activation row (b: its two blocks) scaled, and their minimums
// taken off.
static inline RK_AVX2Q __m256 k45_pair(__m256 acc, __m256i s0, __m256i s1, __m256 sc0, __m256 mn0, __m256 sc1,
                                       __m256 mn1, const rk_q8_block *b) {
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), _mm256_mul_ps(sc0, _mm256_broadcast_ss(&b[0].d)), acc);
    acc = _mm256_fnmadd_ps(mn0, _mm256_broadcast_ss(&b[0].ds), acc);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), _mm256_mul_ps(sc1, _mm256_broadcast_ss(&b[1].d)), acc);
    return _mm256_fnmadd_ps(mn1, _mm256_broadcast_ss(&b[1].ds), acc);
}
// Q5_K: the same with a fifth bit per value (0..31, so a sub-block's steps add up in 16 bits four at a time).
// Passes of fewer than 4 rows (decoding) ask for the next group's super-block while computing this one, as
// PREFETCH_NEXT_GROUP says: one row 13-35% faster across Q4_K, Q5_K and Q6_K. Passes of 4 do not: a prompt's rows
// read a group once per four rows, and prefetching on every pass made Q6_K at 64 rows 10% slower.
#define PACK8_Q4_K_BODY(R) PACK8_K45_BODY(R, 0)
#define PACK8_Q5_K_BODY(R) PACK8_K45_BODY(R, 1)
#define PACK8_K45_BODY(R, FIVE)                                                                                     \
    __m256 acc[R];                                                                                                  \
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();                                                       \
    const __m256i ones = _mm256_set1_epi16(1);                                                                      \
    for (int k = 0; k < nsb; k++, p += FIVE ? 1408 : 1152) {                                                        \
        if (R < 4) PREFETCH_NEXT_GROUP(p, nsb, FIVE ? 1408 : 1152)                                                  \
        __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));                                            \
        __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));                                  \
        for (int j = 0; j < 4; j++) {                                                                               \
            __m256 sc0, mn0, sc1, mn1;                                                                              \
            k_scales_mins8(p + 32, 2 * j, d, dmin, &sc0, &mn0);                                                     \
            k_scales_mins8(p + 32, 2 * j + 1, d, dmin, &sc1, &mn1);                                                 \
            __m256i h0[R], h1[R], i0[R], i1[R];                                                                     \
            _Pragma("clang loop unroll(full)")                                                                      \
            for (int t = 0; t < 8; t++) {                                                                           \
                __m256i v = _mm256_loadu_si256((const __m256i *)(p + 128 + 256 * FIVE + 256 * j + 32 * t));         \
                __m256i lo, hi;                                                                                     \
                if (FIVE)                                                                                           \
                    fives_step(v, _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * t)), 2 * j, &lo, &hi);        \
                else                                                                                                \
                    nibbles_step(v, &lo, &hi);                                                                      \
                for (int r = 0; r < R; r++) {                                                                       \
                    const rk_q8_block *b = x + (size_t)r * ldx + 8 * k + 2 * j;                                     \
                    __m256i m0 = _mm256_maddubs_epi16(lo, bcast4(b[0].q + 4 * t));                                  \
                    __m256i m1 = _mm256_maddubs_epi16(hi, bcast4(b[1].q + 4 * t));                                  \
                    h0[r] = t % (FIVE ? 4 : 8) == 0 ? m0 : _mm256_add_epi16(h0[r], m0);                             \
                    h1[r] = t % (FIVE ? 4 : 8) == 0 ? m1 : _mm256_add_epi16(h1[r], m1);                             \
                    if (FIVE && t == 3) {                                                                           \
                        i0[r] = _mm256_madd_epi16(h0[r], ones);                                                     \
                        i1[r] = _mm256_madd_epi16(h1[r], ones);                                                     \
                    }                                                                                               \
                }                                                                                                   \
            }                                                                                                       \
            for (int r = 0; r < R; r++) {                                                                           \
                const rk_q8_block *b = x + (size_t)r * ldx + 8 * k + 2 * j;                                         \
                __m256i s0 = _mm256_madd_epi16(h0[r], ones), s1 = _mm256_madd_epi16(h1[r], ones);                   \
                if (FIVE) { s0 = _mm256_add_epi32(s0, i0[r]); s1 = _mm256_add_epi32(s1, i1[r]); }                   \
                acc[r] = k45_pair(acc[r], s0, s1, sc0, mn0, sc1, mn1, b);                                          \
            }                                                                                                       \
        }                                                                                                           \
    }                                                                                                               \
    for (int r = 0; r < R; r++) _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);

// A step of Q6_K values 0..63 (8 rows' 4 values each): the low (nibble = 0) or high (4) nibbles at ql, and the two
// bits at `high` (0, 2, 4 or 6) of each byte at qh on bits 4-5.
static inline RK_AVX2Q __m256i q6_step(const uint8_t *ql, const uint8_t *qh, __m128i nibble, __m128i high) {
    __m256i l = _mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)ql), nibble);
    __m256i h = _mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)qh), high);
    l = _mm256_and_si256(l, _mm256_set1_epi8(0x0F));
    h = _mm256_and_si256(h, _mm256_set1_epi8(3));
    return _mm256_or_si256(l, _mm256_slli_epi16(h, 4));
}
// Q6_K interleaved by 8 rows: a sub-block's values 0..63 (low nibble | two high bits << 4), offset by 32 in integers
// (−32·Σq_x per half, the activation block's 16-value sums); its two scales (one per 16 values, 8 rows each) in
// float, each half's sum added on its own (as the eight-row kernel below must, so that both give the same bits).
// A step's products are at most 2·63·127 per 16-bit pair, so two steps add up in 16 bits before widening.
#define PACK8_Q6_K_BODY(R)                                                                                          \
    __m256 acc[R];                                                                                                  \
    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();                                                       \
    const __m256i ones = _mm256_set1_epi16(1);                                                                      \
    for (int k = 0; k < nsb; k++, p += 1680) {                                                                      \
        if (R < 4) PREFETCH_NEXT_GROUP(p, nsb, 1680)                                                                \
        __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));                                            \
        for (int sb = 0; sb < 8; sb++) {                                                                            \
            int h = sb >> 2, p4 = sb & 3;                                                                           \
            const __m128i nibble = _mm_cvtsi32_si128(4 * (p4 >> 1)), high = _mm_cvtsi32_si128(2 * p4);              \
            __m256 f0 = k_signed_bytes_times(k_scale_bytes(p + 16, 2 * sb), d);                                    \
            __m256 f1 = k_signed_bytes_times(k_scale_bytes(p + 16, 2 * sb + 1), d);                                \
            const uint8_t *ql = p + 144 + 32 * (16 * h + 8 * (p4 & 1)), *qh = p + 144 + 32 * (32 + 8 * h);          \
            __m256i ih[2][R];                                                                                       \
            _Pragma("clang loop unroll(full)")                                                                      \
            for (int half = 0; half < 2; half++) {                                                                  \
                __m256i u[4];                                                                                       \
                for (int s = 0; s < 4; s++)                                                                         \
                    u[s] = q6_step(ql + 32 * (4 * half + s), qh + 32 * (4 * half + s), nibble, high);               \
                for (int r = 0; r < R; r++) {                                                                       \
                    const int8_t *q = x[(size_t)r * ldx + 8 * k + sb].q + 16 * half;                                \
                    __m256i a = _mm256_add_epi16(_mm256_maddubs_epi16(u[0], bcast4(q)),                             \
                                                 _mm256_maddubs_epi16(u[1], bcast4(q + 4)));                        \
                    __m256i c = _mm256_add_epi16(_mm256_maddubs_epi16(u[2], bcast4(q + 8)),                         \
                                                 _mm256_maddubs_epi16(u[3], bcast4(q + 12)));                       \
                    ih[half][r] = _mm256_add_epi32(_mm256_madd_epi16(a, ones), _mm256_madd_epi16(c, ones));         \
                }                                                                                                   \
            }                                                                                                       \
            for (int r = 0; r < R; r++) {                                                                           \
                const rk_q8_block *b = x + (size_t)r * ldx + 8 * k + sb;                                            \
                __m256i i0 = _mm256_sub_epi32(ih[0][r], _mm256_set1_epi32(32 * (int)b->sum16[0]));                  \
                __m256i i1 = _mm256_sub_epi32(ih[1][r], _mm256_set1_epi32(32 * (int)b->sum16[1]));                  \
                __m256 dx = _mm256_broadcast_ss(&b->d);                                                             \
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(f0, dx), acc[r]);                    \
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(f1, dx), acc[r]);                    \
            }                                                                                                       \
        }                                                                                                           \
    }                                                                                                               \
    for (int r = 0; r < R; r++) _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);

// Eight activation rows per pass over a group's super-block (a prompt's rows, a server's batch): each 32-byte step is
// unpacked once for the eight rows, and each sub-block's scales and minimums decoded once, where two passes of four
// did both twice. The sub-blocks are taken one at a time (the low nibbles of a step are sub-block 2j, the high ones
// 2j + 1), so that a row keeps one 16-bit sum: Q4_K's eight steps add up exactly (≤ 8·2·15·127 = 30480), Q5_K's
// four at a time (≤ 4·2·31·127 = 31496), and Q6_K's two (≤ 2·2·63·127 = 32004). Each asks for the next group's
// super-block as it goes (PREFETCH_NEXT_GROUP): 8 rows 15-20% faster (Q4_K, Q6_K), 64 rows — eight passes over a
// group — no slower (2-5% faster), unlike passes of four.
// Sub-block sb's fifth bits of a Q5_K step (bit sb of each byte) on bit 4: sb is not a constant here.
static inline RK_AVX2Q __m256i fifth_bit_at(__m256i bits, __m128i sb) {
    return _mm256_and_si256(_mm256_slli_epi16(_mm256_srl_epi16(bits, sb), 4), _mm256_set1_epi8(0x10));
}
#define PACK8_K45_8(TYPE, FIVE)                                                                                     \
    static RK_AVX2Q void pack8_##TYPE##_8_avx2(float *out, size_t ldo, const uint8_t *p, const rk_q8_block *x,      \
                                               size_t ldx, int nsb) {                                               \
        __m256 acc[8];                                                                                              \
        for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();                                                   \
        const __m256i low4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);                                   \
        for (int k = 0; k < nsb; k++, p += FIVE ? 1408 : 1152) {                                                    \
            PREFETCH_NEXT_GROUP(p, nsb, FIVE ? 1408 : 1152)                                                         \
            __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));                                        \
            __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));                              \
            for (int sb = 0; sb < 8; sb++) {                                                                        \
                __m256 sc, mn;                                                                                      \
                k_scales_mins8(p + 32, sb, d, dmin, &sc, &mn);                                                      \
                const __m128i nibble = _mm_cvtsi32_si128(4 * (sb & 1)), bit = _mm_cvtsi32_si128(sb);                \
                const uint8_t *steps = p + 128 + 256 * FIVE + 256 * (sb >> 1);                                      \
                __m256i h[8], w[8];                                                                                 \
                (void)w;                                                                                            \
                _Pragma("clang loop unroll(full)")                                                                  \
                for (int t = 0; t < 8; t++) {                                                                       \
                    __m256i u = _mm256_loadu_si256((const __m256i *)(steps + 32 * t));                              \
                    u = _mm256_and_si256(_mm256_srl_epi16(u, nibble), low4);                                        \
                    if (FIVE)                                                                                       \
                        u = _mm256_or_si256(                                                                        \
                            u, fifth_bit_at(_mm256_loadu_si256((const __m256i *)(p + 128 + 32 * t)), bit));         \
                    _Pragma("clang loop unroll(full)")                                                              \
                    for (int r = 0; r < 8; r++) {                                                                   \
                        __m256i m = _mm256_maddubs_epi16(u, bcast4(x[(size_t)r * ldx + 8 * k + sb].q + 4 * t));     \
                        h[r] = t % (FIVE ? 4 : 8) == 0 ? m : _mm256_add_epi16(h[r], m);                             \
                        if (FIVE && t == 3) w[r] = _mm256_madd_epi16(h[r], ones);                                   \
                    }                                                                                               \
                }                                                                                                   \
                _Pragma("clang loop unroll(full)")                                                                  \
                for (int r = 0; r < 8; r++) {                                                                       \
                    const rk_q8_block *b = x + (size_t)r * ldx + 8 * k + sb;                                        \
                    __m256i s = _mm256_madd_epi16(h[r], ones);                                                      \
                    if (FIVE) s = _mm256_add_epi32(s, w[r]);                                                        \
                    __m256 scale = _mm256_mul_ps(sc, _mm256_broadcast_ss(&b->d));                                   \
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[r]);                                 \
                    acc[r] = _mm256_fnmadd_ps(mn, _mm256_broadcast_ss(&b->ds), acc[r]);                             \
                }                                                                                                   \
            }                                                                                                       \
        }                                                                                                           \
        for (int r = 0; r < 8; r++) _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);                                \
    }
PACK8_K45_8(Q4_K, 0)
PACK8_K45_8(Q5_K, 1)

// Q4_K and Q5_K with VNNI: each step's values against the activation as they are, vpdpbusd adding a row's four
// products into 32 bits (no 16-bit sums or widening); the scales and minimums as the AVX2 kernels take them.
// qmatmul_ab on the Zen 4: Q4_K 2-4 rows 23-43% less time, 8 rows 25%, 64 rows 35%; Q5_K one row 17%, 2-4 rows
// 29-47%, 8 rows 25%, 64 rows 37%. Q4_K's one row keeps the AVX2 kernel (level within noise, if anything faster).
#define PACK8_K45_VNNI(TYPE, FIVE, R)                                                                               \
    static RK_VNNI void pack8_##TYPE##_##R##_vnni(float *out, size_t ldo, const uint8_t *p, const rk_q8_block *x,   \
                                                  size_t ldx, int nsb) {                                            \
        __m256 acc[R];                                                                                              \
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();                                                   \
        for (int k = 0; k < nsb; k++, p += FIVE ? 1408 : 1152) {                                                    \
            if (R < 4 || R == 8) PREFETCH_NEXT_GROUP(p, nsb, FIVE ? 1408 : 1152)                                    \
            __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));                                        \
            __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));                              \
            for (int j = 0; j < 4; j++) {                                                                           \
                __m256 sc0, mn0, sc1, mn1;                                                                          \
                k_scales_mins8(p + 32, 2 * j, d, dmin, &sc0, &mn0);                                                 \
                k_scales_mins8(p + 32, 2 * j + 1, d, dmin, &sc1, &mn1);                                             \
                __m256i i0[R], i1[R];                                                                               \
                for (int r = 0; r < R; r++) i0[r] = i1[r] = _mm256_setzero_si256();                                 \
                _Pragma("clang loop unroll(full)")                                                                  \
                for (int t = 0; t < 8; t++) {                                                                       \
                    __m256i v = _mm256_loadu_si256((const __m256i *)(p + 128 + 256 * FIVE + 256 * j + 32 * t));     \
                    __m256i lo, hi;                                                                                 \
                    if (FIVE)                                                                                       \
                        fives_step(v, _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * t)), 2 * j, &lo, &hi);    \
                    else                                                                                            \
                        nibbles_step(v, &lo, &hi);                                                                  \
                    _Pragma("clang loop unroll(full)")                                                              \
                    for (int r = 0; r < R; r++) {                                                                   \
                        const rk_q8_block *b = x + (size_t)r * ldx + 8 * k + 2 * j;                                 \
                        i0[r] = _mm256_dpbusd_epi32(i0[r], lo, bcast4(b[0].q + 4 * t));                             \
                        i1[r] = _mm256_dpbusd_epi32(i1[r], hi, bcast4(b[1].q + 4 * t));                             \
                    }                                                                                               \
                }                                                                                                   \
                _Pragma("clang loop unroll(full)")                                                                  \
                for (int r = 0; r < R; r++) {                                                                       \
                    const rk_q8_block *b = x + (size_t)r * ldx + 8 * k + 2 * j;                                     \
                    acc[r] = k45_pair(acc[r], i0[r], i1[r], sc0, mn0, sc1, mn1, b);                                 \
                }                                                                                                   \
            }                                                                                                       \
        }                                                                                                           \
        for (int r = 0; r < R; r++) _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);                                \
    }
PACK8_K45_VNNI(Q4_K, 0, 2) PACK8_K45_VNNI(Q4_K, 0, 3) PACK8_K45_VNNI(Q4_K, 0, 4)
PACK8_K45_VNNI(Q4_K, 0, 8)
PACK8_K45_VNNI(Q5_K, 1, 1) PACK8_K45_VNNI(Q5_K, 1, 2) PACK8_K45_VNNI(Q5_K, 1, 3) PACK8_K45_VNNI(Q5_K, 1, 4)
PACK8_K45_VNNI(Q5_K, 1, 8)

// Q6_K with VNNI: each step's values 0..63 against the activation as it is (vpdpbusd adds a row's four products into
// 32 bits at once: no 16-bit sums, no widening), a half's four steps in two sums; then as the AVX2 kernels, the offset
// of 32 taken off in integers and each half's sum scaled on its own. 2-4 rows 8-17% faster than AVX2, 8 rows 24%, 64
// rows 28% (Benchmarks/Scripts/qmatmul_ab.sh, Zen 4); one row keeps the AVX2 kernel, which ran 7-10% faster.
#define PACK8_Q6_K_VNNI(R)                                                                                          \
    static RK_VNNI void pack8_Q6_K_##R##_vnni(float *out, size_t ldo, const uint8_t *p, const rk_q8_block *x,       \
                                              size_t ldx, int nsb) {                                                \
        __m256 acc[R];                                                                                              \
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();                                                   \
        for (int k = 0; k < nsb; k++, p += 1680) {                                                                  \
            if (R < 4 || R == 8) PREFETCH_NEXT_GROUP(p, nsb, 1680)                                                  \
            __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));                                        \
            for (int sb = 0; sb < 8; sb++) {                                                                        \
                int h = sb >> 2, p4 = sb & 3;                                                                       \
                const __m128i nibble = _mm_cvtsi32_si128(4 * (p4 >> 1)), high = _mm_cvtsi32_si128(2 * p4);          \
                const uint8_t *ql = p + 144 + 32 * (16 * h + 8 * (p4 & 1)), *qh = p + 144 + 32 * (32 + 8 * h);      \
                _Pragma("clang loop unroll(full)")                                                                  \
                for (int half = 0; half < 2; half++) {                                                              \
                    __m256 f = k_signed_bytes_times(k_scale_bytes(p + 16, 2 * sb + half), d);                       \
                    __m256i u[4];                                                                                   \
                    for (int s = 0; s < 4; s++)                                                                     \
                        u[s] = q6_step(ql + 32 * (4 * half + s), qh + 32 * (4 * half + s), nibble, high);           \
                    _Pragma("clang loop unroll(full)")                                                              \
                    for (int r = 0; r < R; r++) {                                                                   \
                        const rk_q8_block *b = x + (size_t)r * ldx + 8 * k + sb;                                    \
                        const int8_t *q = b->q + 16 * half;                                                         \
                        __m256i a = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u[0], bcast4(q));                    \
                        __m256i c = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u[2], bcast4(q + 8));                \
                        a = _mm256_dpbusd_epi32(a, u[1], bcast4(q + 4));                                            \
                        c = _mm256_dpbusd_epi32(c, u[3], bcast4(q + 12));                                           \
                        __m256i i = _mm256_sub_epi32(_mm256_add_epi32(a, c),                                        \
                                                     _mm256_set1_epi32(32 * (int)b->sum16[half]));                  \
                        __m256 scale = _mm256_mul_ps(f, _mm256_broadcast_ss(&b->d));                                \
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), scale, acc[r]);                             \
                    }                                                                                               \
                }                                                                                                   \
            }                                                                                                       \
        }                                                                                                           \
        for (int r = 0; r < R; r++) _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);                                \
    }
PACK8_Q6_K_VNNI(2) PACK8_Q6_K_VNNI(3) PACK8_Q6_K_VNNI(4) PACK8_Q6_K_VNNI(8)

static RK_AVX2Q void pack8_Q6_K_8_avx2(float *out, size_t ldo, const uint8_t *p, const rk_q8_block *x, size_t ldx,
                                       int nsb) {
    __m256 acc[8];
    for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int k = 0; k < nsb; k++, p += 1680) {
        PREFETCH_NEXT_GROUP(p, nsb, 1680)
        __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
        for (int sb = 0; sb < 8; sb++) {
            int h = sb >> 2, p4 = sb & 3;
            const __m128i nibble = _mm_cvtsi32_si128(4 * (p4 >> 1)), high = _mm_cvtsi32_si128(2 * p4);
            const uint8_t *ql = p + 144 + 32 * (16 * h + 8 * (p4 & 1)), *qh = p + 144 + 32 * (32 + 8 * h);
            _Pragma("clang loop unroll(full)")
            for (int half = 0; half < 2; half++) {
                __m256 f = k_signed_bytes_times(k_scale_bytes(p + 16, 2 * sb + half), d);
                __m256i s[8];
                _Pragma("clang loop unroll(full)")
                for (int pair = 0; pair < 2; pair++) {
                    int t = 4 * half + 2 * pair;
                    __m256i u0 = q6_step(ql + 32 * t, qh + 32 * t, nibble, high);
                    __m256i u1 = q6_step(ql + 32 * (t + 1), qh + 32 * (t + 1), nibble, high);
                    _Pragma("clang loop unroll(full)")
                    for (int r = 0; r < 8; r++) {
                        const int8_t *q = x[(size_t)r * ldx + 8 * k + sb].q + 16 * half + 8 * pair;
                        __m256i m0 = _mm256_maddubs_epi16(u0, bcast4(q)), m1 = _mm256_maddubs_epi16(u1, bcast4(q + 4));
                        __m256i a = _mm256_madd_epi16(_mm256_add_epi16(m0, m1), ones);
                        s[r] = pair == 0 ? a : _mm256_add_epi32(s[r], a);
                    }
                }
                _Pragma("clang loop unroll(full)")
                for (int r = 0; r < 8; r++) {
                    const rk_q8_block *b = x + (size_t)r * ldx + 8 * k + sb;
                    __m256i i = _mm256_sub_epi32(s[r], _mm256_set1_epi32(32 * (int)b->sum16[half]));
                    __m256 scale = _mm256_mul_ps(f, _mm256_broadcast_ss(&b->d));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), scale, acc[r]);
                }
            }
        }
    }
    for (int r = 0; r < 8; r++) _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);
}

// IQ4_XS interleaved by 8 rows: per super-block the 8 rows' d, per sub-block their 6-bit scales as 8 floats
// (scale·d), and the sub-block's four steps of nibbles looked up in the grid as IQ4_NL's are (IQ4_WEIGHTS, IQ4_ACT);
// with VNNI two sums per row, so that a row's vpdpbusd do not all wait on one another.
// The 8 rows' scales of sub-block sb (scales_h: bits 2s, 2s + 1 of a row's bytes 0-1; scales_l: nibble s of bytes
// 2-5), offset by 32, times d. The 16-bit shifts carry the next byte's bits only onto bits the masks clear.
static inline RK_AVX2Q __m256 iq4_xs_scales8(const uint8_t *scales, int sb, __m256 d) {
    __m128i l = _mm_and_si128(_mm_srli_epi16(k_scale_bytes(scales, 2 + sb / 2), 4 * (sb & 1)), _mm_set1_epi8(0x0F));
    __m128i h = _mm_and_si128(_mm_srli_epi16(k_scale_bytes(scales, sb / 4), 2 * (sb & 3)), _mm_set1_epi8(3));
    return k_signed_bytes_times(_mm_sub_epi8(_mm_or_si128(l, _mm_slli_epi16(h, 4)), _mm_set1_epi8(32)), d);
}
#define GB_IQ4_XS 1088
// Without VNNI one integer sum per row (a pair's products widen to 32 bits at once), with VNNI two (IQ4_XS_NS).
#define IQ4_XS_NS_avx2 1
#define IQ4_XS_NS_vnni 2
#define IQ4_XS_STEP(SUFFIX, R)                                                                                      \
    {                                                                                                               \
        __m256i ulo, uhi;                                                                                           \
        IQ4_WEIGHTS_##SUFFIX(lo, hi, ulo, uhi)                                                                      \
        _Pragma("clang loop unroll(full)")                                                                          \
        for (int r = 0; r < R; r++) {                                                                               \
            const int8_t *q = x[(size_t)r * ldx + 8 * k + sb].q + 4 * t;                                            \
            s[r][0] = dotacc_##SUFFIX(s[r][0], ulo, IQ4_ACT_##SUFFIX(bcast4(q), lo));                               \
            s[r][NS - 1] = dotacc_##SUFFIX(s[r][NS - 1], uhi, IQ4_ACT_##SUFFIX(bcast4(q + 16), hi));                 \
        }                                                                                                           \
    }
#define IQ4_XS_SUM_avx2(r, b) s[r][0]
#define IQ4_XS_SUM_vnni(r, b)                                                                                       \
    _mm256_sub_epi32(_mm256_add_epi32(s[r][0], s[r][1]),                                                            \
                     _mm256_set1_epi32(block_offset(b, 128)))
#define PACK8_IQ4_XS_FUNCTION(SUFFIX, ATTR, R)                                                                      \
    static ATTR void pack8_IQ4_XS_##R##_##SUFFIX(float *out, size_t ldo, const uint8_t *p, const rk_q8_block *x,    \
                                                 size_t ldx, int nsb) {                                             \
        __m256 acc[R];                                                                                              \
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();                                                   \
        for (int k = 0; k < nsb; k++, p += GB_IQ4_XS) {                                                             \
            if (R < 4 || R == 8) PREFETCH_NEXT_GROUP(p, nsb, GB_IQ4_XS)                                             \
            __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));                                        \
            for (int sb = 0; sb < 8; sb++) {                                                                        \
                __m256 f = iq4_xs_scales8(p + 16, sb, d);                                                           \
                enum { NS = IQ4_XS_NS_##SUFFIX };                                                                   \
                __m256i s[R][NS];                                                                                   \
                for (int r = 0; r < R; r++)                                                                         \
                    for (int a = 0; a < NS; a++) s[r][a] = _mm256_setzero_si256();                                  \
                _Pragma("clang loop unroll(full)")                                                                  \
                for (int t = 0; t < 4; t++) {                                                                       \
                    __m256i lo, hi;                                                                                 \
                    nibbles_step(_mm256_loadu_si256((const __m256i *)(p + 64 + 128 * sb + 32 * t)), &lo, &hi);      \
                    IQ4_XS_STEP(SUFFIX, R)                                                                          \
                }                                                                                                   \
                _Pragma("clang loop unroll(full)")                                                                  \
                for (int r = 0; r < R; r++) {                                                                       \
                    const rk_q8_block *b = x + (size_t)r * ldx + 8 * k + sb;                                        \
                    __m256 scale = _mm256_mul_ps(f, _mm256_broadcast_ss(&b->d));                                    \
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(IQ4_XS_SUM_##SUFFIX(r, b)), scale, acc[r]);          \
                }                                                                                                   \
            }                                                                                                       \
        }                                                                                                           \
        for (int r = 0; r < R; r++) _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);                                \
    }
#define PACK8_IQ4_XS_FUNCTIONS(SUFFIX, ATTR)                                                                        \
    PACK8_IQ4_XS_FUNCTION(SUFFIX, ATTR, 1) PACK8_IQ4_XS_FUNCTION(SUFFIX, ATTR, 2)                                   \
    PACK8_IQ4_XS_FUNCTION(SUFFIX, ATTR, 3) PACK8_IQ4_XS_FUNCTION(SUFFIX, ATTR, 4)                                   \
    PACK8_IQ4_XS_FUNCTION(SUFFIX, ATTR, 8)
PACK8_IQ4_XS_FUNCTIONS(avx2, RK_AVX2Q)
PACK8_IQ4_XS_FUNCTIONS(vnni, RK_VNNI)

// Q2_K and Q3_K interleaved by 8 rows: a sub-block sb = 4h + s of a row is bits 2s, 2s + 1 of its 32 bytes of
// half h (Q3_K's high bit: bit sb of its 32 mask bytes), so each step of 4 bytes a row serves the four sub-blocks of
// a half (Q3_K's mask steps all eight). Per 16 values a row sums its 2-bit (Q3_K: 3-bit, the value + 4) products in
// 16 bits (at most 4·2·7·127 = 7112) and vpmaddwd multiplies them by the 8 rows' scales (two 16-bit lanes a row),
// so that a sub-block is one integer per row and activation row. The constant per half — Q2_K's minimums, Q3_K's
// offset of 4 times its scales — is one vpmaddwd of the rows' two minimums (scales) against the activation block's
// two 16-value sums (sum16, one 32-bit word). Then one conversion each: Q3_K d·d_x·(Σ − 4·c), Q2_K
// d·d_x·Σ − dmin·d_x·c.
#define GB_Q2_K 672
#define GB_Q3_K 880
// Bytes a, b of the 8 rows (8 bytes each) as 16 lanes a₀, b₀, a₁, b₁, ... (signed bytes widened).
static inline RK_AVX2Q __m256i k_pairs16(__m128i a, __m128i b) { return _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(a, b)); }
// Q3_K's 16 scales of the 8 rows, offset taken off, decoded once per super-block into out (byte 8j + i: row i's scale
// j). Of the transposed bytes, 0-3 hold the low four bits of scales 0-3 (low nibbles) and 8-11 (high nibbles), 4-7
// those of scales 4-7 and 12-15, and 8-11 the top two bits of scales j, j + 4, j + 8, j + 12 at bit pairs 0-3
// (rk__q3_k_scale's layout).
static inline RK_AVX2Q void q3_k_scales_all(const uint8_t *scales, int8_t out[128]) {
    const __m256i l0 = _mm256_loadu_si256((const __m256i *)scales), l1 = _mm256_loadu_si256((const __m256i *)(scales + 32));
    const __m256i h = _mm256_loadu_si256((const __m256i *)(scales + 64));
    for (int q = 0; q < 4; q++) { // scales 4q .. 4q + 3
        __m256i lo = _mm256_and_si256(_mm256_srli_epi16(q & 1 ? l1 : l0, q >= 2 ? 4 : 0), _mm256_set1_epi8(0x0F));
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(h, 2 * q), _mm256_set1_epi8(3));
        __m256i v = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16(hi, 4)), _mm256_set1_epi8(32));
        _mm256_storeu_si256((__m256i *)(out + 32 * q), v);
    }
}
// Per sub-block: the scales of its two halves (sc[0], sc[1]: each row's in its two 16-bit lanes for vpmaddwd, or with
// VNNI in its 32-bit lane for vpmulld) and the pairs the constant term multiplies (cp: Q2_K's two minimums, Q3_K's
// two scales).
#define K23_SCALE_avx2(s) k_pairs16(s, s)
#define K23_SCALE_vnni(s) _mm256_cvtepi8_epi32(s)
#define K23_SCALES_Q2_K(sb, SUFFIX)                                                                                 \
    {                                                                                                               \
        __m128i b0 = k_scale_bytes(p + 32, 2 * (sb)), b1 = k_scale_bytes(p + 32, 2 * (sb) + 1);                    \
        const __m128i low4 = _mm_set1_epi8(0x0F);                                                                   \
        __m128i s0 = _mm_and_si128(b0, low4), s1 = _mm_and_si128(b1, low4);                                         \
        sc[0] = K23_SCALE_##SUFFIX(s0);                                                                             \
        sc[1] = K23_SCALE_##SUFFIX(s1);                                                                             \
        cp = k_pairs16(_mm_and_si128(_mm_srli_epi16(b0, 4), low4), _mm_and_si128(_mm_srli_epi16(b1, 4), low4));     \
    }
#define K23_SCALES_Q3_K(sb, SUFFIX)                                                                                 \
    {                                                                                                               \
        __m128i s0 = _mm_loadl_epi64((const __m128i *)(s3 + 16 * (sb))),                                           \
                s1 = _mm_loadl_epi64((const __m128i *)(s3 + 16 * (sb) + 8));                                        \
        sc[0] = K23_SCALE_##SUFFIX(s0);                                                                             \
        sc[1] = K23_SCALE_##SUFFIX(s1);                                                                             \
        cp = k_pairs16(s0, s1);                                                                                     \
    }
// Step t (0..7) of sub-block sb's values: 32 bytes, 4 a row.
static inline RK_AVX2Q __m256i k_two_bits_step(const uint8_t *step, int s) {
    return _mm256_and_si256(_mm256_srli_epi16(_mm256_loadu_si256((const __m256i *)step), 2 * s), _mm256_set1_epi8(3));
}
#define K23_STEP_Q2_K(sb, t) k_two_bits_step(p + 160 + 32 * (8 * ((sb) >> 2) + (t)), (sb) & 3)
#define K23_STEP_Q3_K(sb, t)                                                                                        \
    _mm256_or_si256(k_two_bits_step(p + 368 + 32 * (8 * ((sb) >> 2) + (t)), (sb) & 3),                            \
                    bit_moved(_mm256_loadu_si256((const __m256i *)(p + 112 + 32 * (t))), sb, 2))
// Four steps' products with an activation row's 16 values at q, added in 16 bits.
static inline RK_AVX2Q __m256i k_four_steps(const __m256i u[4], const int8_t *q) {
    __m256i a = _mm256_add_epi16(_mm256_maddubs_epi16(u[0], bcast4(q)), _mm256_maddubs_epi16(u[1], bcast4(q + 4)));
    __m256i b = _mm256_add_epi16(_mm256_maddubs_epi16(u[2], bcast4(q + 8)), _mm256_maddubs_epi16(u[3], bcast4(q + 12)));
    return _mm256_add_epi16(a, b);
}
// With VNNI, vpdpbusd adds a row's four products in its 32-bit lane, and one vpmulld scales a half's sum.
static inline RK_VNNI __m256i k_four_steps_vnni(const __m256i u[4], const int8_t *q) {
    __m256i a = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u[0], bcast4(q));
    __m256i b = _mm256_dpbusd_epi32(_mm256_setzero_si256(), u[2], bcast4(q + 8));
    a = _mm256_dpbusd_epi32(a, u[1], bcast4(q + 4));
    b = _mm256_dpbusd_epi32(b, u[3], bcast4(q + 12));
    return _mm256_add_epi32(a, b);
}
#define K23_HALF_avx2(u, q, half) _mm256_madd_epi16(k_four_steps(u, q), sc[half])
#define K23_HALF_vnni(u, q, half) _mm256_mullo_epi32(k_four_steps_vnni(u, q), sc[half])
#define K23_FINISH_Q2_K(a, i, c, b)                                                                                 \
    {                                                                                                               \
        __m256 dx = _mm256_broadcast_ss(&(b)->d);                                                                   \
        a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_mul_ps(d, dx), a);                                        \
        a = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(c), _mm256_mul_ps(dmin, dx), a);                                    \
    }
#define K23_FINISH_Q3_K(a, i, c, b)                                                                                 \
    a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(i, _mm256_slli_epi32(c, 2))),                          \
                        _mm256_mul_ps(d, _mm256_broadcast_ss(&(b)->d)), a);
#define K23_D_Q2_K                                                                                                  \
    __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));                                                \
    __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16)));
#define K23_D_Q3_K                                                                                                  \
    __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));                                                \
    int8_t s3[128];                                                                                                 \
    q3_k_scales_all(p + 16, s3);
#define PACK8_K23_FUNCTION(TYPE, SUFFIX, ATTR, R)                                                                   \
    static ATTR void pack8_##TYPE##_##R##_##SUFFIX(float *out, size_t ldo, const uint8_t *p, const rk_q8_block *x,  \
                                                   size_t ldx, int nsb) {                                           \
        __m256 acc[R];                                                                                              \
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();                                                   \
        for (int k = 0; k < nsb; k++, p += GB_##TYPE) {                                                             \
            if (R < 4 || R == 8) PREFETCH_NEXT_GROUP(p, nsb, GB_##TYPE)                                             \
            K23_D_##TYPE                                                                                            \
            for (int sb = 0; sb < 8; sb++) {                                                                        \
                __m256i sc[2], cp, i[R];                                                                            \
                K23_SCALES_##TYPE(sb, SUFFIX)                                                                       \
                _Pragma("clang loop unroll(full)")                                                                  \
                for (int half = 0; half < 2; half++) {                                                              \
                    __m256i u[4];                                                                                   \
                    _Pragma("clang loop unroll(full)")                                                              \
                    for (int t = 0; t < 4; t++) u[t] = K23_STEP_##TYPE(sb, 4 * half + t);                           \
                    _Pragma("clang loop unroll(full)")                                                              \
                    for (int r = 0; r < R; r++) {                                                                   \
                        const int8_t *q = x[(size_t)r * ldx + 8 * k + sb].q + 16 * half;                            \
                        __m256i m = K23_HALF_##SUFFIX(u, q, half);                                                  \
                        i[r] = half == 0 ? m : _mm256_add_epi32(i[r], m);                                           \
                    }                                                                                               \
                }                                                                                                   \
                _Pragma("clang loop unroll(full)")                                                                  \
                for (int r = 0; r < R; r++) {                                                                       \
                    const rk_q8_block *b = x + (size_t)r * ldx + 8 * k + sb;                                        \
                    int32_t sums;                                                                                   \
                    memcpy(&sums, b->sum16, 4);                                                                     \
                    __m256i c = _mm256_madd_epi16(cp, _mm256_set1_epi32(sums));                                     \
                    K23_FINISH_##TYPE(acc[r], i[r], c, b)                                                           \
                }                                                                                                   \
            }                                                                                                       \
        }                                                                                                           \
        for (int r = 0; r < R; r++) _mm256_storeu_ps(out + (size_t)r * ldo, acc[r]);                                \
    }
#define PACK8_K23_FUNCTIONS(TYPE, SUFFIX, ATTR)                                                                     \
    PACK8_K23_FUNCTION(TYPE, SUFFIX, ATTR, 1) PACK8_K23_FUNCTION(TYPE, SUFFIX, ATTR, 2)                             \
    PACK8_K23_FUNCTION(TYPE, SUFFIX, ATTR, 3) PACK8_K23_FUNCTION(TYPE, SUFFIX, ATTR, 4)                             \
    PACK8_K23_FUNCTION(TYPE, SUFFIX, ATTR, 8)
PACK8_K23_FUNCTIONS(Q2_K, avx2, RK_AVX2Q)
PACK8_K23_FUNCTIONS(Q3_K, avx2, RK_AVX2Q)
PACK8_K23_FUNCTIONS(Q2_K, vnni, RK_VNNI)
PACK8_K23_FUNCTIONS(Q3_K, vnni, RK_VNNI)

// The super-block kernels' last argument is the count of super-blocks (ldx counts the activation's blocks of 32).
#define PACK8K_FUNCTION(TYPE, R)                                                                                    \
    static RK_AVX2Q void pack8_##TYPE##_##R##_avx2(float *out, size_t ldo, const uint8_t *p, const rk_q8_block *x,  \
                                                   size_t ldx, int nsb) {                                           \
        PACK8_##TYPE##_BODY(R)                                                                                      \
    }
PACK8K_FUNCTION(Q4_K, 1) PACK8K_FUNCTION(Q4_K, 2) PACK8K_FUNCTION(Q4_K, 3) PACK8K_FUNCTION(Q4_K, 4)
PACK8K_FUNCTION(Q5_K, 1) PACK8K_FUNCTION(Q5_K, 2) PACK8K_FUNCTION(Q5_K, 3) PACK8K_FUNCTION(Q5_K, 4)
PACK8K_FUNCTION(Q6_K, 1) PACK8K_FUNCTION(Q6_K, 2) PACK8K_FUNCTION(Q6_K, 3) PACK8K_FUNCTION(Q6_K, 4)

typedef void (*pack8_fn)(float *, size_t, const uint8_t *, const rk_q8_block *, size_t, int);
static void pack8_functions(int type, int vnni, pack8_fn f[4]) {
#define RK_SET_PACK8(TYPE, S)                                                                                       \
    f[0] = pack8_##TYPE##_1_##S; f[1] = pack8_##TYPE##_2_##S; f[2] = pack8_##TYPE##_3_##S; f[3] = pack8_##TYPE##_4_##S;
    switch (type) {
    case RK_GGML_Q4_1: if (vnni) { RK_SET_PACK8(Q4_1, vnni) } else { RK_SET_PACK8(Q4_1H, avx2) } break;
    case RK_GGML_Q4_0: if (vnni) { RK_SET_PACK8(Q4_0, vnni) } else { RK_SET_PACK8(Q4_0H, avx2) } break;
    case RK_GGML_Q5_0: RK_SET_PACK8(Q5_0, avx2) break; // AVX2 on every x86 kernel level
    case RK_GGML_Q5_1: RK_SET_PACK8(Q5_1, avx2) break;
    case RK_GGML_Q4_K:
        RK_SET_PACK8(Q4_K, avx2)
        if (vnni) { f[1] = pack8_Q4_K_2_vnni; f[2] = pack8_Q4_K_3_vnni; f[3] = pack8_Q4_K_4_vnni; }
        break;
    case RK_GGML_Q5_K: if (vnni) { RK_SET_PACK8(Q5_K, vnni) } else { RK_SET_PACK8(Q5_K, avx2) } break;
    case RK_GGML_Q6_K:
        RK_SET_PACK8(Q6_K, avx2)
        if (vnni) { f[1] = pack8_Q6_K_2_vnni; f[2] = pack8_Q6_K_3_vnni; f[3] = pack8_Q6_K_4_vnni; }
        break;
    case RK_GGML_IQ4_NL: if (vnni) { RK_SET_PACK8(IQ4_NLX, vnni) } else { RK_SET_PACK8(IQ4_NL, avx2) } break;
    case RK_GGML_IQ4_XS: if (vnni) { RK_SET_PACK8(IQ4_XS, vnni) } else { RK_SET_PACK8(IQ4_XS, avx2) } break;
    case RK_GGML_Q2_K: if (vnni) { RK_SET_PACK8(Q2_K, vnni) } else { RK_SET_PACK8(Q2_K, avx2) } break;
    case RK_GGML_Q3_K: if (vnni) { RK_SET_PACK8(Q3_K, vnni) } else { RK_SET_PACK8(Q3_K, avx2) } break;
    default: if (vnni) { RK_SET_PACK8(Q8_0X, vnni) } else { RK_SET_PACK8(Q8_0, avx2) } break;
    }
#undef RK_SET_PACK8
}

// Rows [n, N) of one group of 8 weight rows: eight activation rows at a time where there is a kernel for it, then
// four at a time (the last pass takes 1-4).
// `ldx`: activation blocks (of 32) per row; `nb`: weight blocks per row (the same but for super-block types).
static void pack8_rows(float *out, const rk_q8_block *xq, const uint8_t *p, pack8_fn f[4], pack8_fn eight, int g,
                       int n, int N, int ldx, int nb, int OC) {
    for (; eight && n + 8 <= N; n += 8)
        eight(out + RK_IDX(n, 8 * g, OC), (size_t)OC, p, xq + RK_IDX(n, 0, ldx), (size_t)ldx, nb);
    for (; n < N; n += 4) {
        int R = N - n < 4 ? N - n : 4;
        f[R - 1](out + RK_IDX(n, 8 * g, OC), (size_t)OC, p, xq + RK_IDX(n, 0, ldx), (size_t)ldx, nb);
    }
}
#endif

int rk_qmatmul_q8_packed8_ref(float *out, const rk_q8_block *xq, const void *wp, int type, int N, int C, int OC,
                              int group_begin, int group_end) {
    if (rk_qpack8_bytes(type, OC, C) == 0 || group_begin < 0 || group_end > OC / 8) return RK_ERR_ARG;
    return packed_scalar(out, xq, (const uint8_t *)wp, type, N, C, OC, group_begin, group_end);
}

int rk_qmatmul_q8_packed8(float *out, const rk_q8_block *xq, const void *wp, int type, int N, int C, int OC,
                          int group_begin, int group_end) {
    if (rk_qpack8_bytes(type, OC, C) == 0 || group_begin < 0 || group_end > OC / 8) return RK_ERR_ARG;
#if RK_X86
    int isa = rk_isa_active();
    if (isa >= RK_ISA_AVX2) {
        pack8_fn f[4];
        int vnni = isa >= RK_ISA_AVX512 && rk_cpu_has_vnni();
        pack8_functions(type, vnni, f);
        int ldx = C / 32, nb = C / (int)rk_quant_block_elements(type);
        pack8_fn eight = type == RK_GGML_Q4_1 ? (vnni ? pack8_Q4_1_8_vnni : pack8_Q4_1H_8_avx2)
                         : type == RK_GGML_Q8_0 && vnni ? pack8_Q8_0X_8_vnni
                         : type == RK_GGML_Q5_0 ? pack8_Q5_0_8_avx2
                         : type == RK_GGML_Q5_1 ? pack8_Q5_1_8_avx2
                         : type == RK_GGML_Q4_K ? (vnni ? pack8_Q4_K_8_vnni : pack8_Q4_K_8_avx2)
                         : type == RK_GGML_Q5_K ? (vnni ? pack8_Q5_K_8_vnni : pack8_Q5_K_8_avx2)
                         : type == RK_GGML_Q6_K ? (vnni ? pack8_Q6_K_8_vnni : pack8_Q6_K_8_avx2)
                         : type == RK_GGML_IQ4_XS ? (vnni ? pack8_IQ4_XS_8_vnni : pack8_IQ4_XS_8_avx2)
                         : type == RK_GGML_Q2_K ? (vnni ? pack8_Q2_K_8_vnni : pack8_Q2_K_8_avx2)
                         : type == RK_GGML_Q3_K ? (vnni ? pack8_Q3_K_8_vnni : pack8_Q3_K_8_avx2)
                                                : NULL;
        size_t gb = (size_t)nb * 8 * rk_quant_block_bytes(type);
        // Each group's weights (a few KB) against every activation row, eight (Q4_1, Q5_0, Q5_1, the K types, IQ4_XS;
        // Q8_0 with VNNI) or four rows at a time. Q4_1 and Q8_0 with VNNI: eight rows against two groups at a time while
        // there are a pair of groups and eight rows; each group of the pair then takes its remaining rows while its
        // weights are still in cache.
        // Q8_0's pair of groups only from 16 rows: at 8 rows, where its weights stream from memory, the pair ran 13%
        // slower than one group at a time (`reins kernels --only "Q8_0 interleaved"`), at 64 rows 24% faster.
        pack8_fn sixteen = !vnni ? NULL
                           : type == RK_GGML_Q4_1 ? pack16_Q4_1_8_vnni
                           : type == RK_GGML_Q8_0 && N >= 16 ? pack16_Q8_0X_8_vnni
                                                             : NULL;
        int g = group_begin, n8 = sixteen ? N - N % 8 : 0;
        for (; n8 > 0 && g + 2 <= group_end; g += 2) {
            const uint8_t *p = (const uint8_t *)wp + (size_t)g * gb;
            for (int n = 0; n < n8; n += 8)
                sixteen(out + RK_IDX(n, 8 * g, OC), (size_t)OC, p, xq + RK_IDX(n, 0, nb), (size_t)nb, nb);
            for (int h = 0; h < 2; h++) pack8_rows(out, xq, p + h * gb, f, eight, g + h, n8, N, ldx, nb, OC);
        }
        for (; g < group_end; g++)
            pack8_rows(out, xq, (const uint8_t *)wp + (size_t)g * gb, f, eight, g, 0, N, ldx, nb, OC);
        return RK_OK;
    }
#endif
    return packed_scalar(out, xq, (const uint8_t *)wp, type, N, C, OC, group_begin, group_end);
}
