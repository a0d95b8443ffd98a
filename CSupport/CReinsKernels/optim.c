// optim.c — the AdamW step over a flat parameter buffer, the squared norm for global-norm clipping, and seeded
// dropout. Not here: schedules, parameter groups and which tensors decay (the Swift optimizer decides).
#include "rk_internal.h"

// ---- AdamW: param, m, v, grad (n) -----------------------------------------------------------------------------
static void adamw_scalar(float *p, float *m, float *v, const float *g, size_t n, float lr, float b1, float b2,
                         float eps, float wd, float bc1, float bc2, float gs) {
    float step = lr / bc1, sbc2 = sqrtf(bc2), decay = 1.0f - lr * wd;
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * gs;
        m[i] = b1 * m[i] + (1.0f - b1) * gi;
        v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
        p[i] = p[i] * decay - step * m[i] / (sqrtf(v[i]) / sbc2 + eps);
    }
}
#if RK_X86
static RK_AVX2 void adamw_avx2(float *p, float *m, float *v, const float *g, size_t n, float lr, float b1, float b2,
                               float eps, float wd, float bc1, float bc2, float gs) {
    const __m256 vb1 = _mm256_set1_ps(b1), vb2 = _mm256_set1_ps(b2), vc1 = _mm256_set1_ps(1.0f - b1),
                 vc2 = _mm256_set1_ps(1.0f - b2), vgs = _mm256_set1_ps(gs), veps = _mm256_set1_ps(eps),
                 vstep = _mm256_set1_ps(lr / bc1), vinv = _mm256_set1_ps(1.0f / sqrtf(bc2)),
                 vdecay = _mm256_set1_ps(1.0f - lr * wd);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 gi = _mm256_mul_ps(_mm256_loadu_ps(g + i), vgs);
        __m256 mi = _mm256_fmadd_ps(vb1, _mm256_loadu_ps(m + i), _mm256_mul_ps(vc1, gi));
        __m256 vi = _mm256_fmadd_ps(vb2, _mm256_loadu_ps(v + i), _mm256_mul_ps(vc2, _mm256_mul_ps(gi, gi)));
        __m256 den = _mm256_fmadd_ps(_mm256_sqrt_ps(vi), vinv, veps);
        __m256 pi = _mm256_mul_ps(_mm256_loadu_ps(p + i), vdecay);
        pi = _mm256_fnmadd_ps(vstep, _mm256_div_ps(mi, den), pi);
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        _mm256_storeu_ps(p + i, pi);
    }
    if (i < n) adamw_scalar(p + i, m + i, v + i, g + i, n - i, lr, b1, b2, eps, wd, bc1, bc2, gs);
}
static RK_AVX512 void adamw_avx512(float *p, float *m, float *v, const float *g, size_t n, float lr, float b1,
                                   float b2, float eps, float wd, float bc1, float bc2, float gs) {
    const __m512 vb1 = _mm512_set1_ps(b1), vb2 = _mm512_set1_ps(b2), vc1 = _mm512_set1_ps(1.0f - b1),
                 vc2 = _mm512_set1_ps(1.0f - b2), vgs = _mm512_set1_ps(gs), veps = _mm512_set1_ps(eps),
                 vstep = _mm512_set1_ps(lr / bc1), vinv = _mm512_set1_ps(1.0f / sqrtf(bc2)),
                 vdecay = _mm512_set1_ps(1.0f - lr * wd);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 gi = _mm512_mul_ps(_mm512_loadu_ps(g + i), vgs);
        __m512 mi = _mm512_fmadd_ps(vb1, _mm512_loadu_ps(m + i), _mm512_mul_ps(vc1, gi));
        __m512 vi = _mm512_fmadd_ps(vb2, _mm512_loadu_ps(v + i), _mm512_mul_ps(vc2, _mm512_mul_ps(gi, gi)));
        __m512 den = _mm512_fmadd_ps(_mm512_sqrt_ps(vi), vinv, veps);
        __m512 pi = _mm512_mul_ps(_mm512_loadu_ps(p + i), vdecay);
        pi = _mm512_fnmadd_ps(vstep, _mm512_div_ps(mi, den), pi);
        _mm512_storeu_ps(m + i, mi);
        _mm512_storeu_ps(v + i, vi);
        _mm512_storeu_ps(p + i, pi);
    }
    if (i < n) adamw_scalar(p + i, m + i, v + i, g + i, n - i, lr, b1, b2, eps, wd, bc1, bc2, gs);
}
#endif

void rk_adamw_step(float *param, float *m, float *v, const float *grad, size_t n, float lr, float beta1,
                   float beta2, float eps, float weight_decay, float bc1, float bc2, float grad_scale) {
#if RK_X86
    int isa = rk_isa_active();
    if (isa >= RK_ISA_AVX512) { adamw_avx512(param, m, v, grad, n, lr, beta1, beta2, eps, weight_decay, bc1, bc2, grad_scale); return; }
    if (isa >= RK_ISA_AVX2) { adamw_avx2(param, m, v, grad, n, lr, beta1, beta2, eps, weight_decay, bc1, bc2, grad_scale); return; }
#endif
    adamw_scalar(param, m, v, grad, n, lr, beta1, beta2, eps, weight_decay, bc1, bc2, grad_scale);
}
// reference: PyTorch's AdamW written out literally.
void rk_adamw_step_ref(float *param, float *m, float *v, const float *grad, size_t n, float lr, float beta1,
                       float beta2, float eps, float weight_decay, float bc1, float bc2, float grad_scale) {
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * grad_scale;
        param[i] -= lr * weight_decay * param[i];
        m[i] = beta1 * m[i] + (1.0f - beta1) * g;
        v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
        param[i] -= (lr / bc1) * m[i] / (sqrtf(v[i]) / sqrtf(bc2) + eps);
    }
}

// ---- Σ x² -----------------------------------------------------------------------------------------------------
#if RK_X86
// Float lanes over blocks of 1024, folded into a double after each block, so long buffers keep their precision.
static RK_AVX2 double sumsq_avx2(const float *x, size_t n) {
    double total = 0.0;
    size_t i = 0;
    while (i + 8 <= n) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        size_t end = i + 1024 <= n ? i + 1024 : n;
        for (; i + 16 <= end; i += 16) {
            __m256 u = _mm256_loadu_ps(x + i), w = _mm256_loadu_ps(x + i + 8);
            a0 = _mm256_fmadd_ps(u, u, a0);
            a1 = _mm256_fmadd_ps(w, w, a1);
        }
        for (; i + 8 <= end; i += 8) {
            __m256 u = _mm256_loadu_ps(x + i);
            a0 = _mm256_fmadd_ps(u, u, a0);
        }
        total += (double)rk_hsum256(_mm256_add_ps(a0, a1));
    }
    for (; i < n; i++) total += (double)x[i] * x[i];
    return total;
}
#endif
double rk_sum_squares_ref(const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}
double rk_sum_squares(const float *x, size_t n) {
#if RK_X86
    if (rk_isa_active() >= RK_ISA_AVX2) return sumsq_avx2(x, n);
#endif
    return rk_sum_squares_ref(x, n);
}

// ---- SGD with momentum ----------------------------------------------------------------------------------------
// Memory-bound like AdamW; one pass, written so the compiler vectorises it.
void rk_sgd_step(float *param, float *buf, const float *grad, size_t n, float lr, float momentum, float weight_decay,
                 int nesterov, int first, float grad_scale) {
    if (momentum == 0.0f || !buf) {
#pragma clang loop vectorize(enable)
        for (size_t i = 0; i < n; i++) param[i] -= lr * (grad[i] * grad_scale + weight_decay * param[i]);
        return;
    }
    float keep = first ? 0.0f : momentum; // the first step starts the buffer at g
#pragma clang loop vectorize(enable)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * grad_scale + weight_decay * param[i];
        float b = keep * buf[i] + g;
        buf[i] = b;
        param[i] -= lr * (nesterov ? g + momentum * b : b);
    }
}
// reference: the textbook branches, one element at a time.
void rk_sgd_step_ref(float *param, float *buf, const float *grad, size_t n, float lr, float momentum, float weight_decay,
                     int nesterov, int first, float grad_scale) {
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * grad_scale;
        if (weight_decay != 0.0f) g = g + weight_decay * param[i];
        if (momentum != 0.0f && buf) {
            if (first) buf[i] = g;
            else buf[i] = momentum * buf[i] + g;
            g = nesterov ? g + momentum * buf[i] : buf[i];
        }
        param[i] = param[i] - lr * g;
    }
}

// ---- dropout --------------------------------------------------------------------------------------------------
// splitmix64 finaliser over (seed, counter): a stateless generator, so element i's draw never depends on how the
// work was split. The top 24 bits give a float in [0,1) exactly.
float rk_uniform(uint64_t seed, uint64_t i) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + i + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}
void rk_dropout_forward(float *out, const float *inp, size_t n, float p, uint64_t seed, uint64_t offset) {
    float keep = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    for (size_t i = 0; i < n; i++) out[i] = rk_uniform(seed, offset + i) >= p ? inp[i] * keep : 0.0f;
}
void rk_dropout_backward(float *dinp, const float *dout, size_t n, float p, uint64_t seed, uint64_t offset) {
    if (!dinp) return;
    float keep = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    for (size_t i = 0; i < n; i++)
        if (rk_uniform(seed, offset + i) >= p) dinp[i] += dout[i] * keep;
}
// reference: a separate keep test, written as a division.
void rk_dropout_forward_ref(float *out, const float *inp, size_t n, float p, uint64_t seed, uint64_t offset) {
    for (size_t i = 0; i < n; i++) {
        int kept = !(rk_uniform(seed, offset + i) < p);
        out[i] = kept && p < 1.0f ? inp[i] / (1.0f - p) : 0.0f;
    }
}
