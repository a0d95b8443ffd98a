// The float32 FMA peak of this CPU's cores, measured: twelve independent chains of 512-bit fused multiply-adds per
// thread (enough to cover the instruction's latency on both FMA pipes), on one thread and then on two at once. The
// ceiling any float32 training step's products run under (Benchmarks/README.md, issue 13). Not part of the package; by
// hand, on a CPU with AVX-512:
//
//     clang -O2 -mavx512f -pthread -o /tmp/fma_peak Benchmarks/Scripts/fma_peak.c && /tmp/fma_peak
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

enum { CHAINS = 12 };
static const long iterations = 400000000 / CHAINS;

// Writes the thread's GFLOP/s (2 per lane and FMA, 16 lanes) to *out.
static void *chains(void *out) {
    __m512 a[CHAINS];
    const __m512 x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(0.999999f);
    for (int i = 0; i < CHAINS; i++) a[i] = _mm512_set1_ps((float)i);
    double t = now();
    for (long k = 0; k < iterations; k++) {
        for (int i = 0; i < CHAINS; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
        // Keeps the compiler from folding iterations together.
        __asm__ volatile("" : "+v"(a[0]), "+v"(a[1]), "+v"(a[2]), "+v"(a[3]), "+v"(a[4]), "+v"(a[5]), "+v"(a[6]),
                         "+v"(a[7]), "+v"(a[8]), "+v"(a[9]), "+v"(a[10]), "+v"(a[11]));
    }
    t = now() - t;
    float sum = 0;
    for (int i = 0; i < CHAINS; i++) sum += _mm512_reduce_add_ps(a[i]);
    *(double *)out = (double)iterations * CHAINS * 32 / t / 1e9;
    if (sum == 1234.5f) puts(""); // the chains' results are used
    return NULL;
}

int main(void) {
    for (int round = 0; round < 3; round++) {
        double one, two[2];
        chains(&one);
        pthread_t threads[2];
        for (int i = 0; i < 2; i++) pthread_create(&threads[i], NULL, chains, &two[i]);
        for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
        printf("one thread %.1f GFLOP/s, two threads %.1f GFLOP/s together\n", one, two[0] + two[1]);
    }
    return 0;
}
