/* test_linear.c - the dense product behind DIN and TIN (core/linear.h):
 * oneDNN's sgemm, the fast path, against a naive double-precision product
 * and against OpenBLAS (the fallback), on this machine's CPU, for both
 * weight layouts, beta 0 and 1, row strides wider than the rows, the
 * DIN/TIN shapes and odd ones; and the dense layer's bias. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/cpu.h"
#include "core/linear.h"

static uint64_t rng = 7;
static float uni(void) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(rng >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

/* y = x op(W) + beta y0, naive, in double. */
static void naive(int n, int out, int in, const float *x, int ldx, const float *w, int ldw,
                  int w_out_in, float beta, const float *y0, int ldy, double *y) {
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out; o++) {
            double acc = beta * (double)y0[(size_t)i * ldy + o];
            for (int k = 0; k < in; k++)
                acc += (double)x[(size_t)i * ldx + k] *
                       (w_out_in ? w[(size_t)o * ldw + k] : w[(size_t)k * ldw + o]);
            y[(size_t)i * out + o] = acc;
        }
}

static void check_shape(int n, int out, int in, int w_out_in, float beta, int pad) {
    const int ldx = in + pad, ldy = out + pad, ldw = (w_out_in ? in : out) + pad;
    float *x = linear_falloc((size_t)n * ldx), *w = linear_falloc((size_t)(w_out_in ? out : in) * ldw);
    float *y0 = linear_falloc((size_t)n * ldy), *y = linear_falloc((size_t)n * ldy);
    double *want = malloc((size_t)n * out * sizeof *want);
    for (size_t i = 0; i < (size_t)n * ldx; i++) x[i] = uni();
    for (size_t i = 0; i < (size_t)(w_out_in ? out : in) * ldw; i++) w[i] = uni();
    for (size_t i = 0; i < (size_t)n * ldy; i++) y0[i] = uni();
    naive(n, out, in, x, ldx, w, ldw, w_out_in, beta, y0, ldy, want);
    const double tol = 1e-5 * (in + 1);
    for (int lib = 1; lib >= 0; lib--) {
        cpu_path_set(CPU_PATH_LINEAR_ONEDNN, lib);
        memcpy(y, y0, (size_t)n * ldy * sizeof *y);
        linear_gemm(n, out, in, x, ldx, w, ldw, w_out_in, beta, y, ldy);
        for (int i = 0; i < n; i++) {
            for (int o = 0; o < out; o++)
                if (fabs(y[(size_t)i * ldy + o] - want[(size_t)i * out + o]) > tol)
                    fail_msg("%s n=%d out=%d in=%d w_out_in=%d beta=%g: y[%d][%d] = %.7g, "
                             "want %.7g", lib ? "oneDNN" : "OpenBLAS", n, out, in, w_out_in,
                             (double)beta, i, o, (double)y[(size_t)i * ldy + o],
                             want[(size_t)i * out + o]);
            /* The padding between rows is never written. */
            for (int o = out; o < ldy; o++)
                assert_true(y[(size_t)i * ldy + o] == y0[(size_t)i * ldy + o]);
        }
    }
    cpu_path_set(CPU_PATH_LINEAR_ONEDNN, 1);
    free(x); free(w); free(y0); free(y); free(want);
}

static void test_shapes(void **state) {
    (void)state;
    /* DIN: pair rows x (256 -> 512), 512 -> 256, 256 -> 1, S (n x nh) He;
     * TIN: scores, the weighted sum, f1, f2; and odd sizes. */
    const int shapes[][3] = {{256, 512, 256}, {256, 256, 512}, {256, 1, 256}, {64, 256, 64},
                             {64, 64, 128},   {64, 80, 128},   {64, 40, 80},  {1, 1, 1},
                             {7, 13, 5},      {33, 3, 97},     {300, 17, 1}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
        for (int t = 0; t < 2; t++)
            for (int b = 0; b < 2; b++)
                check_shape(shapes[k][0], shapes[k][1], shapes[k][2], t, (float)b,
                            (int)(k % 3) * 5);
}

static void test_empty(void **state) {
    (void)state;
    float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 1, 1}, y[4] = {5, 6, 7, 8};
    linear_gemm(0, 2, 2, x, 2, w, 2, 1, 0.0f, y, 2); /* n = 0: nothing */
    assert_true(y[0] == 5 && y[3] == 8);
    linear_gemm(2, 2, 0, x, 2, w, 2, 1, 0.5f, y, 2); /* in = 0: y *= beta */
    assert_true(y[0] == 2.5f && y[3] == 4.0f);
}

static void test_layer_bias(void **state) {
    (void)state;
    linear_layer l = {3, 2, linear_falloc(6), linear_falloc(2)};
    for (int i = 0; i < 6; i++) l.w[i] = (float)(i + 1);   /* [[1,2,3],[4,5,6]] */
    l.b[0] = 0.5f;
    l.b[1] = -1.0f;
    float x[3] = {1, 0, -1}, y[2];
    linear_forward(&l, 1, x, 3, y, 2);
    assert_true(fabsf(y[0] - (-2.0f + 0.5f)) < 1e-6f && fabsf(y[1] - (-2.0f - 1.0f)) < 1e-6f);
    linear_layer_free(&l);
    assert_null(l.w);
}

static void test_choice(void **state) {
    (void)state;
    assert_int_equal(cpu_path_set(CPU_PATH_LINEAR_ONEDNN, 0), 0);
    assert_int_equal(cpu_path_on(CPU_PATH_LINEAR_ONEDNN), 0);
    assert_int_equal(cpu_path_set(CPU_PATH_LINEAR_ONEDNN, 1), 1);
    assert_int_equal(cpu_path_on(CPU_PATH_LINEAR_ONEDNN), 1);
}

/* A scratch's buffers: aligned and zeroed, every one kept and freed
 * together (ASan checks the freeing), and a failure remembered. */
static void test_bufs(void **state) {
    (void)state;
    linear_bufs b = {0};
    float *f = linear_bufs_floats(&b, 37);
    int32_t *i = linear_bufs_ints(&b, 5);
    assert_non_null(f);
    assert_non_null(i);
    assert_int_equal((uintptr_t)f % 64, 0);
    assert_int_equal((uintptr_t)i % 64, 0);
    for (int k = 0; k < 37; k++) assert_true(f[k] == 0.0f);
    for (int k = 0; k < 5; k++) assert_int_equal(i[k], 0);
    assert_int_equal(b.n, 2);
    assert_false(b.failed);
    while (b.n < LINEAR_BUFS_MAX) assert_non_null(linear_bufs_floats(&b, 1));
    assert_null(linear_bufs_floats(&b, 1)); /* one too many */
    assert_true(b.failed);
    assert_null(linear_bufs_floats(&b, SIZE_MAX / 2)); /* too large */
    linear_bufs_free(&b);
    assert_int_equal(b.n, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bufs),
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_layer_bias),
        cmocka_unit_test(test_choice),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
