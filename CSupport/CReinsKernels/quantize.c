// quantize.c — float32 into GGUF's block formats, for writing models (`reins quantize`).
//
// Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 follow the formats' reference quantizers operation for operation, in float32 with
// one rounding per operation (no fused multiply-adds), so the bytes equal the `gguf` Python package's. Q4_K and Q6_K
// have no reference quantizer there; Reins's is a direct one (each sub-block's range, then the super-block's scales
// rounded to half precision before the values are placed against them), documented with its error in the tests.
// Half precision rounds to nearest, ties to even, as NumPy's float16 conversion does.
#include "rk_internal.h"
#include <string.h>

#pragma STDC FP_CONTRACT OFF

uint16_t rk_float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, abs = x & 0x7FFFFFFFu;
    if (abs >= 0x7F800000u) return (uint16_t)(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u | ((abs >> 13) & 0x3FFu) : 0));
    if (abs >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u); // rounds to 65520 or more: infinity
    if (abs < 0x38800000u) {                                    // below the smallest normal half: subnormal or zero
        if (abs < 0x33000000u) return (uint16_t)sign;            // below half the smallest subnormal (ties go to 0)
        uint32_t e = abs >> 23, man = (abs & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126 - e; // 14..24: the subnormal's value is man >> shift (in units of 2^-24)
        uint32_t q = man >> shift, rest = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rest > half || (rest == half && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t e = (abs >> 23) - 112, man = abs & 0x7FFFFFu;
    uint32_t q = (e << 10) | (man >> 13), rest = man & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (q & 1u))) q++; // a carry into the exponent is the right result
    return (uint16_t)(sign | q);
}

static inline void store16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void store32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }
// The value at the first position of the largest magnitude, with its sign.
static float signed_absmax(const float *x, int n) {
    float best = 0, value = 0;
    for (int j = 0; j < n; j++) {
        float a = fabsf(x[j]);
        if (a > best) { best = a; value = x[j]; }
    }
    return value;
}

static void q8_0(uint8_t *b, const float *x) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    store16(b, rk_float_to_half(d));
    for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
}
// Nibbles: element j in the low half of byte j, element j + 16 in the high half.
// The scale of a symmetric block (Q4_0, Q5_0): its largest-magnitude value maps to -half_range; stored as a half at b.
// Returns 1/d (0 for an all-zero block), computed before d is rounded, as the reference does.
static float symmetric_header(uint8_t *b, const float *x, float half_range) {
    float d = signed_absmax(x, 32) / -half_range, id = d != 0 ? 1.0f / d : 0.0f;
    store16(b, rk_float_to_half(d));
    return id;
}
static void q4_0(uint8_t *b, const float *x) {
    float id = symmetric_header(b, x, 8.0f);
    for (int j = 0; j < 16; j++) {
        int lo = (int)clampf(truncf(x[j] * id + 8.5f), 0, 15), hi = (int)clampf(truncf(x[j + 16] * id + 8.5f), 0, 15);
        b[2 + j] = (uint8_t)(lo | (hi << 4));
    }
}
static void range_of(const float *x, int n, float *mn, float *mx) {
    *mn = x[0]; *mx = x[0];
    for (int j = 1; j < n; j++) { *mn = fminf(*mn, x[j]); *mx = fmaxf(*mx, x[j]); }
}
// The step and minimum of an affine block (Q4_1, Q5_1) with `steps` steps over its range, stored as halves at b and
// b + 2. Returns 1/d (0 for a constant block) and the unrounded minimum in *mn.
static float affine_header(uint8_t *b, const float *x, float steps, float *mn) {
    float mx;
    range_of(x, 32, mn, &mx);
    float d = (mx - *mn) / steps, id = d != 0 ? 1.0f / d : 0.0f;
    store16(b, rk_float_to_half(d));
    store16(b + 2, rk_float_to_half(*mn));
    return id;
}
static void q4_1(uint8_t *b, const float *x) {
    float mn, id = affine_header(b, x, 15.0f, &mn);
    for (int j = 0; j < 16; j++) {
        int lo = (int)clampf(truncf((x[j] - mn) * id + 0.5f), 0, 15);
        int hi = (int)clampf(truncf((x[j + 16] - mn) * id + 0.5f), 0, 15);
        b[4 + j] = (uint8_t)(lo | (hi << 4));
    }
}
// Five bits: the low four as Q4's nibbles, bit j of the 32-bit word qh is the fifth bit of element j.
static void pack5(uint8_t *qh, uint8_t *qs, const int *q) {
    uint32_t h = 0;
    for (int j = 0; j < 32; j++) h |= (uint32_t)((q[j] >> 4) & 1) << j;
    store32(qh, h);
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4));
}
static void q5_0(uint8_t *b, const float *x) {
    float id = symmetric_header(b, x, 16.0f);
    int q[32];
    for (int j = 0; j < 32; j++) q[j] = (int)clampf(truncf(x[j] * id + 16.5f), 0, 31);
    pack5(b + 2, b + 6, q);
}
static void q5_1(uint8_t *b, const float *x) {
    float mn, id = affine_header(b, x, 31.0f, &mn);
    int q[32];
    for (int j = 0; j < 32; j++) q[j] = (int)clampf(truncf((x[j] - mn) * id + 0.5f), 0, 31);
    pack5(b + 4, b + 8, q);
}
// Q4_K: eight sub-blocks of 32, each x ≈ (d·sc)·q - (dmin·m) with q in 0..15 and 6-bit sc, m.
static void q4_k(uint8_t *b, const float *x) {
    float scale[8], minimum[8], maxScale = 0, maxMin = 0;
    for (int s = 0; s < 8; s++) {
        float mn, mx;
        range_of(x + 32 * s, 32, &mn, &mx);
        if (mn > 0) mn = 0;
        scale[s] = (mx - mn) / 15.0f;
        minimum[s] = -mn;
        maxScale = fmaxf(maxScale, scale[s]);
        maxMin = fmaxf(maxMin, minimum[s]);
    }
    uint16_t dh = rk_float_to_half(maxScale / 63.0f), mh = rk_float_to_half(maxMin / 63.0f);
    float d = rk_half_to_float(dh), dmin = rk_half_to_float(mh);
    uint8_t sc[8], m[8];
    for (int s = 0; s < 8; s++) {
        sc[s] = (uint8_t)(d > 0 ? clampf(roundf(scale[s] / d), 0, 63) : 0);
        m[s] = (uint8_t)(dmin > 0 ? clampf(roundf(minimum[s] / dmin), 0, 63) : 0);
    }
    store16(b, dh);
    store16(b + 2, mh);
    uint8_t *packed = b + 4, *qs = b + 16;
    for (int j = 0; j < 4; j++) {
        packed[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        packed[j + 4] = (uint8_t)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        packed[j + 8] = (uint8_t)((sc[j + 4] & 0x0F) | ((m[j + 4] & 0x0F) << 4));
    }
    int q[256];
    for (int s = 0; s < 8; s++) {
        float step = d * (float)sc[s], offset = dmin * (float)m[s];
        for (int l = 0; l < 32; l++) {
            float v = step > 0 ? roundf((x[32 * s + l] + offset) / step) : 0;
            q[32 * s + l] = (int)clampf(v, 0, 15);
        }
    }
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) qs[32 * c + l] = (uint8_t)(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
}
// Q6_K: sixteen sub-blocks of 16, each x ≈ (d·sc)·(q - 32) with q in 0..63 and signed 8-bit sc.
static void q6_k(uint8_t *b, const float *x) {
    float scale[16], maxScale = 0;
    for (int s = 0; s < 16; s++) {
        scale[s] = signed_absmax(x + 16 * s, 16) / -32.0f;
        maxScale = fmaxf(maxScale, fabsf(scale[s]));
    }
    uint16_t dh = rk_float_to_half(maxScale / 127.0f);
    float d = rk_half_to_float(dh);
    int8_t sc[16];
    for (int s = 0; s < 16; s++) sc[s] = (int8_t)(d > 0 ? clampf(roundf(scale[s] / d), -127, 127) : 0);
    uint8_t *ql = b, *qh = b + 128;
    memset(b, 0, 192);
    for (int i = 0; i < 256; i++) {
        float step = d * (float)sc[i >> 4];
        int q = (int)clampf(step != 0 ? roundf(x[i] / step) : 0, -32, 31) + 32;
        int h = i >> 7, r = i & 127;
        ql[64 * h + (r & 63)] |= (uint8_t)((q & 0x0F) << (4 * (r >> 6)));
        qh[32 * h + (r & 31)] |= (uint8_t)(((q >> 4) & 3) << (2 * (r >> 5)));
    }
    memcpy(b + 192, sc, 16);
    store16(b + 208, dh);
}

int rk_quantize_blocks(void *dst, const float *x, size_t n, int type) {
    size_t be = rk_quant_block_elements(type), bb = rk_quant_block_bytes(type);
    if (be == 0 || n % be != 0 || type == RK_GGML_Q5_K) return RK_ERR_ARG;
    uint8_t *p = (uint8_t *)dst;
    for (size_t k = 0; k < n / be; k++, p += bb, x += be) {
        switch (type) {
        case RK_GGML_F32: memcpy(p, x, 4); break;
        case RK_GGML_F16: store16(p, rk_float_to_half(x[0])); break;
        case RK_GGML_BF16: {
            uint32_t u;
            memcpy(&u, x, 4);
            if ((u & 0x7FFFFFFFu) > 0x7F800000u) u = (u & 0xFFFF0000u) | 0x00400000u; // NaN stays a quiet NaN
            else u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;                 // nearest, ties to even
            store16(p, (uint16_t)(u >> 16));
            break;
        }
        case RK_GGML_Q8_0: q8_0(p, x); break;
        case RK_GGML_Q4_0: q4_0(p, x); break;
        case RK_GGML_Q4_1: q4_1(p, x); break;
        case RK_GGML_Q5_0: q5_0(p, x); break;
        case RK_GGML_Q5_1: q5_1(p, x); break;
        case RK_GGML_Q4_K: q4_k(p, x); break;
        case RK_GGML_Q6_K: q6_k(p, x); break;
        default: return RK_ERR_ARG;
        }
    }
    return RK_OK;
}
