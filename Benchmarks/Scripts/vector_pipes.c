// How many of each AVX2 instruction the CPU retires per cycle, alone and in pairs: the facts an integer or float
// kernel's instruction count is weighed with (which instructions share pipes). Not part of the package; by hand:
//
//     cc -O2 -mavx2 -o /tmp/vector_pipes Benchmarks/Scripts/vector_pipes.c && /tmp/vector_pipes
//
// The clock is estimated from a chain of dependent integer adds (one per cycle); each timed loop runs eight
// independent instructions per iteration (register operands, no dependency between iterations but the loop's own).
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static const long iterations = 200000000;
static char memory[256] __attribute__((aligned(64)));

#define CLOBBERS "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7"
// Eight instructions: a, b, a, b, ... each writing its own register from ymm8, ymm9.
#define EIGHT(a, b)                                                                                                  \
    a " %%ymm8, %%ymm9, %%ymm0\n" b " %%ymm8, %%ymm9, %%ymm1\n" a " %%ymm8, %%ymm9, %%ymm2\n" b                   \
      " %%ymm8, %%ymm9, %%ymm3\n" a " %%ymm8, %%ymm9, %%ymm4\n" b " %%ymm8, %%ymm9, %%ymm5\n" a                    \
      " %%ymm8, %%ymm9, %%ymm6\n" b " %%ymm8, %%ymm9, %%ymm7\n"
// Eight of one instruction reading memory, `step` bytes apart, each into its own register.
#define LOADS(ins, step)                                                                                             \
    ins " (%0), %%ymm0\n" ins " " #step "*1(%0), %%ymm1\n" ins " " #step "*2(%0), %%ymm2\n" ins " " #step          \
        "*3(%0), %%ymm3\n" ins " " #step "*4(%0), %%ymm4\n" ins " " #step "*5(%0), %%ymm5\n" ins " " #step       \
        "*6(%0), %%ymm6\n" ins " " #step "*7(%0), %%ymm7\n"
#define TIME(label, body)                                                                                            \
    do {                                                                                                             \
        double t0 = now();                                                                                           \
        for (long i = 0; i < iterations; i++) __asm__ volatile(body ::"r"(memory) : CLOBBERS);                       \
        printf("%-28s %.2f per cycle\n", label, 8.0 * iterations / (now() - t0) / 1e9 / ghz);                       \
    } while (0)

int main(void) {
    unsigned long x = 1;
    double t0 = now();
    for (long i = 0; i < iterations; i++) __asm__ volatile("add $1, %0\nadd $1, %0\nadd $1, %0\nadd $1, %0" : "+r"(x));
    double ghz = 4.0 * iterations / (now() - t0) / 1e9;
    printf("clock ~%.2f GHz (dependent adds)\n", ghz);
    TIME("vpmaddubsw", EIGHT("vpmaddubsw", "vpmaddubsw"));
    TIME("vpmaddwd", EIGHT("vpmaddwd", "vpmaddwd"));
    TIME("vpsignb", EIGHT("vpsignb", "vpsignb"));
    TIME("vfmadd231ps", EIGHT("vfmadd231ps", "vfmadd231ps"));
    TIME("vpaddw", EIGHT("vpaddw", "vpaddw"));
    TIME("vpaddd", EIGHT("vpaddd", "vpaddd"));
    TIME("vpmaddubsw + vpsignb", EIGHT("vpmaddubsw", "vpsignb"));
    TIME("vpmaddubsw + vpmaddwd", EIGHT("vpmaddubsw", "vpmaddwd"));
    TIME("vpmaddubsw + vfmadd231ps", EIGHT("vpmaddubsw", "vfmadd231ps"));
    TIME("vpmaddubsw + vpaddw", EIGHT("vpmaddubsw", "vpaddw"));
    TIME("vpmaddwd + vpaddd", EIGHT("vpmaddwd", "vpaddd"));
    TIME("vpbroadcastd from memory", LOADS("vpbroadcastd", 4));
    TIME("vpmovsxbw from memory", LOADS("vpmovsxbw", 16));
    // Four broadcasts, each read by a product.
    TIME("vpbroadcastd mem + vpmaddwd",
         "vpbroadcastd (%0), %%ymm0\nvpbroadcastd 4(%0), %%ymm1\nvpbroadcastd 8(%0), %%ymm2\n"
         "vpbroadcastd 12(%0), %%ymm3\nvpmaddwd %%ymm8, %%ymm0, %%ymm4\nvpmaddwd %%ymm8, %%ymm1, %%ymm5\n"
         "vpmaddwd %%ymm8, %%ymm2, %%ymm6\nvpmaddwd %%ymm8, %%ymm3, %%ymm7\n");
    (void)x;
    return 0;
}
