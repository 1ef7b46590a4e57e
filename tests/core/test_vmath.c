/* test_vmath.c - the array exp and sigmoid (core/vmath.h): the vector path
 * (glibc's libmvec, where the CPU has AVX-512F) against scalar expf on this
 * machine, over the range the softmaxes and sigmoids see and beyond, with
 * every length around the 16-lane blocks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/cpu.h"
#include "core/vmath.h"

enum { N = 20000 };

static void fill(float *x) {
    uint64_t rng = 3;
    for (int i = 0; i < N; i++) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = (float)((double)(rng >> 11) / 9007199254740992.0 * 200.0 - 100.0);
    }
    /* The edges: 0, tiny, the overflow and underflow ends of expf. */
    const float edge[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 88.7f, 88.72f, -87.3f, -103.9f, -120.0f,
                          89.0f, -1e9f, 1e9f};
    memcpy(x, edge, sizeof edge);
}

static void test_exp(void **state) {
    (void)state;
    float *x = malloc(N * sizeof *x), *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    fill(x);
    memcpy(a, x, N * sizeof *x);
    memcpy(b, x, N * sizeof *x);
    cpu_path_set(CPU_PATH_VMATH_AVX512, 1);
    vmath_exp(a, N);
    cpu_path_set(CPU_PATH_VMATH_AVX512, 0);
    vmath_exp(b, N);
    cpu_path_set(CPU_PATH_VMATH_AVX512, 1);
    for (int i = 0; i < N; i++) {
        assert_true(b[i] == expf(x[i]));
        /* Within 2 ulp where normal; subnormal and overflow ends exact in
         * kind (both 0, both inf, or within 1e-38 absolute). */
        double d = fabs((double)a[i] - b[i]);
        if (isinf(b[i])) assert_true(isinf(a[i]));
        else if (b[i] > 1e-37f) assert_true(d <= 2.5e-7 * b[i]);
        else assert_true(d <= 1e-38);
    }
    free(x); free(a); free(b);
}

static void test_sigmoid_and_lengths(void **state) {
    (void)state;
    float *x = malloc(N * sizeof *x), *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b);
    fill(x);
    for (int n = 0; n <= 50; n++) {   /* every tail length, twice over */
        memcpy(a, x, 64 * sizeof *x);
        memcpy(b, x, 64 * sizeof *x);
        cpu_path_set(CPU_PATH_VMATH_AVX512, 1);
        vmath_sigmoid(a, n);
        cpu_path_set(CPU_PATH_VMATH_AVX512, 0);
        vmath_sigmoid(b, n);
        for (int i = 0; i < n; i++) assert_true(fabsf(a[i] - b[i]) <= 1e-7f);
        for (int i = n; i < 64; i++) assert_true(a[i] == x[i]); /* untouched */
    }
    cpu_path_set(CPU_PATH_VMATH_AVX512, 1);
    memcpy(a, x, N * sizeof *x);
    vmath_sigmoid(a, N);
    for (int i = 0; i < N; i++) {
        double want = 1.0 / (1.0 + exp(-(double)x[i]));
        assert_true(fabs(a[i] - want) <= 2e-7);
    }
    free(x); free(a); free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp),
        cmocka_unit_test(test_sigmoid_and_lengths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
