/* test_attn.c - the attention plumbing (core/attn.h): the window of a
 * history, the gather, the row softmax against a double-precision one, and
 * the explanation's top-k (order by |weight|, ties to the later position,
 * signed weights kept, short rows padded with -1). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>

#include "core/base/cpu.h"
#include "core/attn.h"

static void test_window(void **state) {
    (void)state;
    float a[2] = {1, 2}, b[2] = {3, 4};
    const float *hist[6] = {a, NULL, b, a, NULL, b};
    int32_t pos[6];
    /* All six count: NULLs left out. */
    assert_int_equal(attn_window(hist, 6, 10, pos), 4);
    assert_int_equal(pos[0], 0);
    assert_int_equal(pos[3], 5);
    /* Only the last 3 count: positions 3 and 5. */
    assert_int_equal(attn_window(hist, 6, 3, pos), 2);
    assert_int_equal(pos[0], 3);
    assert_int_equal(pos[1], 5);
    assert_int_equal(attn_window(hist, 0, 3, pos), 0);
    float dst[4];
    attn_gather(hist, pos, 2, 1, 1, dst, 2);
    assert_true(dst[0] == 2 && dst[2] == 4);
}

static void test_softmax(void **state) {
    (void)state;
    float s[2][4] = {{1.0f, 2.0f, -3.0f, 99.0f}, {1000.0f, 1000.0f, 999.0f, 7.0f}};
    attn_softmax_rows(&s[0][0], 2, 3, 4);
    double w[3] = {exp(1.0), exp(2.0), exp(-3.0)}, z = w[0] + w[1] + w[2];
    for (int j = 0; j < 3; j++) assert_true(fabs(s[0][j] - w[j] / z) < 1e-6);
    assert_true(s[0][3] == 99.0f); /* beyond nh: untouched */
    /* Large scores: no overflow (the maximum is subtracted first). */
    double z2 = 2 + exp(-1.0);
    assert_true(fabs(s[1][0] - 1 / z2) < 1e-6 && fabs(s[1][2] - exp(-1.0) / z2) < 1e-6);
}

static void test_explain(void **state) {
    (void)state;
    /* Row 0: ties between positions 10/30 (|0.5|) and a negative weight;
     * row 1: fewer behaviours than k. */
    const float w[2][5] = {{0.5f, -0.9f, 0.1f, 0.5f, 0.2f}, {0.3f, 0.7f, 0, 0, 0}};
    const int32_t pos[5] = {10, 20, 25, 30, 40};
    int32_t p[2 * 4];
    float wt[2 * 4];
    engine_explain ex = {3, p, wt};
    attn_explain(&w[0][0], 1, 5, 5, pos, &ex, 0);
    assert_int_equal(p[0], 20);
    assert_true(wt[0] == -0.9f);
    assert_int_equal(p[1], 30); /* the tie: the later position first */
    assert_int_equal(p[2], 10);
    attn_explain(&w[1][0], 1, 2, 5, pos, &ex, 1);
    assert_int_equal(p[3], 20);
    assert_int_equal(p[4], 10);
    assert_int_equal(p[5], -1);
    assert_true(wt[5] == 0.0f);
    /* k beyond the fast path (its lists live on the stack): the plain
     * insertion, same order. */
    float big[40];
    int32_t bpos[40], bp[20];
    float bw[20];
    for (int j = 0; j < 40; j++) {
        big[j] = (float)((j * 17) % 40) - 19.5f;
        bpos[j] = j;
    }
    engine_explain ex2 = {20, bp, bw};
    attn_explain(big, 1, 40, 40, bpos, &ex2, 0);
    for (int r = 1; r < 20; r++) assert_true(fabsf(bw[r - 1]) >= fabsf(bw[r]));
    assert_true(fabsf(bw[0]) == 19.5f && fabsf(bw[19]) == 10.5f);
    /* The fast paths (AVX-512 where the CPU has it, and the portable one)
     * against the plain insertion on rows of ties and signs (k = 1..6,
     * histories 1..70, chunks with a ragged end). */
    for (int avx = 0; avx < 2; avx++)
    for (int k = 1; k <= 6; k++)
        for (int nh = 1; nh <= 70; nh += 3) {
            cpu_path_set(CPU_PATH_EXPLAIN_AVX512, avx);
            float row[70];
            int32_t rp[70], a_pos[6], b_pos[20];
            float a_w[6], b_w[20];
            for (int j = 0; j < nh; j++) {
                row[j] = (float)((j * 7 + k * 3) % 11) - 5.0f; /* many equal |w| */
                rp[j] = 100 + j;
            }
            engine_explain fast = {k, a_pos, a_w};
            attn_explain(row, 1, nh, 70, rp, &fast, 0);
            /* The plain path: k padded to 20 (beyond the fast path). */
            engine_explain plain = {20, b_pos, b_w};
            attn_explain(row, 1, nh, 70, rp, &plain, 0);
            for (int r = 0; r < k; r++) {
                assert_int_equal(a_pos[r], b_pos[r]);
                assert_true(a_w[r] == b_w[r]);
            }
        }
    cpu_path_set(CPU_PATH_EXPLAIN_AVX512, 1);
    /* Random rows, random order: the two fast paths agree exactly. */
    uint64_t rng = 5;
    static float rows[16][300];
    static int32_t rpos[300];
    for (int j = 0; j < 300; j++) rpos[j] = j;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 300; j++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            rows[i][j] = (float)((int64_t)(rng >> 40) % 2001 - 1000) / 977.0f;
        }
    /* k = 3 and 8 (sixteen candidates a block), 12 (a row at a time);
     * 13 rows (a ragged block). */
    const int ks[3] = {3, 8, 12};
    for (int q3 = 0; q3 < 3; q3++)
        for (int nh = 1; nh <= 300; nh += 37) {
            const int kk = ks[q3];
            int32_t pa[16 * 12], pb[16 * 12], pc[16 * 20];
            float wa[16 * 12], wb[16 * 12], wc[16 * 20];
            engine_explain xa = {kk, pa, wa}, xb = {kk, pb, wb}, xc = {20, pc, wc};
            cpu_path_set(CPU_PATH_EXPLAIN_AVX512, 0);
            attn_explain(&rows[0][0], 13, nh, 300, rpos, &xa, 0);
            cpu_path_set(CPU_PATH_EXPLAIN_AVX512, 1);
            attn_explain(&rows[0][0], 13, nh, 300, rpos, &xb, 0);
            attn_explain(&rows[0][0], 13, nh, 300, rpos, &xc, 0); /* plain */
            for (int i = 0; i < 13; i++)
                for (int r = 0; r < kk; r++) {
                    const int q = i * kk + r;
                    assert_true(pa[q] == pb[q] && wa[q] == wb[q]);
                    assert_true(pa[q] == pc[i * 20 + r] && wa[q] == wc[i * 20 + r]);
                }
        }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window),
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_explain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
