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
    default: return 0.0f;
    }
}

#if RK_X86
// ---- block dot products, AVX2 and AVX-512 VNNI (Q4_0, Q4_1, Q8_0: the types small models ship in) ---------------
// One weight row against a tile of up to 4 activation rows: each weight block is unpacked once and multiplied with
// every row of the tile (maddubs + madd on AVX2, one dpbusd with VNNI), its half-precision scales converted once.
#define RK_AVX2Q __attribute__((target("avx2,fma,f16c")))
#define RK_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

static inline RK_AVX2Q __m256i nibbles32(const uint8_t *qs) {
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F)); // elements 0..15 then 16..31
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
#define TYPE_HAS_MIN_Q4_1 1
#define TYPE_HAS_MIN_Q4_0 0
#define TYPE_HAS_MIN_Q8_0 0
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

typedef void (*pair_fn)(float *, const uint8_t *, const uint8_t *, const rk_q8_block *, int);
static pair_fn pair_function(int type, int vnni) {
    switch (type) {
    case RK_GGML_Q4_1: return vnni ? pair_q4_1_vnni : pair_q4_1_avx2;
    case RK_GGML_Q4_0: return vnni ? pair_q4_0_vnni : pair_q4_0_avx2;
    case RK_GGML_Q8_0: return vnni ? pair_q8_0_vnni : pair_q8_0_avx2;
    default: return NULL;
    }
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
    int isa = rk_isa_active();
    if (isa >= RK_ISA_AVX2 && (type == RK_GGML_Q4_0 || type == RK_GGML_Q4_1 || type == RK_GGML_Q8_0)) {
        pair_fn pair = pair_function(type, isa >= RK_ISA_AVX512 && rk_cpu_has_vnni());
        // Rows in pairs (an odd last row is paired with itself); each pair against every activation row while its
        // two weight rows are in L1.
        for (int o = row_begin; o < row_end; o += 2) {
            int o1 = o + 1 < row_end ? o + 1 : o;
            const uint8_t *w0 = (const uint8_t *)w + o * row_bytes, *w1 = (const uint8_t *)w + o1 * row_bytes;
            for (int n = 0; n < N; n++) {
                float two[2];
                pair(two, w0, w1, xq + RK_IDX(n, 0, nb), nb);
                out[RK_IDX(n, o, OC)] = two[0];
                if (o1 != o) out[RK_IDX(n, o1, OC)] = two[1];
            }
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
