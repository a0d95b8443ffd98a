// rk_internal.h — what the kernel files share and nothing else: the x86 target attributes and vector math
// (exp, erf, tanh) for AVX2 and AVX-512. Not part of the public interface.
#ifndef REINS_KERNELS_INTERNAL_H
#define REINS_KERNELS_INTERNAL_H

#include "reins_kernels.h"
#include <math.h>

#if defined(__x86_64__) || defined(_M_X64)
#define RK_X86 1
#include <immintrin.h>
#define RK_AVX2 __attribute__((target("avx2,fma")))
#define RK_AVX512 __attribute__((target("avx512f,avx2,fma")))
#else
#define RK_X86 0
#endif

// Row primitives shared by softmax.c and attention.c (dispatched internally):
// the maximum of x (C), and Σ e^{x - c} over x (C), storing each e^{x - c} in y unless y is NULL.
float rk__row_max(const float *x, int C);
float rk__row_expsum(float *y, const float *x, float c, int C);

// The 16 values a 4-bit index of IQ4_NL and IQ4_XS stands for (llama.cpp's non-linear grid), defined in quant.c.
extern const int8_t rk__iq4_values[16];
// The 6-bit scale k (0..15) of a Q3_K block, from its 12 packed bytes: the low four bits are nibble k / 8 of byte
// k % 8, the top two bits pair k / 4 of byte 8 + k % 4; stored with an offset of 32.
static inline int rk__q3_k_scale(const uint8_t *s, int k) {
    int low = (s[k & 7] >> (4 * (k >> 3))) & 0x0F, high = (s[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
    return (low | (high << 4)) - 32;
}
// Value i (0..255) of Q2_K's and Q3_K's 64 bytes of 2-bit values: element 128h + 32s + l is bits 2s, 2s + 1 of byte
// 32h + l.
static inline int rk__k_two_bits(const uint8_t *qs, int i) {
    return (qs[32 * (i >> 7) + (i & 31)] >> (2 * ((i >> 5) & 3))) & 3;
}
// The 6-bit scale of sub-block s (0..7) of an IQ4_XS block b, its offset of 32 taken off: the low four bits are nibble
// s % 2 of byte 4 + s / 2, the top two bits pair s of the 16-bit word at byte 2.
static inline int rk__iq4_xs_scale(const uint8_t *b, int s) {
    int high = b[2] | (b[3] << 8);
    return (((b[4 + s / 2] >> (4 * (s & 1))) & 0x0F) | (((high >> (2 * s)) & 3) << 4)) - 32;
}

// Index arithmetic for big tensors stays in size_t.
#define RK_IDX(a, b, stride) ((size_t)(a) * (size_t)(stride) + (size_t)(b))

// Small products on Reins's own AVX-512 kernel (gemm.c), for attention's per-head blocks. Callable only when
// rk_own_products() (reins_kernels.h) says so.
//   C (M,N) = alpha · A·B [+ C]: A's element (i,k) at A[i·ars + k·aks] (so Aᵀ of a row-major matrix is ars = 1,
//   aks = its row length), B row-major (K,N) ldb apart, C ldc apart; any M, N, K >= 0.
void rk__small_product(float *C, size_t ldc, const float *A, size_t ars, size_t aks, const float *B, size_t ldb, int M,
                       int N, int K, float alpha, int accumulate);
// dst[c·ldd + r] = src[r·lds + c] for r < rows, c < cols (AVX-512 when own products run, else element by element).
void rk__transpose(float *dst, size_t ldd, const float *src, size_t lds, int rows, int cols);

#if RK_X86
// ---- AVX2 -----------------------------------------------------------------------------------------------------
static inline RK_AVX2 float rk_hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}
static inline RK_AVX2 float rk_hmax256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_max_ps(lo, hi);
    lo = _mm_max_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_max_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}
// e^x: x = n·ln2 + r with |r| <= ln2/2 (ln2 split in two parts for accuracy), a degree-6 polynomial for e^r, and
// 2^n put into the exponent bits. Relative error about 2 ulp on [-87, 88]; below that the result flushes to 0,
// above it saturates at +inf; NaN gives NaN (the clamp's operands in this order pass a NaN on: max and min return
// their second operand when either is NaN).
static inline RK_AVX2 __m256 rk_exp256(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447505531f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    // n can be 128 at the top of the range: build 2^n as 2^(n-1)·2 so the exponent field never overflows.
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(126)), 23);
    __m256 res = _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), _mm256_set1_ps(2.0f));
    return _mm256_andnot_ps(under, res);
}
// tanh(x) = 1 - 2/(e^{2x} + 1), which saturates correctly at ±1.
static inline RK_AVX2 __m256 rk_tanh256(__m256 x) {
    __m256 e = rk_exp256(_mm256_add_ps(x, x));
    return _mm256_sub_ps(_mm256_set1_ps(1.0f),
                         _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
}
// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), with the sign restored; also e^{-x²} (which the
// formula computes anyway) in *gauss unless gauss is NULL.
static inline RK_AVX2 __m256 rk_erf_gauss256(__m256 x, __m256 *gauss) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 s = _mm256_and_ps(x, sign), a = _mm256_andnot_ps(sign, x);
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a, _mm256_set1_ps(1.0f)));
    __m256 p = _mm256_set1_ps(1.061405429f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
    p = _mm256_mul_ps(p, t);
    __m256 g = rk_exp256(_mm256_mul_ps(_mm256_xor_ps(a, sign), a));
    if (gauss) *gauss = g;
    __m256 y = _mm256_fnmadd_ps(p, g, _mm256_set1_ps(1.0f));
    return _mm256_or_ps(y, s);
}
static inline RK_AVX2 __m256 rk_erf256(__m256 x) { return rk_erf_gauss256(x, NULL); }

// ---- AVX-512 --------------------------------------------------------------------------------------------------
static inline RK_AVX512 __m512 rk_exp512(__m512 x) {
    const __m512 hi = _mm512_set1_ps(88.3762626647949f), lo = _mm512_set1_ps(-87.3365447505531f);
    __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_min_ps(hi, _mm512_max_ps(lo, x));  // NaN passed on, as in rk_exp256
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(126)), 23);
    __m512 res = _mm512_mul_ps(_mm512_mul_ps(p, _mm512_castsi512_ps(e)), _mm512_set1_ps(2.0f));
    return _mm512_maskz_mov_ps((__mmask16)~under, res);
}
static inline RK_AVX512 __m512 rk_tanh512(__m512 x) {
    __m512 e = rk_exp512(_mm512_add_ps(x, x));
    return _mm512_sub_ps(_mm512_set1_ps(1.0f),
                         _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
}
static inline RK_AVX512 __m512 rk_erf_gauss512(__m512 x, __m512 *gauss) {
    __m512 a = _mm512_abs_ps(x);
    __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), a, _mm512_set1_ps(1.0f)));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    p = _mm512_mul_ps(p, t);
    __m512 g = rk_exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), a), a));
    if (gauss) *gauss = g;
    __m512 y = _mm512_fnmadd_ps(p, g, _mm512_set1_ps(1.0f));
    // copy the sign of x onto y
    __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), sign));
}
static inline RK_AVX512 __m512 rk_erf512(__m512 x) { return rk_erf_gauss512(x, NULL); }
#endif // RK_X86

#endif
