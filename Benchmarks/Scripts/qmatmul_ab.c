// The interleaved integer products (rk_qmatmul_q8_packed8) of two versions of qmatmul.c in one process, alternated:
// on a VM whose speed moves from minute to minute, pairs from separate processes do not settle a 10% change. Not
// part of the package; by hand, `bash Benchmarks/Scripts/qmatmul_ab.sh REV TYPE ROWS [ISA]` (REV: the git revision
// to compare the working tree's qmatmul.c with; TYPE: the ggml type number, 3 Q4_1, 10 Q2_K, 11 Q3_K, 12 Q4_K, 13
// Q5_K, 14 Q6_K, 20 IQ4_NL, 23 IQ4_XS...; ROWS: activation rows per call; ISA, optional: 1 to run both on the AVX2
// kernels, 2 AVX-512 and VNNI where the CPU has them, the default). Each timing is 64 copies of a 1536 -> 576 weight
// (576 -> 1536 for blocks of 32), one thread, best of 5; seven alternations.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "reins_kernels.h"

int before_rk_qmatmul_q8_packed8(float *out, const rk_q8_block *xq, const void *wp, int type, int N, int C, int OC,
                                 int group_begin, int group_end);

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 4) { fprintf(stderr, "usage: %s TYPE ROWS [ISA]\n", argv[0]); return 2; }
    int type = atoi(argv[1]), N = atoi(argv[2]), copies = 64;
    if (argc == 4) printf("instruction set %s\n", rk_isa_name(rk_isa_select(atoi(argv[3]))));
    int be = (int)rk_quant_block_elements(type), bb = (int)rk_quant_block_bytes(type);
    int C = be == 256 ? 1536 : 576, OC = be == 256 ? 576 : 1536;
    size_t bytes = rk_qpack8_bytes(type, OC, C);
    if (bytes == 0 || N < 1) { fprintf(stderr, "type %d cannot be interleaved\n", type); return 2; }
    // Random blocks whose half-precision scales are small and positive (d first; Q6_K's, Q2_K's and Q3_K's last).
    uint8_t *rows = malloc(bytes), *w = malloc(bytes * copies);
    srand(1);
    for (size_t i = 0; i < bytes; i++) rows[i] = (uint8_t)rand();
    for (size_t k = 0; k < bytes / bb; k++) {
        uint16_t h = (uint16_t)(0x1400 | (rand() & 0x3FF));
        uint8_t *d = rows + k * bb + (type == 14 ? 208 : 0);
        d[0] = h & 0xFF, d[1] = h >> 8;
        if (type == 12 || type == 13) rows[k * bb + 2] = h & 0xFF, rows[k * bb + 3] = h >> 8; // Q4_K's, Q5_K's dmin
        if (type == 10 || type == 11) { // Q2_K's d and dmin, Q3_K's d: at the block's end
            uint8_t *e = rows + k * bb + (type == 10 ? 80 : 108);
            e[0] = h & 0xFF, e[1] = h >> 8;
            if (type == 10) e[2] = h & 0xFF, e[3] = h >> 8;
        }
    }
    rk_qpack8(w, rows, type, OC, C);
    for (int c = 1; c < copies; c++) memcpy(w + c * bytes, w, bytes);
    float *x = malloc(sizeof(float) * N * C), *a = malloc(sizeof(float) * N * OC), *b = malloc(sizeof(float) * N * OC);
    for (int i = 0; i < N * C; i++) x[i] = (rand() % 2000 - 1000) / 1000.0f;
    rk_q8_block *xq = malloc(sizeof(rk_q8_block) * N * C / 32);
    rk_quantize_q8(xq, x, N, C);
    rk_qmatmul_q8_packed8(a, xq, w, type, N, C, OC, 0, OC / 8);
    before_rk_qmatmul_q8_packed8(b, xq, w, type, N, C, OC, 0, OC / 8);
    double diff = 0, top = 0;
    for (int i = 0; i < N * OC; i++) diff = fmax(diff, fabs(a[i] - b[i])), top = fmax(top, fabs(b[i]));
    printf("type %d, %d rows: largest difference %g (largest output %g)\n", type, N, diff, top);
    for (int round = 0; round < 7; round++) {
        for (int version = 0; version < 2; version++) {
            double best = 1e30;
            for (int rep = 0; rep < 5; rep++) {
                double t = now_ms();
                for (int c = 0; c < copies; c++) {
                    if (version == 0) before_rk_qmatmul_q8_packed8(a, xq, w + c * bytes, type, N, C, OC, 0, OC / 8);
                    else rk_qmatmul_q8_packed8(a, xq, w + c * bytes, type, N, C, OC, 0, OC / 8);
                }
                best = fmin(best, now_ms() - t);
            }
            printf("%s %.2f ms  ", version == 0 ? "before" : "after", best);
        }
        printf("\n");
    }
    return 0;
}
