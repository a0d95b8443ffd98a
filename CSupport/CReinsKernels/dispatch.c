// dispatch.c — run-time choice of the instruction set the kernels use. The build is never specialised for the
// machine it runs on (no -march=native): each kernel family has scalar code plus AVX2/AVX-512 variants compiled
// with per-function target attributes, and picks one per call from rk_isa_active().
#include "rk_internal.h"
#include <stdatomic.h>

// The detected set, found once; a per-thread override (tests and benchmarks), so that forcing the scalar kernels on
// one thread never changes what another thread computes.
static atomic_int detected_isa = -1;
static _Thread_local int isa_override = -1;

static int detect(void) {
#if RK_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return RK_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return RK_ISA_AVX2;
#endif
    return RK_ISA_SCALAR;
}

int rk_isa_detected(void) {
    int isa = atomic_load_explicit(&detected_isa, memory_order_relaxed);
    if (isa < 0) {
        isa = detect();
        atomic_store_explicit(&detected_isa, isa, memory_order_relaxed);
    }
    return isa;
}

int rk_isa_active(void) { return isa_override >= 0 ? isa_override : rk_isa_detected(); }

int rk_isa_select(int isa) {
    int best = rk_isa_detected();
    if (isa < RK_ISA_SCALAR) isa = RK_ISA_SCALAR;
    if (isa > best) isa = best;
    isa_override = isa == best ? -1 : isa;
    return isa;
}

// How many serial sections the calling thread is inside: while it is in one, its parallel regions run inline.
static _Thread_local int serial_depth = 0;

int rk_thread_serial(void) { return serial_depth; }

void rk_thread_serial_enter(void) { serial_depth += 1; }

void rk_thread_serial_leave(void) {
    if (serial_depth > 0) serial_depth -= 1;
}

const char *rk_isa_name(int isa) {
    switch (isa) {
    case RK_ISA_AVX512: return "avx512";
    case RK_ISA_AVX2: return "avx2";
    default: return "scalar";
    }
}

// AVX-512 VNNI (with BW and VL), used by the AVX-512 level of the quantized products when present.
int rk_cpu_has_vnni(void) {
#if RK_X86
    static atomic_int has = -1;
    int v = atomic_load_explicit(&has, memory_order_relaxed);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl");
        atomic_store_explicit(&has, v, memory_order_relaxed);
    }
    return v;
#else
    return 0;
#endif
}
