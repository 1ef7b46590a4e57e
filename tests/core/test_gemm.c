/* test_gemm.c - the packed QNN kernel against OpenBLAS (the reference):
 * packing layout, products for every row count around the 8-row blocks,
 * row strides wider than D, and a whole folded QNN layer both ways. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "core/gemm.h"
#include "core/linear.h"
#include "core/qin_internal.h"
#include "tests/core/testmodel.h"

static uint64_t rng = 99;
static float uni(void) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(rng >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

static void test_pack_layout(void **state) {
    (void)state;
    const int D = 64;
    float *w = linear_falloc((size_t)D * D), *p = linear_falloc(gemm_packed_floats(D));
    for (int i = 0; i < D * D; i++) w[i] = (float)i;
    gemm_pack(w, D, p);
    for (int o = 0; o < D; o++)
        for (int k = 0; k < D; k++)
            assert_true(p[((size_t)(o / 16) * D + k) * 16 + o % 16] == w[(size_t)o * D + k]);
    free(w);
    free(p);
}

static void test_packed_vs_openblas(void **state) {
    (void)state;
    const int dims[] = {32, 160, 1024};
    if (!gemm_packed_supported(1024)) {
        /* Nothing to compare on this CPU: the model uses OpenBLAS only. */
        assert_false(gemm_packed_supported(34));
        printf("no AVX-512F here: packed kernel not used, OpenBLAS everywhere\n");
        return;
    }
    assert_false(gemm_packed_supported(48)); /* D must be a multiple of 32 */
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        const int D = dims[di], ld = D + 16, nmax = 70;
        float *w = linear_falloc((size_t)D * D), *p = linear_falloc(gemm_packed_floats(D));
        float *x = linear_falloc((size_t)nmax * ld), *y = linear_falloc((size_t)nmax * ld),
              *r = linear_falloc((size_t)nmax * ld);
        for (int i = 0; i < D * D; i++) w[i] = uni() / sqrtf((float)D);
        for (int i = 0; i < nmax * ld; i++) x[i] = uni();
        gemm_pack(w, D, p);
        for (int n = 1; n <= nmax; n += (n < 20 ? 1 : 17)) {
            for (int i = 0; i < n * ld; i++) y[i] = r[i] = 12345.0f; /* padding must stay */
            gemm_packed(n, D, x, ld, p, y, ld);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, D, D, 1.0f, x, ld, w, D, 0.0f,
                        r, ld);
            for (int i = 0; i < n; i++)
                for (int k = 0; k < ld; k++) {
                    float a = y[(size_t)i * ld + k], b = r[(size_t)i * ld + k];
                    if (fabsf(a - b) > 1e-5f * (1.0f + fabsf(b)))
                        fail_msg("D=%d n=%d y[%d][%d]: packed %.9g openblas %.9g", D, n, i, k, a, b);
                }
        }
        free(w); free(p); free(x); free(y); free(r);
    }
}

/* A folded QNN layer with D = 160 (d 16, mm_out 32, 2 context fields):
 * the packed path and OpenBLAS agree (dense.h's backends). */
static void test_layer_both_ways(void **state) {
    (void)state;
    qin_config c = tm_small_config();
    c.embedding_dim = 16;
    c.mm_out = 32;
    c.item_dim = 2 * c.embedding_dim + c.mm_out;
    c.attn_dim = 2 * c.item_dim;
    c.input_dim = c.num_ctx * c.embedding_dim + 2 * c.item_dim;
    assert_int_equal(c.input_dim, 160);
    test_model tm;
    tm_init(&tm, &c, 5);
    size_t len;
    unsigned char *buf = tm_serialize(&tm, NULL, &len);
    engine_model *em;
    char err[256];
    assert_int_equal(engine_model_load_buffer(buf, len, &em, err, sizeof err), CTR_OK);
    free(buf);
    qin_model *m = qin_model_of(em);
    tm_free(&tm);
    dense_params dp = dense_default_params();
    dp.backend = DENSE_BACKEND_PACKED;
    if (!gemm_packed_supported(160)) {
        assert_int_equal(qin_model_prepare(m, &dp, err, sizeof err), CTR_EINVAL);
        engine_model_free(em);
        printf("no AVX-512F here: packed kernel not used\n");
        return;
    }
    const int n = 13, ld = 160;
    qin_scratch *s;
    assert_int_equal(qin_scratch_init(m, n, &s), CTR_OK);
    float *x0 = linear_falloc(n * ld), *xa = linear_falloc(n * ld), *xb = linear_falloc(n * ld),
          *y = linear_falloc(n * ld);
    for (int i = 0; i < n * ld; i++) x0[i] = uni();
    memcpy(xa, x0, sizeof(float) * n * ld);
    memcpy(xb, x0, sizeof(float) * n * ld);
    assert_int_equal(qin_model_prepare(m, &dp, err, sizeof err), CTR_OK);
    assert_non_null(strstr(qin_model_describe(m), "packed"));
    for (int l = 0; l < c.num_layers; l++)
        assert_int_equal(qin_qnn_layer(m, s->dws, l, n, xa, y), CTR_OK);
    dp.backend = DENSE_BACKEND_OPENBLAS;
    assert_int_equal(qin_model_prepare(m, &dp, err, sizeof err), CTR_OK);
    assert_non_null(strstr(qin_model_describe(m), "OpenBLAS"));
    for (int l = 0; l < c.num_layers; l++)
        assert_int_equal(qin_qnn_layer(m, s->dws, l, n, xb, y), CTR_OK);
    qin_scratch_free(s);
    for (int i = 0; i < n * ld; i++)
        if (fabsf(xa[i] - xb[i]) > 1e-5f * (1.0f + fabsf(xb[i])))
            fail_msg("x[%d]: packed %.9g openblas %.9g", i, xa[i], xb[i]);
    free(x0); free(xa); free(xb); free(y);
    engine_model_free(em);
}

int main(void) {
    /* As the engine runs it (core/engine.c): OpenBLAS on the calling thread
     * only.  Its own worker threads synchronise in code TSan cannot see,
     * so a threaded sgemm shows as a race in the TSan build. */
    openblas_set_num_threads(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack_layout),
        cmocka_unit_test(test_packed_vs_openblas),
        cmocka_unit_test(test_layer_both_ways),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
