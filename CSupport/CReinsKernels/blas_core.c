// blas_core.c — make sure OpenBLAS uses kernels for the CPU it runs on.
//
// A DYNAMIC_ARCH OpenBLAS (Debian's, for one) picks its kernels once, when it loads, from the CPU model number. A
// release older than the CPU does not know the model and may fall back to its oldest x86-64 kernels: OpenBLAS 0.3.21 on
// an Intel Xeon of model 207 (AVX-512, BF16) chose "Prescott" (SSE3), and its sgemm ran at a quarter of the speed of its
// own AVX-512 kernels there. Newer releases fall back by feature instead; this does the same for the older ones.
//
// After OpenBLAS's own initialisation (its constructor runs first: the library loads before the code that uses it),
// and before main: if the user has not set OPENBLAS_CORETYPE and the chosen core is below what the CPU supports, the
// core the CPU's features allow is forced through OPENBLAS_CORETYPE and OpenBLAS's dynamic selection is run again.
// Builds of OpenBLAS for one target have no dynamic selection (the weak symbols below are then absent) and are left
// as they are.
#include "rk_internal.h"
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if RK_X86
void gotoblas_dynamic_init(void) __attribute__((weak));
void gotoblas_dynamic_quit(void) __attribute__((weak));

// 3: AVX-512 (F, CD, BW, DQ, VL), 2: AVX2 + FMA, 0: older.
static int cpu_level(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return 3;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 2;
    return 0;
}

// The level of an OpenBLAS core name (as openblas_get_corename reports it, any case).
static int core_level(const char *name) {
    static const char *const avx512[] = {"skylakex", "cooperlake", "sapphirerapids"};
    static const char *const avx2[] = {"haswell", "zen", "excavator"};
    for (size_t i = 0; i < sizeof avx512 / sizeof *avx512; i++)
        if (strcasecmp(name, avx512[i]) == 0) return 3;
    for (size_t i = 0; i < sizeof avx2 / sizeof *avx2; i++)
        if (strcasecmp(name, avx2[i]) == 0) return 2;
    return 0;
}

// The core OpenBLAS had chosen before it was raised, or "" when it was not.
static char fallback[32];

// Both variables are set in the environment: OpenBLAS's selection reads OPENBLAS_CORETYPE, and a child process (the
// `reins` tool re-executes itself once) then loads on the same core and still knows what it was raised from.
static const char *const fallback_variable = "REINS_OPENBLAS_FALLBACK";

__attribute__((constructor)) static void rk_blas_core_check(void) {
    if (!gotoblas_dynamic_init || !gotoblas_dynamic_quit) return;
    if (getenv("OPENBLAS_CORETYPE")) {
        const char *inherited = getenv(fallback_variable);
        if (inherited) snprintf(fallback, sizeof fallback, "%s", inherited);
        return;
    }
    const char *current = openblas_get_corename();
    int cpu = cpu_level();
    if (!current || core_level(current) >= cpu) return;
    const char *wanted = cpu == 3 ? (__builtin_cpu_supports("avx512bf16") ? "COOPERLAKE" : "SKYLAKEX") : "HASWELL";
    snprintf(fallback, sizeof fallback, "%s", current);
    if (setenv(fallback_variable, fallback, 1) != 0 || setenv("OPENBLAS_CORETYPE", wanted, 1) != 0) {
        fallback[0] = 0;
        return;
    }
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
}
#endif

const char *rk_blas_core(void) {
    const char *name = openblas_get_corename();
    return name ? name : "unknown";
}

const char *rk_blas_core_fallback(void) {
#if RK_X86
    return fallback;
#else
    return "";
#endif
}
