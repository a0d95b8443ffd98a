// quant.c — llama.cpp's (GGUF's) block formats: element counts, byte sizes and dequantization to float32.
//
// A quantized row is a run of blocks; each block holds 32 (Q4_0 .. Q8_0, IQ4_NL) or 256 (the K types, IQ4_XS)
// elements as small integers (IQ4's: indices into a fixed grid of 16 values) with one or two half-precision scales.
// Dequantization follows the formats' definitions value for value, in float32 with one rounding per operation, as the
// `gguf` Python package computes them (d·q, then + m or - m·dmin as a separate step), so the results are
// bit-identical to it. Contraction into fused multiply-adds would change the last bit and is switched off for this
// file.
#include "rk_internal.h"
#include <string.h>

#pragma STDC FP_CONTRACT OFF

size_t rk_quant_block_elements(int type) {
    switch (type) {
    case RK_GGML_F32: case RK_GGML_F16: case RK_GGML_BF16: return 1;
    case RK_GGML_Q4_0: case RK_GGML_Q4_1: case RK_GGML_Q5_0: case RK_GGML_Q5_1: case RK_GGML_Q8_0: return 32;
    case RK_GGML_IQ4_NL: return 32;
    case RK_GGML_Q2_K: case RK_GGML_Q3_K: case RK_GGML_Q4_K: case RK_GGML_Q5_K: case RK_GGML_Q6_K:
    case RK_GGML_IQ4_XS: return 256;
    default: return 0;
    }
}

size_t rk_quant_block_bytes(int type) {
    switch (type) {
    case RK_GGML_F32: return 4;
    case RK_GGML_F16: case RK_GGML_BF16: return 2;
    case RK_GGML_Q4_0: return 18;
    case RK_GGML_Q4_1: return 20;
    case RK_GGML_Q5_0: return 22;
    case RK_GGML_Q5_1: return 24;
    case RK_GGML_Q8_0: return 34;
    case RK_GGML_IQ4_NL: return 18;
    case RK_GGML_Q2_K: return 84;
    case RK_GGML_Q3_K: return 110;
    case RK_GGML_Q4_K: return 144;
    case RK_GGML_Q5_K: return 176;
    case RK_GGML_Q6_K: return 210;
    case RK_GGML_IQ4_XS: return 136;
    default: return 0;
    }
}

// IEEE half to single, exactly (subnormals, infinities and NaNs included), without relying on _Float16.
float rk_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { // subnormal: normalise
        int e = -1;
        do { man <<= 1; e++; } while ((man & 0x400u) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FFu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t load16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t load32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline float half_at(const uint8_t *p) { return rk_half_to_float(load16(p)); }

// The 6-bit scale and minimum of sub-block j (0..7) of a Q4_K / Q5_K block, from its 12 packed bytes: bytes 0-3 hold
// the low six bits of scales 0-3, bytes 4-7 those of minimums 0-3; bytes 8-11 hold the low four bits of scales 4-7
// (low nibble) and minimums 4-7 (high nibble), whose top two bits are the top bits of bytes 0-3 and 4-7.
static inline void k_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
        *mn = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

// One block of each type into 32 or 256 floats.
static void deq_q4_0(float *y, const uint8_t *b) {
    float d = half_at(b);
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)((int)(qs[j] & 0x0F) - 8);
        y[j + 16] = d * (float)((int)(qs[j] >> 4) - 8);
    }
}
static void deq_q4_1(float *y, const uint8_t *b) {
    float d = half_at(b), m = half_at(b + 2);
    const uint8_t *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        float lo = d * (float)(qs[j] & 0x0F), hi = d * (float)(qs[j] >> 4);
        y[j] = lo + m;
        y[j + 16] = hi + m;
    }
}
static void deq_q5_0(float *y, const uint8_t *b) {
    float d = half_at(b);
    uint32_t qh = load32(b + 2);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < 16; j++) {
        int lo = (qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
        int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
        y[j] = d * (float)(lo - 16);
        y[j + 16] = d * (float)(hi - 16);
    }
}
static void deq_q5_1(float *y, const uint8_t *b) {
    float d = half_at(b), m = half_at(b + 2);
    uint32_t qh = load32(b + 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < 16; j++) {
        int lo = (qs[j] & 0x0F) | (int)(((qh >> j) & 1u) << 4);
        int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
        float a = d * (float)lo, c = d * (float)hi;
        y[j] = a + m;
        y[j + 16] = c + m;
    }
}
static void deq_q8_0(float *y, const uint8_t *b) {
    float d = half_at(b);
    const int8_t *qs = (const int8_t *)(b + 2);
    for (int j = 0; j < 32; j++) y[j] = (float)qs[j] * d;
}
// Q4_K: d, dmin, 12 scale bytes, 128 bytes of nibbles. Chunk c (32 bytes) holds sub-block 2c in its low nibbles and
// 2c+1 in its high nibbles; element = (d·scale)·q - (dmin·min).
static void deq_q4_k(float *y, const uint8_t *b) {
    float d = half_at(b), dmin = half_at(b + 2);
    const uint8_t *sc = b + 4, *qs = b + 16;
    for (int c = 0; c < 4; c++) {
        uint8_t s0, m0, s1, m1;
        k_scale_min(sc, 2 * c, &s0, &m0);
        k_scale_min(sc, 2 * c + 1, &s1, &m1);
        float d0 = d * (float)s0, dm0 = dmin * (float)m0, d1 = d * (float)s1, dm1 = dmin * (float)m1;
        for (int l = 0; l < 32; l++) {
            float a = d0 * (float)(qs[32 * c + l] & 0x0F), e = d1 * (float)(qs[32 * c + l] >> 4);
            y[64 * c + l] = a - dm0;
            y[64 * c + 32 + l] = e - dm1;
        }
    }
}
// Q5_K: as Q4_K plus 32 bytes of high bits: bit s of byte l is the fifth bit of element l of sub-block s.
static void deq_q5_k(float *y, const uint8_t *b) {
    float d = half_at(b), dmin = half_at(b + 2);
    const uint8_t *sc = b + 4, *qh = b + 16, *qs = b + 48;
    for (int c = 0; c < 4; c++) {
        uint8_t s0, m0, s1, m1;
        k_scale_min(sc, 2 * c, &s0, &m0);
        k_scale_min(sc, 2 * c + 1, &s1, &m1);
        float d0 = d * (float)s0, dm0 = dmin * (float)m0, d1 = d * (float)s1, dm1 = dmin * (float)m1;
        for (int l = 0; l < 32; l++) {
            int lo = (qs[32 * c + l] & 0x0F) | (((qh[l] >> (2 * c)) & 1) << 4);
            int hi = (qs[32 * c + l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
            float a = d0 * (float)lo, e = d1 * (float)hi;
            y[64 * c + l] = a - dm0;
            y[64 * c + 32 + l] = e - dm1;
        }
    }
}
// Q6_K: 128 bytes of low nibbles, 64 of high bit pairs, 16 signed scales (one per 16 elements), d. In each half h of
// 128 elements, element r takes nibble r/64 of ql[64h + r%64] and bit pair r/32 of qh[32h + r%32]; value
// (d·scale)·(q - 32).
static void deq_q6_k(float *y, const uint8_t *b) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = half_at(b + 208);
    for (int h = 0; h < 2; h++) {
        for (int r = 0; r < 128; r++) {
            int lo = (ql[64 * h + (r & 63)] >> (4 * (r >> 6))) & 0x0F;
            int hi = (qh[32 * h + (r & 31)] >> (2 * (r >> 5))) & 3;
            int i = 128 * h + r;
            float ds = d * (float)sc[i >> 4];
            y[i] = ds * (float)((lo | (hi << 4)) - 32);
        }
    }
}

// Q2_K: 16 bytes of scales (low nibble: the scale of 16 elements, high nibble: their minimum), 64 bytes of 2-bit
// values, d, dmin. Element i = 128h + 32s + l takes bits 2s, 2s+1 of byte 32h + l; value (d·scale)·q - (dmin·min).
static void deq_q2_k(float *y, const uint8_t *b) {
    const uint8_t *sc = b, *qs = b + 16;
    float d = half_at(b + 80), dmin = half_at(b + 82);
    for (int i = 0; i < 256; i++) {
        int q = rk__k_two_bits(qs, i);
        float dl = d * (float)(sc[i >> 4] & 0x0F), ml = dmin * (float)(sc[i >> 4] >> 4);
        float a = dl * (float)q;
        y[i] = a - ml;
    }
}
// Q3_K: 32 bytes of high bits, 64 bytes of 2-bit values (laid out as Q2_K's), 12 bytes of scales, d. Element
// i = 32j + l: bit j of byte l is its high bit, and a clear high bit takes 4 off; value (d·scale)·q, q in -4..3.
static void deq_q3_k(float *y, const uint8_t *b) {
    const uint8_t *hm = b, *qs = b + 32, *sc = b + 96;
    float d = half_at(b + 108);
    for (int i = 0; i < 256; i++) {
        int q = rk__k_two_bits(qs, i) - (((hm[i & 31] >> (i >> 5)) & 1) ? 0 : 4);
        float dl = d * (float)rk__q3_k_scale(sc, i >> 4);
        y[i] = dl * (float)q;
    }
}
const int8_t rk__iq4_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
// IQ4_NL: d, then 16 bytes of 4-bit indices into the grid (element j in the low nibble of byte j, 16 + j in the high).
static void deq_iq4_nl(float *y, const uint8_t *b) {
    float d = half_at(b);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)rk__iq4_values[b[2 + j] & 0x0F];
        y[j + 16] = d * (float)rk__iq4_values[b[2 + j] >> 4];
    }
}
// IQ4_XS: d, the top two bits of the eight 6-bit sub-block scales (a 16-bit word, two bits each), their low four bits
// (4 bytes, two nibbles each), then each sub-block of 32 as IQ4_NL's 16 bytes; value (d·(scale − 32))·grid[q].
static void deq_iq4_xs(float *y, const uint8_t *b) {
    float d = half_at(b);
    for (int s = 0; s < 8; s++) {
        float dl = d * (float)rk__iq4_xs_scale(b, s);
        const uint8_t *qs = b + 8 + 16 * s;
        for (int j = 0; j < 16; j++) {
            y[32 * s + j] = dl * (float)rk__iq4_values[qs[j] & 0x0F];
            y[32 * s + j + 16] = dl * (float)rk__iq4_values[qs[j] >> 4];
        }
    }
}

int rk_dequantize_ref(float *out, const void *src, size_t n, int type) {
    size_t be = rk_quant_block_elements(type), bb = rk_quant_block_bytes(type);
    if (be == 0 || n % be != 0) return RK_ERR_ARG;
    const uint8_t *p = (const uint8_t *)src;
    size_t blocks = n / be;
    for (size_t k = 0; k < blocks; k++, p += bb, out += be) {
        switch (type) {
        case RK_GGML_F32: { uint32_t u = load32(p); memcpy(out, &u, 4); break; }
        case RK_GGML_F16: out[0] = half_at(p); break;
        case RK_GGML_BF16: { uint32_t u = (uint32_t)load16(p) << 16; memcpy(out, &u, 4); break; }
        case RK_GGML_Q4_0: deq_q4_0(out, p); break;
        case RK_GGML_Q4_1: deq_q4_1(out, p); break;
        case RK_GGML_Q5_0: deq_q5_0(out, p); break;
        case RK_GGML_Q5_1: deq_q5_1(out, p); break;
        case RK_GGML_Q8_0: deq_q8_0(out, p); break;
        case RK_GGML_Q4_K: deq_q4_k(out, p); break;
        case RK_GGML_Q5_K: deq_q5_k(out, p); break;
        case RK_GGML_Q6_K: deq_q6_k(out, p); break;
        case RK_GGML_Q2_K: deq_q2_k(out, p); break;
        case RK_GGML_Q3_K: deq_q3_k(out, p); break;
        case RK_GGML_IQ4_NL: deq_iq4_nl(out, p); break;
        case RK_GGML_IQ4_XS: deq_iq4_xs(out, p); break;
        default: return RK_ERR_ARG;
        }
    }
    return RK_OK;
}

#if RK_X86
// AVX2 for the types small models ship in (Q4_0, Q4_1, Q8_0): the same operations, one rounding each (a multiply,
// then an add as its own instruction, never fused), so the results are bit-identical to the scalar definition.
static inline RK_AVX2 void store_bytes_as_floats(float *y, __m256i bytes, int is_signed, __m256 d, __m256 m, int add_m) {
    __m128i lo = _mm256_castsi256_si128(bytes), hi = _mm256_extracti128_si256(bytes, 1);
    __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int i = 0; i < 4; i++) {
        __m256i v = is_signed ? _mm256_cvtepi8_epi32(parts[i]) : _mm256_cvtepu8_epi32(parts[i]);
        __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), d);
        if (add_m) f = _mm256_add_ps(f, m);
        _mm256_storeu_ps(y + 8 * i, f);
    }
}
static RK_AVX2 int dequantize_avx2(float *out, const uint8_t *p, size_t blocks, int type) {
    const __m256i low = _mm256_set1_epi8(0x0F);
    for (size_t k = 0; k < blocks; k++, out += 32) {
        switch (type) {
        case RK_GGML_Q4_0: {
            __m128i raw = _mm_loadu_si128((const __m128i *)(p + 2));
            __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low);
            q = _mm256_sub_epi8(q, _mm256_set1_epi8(8));
            store_bytes_as_floats(out, q, 1, _mm256_set1_ps(half_at(p)), _mm256_setzero_ps(), 0);
            p += 18;
            break;
        }
        case RK_GGML_Q4_1: {
            __m128i raw = _mm_loadu_si128((const __m128i *)(p + 4));
            __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low);
            store_bytes_as_floats(out, q, 0, _mm256_set1_ps(half_at(p)), _mm256_set1_ps(half_at(p + 2)), 1);
            p += 20;
            break;
        }
        default: { // Q8_0
            __m256i q = _mm256_loadu_si256((const __m256i *)(p + 2));
            store_bytes_as_floats(out, q, 1, _mm256_set1_ps(half_at(p)), _mm256_setzero_ps(), 0);
            p += 34;
            break;
        }
        }
    }
    return RK_OK;
}
#endif

int rk_dequantize(float *out, const void *src, size_t n, int type) {
#if RK_X86
    if ((type == RK_GGML_Q4_0 || type == RK_GGML_Q4_1 || type == RK_GGML_Q8_0) && n % 32 == 0 &&
        rk_isa_active() >= RK_ISA_AVX2)
        return dequantize_avx2(out, (const uint8_t *)src, n / 32, type);
#endif
    // The other types: the block loops above, which the compiler vectorises where it can.
    return rk_dequantize_ref(out, src, n, type);
}
