/*
 * cpu.c - CPU features and code-path switches (see cpu.h).
 *
 * Both are decided lazily, on the first question, and then read with one
 * relaxed atomic load (cpu.h's inline halves): the answers never change
 * except through cpu_path_set, which tests and benchmarks call before
 * scoring starts.
 */
#include "cpu.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bit f set: the CPU has feature f; -1: not detected yet. */
atomic_int cpu_feature_bits = -1;

int cpu_detect(void) {
    int mask = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
#define CPU_FEATURE_BIT(name, text)                                                          \
    if (__builtin_cpu_supports(text)) mask |= 1 << CPU_##name;
    CPU_FEATURE_MAP(CPU_FEATURE_BIT)
#undef CPU_FEATURE_BIT
#endif
    atomic_store_explicit(&cpu_feature_bits, mask, memory_order_relaxed);
    return mask;
}

const char *cpu_feature_name(cpu_feature f) {
    static const char *const names[] = {
#define CPU_FEATURE_NAME(name, text) text,
        CPU_FEATURE_MAP(CPU_FEATURE_NAME)
#undef CPU_FEATURE_NAME
    };
    return f >= 0 && f < CPU_FEATURE_COUNT ? names[f] : "unknown";
}

static char described[128];
static pthread_once_t described_once = PTHREAD_ONCE_INIT;

static void describe(void) {
    size_t len = 0;
    for (int f = 0; f < CPU_FEATURE_COUNT; f++)
        if (cpu_has((cpu_feature)f) && len + 32 < sizeof described)
            len += (size_t)snprintf(described + len, sizeof described - len, "%s%s",
                                    len ? " " : "", cpu_feature_name((cpu_feature)f));
    if (!len) snprintf(described, sizeof described, "none");
}

const char *cpu_describe(void) {
    pthread_once(&described_once, describe);
    return described;
}

/* --- the switches ---------------------------------------------------------- */

static const struct path_row {
    const char *name;
    cpu_feature need;
    const char *env;
    const char *what;
} paths[CPU_PATH_COUNT] = {
#define CPU_PATH_ROW(name, feature, env, what) {#name, feature, env, what},
    CPU_PATH_MAP(CPU_PATH_ROW)
#undef CPU_PATH_ROW
};

/* 0: not decided yet; 1: off; 2: on. */
atomic_int cpu_path_state[CPU_PATH_COUNT];

/* The environment turns a path off with any value but "" and "0". */
static int env_off(const char *name) {
    const char *v = name ? getenv(name) : NULL;
    return v && *v && strcmp(v, "0") != 0;
}

int cpu_path_decide(cpu_path p) {
    int v = 0, want = 1 + (cpu_has(paths[p].need) && !env_off(paths[p].env));
    /* A cpu_path_set that came first wins. */
    if (atomic_compare_exchange_strong(&cpu_path_state[p], &v, want)) v = want;
    return v - 1;
}

int cpu_path_set(cpu_path p, int on) {
    if (p < 0 || p >= CPU_PATH_COUNT) return 0;
    on = on && cpu_has(paths[p].need);
    atomic_store(&cpu_path_state[p], 1 + on);
    return on;
}

const char *cpu_path_name(cpu_path p) {
    return p >= 0 && p < CPU_PATH_COUNT ? paths[p].name : "unknown";
}

const char *cpu_path_env(cpu_path p) {
    return p >= 0 && p < CPU_PATH_COUNT ? paths[p].env : NULL;
}

const char *cpu_path_what(cpu_path p) {
    return p >= 0 && p < CPU_PATH_COUNT ? paths[p].what : "unknown";
}
