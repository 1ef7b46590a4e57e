/*
 * cpu.h - what this CPU can run, and which code path each choice of the
 * engine takes: the one owner of CPU feature dispatch in core/.
 *
 * A path is chosen in one of three ways, all of them here:
 *
 *   1. cpu_has(): the CPU's features, detected once per process and kept.
 *      A kernel written for a feature is compiled for it alone
 *      (__attribute__((target(...)))) and called only where cpu_has says
 *      the feature is there: the packed fp32 kernel (gemm.c), the int8
 *      VNNI kernel (dense_vnni.c), the AVX-512 row quantiser and the
 *      AVX512_BF16 row conversion (dense_quant.c).
 *
 *   2. CTR_CLONES: a plain C loop compiled twice, for AVX-512F and for
 *      baseline x86-64, the copy picked once by the dynamic linker (GCC's
 *      target_clones, an ifunc).  For the per-element loops around the
 *      dense products (format conversions, fused passes), which the
 *      baseline build runs 4 floats at a time.
 *
 *   3. cpu_path_on(): the switches, CPU_PATH_MAP below.  Each path is on by
 *      default where the CPU has the feature it needs, unless its
 *      environment variable is set (to anything but "" or "0") to turn it
 *      off; decided at first use, once per process.  cpu_path_set turns one
 *      on or off for the whole process: the tests and benchmarks compare a
 *      path against its fallback that way.
 *
 * The switches (name, feature it needs, environment variable, what it
 * chooses); off always means the portable or reference code:
 */
#ifndef CTR_CPU_H
#define CTR_CPU_H

#include <stdatomic.h>

/* name, what __builtin_cpu_supports calls it */
#define CPU_FEATURE_MAP(X)                                                                   \
    X(AVX512F, "avx512f")                                                                    \
    X(AVX512BW, "avx512bw")                                                                  \
    X(AVX512VNNI, "avx512vnni")                                                              \
    X(AVX512BF16, "avx512bf16")

typedef enum cpu_feature {
#define CPU_FEATURE_ENUM(name, text) CPU_##name,
    CPU_FEATURE_MAP(CPU_FEATURE_ENUM)
#undef CPU_FEATURE_ENUM
    CPU_FEATURE_COUNT,
    CPU_ANY = -1            /* a path that runs on every CPU */
} cpu_feature;

#define CPU_PATH_MAP(X)                                                                      \
    X(VMATH_AVX512, CPU_AVX512F, NULL,                                                       \
      "vmath_exp, vmath_sigmoid: 16 lanes at a time through glibc's vector expf "            \
      "(libmvec); off: scalar expf")                                                         \
    X(EXPLAIN_AVX512, CPU_AVX512F, NULL,                                                     \
      "attn_explain: the top-k weights with AVX-512; off: the portable loop")                \
    X(DIN_AVX512, CPU_AVX512F, NULL,                                                         \
      "DIN's passes over the pair rows (t * h; each layer's adds, ReLU and the output "       \
      "unit's dot product) with AVX-512; off: portable loops")                                \
    X(LINEAR_ONEDNN, CPU_ANY, "CTR_DENSE_OPENBLAS",                                          \
      "linear_gemm (attention, item-side folds, one-unit heads) on oneDNN's sgemm; "         \
      "off: OpenBLAS's cblas_sgemm")                                                         \
    X(QNN_DENSE, CPU_ANY, "CTR_QNN_OPENBLAS",                                                \
      "QIN's fp32 QNN layers on dense.h's default backend (oneDNN, the packed kernel "       \
      "below 9 rows), chosen at each model load; off: OpenBLAS's cblas_sgemm")

typedef enum cpu_path {
#define CPU_PATH_ENUM(name, feature, env, what) CPU_PATH_##name,
    CPU_PATH_MAP(CPU_PATH_ENUM)
#undef CPU_PATH_ENUM
    CPU_PATH_COUNT
} cpu_path;

/* 1 when this CPU has feature f (CPU_ANY: 1; an unknown f: 0).  Detected
 * on the first call, kept for the process; thread-safe, and after the
 * first call one atomic load (inline: the vector paths ask per call). */
static inline int cpu_has(cpu_feature f);

/* "avx512f" etc.; "unknown" otherwise.  Static strings. */
const char *cpu_feature_name(cpu_feature f);

/* The features this CPU has, space-separated ("avx512f avx512bw
 * avx512vnni"; "none"), for logs and benchmark banners.  Static. */
const char *cpu_describe(void);

/* 1 when path p is on.  Thread-safe; after the first call one atomic
 * load (inline: vmath asks on every call). */
static inline int cpu_path_on(cpu_path p);

/* Turns path p on (only where the CPU has its feature) or off, for the
 * whole process; returns the state now in force.  Call before the threads
 * that score start (tests, benchmarks). */
int cpu_path_set(cpu_path p, int on);

/* The path's name ("VMATH_AVX512"), environment variable (NULL: none) and
 * what it chooses, as in CPU_PATH_MAP.  Static strings. */
const char *cpu_path_name(cpu_path p);
const char *cpu_path_env(cpu_path p);
const char *cpu_path_what(cpu_path p);

/* --- the inline halves ------------------------------------------------- */

/* State kept by cpu.c, read here: the feature bits (-1: not detected yet)
 * and each path's state (0: not decided yet, 1: off, 2: on). */
extern atomic_int cpu_feature_bits;
extern atomic_int cpu_path_state[CPU_PATH_COUNT];
int cpu_detect(void);                 /* the first question of cpu_has */
int cpu_path_decide(cpu_path p);      /* the first question of cpu_path_on */

static inline int cpu_has(cpu_feature f) {
    if (f == CPU_ANY) return 1;
    if ((unsigned)f >= CPU_FEATURE_COUNT) return 0;
    int bits = atomic_load_explicit(&cpu_feature_bits, memory_order_relaxed);
    return ((bits < 0 ? cpu_detect() : bits) >> f) & 1;
}

static inline int cpu_path_on(cpu_path p) {
    if ((unsigned)p >= CPU_PATH_COUNT) return 0;
    int v = atomic_load_explicit(&cpu_path_state[p], memory_order_relaxed);
    return v ? v - 1 : cpu_path_decide(p);
}

/* CTR_CLONES (way 2 above).  Not under ThreadSanitizer: an ifunc resolver
 * runs while the dynamic linker relocates the program, before TSan's
 * runtime is set up, and the instrumented resolver crashes there (every
 * test binary died before main).  The TSan build runs the baseline copy,
 * which is what it needs to find races. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_THREAD__)
#define CTR_CLONES __attribute__((target_clones("avx512f", "default")))
#else
#define CTR_CLONES
#endif

#endif
