// rope.c — rotary position embeddings (Su et al., arXiv 2104.09864), Hugging Face's "rotate half" layout, fused with
// splitting heads: (B,T,NH,hs) in, (B,NH,T,hs) out. Pairs are (d, d + hs/2), rotated by angle θ_{b,t,d}:
//   forward:  y_d = x_d·c - x_{d+h}·s;   y_{d+h} = x_{d+h}·c + x_d·s
//   backward: the rotation is orthogonal, so dx = Rᵀ·dy:  dx_d += dy_d·c + dy_{d+h}·s;  dx_{d+h} += dy_{d+h}·c - dy_d·s
#include "rk_internal.h"

#define ROPE_FORWARD_BODY                                                                                          \
    int h = hs / 2;                                                                                                 \
    for (int b = 0; b < B; b++)                                                                                     \
        for (int t = 0; t < T; t++) {                                                                               \
            const float *c = cos + RK_IDX((size_t)b * T + t, 0, h), *s = sin + RK_IDX((size_t)b * T + t, 0, h);     \
            for (int n = 0; n < NH; n++) {                                                                          \
                const float *x = inp + RK_IDX(((size_t)b * T + t) * NH + n, 0, hs);                                 \
                float *y = out + RK_IDX(((size_t)b * NH + n) * T + t, 0, hs);                                       \
                _Pragma("clang loop vectorize(enable)") for (int d = 0; d < h; d++) {                              \
                    float x1 = x[d], x2 = x[d + h];                                                                 \
                    y[d] = x1 * c[d] - x2 * s[d];                                                                   \
                    y[d + h] = x2 * c[d] + x1 * s[d];                                                               \
                }                                                                                                   \
            }                                                                                                       \
        }
#define ROPE_BACKWARD_BODY                                                                                         \
    int h = hs / 2;                                                                                                 \
    for (int b = 0; b < B; b++)                                                                                     \
        for (int t = 0; t < T; t++) {                                                                               \
            const float *c = cos + RK_IDX((size_t)b * T + t, 0, h), *s = sin + RK_IDX((size_t)b * T + t, 0, h);     \
            for (int n = 0; n < NH; n++) {                                                                          \
                float *dx = dinp + RK_IDX(((size_t)b * T + t) * NH + n, 0, hs);                                     \
                const float *dy = dout + RK_IDX(((size_t)b * NH + n) * T + t, 0, hs);                               \
                _Pragma("clang loop vectorize(enable)") for (int d = 0; d < h; d++) {                              \
                    float g1 = dy[d], g2 = dy[d + h];                                                               \
                    dx[d] += g1 * c[d] + g2 * s[d];                                                                 \
                    dx[d + h] += g2 * c[d] - g1 * s[d];                                                             \
                }                                                                                                   \
            }                                                                                                       \
        }

static void rope_fwd_scalar(float *out, const float *inp, const float *cos, const float *sin, int B, int T, int NH,
                            int hs) {
    ROPE_FORWARD_BODY
}
static void rope_bwd_scalar(float *dinp, const float *dout, const float *cos, const float *sin, int B, int T, int NH,
                            int hs) {
    ROPE_BACKWARD_BODY
}
#if RK_X86
static RK_AVX2 void rope_fwd_avx2(float *out, const float *inp, const float *cos, const float *sin, int B, int T,
                                  int NH, int hs) {
    ROPE_FORWARD_BODY
}
static RK_AVX2 void rope_bwd_avx2(float *dinp, const float *dout, const float *cos, const float *sin, int B, int T,
                                  int NH, int hs) {
    ROPE_BACKWARD_BODY
}
#endif

void rk_rope_forward(float *out, const float *inp, const float *cos, const float *sin, int B, int T, int NH, int hs) {
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX2) { rope_fwd_avx2(out, inp, cos, sin, B, T, NH, hs); return; }
#endif
    rope_fwd_scalar(out, inp, cos, sin, B, T, NH, hs);
}
void rk_rope_backward(float *dinp, const float *dout, const float *cos, const float *sin, int B, int T, int NH,
                      int hs) {
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX2) { rope_bwd_avx2(dinp, dout, cos, sin, B, T, NH, hs); return; }
#endif
    rope_bwd_scalar(dinp, dout, cos, sin, B, T, NH, hs);
}

// reference: element by element from the definition, the rotation written as "x·cos + rotate_half(x)·sin" with
// rotate_half(x) = (-x₂, x₁) and the angles repeated over both halves, as the model code states it.
void rk_rope_forward_ref(float *out, const float *inp, const float *cos, const float *sin, int B, int T, int NH,
                         int hs) {
    int h = hs / 2;
    for (int b = 0; b < B; b++)
        for (int n = 0; n < NH; n++)
            for (int t = 0; t < T; t++)
                for (int d = 0; d < hs; d++) {
                    const float *x = inp + RK_IDX(((size_t)b * T + t) * NH + n, 0, hs);
                    size_t a = RK_IDX((size_t)b * T + t, d % h, h);
                    float rotated = d < h ? -x[d + h] : x[d - h];
                    out[RK_IDX(((size_t)b * NH + n) * T + t, d, hs)] = x[d] * cos[a] + rotated * sin[a];
                }
}
void rk_rope_backward_ref(float *dinp, const float *dout, const float *cos, const float *sin, int B, int T, int NH,
                          int hs) {
    int h = hs / 2;
    // dx_e = Σ_d dy_d · ∂y_d/∂x_e: each x_e reaches y_e (through cos) and its partner (through sin).
    for (int b = 0; b < B; b++)
        for (int n = 0; n < NH; n++)
            for (int t = 0; t < T; t++)
                for (int e = 0; e < hs; e++) {
                    const float *dy = dout + RK_IDX(((size_t)b * NH + n) * T + t, 0, hs);
                    size_t a = RK_IDX((size_t)b * T + t, e % h, h);
                    // y_{e+h} = x_{e+h}c + x_e s (e < h);  y_{e-h} = x_{e-h}c - x_e s (e >= h)
                    float partner = e < h ? dy[e + h] * sin[a] : -dy[e - h] * sin[a];
                    dinp[RK_IDX(((size_t)b * T + t) * NH + n, e, hs)] += dy[e] * cos[a] + partner;
                }
}
