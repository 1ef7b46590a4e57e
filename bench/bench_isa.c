/*
 * bench_isa.c - the arithmetic ceiling of one core for each precision of
 * the dense layers (dense.h), measured: the throughput of the instruction
 * each precision's inner loop is made of, on registers only (no memory
 * traffic), so nothing a library or a kernel does can beat it.
 *
 *   fp32  vfmadd231ps zmm      16 multiply-adds
 *   bf16  vdpbf16ps zmm / ymm  32 / 16 multiply-adds (bf16 pairs, fp32 sum)
 *   int8  vpdpbusd zmm / ymm   64 / 32 multiply-adds (u8 x s8, int32 sum)
 *   fp16  vfmadd231ph zmm      32 multiply-adds (AVX512_FP16; no precision
 *                              of the service uses it: for comparison)
 *
 * Each is run with 8, 16 and 24 independent accumulator chains, each
 * starting from its own value (equal chains would be merged by the
 * compiler into one), (more
 * chains than latency x issue width means the issue rate, not the latency,
 * limits it), best of several repetitions.  Rates are multiply-adds x 2 per
 * second (GFLOP/s, GOP/s for int8), and instructions per cycle of the
 * fp32 FMA's clock: each row's rate against vfmadd231ps's in the same run,
 * times the two FMAs a cycle this core issues.
 *
 *   build/release/bench/bench_isa [--reps R]
 *
 * One thread.  On a shared machine another process can take the core
 * mid-run: the best of the repetitions is the figure (the ceiling).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define ITERS 2000000L

/* One kernel: CH chains of instruction OP on vectors of type T, the
 * multiplicand m held in a register. */
#define KERNEL(name, tgt, T, init, MDECL, OP, CH)                                             \
    __attribute__((target(tgt), noinline)) static double name(void) {                         \
        MDECL;                                                                                \
        T a[CH];                                                                              \
        _Pragma("GCC unroll 24") for (int i = 0; i < CH; i++) a[i] = init;                    \
        double t0 = bench_now_s();                                                            \
        for (long k = 0; k < ITERS; k++) {                                                    \
            _Pragma("GCC unroll 24") for (int i = 0; i < CH; i++) { OP; }                      \
        }                                                                                     \
        double t = bench_now_s() - t0;                                                        \
        _Pragma("GCC unroll 24") for (int i = 0; i < CH; i++) __asm__ volatile("" : : "v"(a[i])); \
        return (double)ITERS * CH / t; /* instructions per second */                          \
    }

#define FP32_INIT _mm512_set1_ps((float)i)
#define FP32_OP a[i] = _mm512_fmadd_ps(a[i], m32, c32)
#define BF16_INIT _mm512_set1_ps((float)i)
/* The dot-product instructions as inline assembly with the accumulator
 * tied ("+v"): GCC 12 compiles their intrinsics into register copies and
 * spills once many accumulators are live (it halved the 24-chain int8
 * figure), which would measure the compiler instead of the core. */
#define ASM_ACC(insn, acc, x, y) __asm__(insn " %2, %1, %0" : "+v"(acc) : "v"(x), "v"(y))
#define BF16_OP ASM_ACC("vdpbf16ps", a[i], mb, mb)
#define BF16Y_INIT _mm256_set1_ps((float)i)
#define BF16Y_OP ASM_ACC("vdpbf16ps", a[i], mby, mby)
#define INT8_INIT _mm512_set1_epi32(i)
#define INT8_OP ASM_ACC("vpdpbusd", a[i], mq, mq)
#define INT8Y_INIT _mm256_set1_epi32(i)
#define INT8Y_OP ASM_ACC("vpdpbusd", a[i], mqy, mqy)
#define FP16_INIT _mm512_set1_ph((_Float16)(float)i)
#define FP16_OP a[i] = _mm512_fmadd_ph(a[i], m16, c16)

#define FP32_M const __m512 m32 = _mm512_set1_ps(0.999999f), c32 = _mm512_set1_ps(1e-7f)
#define BF16_M const __m512bh mb = (__m512bh)_mm512_set1_epi16(0x3f80)
#define BF16Y_M const __m256bh mby = (__m256bh)_mm256_set1_epi16(0x3f80)
#define INT8_M const __m512i mq = _mm512_set1_epi8(1)
#define INT8Y_M const __m256i mqy = _mm256_set1_epi8(1)
#define FP16_M const __m512h m16 = _mm512_set1_ph((_Float16)0.999f), \
                             c16 = _mm512_set1_ph((_Float16)0.0001f)

#define KERNELS(ch)                                                                           \
    KERNEL(fp32_##ch, "avx512f", __m512, FP32_INIT, FP32_M, FP32_OP, ch)                      \
    KERNEL(bf16_##ch, "avx512f,avx512bf16", __m512, BF16_INIT, BF16_M, BF16_OP, ch)           \
    KERNEL(bf16y_##ch, "avx512f,avx512vl,avx512bf16", __m256, BF16Y_INIT, BF16Y_M, BF16Y_OP,  \
           ch)                                                                                \
    KERNEL(int8_##ch, "avx512f,avx512vnni", __m512i, INT8_INIT, INT8_M, INT8_OP, ch)          \
    KERNEL(int8y_##ch, "avx512f,avx512vl,avx512vnni", __m256i, INT8Y_INIT, INT8Y_M, INT8Y_OP, \
           ch)                                                                                \
    KERNEL(fp16_##ch, "avx512f,avx512fp16", __m512h, FP16_INIT, FP16_M, FP16_OP, ch)
KERNELS(8)
KERNELS(16)
KERNELS(24)

typedef struct row {
    const char *name;
    int have;                       /* the CPU has the instruction */
    int macs;                       /* multiply-adds per instruction */
    double (*run[3])(void);         /* 8, 16, 24 chains */
} row;

int main(int argc, char **argv) {
    int reps = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--reps R]\n", argv[0]);
            return 2;
        }
    }
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) {
        printf("bench_isa: no AVX-512F on this CPU\n");
        return 0;
    }
    const int bf = __builtin_cpu_supports("avx512bf16"), vnni = __builtin_cpu_supports("avx512vnni"),
              fp16 = __builtin_cpu_supports("avx512fp16");
    const row rows[] = {
        {"fp32 vfmadd231ps zmm", 1, 16, {fp32_8, fp32_16, fp32_24}},
        {"bf16 vdpbf16ps zmm", bf, 32, {bf16_8, bf16_16, bf16_24}},
        {"bf16 vdpbf16ps ymm", bf, 16, {bf16y_8, bf16y_16, bf16y_24}},
        {"int8 vpdpbusd zmm", vnni, 64, {int8_8, int8_16, int8_24}},
        {"int8 vpdpbusd ymm", vnni, 32, {int8y_8, int8y_16, int8y_24}},
        {"fp16 vfmadd231ph zmm", fp16, 32, {fp16_8, fp16_16, fp16_24}},
    };
    const int nrows = sizeof rows / sizeof *rows, chains[3] = {8, 16, 24};
    double best[8][3] = {{0}};
    /* Repetitions outermost, rows interleaved: a burst of other load
     * falls on one repetition of every row, not on every repetition of
     * one. */
    for (int r = 0; r < reps; r++)
        for (int k = 0; k < nrows; k++) {
            if (!rows[k].have) continue;
            for (int c = 0; c < 3; c++) {
                double v = rows[k].run[c]();
                if (v > best[k][c]) best[k][c] = v;
            }
        }
    double fma = 0;
    for (int c = 0; c < 3; c++) fma = best[0][c] > fma ? best[0][c] : fma;
    printf("one core's arithmetic ceiling by instruction (registers only; best of %d; "
           "G = 1e9 multiply-adds x 2 per second)\n", reps);
    printf("%-22s %6s %9s %9s %9s %9s %12s\n", "instruction", "MAC/op", "8 chains", "16", "24",
           "best", "op/fma-cycle");
    for (int k = 0; k < nrows; k++) {
        double b = 0;
        for (int c = 0; c < 3; c++) b = best[k][c] > b ? best[k][c] : b;
        if (b == 0) {
            printf("%-22s %6d   (not on this CPU)\n", rows[k].name, rows[k].macs);
            continue;
        }
        printf("%-22s %6d", rows[k].name, rows[k].macs);
        for (int c = 0; c < 3; c++) printf(" %9.1f", best[k][c] * rows[k].macs * 2 * 1e-9);
        /* The fp32 FMA issues 2 a cycle on AVX-512 server cores: its rate
         * / 2 is the clock the others are counted in. */
        printf(" %9.1f %12.2f\n", b * rows[k].macs * 2 * 1e-9, b / (fma / 2));
    }
    printf("(chains: independent accumulators per loop; op/fma-cycle assumes the fp32 FMA "
           "issues 2 per cycle)\n");
    (void)chains;
    return 0;
}
#else
int main(void) {
    printf("bench_isa: x86-64 with GCC only\n");
    return 0;
}
#endif
