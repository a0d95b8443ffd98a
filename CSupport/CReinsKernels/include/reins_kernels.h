// reins_kernels.h — the C kernels under ReinsTensor.
//
// Every differentiable op is a pair `rk_<op>_forward` / `rk_<op>_backward` beside a slow scalar `_ref` oracle that is
// kept forever for tests. Conventions (after llm.c):
//   - arguments: outputs first, then inputs, then weights, then sizes;
//   - tensors are contiguous row-major float32; shapes use the letters B,T,C,NH,hs,V,L,P,r (N = rows = B*T, OC = out);
//   - backward kernels ADD into gradient buffers and skip any gradient pointer that is NULL, so a frozen weight
//     costs nothing;
//   - C never allocates, prints or exits: the caller owns every buffer (including scratch) and C returns a status
//     where input can be invalid.
// SIMD variants (AVX-512, AVX2+FMA on x86-64; scalar everywhere) are chosen at run time, see rk_isa_*.
#ifndef REINS_KERNELS_H
#define REINS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------------------------
// Run-time CPU dispatch.
typedef enum {
    RK_ISA_SCALAR = 0,
    RK_ISA_AVX2 = 1,   // AVX2 + FMA
    RK_ISA_AVX512 = 2, // AVX-512 F
} rk_isa;

/// The best instruction set this CPU supports (and this build can use).
int rk_isa_detected(void);
/// The instruction set the kernels use now, on the calling thread.
int rk_isa_active(void);
/// Select an instruction set no better than the detected one for the calling thread (tests and benchmarks; ReinsTensor's
/// parallel regions carry it to their workers); returns the one now active. Other threads are unaffected.
int rk_isa_select(int isa);
/// Nonzero while the calling thread is inside a serial section (rk_thread_serial_enter, not yet left): ReinsTensor
/// then runs its parallel regions on that thread alone (a thread that is itself one of several lanes of work).
int rk_thread_serial(void);
void rk_thread_serial_enter(void);
void rk_thread_serial_leave(void);
/// Whether the CPU has AVX-512 VNNI (with BW and VL): the AVX-512 level of the quantized products then uses it.
int rk_cpu_has_vnni(void);
/// 1 when the products with many rows (rk_gemm_panels) and attention's per-head products run on Reins's own kernels
/// on the calling thread: its kernels run AVX-512 and the environment variable REINS_GEMM is not `openblas` (read
/// once); 0 when they go to OpenBLAS.
int rk_own_products(void);
/// A hint to the CPU that the calling thread is spinning on a flag (PAUSE on x86, YIELD on arm64).
static inline void rk_cpu_relax(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}
/// A short name for an instruction set ("scalar", "avx2", "avx512").
const char *rk_isa_name(int isa);
/// The kernel set OpenBLAS runs (its core name, e.g. "SkylakeX", "Haswell", "Zen").
const char *rk_blas_core(void);
/// The core OpenBLAS had fallen back to when Reins raised its kernel set at load time (an OpenBLAS release that did not
/// know this CPU, see blas_core.c), or "" when it was not raised.
const char *rk_blas_core_fallback(void);

// Status codes.
#define RK_OK 0
#define RK_ERR_INDEX -1 // an index (token id, class id) is out of range; *bad_row tells which row where given
#define RK_ERR_ARG -2   // an argument the kernel does not accept (an unknown type, a size that is not whole blocks)

// ---------------------------------------------------------------------------------------------------------------
// Linear: out (N,OC) = inp (N,C) · Wᵀ + bias.  W is (OC,C) when w_transposed == 0 (torch nn.Linear), and (C,OC)
// when w_transposed == 1 (GPT-2 Conv1D), so neither layout is ever copied. bias may be NULL.
void rk_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int N, int C, int OC, int w_transposed);
void rk_linear_backward(float *dinp, float *dweight, float *dbias,
                        const float *dout, const float *inp, const float *weight,
                        int N, int C, int OC, int w_transposed);
void rk_linear_forward_ref(float *out, const float *inp, const float *weight, const float *bias,
                           int N, int C, int OC, int w_transposed);
/// One row through a (OC,C) weight: y (OC) = W·x [+ bias] (bias may be NULL). rk_linear_forward's N = 1 case for that
/// layout; callers split OC between threads (each share a run of whole rows).
void rk_gemv_rows(float *y, const float *weight, const float *x, const float *bias, int C, int OC);
/// One row through the first n columns of a (C, ldw) weight (GPT-2's Conv1D layout): y (n) = x·W[:, 0..n) [+ bias].
/// rk_linear_forward's N = 1 case for that layout (ldw = OC); callers split the columns between threads.
void rk_gemv_cols(float *y, const float *weight, const float *x, const float *bias, int C, int n, int ldw);
void rk_linear_backward_ref(float *dinp, float *dweight, float *dbias,
                            const float *dout, const float *inp, const float *weight,
                            int N, int C, int OC, int w_transposed);
/// dbias (C) += column sums of dout (N,C).
void rk_bias_backward(float *dbias, const float *dout, int N, int C);

// ---------------------------------------------------------------------------------------------------------------
// GELU. approx == 0: exact x·Φ(x) with erf (BERT); approx == 1: the tanh form (GPT-2 "gelu_new").
void rk_gelu_forward(float *out, const float *inp, size_t n, int approx);
void rk_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n, int approx);
void rk_gelu_forward_ref(float *out, const float *inp, size_t n, int approx);
void rk_gelu_backward_ref(float *dinp, const float *dout, const float *inp, size_t n, int approx);
/// Fused bias + GELU: out (N,C) = gelu(inp + bias). Backward adds into dinp and dbias (either may be NULL).
void rk_bias_gelu_forward(float *out, const float *inp, const float *bias, int N, int C, int approx);
void rk_bias_gelu_backward(float *dinp, float *dbias, const float *dout, const float *inp, const float *bias,
                           int N, int C, int approx);
void rk_bias_gelu_forward_ref(float *out, const float *inp, const float *bias, int N, int C, int approx);
void rk_bias_gelu_backward_ref(float *dinp, float *dbias, const float *dout, const float *inp, const float *bias,
                               int N, int C, int approx);

// ---------------------------------------------------------------------------------------------------------------
// Layer norm over the last axis: out (N,C) = (inp - mean) · rstd · weight + bias; saves mean (N) and rstd (N).
// weight and bias may be NULL (treated as 1 and 0).
void rk_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                          const float *bias, int N, int C, float eps);
void rk_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                           const float *weight, const float *mean, const float *rstd, int N, int C);
void rk_layernorm_forward_ref(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                              const float *bias, int N, int C, float eps);
void rk_layernorm_backward_ref(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                               const float *weight, const float *mean, const float *rstd, int N, int C);

// ---------------------------------------------------------------------------------------------------------------
// Softmax over the last axis of (N,C); backward: dinp += out ⊙ (dout - Σ dout⊙out).
void rk_softmax_forward(float *out, const float *inp, int N, int C);
void rk_softmax_backward(float *dinp, const float *dout, const float *out, int N, int C);
void rk_softmax_forward_ref(float *out, const float *inp, int N, int C);
void rk_softmax_backward_ref(float *dinp, const float *dout, const float *out, int N, int C);

/// Fused log-softmax + negative log-likelihood for logits (N,V) and targets (N). Writes each row's loss (0 for a
/// target equal to ignore_index) and its log-sum-exp (kept for backward). Returns RK_ERR_INDEX (and *bad_row) if a
/// target is neither ignore_index nor in [0, V); nothing is written then.
int rk_crossentropy_forward(float *losses, float *lse, const float *logits, const int32_t *targets,
                            int N, int V, int ignore_index, int *bad_row);
/// dlogits (N,V) += scale · (softmax(logits) - onehot(target)) for each counted row; scale is dloss / count.
void rk_crossentropy_backward(float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                              float scale, int N, int V, int ignore_index);
/// dlogits (N,V) = scale · (softmax(logits) - onehot(target)) for each counted row, 0 for rows whose target is
/// ignore_index: written, not accumulated, and dlogits may be logits itself (each element is read before it is
/// written), so a language model's output layer needs one buffer of logits per chunk of rows, not two.
void rk_crossentropy_gradient(float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                              float scale, int N, int V, int ignore_index);
void rk_crossentropy_gradient_ref(float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                                  float scale, int N, int V, int ignore_index);
int rk_crossentropy_forward_ref(float *losses, float *lse, const float *logits, const int32_t *targets,
                                int N, int V, int ignore_index, int *bad_row);
void rk_crossentropy_backward_ref(float *dlogits, const float *logits, const float *lse, const int32_t *targets,
                                  float scale, int N, int V, int ignore_index);

// ---------------------------------------------------------------------------------------------------------------
// Embedding: out (N,C) = table[ids] for table (V,C). Returns RK_ERR_INDEX (and *bad_row) for an id outside [0,V).
int rk_embedding_forward(float *out, const int32_t *ids, const float *table, int N, int V, int C, int *bad_row);
/// dtable (V,C) += scatter of dout (N,C) by ids (ids are assumed checked by the forward). Rows whose id equals
/// padding_index get no gradient (torch's padding_idx); pass -1 for none.
void rk_embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int V, int C, int padding_index);
int rk_embedding_forward_ref(float *out, const int32_t *ids, const float *table, int N, int V, int C, int *bad_row);
void rk_embedding_backward_ref(float *dtable, const float *dout, const int32_t *ids, int N, int V, int C,
                               int padding_index);

// ---------------------------------------------------------------------------------------------------------------
// Scaled dot-product attention, heads already split.
//   q (B,NH,T,hs), k and v (B,NKV,Tk,hs), out (B,NH,T,hs), lse (B,NH,T) saved for backward.
//   Grouped-query attention: NKV divides NH and query head h reads key/value head h / (NH / NKV), in place (NKV = NH
//   is multi-head attention, NKV = 1 multi-query). Tk may differ from T (key/value prefixes, KV cache). With
//   causal != 0, query i sees key j only if j <= i + causal_offset (causal_offset = Tk - T for a cache or prefix) and,
//   with a sliding window > 0 (Mistral), j > i + causal_offset - window; window 0 is none. key_mask (B,Tk), nonzero =
//   attend, may be NULL. A query row that sees no key gets out = 0 and lse = -inf.
//   Only the query heads bh in [bh_begin, bh_end) of the flattened B*NH are computed, so that the caller can spread
//   heads over threads; backward adds a group's dK and dV from every head of the group, so its split points must be
//   multiples of NH / NKV. scratch holds T*Tk floats per call (forward) and 2*T*Tk + T (backward).
// The probabilities are not kept: backward recomputes them from lse, so memory is O(T) per head beyond the inputs.
// Dropout on the attention probabilities (training): probability P_ij of head bh is kept iff
// rk_uniform(seed, offset + (bh·T + i)·Tk + j) >= p, and kept ones are scaled by 1/(1-p); drop may be NULL (none).
// The mask is recomputed in backward, never stored.
typedef struct rk_attention_dropout {
    float p;
    uint64_t seed, offset;
} rk_attention_dropout;
void rk_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                          const int32_t *key_mask, int B, int NH, int NKV, int T, int Tk, int hs, float scale,
                          int causal, int causal_offset, int window, const rk_attention_dropout *drop, int bh_begin,
                          int bh_end, float *scratch);
/// The forward pass with k and v (B,NKV,kv_rows,hs), kv_rows >= Tk, each head's first Tk rows being its keys and
/// values (a KV cache with room to grow, appended in place).
void rk_attention_forward_rows(float *out, float *lse, const float *q, const float *k, const float *v,
                               const int32_t *key_mask, int B, int NH, int NKV, int T, int Tk, int kv_rows, int hs,
                               float scale, int causal, int causal_offset, int window,
                               const rk_attention_dropout *drop, int bh_begin, int bh_end, float *scratch);
void rk_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                           const float *v, const float *out, const float *lse, const int32_t *key_mask,
                           int B, int NH, int NKV, int T, int Tk, int hs, float scale, int causal, int causal_offset,
                           int window, const rk_attention_dropout *drop, int bh_begin, int bh_end, float *scratch);
void rk_attention_forward_ref(float *out, float *lse, const float *q, const float *k, const float *v,
                              const int32_t *key_mask, int B, int NH, int NKV, int T, int Tk, int hs, float scale,
                              int causal, int causal_offset, int window, const rk_attention_dropout *drop);
void rk_attention_backward_ref(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const float *out, const float *lse, const int32_t *key_mask,
                               int B, int NH, int NKV, int T, int Tk, int hs, float scale, int causal,
                               int causal_offset, int window, const rk_attention_dropout *drop);

// ---------------------------------------------------------------------------------------------------------------
// RMSNorm over the last axis (Zhang & Sennrich, arXiv 1910.07467; Llama): out (N,C) = inp · rstd · weight with
// rstd = 1/√(mean(inp²) + eps), saved per row (N). weight may be NULL (1).
void rk_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps);
void rk_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                         const float *rstd, int N, int C);
void rk_rmsnorm_forward_ref(float *out, float *rstd, const float *inp, const float *weight, int N, int C, float eps);
void rk_rmsnorm_backward_ref(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight,
                             const float *rstd, int N, int C);

// ---------------------------------------------------------------------------------------------------------------
// Rotary position embeddings (Su et al., arXiv 2104.09864) in the "rotate half" layout of Hugging Face's Llama, fused
// with splitting heads: inp (B,T,NH,hs) — a projection's output — to out (B,NH,T,hs). With h = hs/2 and d < h:
//   out[d] = x[d]·cos[d] - x[d+h]·sin[d];  out[d+h] = x[d+h]·cos[d] + x[d]·sin[d]
// cos and sin (B,T,h) hold each row's angles (positions · inverse frequencies), so left padding, KV-cache offsets
// and frequency scaling are the caller's. hs must be even. Backward applies the transposed rotation and adds into
// dinp (B,T,NH,hs).
void rk_rope_forward(float *out, const float *inp, const float *cos, const float *sin, int B, int T, int NH, int hs);
void rk_rope_backward(float *dinp, const float *dout, const float *cos, const float *sin, int B, int T, int NH,
                      int hs);
void rk_rope_forward_ref(float *out, const float *inp, const float *cos, const float *sin, int B, int T, int NH,
                         int hs);
void rk_rope_backward_ref(float *dinp, const float *dout, const float *cos, const float *sin, int B, int T, int NH,
                          int hs);

// ---------------------------------------------------------------------------------------------------------------
// SwiGLU (Shazeer, arXiv 2002.05202): out = silu(gate) ⊙ up with silu(x) = x·σ(x), over n elements; with up NULL,
// plain SiLU. Backward adds into dgate and dup (either may be NULL):
//   dgate += dout·up·σ(g)·(1 + g·(1 - σ(g)));  dup += dout·silu(g)
void rk_swiglu_forward(float *out, const float *gate, const float *up, size_t n);
void rk_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
void rk_swiglu_forward_ref(float *out, const float *gate, const float *up, size_t n);
void rk_swiglu_backward_ref(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);

// ---------------------------------------------------------------------------------------------------------------
// LoRA linear (arXiv 2106.09685): out (N,OC) = inp (N,C)·Wᵀ + bias + scale · (inp·Aᵀ)·Bᵀ with A (r,C), B (OC,r).
// xa (N,r) = inp·Aᵀ is saved for backward. W layout as in rk_linear_forward. scratch holds N*r floats (backward).
// Backward adds into dinp, dweight, dbias, dA, dB; each may be NULL (a frozen base passes NULL for dW and db).
// Mixed-adapter batches (inference): for each of `rows` sequences of `T` positions, y[row] += scale[row] * B A x[row]
// with the row's own low-rank pair (A: [rank, in], B: [out, rank]); a row whose a[row] is NULL is left as it is.
// `work` holds at least max(rank) floats.
void rk_lora_rows(float *y, const float *x, int rows, int T, int in, int out, const float *const *a,
                  const float *const *b, const int *rank, const float *scale, float *work);
void rk_lora_rows_ref(float *y, const float *x, int rows, int T, int in, int out, const float *const *a,
                      const float *const *b, const int *rank, const float *scale, float *work);
// The same with A and B in IEEE half precision and B transposed, bt: [rank, out] (a server's copies of its adapters:
// half the bytes per step, and 8 outputs per vector).
void rk_lora_rows_f16(float *y, const float *x, int rows, int T, int in, int out, const uint16_t *const *a,
                      const uint16_t *const *bt, const int *rank, const float *scale, float *work);
void rk_lora_rows_f16_ref(float *y, const float *x, int rows, int T, int in, int out, const uint16_t *const *a,
                          const uint16_t *const *bt, const int *rank, const float *scale, float *work);
// And with A and Bᵀ in 8-bit integers, each of their rows with a float scale (a_scale[row]: rank values, A's row j is
// a_scale[row][j]·a[row][j, :]; bt_scale likewise for Bᵀ): a quarter of float32's bytes.
void rk_lora_rows_q8(float *y, const float *x, int rows, int T, int in, int out, const int8_t *const *a,
                     const float *const *a_scale, const int8_t *const *bt, const float *const *bt_scale,
                     const int *rank, const float *scale, float *work);
void rk_lora_rows_q8_ref(float *y, const float *x, int rows, int T, int in, int out, const int8_t *const *a,
                         const float *const *a_scale, const int8_t *const *bt, const float *const *bt_scale,
                         const int *rank, const float *scale, float *work);
// And with A and Bᵀ in 4-bit integers in groups of 32 along each row, each group with a float scale: a row of width
// n is ceil(n/32) groups of 16 bytes, byte i of a group holding its element i in the low nibble and element i + 16 in
// the high one, each nibble the integer plus 8 (-7...7 as stored; a partial last group padded with 8s). A's groups go
// row by row (row j's group g is group j·ceil(in/32) + g, its scale a_scale[row][j·ceil(in/32) + g]), Bᵀ's group by
// group (rank row j's group g is group g·rank + j, its scale bt_scale[row][g·rank + j]): a group of 32 outputs reads
// one run of bytes.
void rk_lora_rows_q4(float *y, const float *x, int rows, int T, int in, int out, const uint8_t *const *a,
                     const float *const *a_scale, const uint8_t *const *bt, const float *const *bt_scale,
                     const int *rank, const float *scale, float *work);
void rk_lora_rows_q4_ref(float *y, const float *x, int rows, int T, int in, int out, const uint8_t *const *a,
                         const float *const *a_scale, const uint8_t *const *bt, const float *const *bt_scale,
                         const int *rank, const float *scale, float *work);
// ---- products with many rows (gemm.c) ----
// C (M,N) = [C +] A (M,K) · op(B), op(B) = B stored (K,N), or Bᵀ with B stored (N,K) when b_transposed; row-major,
// rows ldc, lda, ldb floats apart. Writes only rows [row_begin, row_end) of the 48-column panels
// [panel_begin, panel_end) (of rk_gemm_panels_count(N)), so that threads can share a product. `pack` holds 48·K
// floats (needed when b_transposed or N is not a multiple of 48). AVX-512 kernels; other CPUs get the scalar loop
// (OpenBLAS is the faster choice there). RK_ERR_ARG for a size, stride or range out of bounds, or a missing `pack`.
int rk_gemm_panels_count(int N);
int rk_gemm_panels(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M, int N, int K,
                   int b_transposed, int accumulate, int row_begin, int row_end, int panel_begin, int panel_end,
                   float *pack);
int rk_gemm_panels_ref(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M, int N, int K,
                       int b_transposed, int accumulate, int row_begin, int row_end, int panel_begin, int panel_end);
// The LoRA layer as one op (lora.c). With weight NULL the base's products are the caller's: forward adds the LoRA
// update onto `out` as it is (base output and bias already there), backward leaves out dinp's dout·W.
void rk_lora_forward(float *out, float *xa, const float *inp, const float *weight, const float *bias,
                     const float *A, const float *Bm, int N, int C, int OC, int r, float scale, int w_transposed);
void rk_lora_backward(float *dinp, float *dweight, float *dbias, float *dA, float *dB, const float *dout,
                      const float *inp, const float *weight, const float *A, const float *Bm, const float *xa,
                      float *scratch, int N, int C, int OC, int r, float scale, int w_transposed);
void rk_lora_forward_ref(float *out, float *xa, const float *inp, const float *weight, const float *bias,
                         const float *A, const float *Bm, int N, int C, int OC, int r, float scale, int w_transposed);
void rk_lora_backward_ref(float *dinp, float *dweight, float *dbias, float *dA, float *dB, const float *dout,
                          const float *inp, const float *weight, const float *A, const float *Bm, const float *xa,
                          int N, int C, int OC, int r, float scale, int w_transposed);

// ---------------------------------------------------------------------------------------------------------------
// Dropout with a counter-based generator: element i is kept iff uniform(seed, offset + i) >= p, and kept elements
// are scaled by 1/(1-p). The decision is a pure function of (seed, offset + i), so backward needs no saved mask
// and any split of the work over threads gives the same result.
void rk_dropout_forward(float *out, const float *inp, size_t n, float p, uint64_t seed, uint64_t offset);
void rk_dropout_backward(float *dinp, const float *dout, size_t n, float p, uint64_t seed, uint64_t offset);
void rk_dropout_forward_ref(float *out, const float *inp, size_t n, float p, uint64_t seed, uint64_t offset);
/// The uniform number in [0,1) that dropout draws for counter value i.
float rk_uniform(uint64_t seed, uint64_t i);

// ---------------------------------------------------------------------------------------------------------------
// Optimizer. AdamW with decoupled weight decay (Loshchilov & Hutter, arXiv 1711.05101), in PyTorch's order:
//   p -= lr·wd·p;  m = b1·m + (1-b1)·g;  v = b2·v + (1-b2)·g²;  p -= (lr/bc1) · m / (sqrt(v)/sqrt(bc2) + eps)
// with g = grad · grad_scale (for clipping), bc1 = 1 - b1^t, bc2 = 1 - b2^t.
void rk_adamw_step(float *param, float *m, float *v, const float *grad, size_t n, float lr, float beta1,
                   float beta2, float eps, float weight_decay, float bc1, float bc2, float grad_scale);
void rk_adamw_step_ref(float *param, float *m, float *v, const float *grad, size_t n, float lr, float beta1,
                       float beta2, float eps, float weight_decay, float bc1, float bc2, float grad_scale);
/// Σ x² accumulated in double (for global-norm clipping).
// SGD with momentum and (coupled) weight decay, in PyTorch's order (dampening 0):
//   g = grad·grad_scale + wd·p;  buf = g on the first step, else momentum·buf + g;  p -= lr·(nesterov ? g + momentum·buf : buf)
// With momentum 0, buf may be NULL.
void rk_sgd_step(float *param, float *buf, const float *grad, size_t n, float lr, float momentum, float weight_decay,
                 int nesterov, int first, float grad_scale);
void rk_sgd_step_ref(float *param, float *buf, const float *grad, size_t n, float lr, float momentum, float weight_decay,
                     int nesterov, int first, float grad_scale);
double rk_sum_squares(const float *x, size_t n);
double rk_sum_squares_ref(const float *x, size_t n);

// ---------------------------------------------------------------------------------------------------------------
// GGUF / llama.cpp tensor types (ggml's numbering) and their block formats.
typedef enum {
    RK_GGML_F32 = 0, RK_GGML_F16 = 1, RK_GGML_Q4_0 = 2, RK_GGML_Q4_1 = 3, RK_GGML_Q5_0 = 6, RK_GGML_Q5_1 = 7,
    RK_GGML_Q8_0 = 8, RK_GGML_Q2_K = 10, RK_GGML_Q3_K = 11, RK_GGML_Q4_K = 12, RK_GGML_Q5_K = 13, RK_GGML_Q6_K = 14,
    RK_GGML_IQ4_NL = 20, RK_GGML_IQ4_XS = 23, RK_GGML_BF16 = 30,
} rk_ggml_type;
/// Elements per block of a type (1 for F32/F16/BF16), or 0 for a type these kernels do not read.
size_t rk_quant_block_elements(int type);
/// Bytes per block of a type, or 0 for a type these kernels do not read.
size_t rk_quant_block_bytes(int type);
/// IEEE half precision to single, exactly.
float rk_half_to_float(uint16_t h);
/// out (n) = the n elements of `src` (n / block_elements blocks of `type`), bit-identical to the `gguf` Python
/// package's dequantization. Returns RK_ERR_ARG for an unknown type or n not a whole number of blocks.
int rk_dequantize(float *out, const void *src, size_t n, int type);
int rk_dequantize_ref(float *out, const void *src, size_t n, int type);
/// IEEE single to half precision, nearest with ties to even (NumPy's float16 conversion), overflow to infinity.
uint16_t rk_float_to_half(float f);
/// dst = the n elements of x in blocks of `type` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: byte for byte as the
/// `gguf` Python package quantizes; Q4_K, Q6_K: Reins's direct quantizer). RK_ERR_ARG for another type or n not whole
/// blocks.
int rk_quantize_blocks(void *dst, const float *x, size_t n, int type);

/// Activations quantized to 8-bit blocks of 32 (for products with quantized weights): the scale d = max|x|/127, the
/// values round(x/d) to nearest even, the sums of the first and last 16 values, and d times their total (what a
/// weight block's minimum multiplies).
typedef struct {
    float d;
    float ds;
    int16_t sum16[2];
    int8_t q[32];
} rk_q8_block;
/// out (N × C/32 blocks) = x (N,C) in 8-bit blocks. C must be a multiple of 32 (RK_ERR_ARG otherwise).
int rk_quantize_q8(rk_q8_block *out, const float *x, int N, int C);
void rk_quantize_q8_ref(rk_q8_block *out, const float *x, int N, int C);
/// out (N,OC) columns [row_begin, row_end) = xq · Wᵀ, W (OC,C) in blocks of `type` (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K,
/// Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS), xq from rk_quantize_q8 over the same C; integer dot products per block,
/// float scales per block.
/// Returns RK_ERR_ARG for another type or C not whole blocks.
int rk_qmatmul_q8(float *out, const rk_q8_block *xq, const void *w, int type, int N, int C, int OC, int row_begin,
                  int row_end);
int rk_qmatmul_q8_ref(float *out, const rk_q8_block *xq, const void *w, int type, int N, int C, int OC,
                      int row_begin, int row_end);
/// Bytes of W (OC,C) in `type` blocks interleaved by 8 rows for rk_qmatmul_q8_packed8 (the same as row-major), or 0
/// when it cannot be interleaved: a type other than Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
/// IQ4_NL and IQ4_XS, OC not a multiple of 8 or C not whole blocks.
size_t rk_qpack8_bytes(int type, int OC, int C);
/// dst (rk_qpack8_bytes) = W's blocks interleaved by 8 rows. RK_ERR_ARG when rk_qpack8_bytes is 0.
int rk_qpack8(void *dst, const void *w, int type, int OC, int C);
/// out (N,OC) columns [8·group_begin, 8·group_end) = xq · Wᵀ, W interleaved by rk_qpack8: the integer route for a
/// batch of rows. RK_ERR_ARG when W cannot be interleaved or the groups are out of range.
int rk_qmatmul_q8_packed8(float *out, const rk_q8_block *xq, const void *wp, int type, int N, int C, int OC,
                          int group_begin, int group_end);
/// dst (row_end − row_begin rows of row-major blocks) = rows [row_begin, row_end) of W interleaved by rk_qpack8.
int rk_qunpack8_rows(void *dst, const void *wp, int type, int OC, int C, int row_begin, int row_end);
/// out (row_end − row_begin, C) = rows [row_begin, row_end) of W interleaved by rk_qpack8, dequantized as rk_dequantize.
int rk_dequantize_packed8_rows(float *out, const void *wp, int type, int OC, int C, int row_begin, int row_end);
int rk_qmatmul_q8_packed8_ref(float *out, const rk_q8_block *xq, const void *wp, int type, int N, int C, int OC,
                              int group_begin, int group_end);
/// out (N,OC) columns [row_begin, row_end) = x (N,C) · Wᵀ in float32, each weight block dequantized (as rk_dequantize)
/// as it is read: the exact route for up to 8 rows (decoding). RK_ERR_ARG for an unknown type, C not whole blocks or
/// N > 8.
int rk_qmatvec_f32(float *out, const float *x, const void *w, int type, int N, int C, int OC, int row_begin,
                   int row_end);

#ifdef __cplusplus
}
#endif
#endif
