/* test_qin.c - each piece of the forward pass (item vector, attention, one
 * QNN layer, head) and the whole model against a naive, unfolded, double
 * precision version (testmodel.h), plus the documented edge behaviours.
 * The model is loaded, its item vectors computed and whole requests scored
 * through engine.h; the pieces are QIN's own (qin_internal.h). */
#include <float.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/engine.h"
#include "core/linear.h"
#include "core/qin_internal.h"
#include "tests/core/testmodel.h"

#define TOL 2e-5

static test_model tm;
static engine_model *em;
static qin_model *model;   /* inside em */

/* Per-item features of the test catalogue. */
typedef struct feat {
    int32_t tags[3];
    int ntags;
    float mm[6];
} feat;
static feat items[20];

static int setup(void **state) {
    (void)state;
    qin_config c = tm_small_config();
    tm_init(&tm, &c, 11);
    size_t len;
    unsigned char *buf = tm_serialize(&tm, NULL, &len);
    char err[512];
    if (engine_model_load_buffer(buf, len, &em, err, sizeof err) < 0) {
        fprintf(stderr, "load: %s\n", err);
        return -1;
    }
    free(buf);
    model = qin_model_of(em);
    if (!model) return -1;
    for (int i = 1; i < 20; i++) {
        items[i].ntags = i % 4 == 0 ? 0 : 3;
        for (int k = 0; k < 3; k++) items[i].tags[k] = (i * 7 + k * 3) % 9;
        if (i % 5 == 0) items[i].tags[0] = items[i].tags[1] = items[i].tags[2] = 0;
        if (i % 3 == 0) items[i].tags[2] = 0; /* a padded tail */
        for (int k = 0; k < 6; k++) items[i].mm[k] = tm_uniform(&tm, -1.0f, 1.0f);
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    engine_model_free(em);
    tm_free(&tm);
    return 0;
}

static engine_item item_input(int64_t id) {
    return (engine_item){id, items[id].tags, items[id].ntags, items[id].mm, 0};
}

static float *item_vec(int64_t id) {
    float *v = engine_item_vecs_alloc(em, 1);
    engine_item in = item_input(id);
    char err[256];
    if (engine_items_compute(em, 1, &in, v, NULL, err, sizeof err) < 0) fail_msg("%s", err);
    return v;
}

static void naive_item(int64_t id, double *e) {
    tm_item(&tm, id, items[id].tags, items[id].ntags, items[id].mm, e);
}

static void assert_close(double want, double got, const char *what, int i) {
    if (fabs(want - got) > TOL) fail_msg("%s[%d]: want %.9g got %.9g", what, i, want, got);
}

static void test_item_vector(void **state) {
    (void)state;
    const int E = model->cfg.item_dim, H = model->cfg.attn_dim;
    for (int id = 1; id < 20; id++) {
        float *v = item_vec(id);
        double e[13], k[26], ae[13], ve[26], be[13];
        naive_item(id, e);
        for (int j = 0; j < E; j++) assert_close(e[j], v[j], "e", j);
        /* A e = W_q^T (W_k e);  B e = W_o (W_v e). */
        tm_matvec(tm_get(&tm, "attention_layers.W_k.weight"), H, E, e, k);
        const float *wq = tm_get(&tm, "attention_layers.W_q.weight");
        for (int i = 0; i < E; i++) {
            ae[i] = 0;
            for (int o = 0; o < H; o++) ae[i] += wq[o * E + i] * k[o];
        }
        tm_matvec(tm_get(&tm, "attention_layers.W_v.weight"), H, E, e, ve);
        tm_matvec(tm_get(&tm, "attention_layers.W_o.weight"), E, H, ve, be);
        for (int j = 0; j < E; j++) {
            assert_close(ae[j], v[E + j], "Ae", j);
            assert_close(be[j], v[2 * E + j], "Be", j);
        }
        free(v);
    }
}

static void test_all_padding_tags(void **state) {
    (void)state;
    const int d = model->cfg.embedding_dim;
    float *v = item_vec(5); /* tags all 0 */
    for (int j = 0; j < d; j++) assert_true(v[d + j] == 0.0f);
    free(v);
}

static void test_item_out_of_range(void **state) {
    (void)state;
    float *v = engine_item_vecs_alloc(em, 1);
    char err[256] = "";
    int32_t tags[3] = {1, 2, 3};
    engine_item in = {20, tags, 3, NULL, 0};
    assert_int_equal(engine_items_compute(em, 1, &in, v, NULL, err, sizeof err), CTR_ERANGE);
    assert_non_null(strstr(err, "item_id 20 outside 1..19"));
    in.id = 0;
    assert_int_equal(engine_items_compute(em, 1, &in, v, NULL, err, sizeof err), CTR_ERANGE);
    in.id = 3;
    tags[1] = 9;
    assert_int_equal(engine_items_compute(em, 1, &in, v, NULL, err, sizeof err), CTR_ERANGE);
    assert_non_null(strstr(err, "tag 9 outside 0..8"));
    tags[1] = 2;
    float mm[6] = {0, 0, NAN, 0, 0, 0};
    in.mm = mm;
    assert_int_equal(engine_items_compute(em, 1, &in, v, NULL, err, sizeof err), CTR_EINVAL);
    free(v);
}

/* The batch path gives the item-by-item vectors (to float rounding of a
 * different summation order) and names the first bad item. */
static void test_items_batch(void **state) {
    (void)state;
    const size_t vf = engine_item_vec_floats(em);
    assert_int_equal(vf, qin_item_vec_floats(model));
    engine_item in[19];
    for (int id = 1; id < 20; id++) in[id - 1] = item_input(id);
    float *batch = engine_item_vecs_alloc(em, 19);
    char err[256] = "";
    assert_int_equal(engine_items_compute(em, 19, in, batch, NULL, err, sizeof err), CTR_OK);
    for (int id = 1; id < 20; id++) {
        float *one = item_vec(id);
        for (size_t k = 0; k < vf; k++)
            if (fabsf(one[k] - batch[(id - 1) * vf + k]) > 1e-6f * (1.0f + fabsf(one[k])))
                fail_msg("item %d [%zu]: one by one %.9g, batch %.9g", id, k, one[k],
                         batch[(id - 1) * vf + k]);
        free(one);
    }
    int bad = -1;
    in[7].id = 999;
    assert_int_equal(engine_items_compute(em, 19, in, batch, &bad, err, sizeof err), CTR_ERANGE);
    assert_int_equal(bad, 7);
    assert_non_null(strstr(err, "item_id 999"));
    assert_int_equal(engine_items_compute(em, 0, in, batch, NULL, err, sizeof err), CTR_OK);
    free(batch);
}

static void test_attention_piece(void **state) {
    (void)state;
    const int E = model->cfg.item_dim;
    const int hist_ids[4] = {3, 8, 12, 19}, cand_ids[3] = {1, 7, 16};
    float *ah = linear_falloc(4 * E), *bh = linear_falloc(4 * E), *t = linear_falloc(3 * E),
          *pool = linear_falloc(3 * E), *s = linear_falloc(3 * 4);
    double hist[4 * 13];
    for (int j = 0; j < 4; j++) {
        float *v = item_vec(hist_ids[j]);
        memcpy(ah + j * E, v + E, E * sizeof(float));
        memcpy(bh + j * E, v + 2 * E, E * sizeof(float));
        naive_item(hist_ids[j], hist + j * E);
        free(v);
    }
    for (int i = 0; i < 3; i++) {
        float *v = item_vec(cand_ids[i]);
        memcpy(t + i * E, v, E * sizeof(float));
        free(v);
    }
    qin_attention(model, 3, t, E, 4, ah, bh, s, 4, pool, E);
    for (int i = 0; i < 3; i++) {
        double te[13], want[13];
        naive_item(cand_ids[i], te);
        tm_attention(&tm, te, hist, 4, want);
        for (int j = 0; j < E; j++) assert_close(want[j], pool[i * E + j], "pool", j);
    }
    /* Empty history: pool = t exactly. */
    qin_attention(model, 3, t, E, 0, ah, bh, s, 4, pool, E);
    assert_memory_equal(pool, t, 3 * E * sizeof(float));
    free(ah); free(bh); free(t); free(pool); free(s);
}

static void test_qnn_layer_and_head(void **state) {
    (void)state;
    const int D = model->cfg.input_dim, n = 5, ldx = 48;
    assert_int_equal(qin_ldx(&model->cfg), ldx);
    qin_scratch *s;
    assert_int_equal(qin_scratch_init(model, n, &s), CTR_OK);
    float *x = linear_falloc(n * ldx), *y = linear_falloc(n * ldx), *logit = linear_falloc(n);
    float prob[5];
    double xd[5][34];
    for (int i = 0; i < n; i++)
        for (int k = 0; k < D; k++) xd[i][k] = x[i * ldx + k] = tm_uniform(&tm, -1.5f, 1.5f);
    for (int l = 0; l < model->cfg.num_layers; l++) {
        assert_int_equal(qin_qnn_layer(model, s->dws, l, n, x, y), CTR_OK);
        for (int i = 0; i < n; i++) {
            tm_qnn_layer(&tm, l, xd[i]);
            for (int k = 0; k < D; k++) assert_close(xd[i][k], x[i * ldx + k], "qnn", k);
        }
    }
    qin_head(model, n, x, ldx, logit, prob);
    for (int i = 0; i < n; i++) assert_close(tm_head(&tm, xd[i]), prob[i], "head", i);
    free(x); free(y); free(logit);
    qin_scratch_free(s);
}

/* Whole model: request with a long, padded history vs the naive model. */
static void check_request(const int64_t *hist_ids, int nh, const int64_t *cand_ids, int nc,
                          const int32_t *ctx) {
    const int E = model->cfg.item_dim, L = model->cfg.max_len;
    engine_scratch *s;
    assert_int_equal(engine_scratch_init(em, 8, &s), CTR_OK);
    const float *hist[32], *cand[8];
    float *owned[40];
    int no = 0;
    for (int j = 0; j < nh; j++) hist[j] = hist_ids[j] ? (owned[no++] = item_vec(hist_ids[j])) : NULL;
    for (int i = 0; i < nc; i++) cand[i] = owned[no++] = item_vec(cand_ids[i]);
    float prob[8];
    char err[256];
    engine_request req = {hist, nh, cand, ctx, nc, NULL, NULL};
    if (engine_forward(em, s, &req, prob, err, sizeof err) < 0) fail_msg("%s", err);
    /* Naive: last max_len positions, padding removed. */
    double h[32 * 13];
    int real = 0;
    for (int j = nh > L ? nh - L : 0; j < nh; j++)
        if (hist_ids[j]) naive_item(hist_ids[j], h + (real++) * E);
    for (int i = 0; i < nc; i++) {
        double t[13];
        naive_item(cand_ids[i], t);
        double want = tm_forward(&tm, ctx ? ctx + i * 2 : NULL, t, h, real);
        assert_close(want, prob[i], "prob", i);
        assert_true(want > 0.001 && want < 0.999);
    }
    for (int k = 0; k < no; k++) free(owned[k]);
    engine_scratch_free(s);
}

static void test_forward_whole(void **state) {
    (void)state;
    const int64_t cands[6] = {1, 4, 5, 9, 13, 19};
    const int32_t ctx[12] = {0, 0, 1, 2, 3, 1, 2, 0, 0, 2, 3, 2};
    const int64_t h1[3] = {2, 6, 11};
    check_request(h1, 3, cands, 6, ctx);
    const int64_t padded[5] = {0, 0, 7, 8, 9}; /* left-padded */
    check_request(padded, 5, cands, 6, ctx);
    const int64_t longer[9] = {1, 2, 3, 4, 0, 5, 6, 7, 8}; /* > max_len, 0 inside */
    check_request(longer, 9, cands, 6, ctx);
    check_request(NULL, 0, cands, 6, NULL); /* empty history, padding ctx */
}

static void test_history_keeps_most_recent(void **state) {
    (void)state;
    /* Behaviours older than the last max_len must not matter. */
    engine_scratch *s;
    assert_int_equal(engine_scratch_init(em, 2, &s), CTR_OK);
    float *a = item_vec(3), *b = item_vec(4), *c = item_vec(17);
    const float *h1[7] = {a, a, b, b, c, b, c}, *h2[7] = {c, b, b, b, c, b, c};
    const float *cand[2] = {a, c};
    float p1[2], p2[2], p3[2];
    engine_request r1 = {h1, 7, cand, NULL, 2, NULL, NULL},
                   r2 = {h2, 7, cand, NULL, 2, NULL, NULL},
                   r3 = {h1 + 2, 5, cand, NULL, 2, NULL, NULL};
    assert_int_equal(engine_forward(em, s, &r1, p1, NULL, 0), CTR_OK);
    assert_int_equal(engine_forward(em, s, &r2, p2, NULL, 0), CTR_OK);
    assert_int_equal(engine_forward(em, s, &r3, p3, NULL, 0), CTR_OK);
    assert_memory_equal(p1, p2, sizeof p1);
    assert_memory_equal(p1, p3, sizeof p1);
    free(a); free(b); free(c);
    engine_scratch_free(s);
}

static void test_forward_refusals(void **state) {
    (void)state;
    engine_scratch *s;
    assert_int_equal(engine_scratch_init(em, 2, &s), CTR_OK);
    float *a = item_vec(3);
    const float *cand[3] = {a, a, a};
    float p[3];
    char err[256] = "";
    engine_request r = {NULL, 0, cand, NULL, 3, NULL, NULL};
    assert_int_equal(engine_forward(em, s, &r, p, err, sizeof err), CTR_ETOOMANY);
    const int32_t ctx[4] = {0, 0, 4, 1}; /* likes_level vocab is 4 */
    engine_request r2 = {NULL, 0, cand, ctx, 2, NULL, NULL};
    assert_int_equal(engine_forward(em, s, &r2, p, err, sizeof err), CTR_ERANGE);
    assert_non_null(
        strstr(err, "candidates[1].likes_level: 4 is outside the model's vocabulary (0..3)"));
    engine_request r3 = {NULL, 0, cand, NULL, 0, NULL, NULL};
    assert_int_equal(engine_forward(em, s, &r3, p, err, sizeof err), CTR_OK);
    free(a);
    engine_scratch_free(s);
}

/* bfloat16 of f, to nearest even (written here, apart from core/). */
static unsigned short bf16_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static double bf16_value(unsigned short h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The bf16 rounding of the fp32 value it replaces; a denormal may also
 * read as zero (AVX512_BF16's conversion). */
static void assert_bf16_of(float want, unsigned short got, const char *what, int item, int k) {
    if (got == bf16_of(want)) return;
    if (fabsf(want) < FLT_MIN && (got & 0x7fffu) == 0) return;
    fail_msg("item %d %s[%d]: fp32 %.9g rounds to bf16 0x%04x, vector has 0x%04x", item, what, k,
             want, bf16_of(want), got);
}

/* Where the attention runs in bf16 (bf16, int8 on AMX), the item vector
 * carries A e, B e and V e in bf16: each the bf16 rounding of the fp32
 * value of the fp32 layout (the same model with qin_model_vec_bf16 off),
 * A e and B e within half a bf16 step of the unfolded double reference;
 * e and U e unchanged; and every score the same bits as with fp32 vectors
 * converted by the request (what the request did before).  Elsewhere the
 * fp32 layout. */
static void test_vec_bf16(void **state) {
    (void)state;
    const qin_config c = model->cfg;
    const int E = c.item_dim, D = c.input_dim, H = c.attn_dim;
    size_t len;
    unsigned char *buf = tm_serialize(&tm, NULL, &len);
    for (int pr = 0; pr < DENSE_PRECISION_COUNT; pr++) {
        engine_params ep = engine_default_params();
        ep.precision = (dense_precision)pr;
        engine_model *mb, *mf;
        char err[512];
        assert_int_equal(engine_model_load_buffer_with(buf, len, &ep, &mb, err, sizeof err), CTR_OK);
        assert_int_equal(engine_model_load_buffer_with(buf, len, &ep, &mf, err, sizeof err), CTR_OK);
        qin_model *qb = qin_model_of(mb), *qf = qin_model_of(mf);
        assert_int_equal(qin_model_vec_bf16(qf, 0), 0);
        assert_int_equal(engine_item_vec_floats(mf), 3 * E + 2 * D);
        const int lowp = qb->attn_score != NULL;
        assert_int_equal(qb->vec_bf16, lowp);
        if (pr == DENSE_FP32 || pr == DENSE_INT8X2) assert_false(lowp);
        if (!lowp) {
            assert_int_equal(engine_item_vec_floats(mb), 3 * E + 2 * D);
            printf("%s: attention in fp32 here (oneDNN %s), fp32 item vectors\n",
                   dense_precision_name(ep.precision), dense_cpu_isa());
            engine_model_free(mb);
            engine_model_free(mf);
            continue;
        }
        const size_t vb = engine_item_vec_floats(mb), vf = engine_item_vec_floats(mf);
        assert_int_equal(vb, (size_t)(E + D + (2 * E + D + 1) / 2 + 15) / 16 * 16);
        enum { NI = 19 };
        engine_item in[NI];
        for (int id = 1; id <= NI; id++) in[id - 1] = item_input(id);
        float *xb = engine_item_vecs_alloc(mb, NI), *xf = engine_item_vecs_alloc(mf, NI);
        memset(xb, 0xff, vb * NI * sizeof *xb); /* the padding is written */
        assert_int_equal(engine_items_compute(mb, NI, in, xb, NULL, err, sizeof err), CTR_OK);
        assert_int_equal(engine_items_compute(mf, NI, in, xf, NULL, err, sizeof err), CTR_OK);
        for (int i = 0; i < NI; i++) {
            const float *b = xb + i * vb, *f = xf + i * vf;
            assert_memory_equal(b, f, (size_t)E * sizeof *b);                /* e */
            assert_memory_equal(b + qin_vec_u(qb), f + qin_vec_u(qf), (size_t)D * sizeof *b);
            const unsigned short *h = qin_vec_h16(qb, b);
            for (int k = 0; k < E; k++) {
                assert_bf16_of(qin_vec_a(qf, f)[k], h[k], "A e", i + 1, k);
                assert_bf16_of(qin_vec_b(qf, f)[k], h[E + k], "B e", i + 1, k);
            }
            for (int k = 0; k < D; k++) assert_bf16_of(qin_vec_v(qf, f)[k], h[2 * E + k], "V e", i + 1, k);
            for (size_t k = 2 * (size_t)E + D; k < 2 * (vb - E - D); k++)
                assert_int_equal(h[k], 0);
            /* A e = W_q^T (W_k e), B e = W_o (W_v e) in double. */
            double e[13], kk[26], vv[26], ae[13], be[13];
            naive_item(i + 1, e);
            tm_matvec(tm_get(&tm, "attention_layers.W_k.weight"), H, E, e, kk);
            const float *wq = tm_get(&tm, "attention_layers.W_q.weight");
            for (int j = 0; j < E; j++) {
                ae[j] = 0;
                for (int o = 0; o < H; o++) ae[j] += wq[o * E + j] * kk[o];
            }
            tm_matvec(tm_get(&tm, "attention_layers.W_v.weight"), H, E, e, vv);
            tm_matvec(tm_get(&tm, "attention_layers.W_o.weight"), E, H, vv, be);
            for (int j = 0; j < E; j++) {
                if (fabs(bf16_value(h[j]) - ae[j]) > fabs(ae[j]) / 256 + TOL)
                    fail_msg("item %d A e[%d]: reference %.9g, bf16 %.9g", i + 1, j, ae[j],
                             bf16_value(h[j]));
                if (fabs(bf16_value(h[E + j]) - be[j]) > fabs(be[j]) / 256 + TOL)
                    fail_msg("item %d B e[%d]: reference %.9g, bf16 %.9g", i + 1, j, be[j],
                             bf16_value(h[E + j]));
            }
        }
        /* Scores: the same bits, with histories short, padded, empty and
         * longer than max_len. */
        const int hl[4] = {3, 5, 0, 9};
        const int64_t hid[9] = {2, 0, 6, 11, 7, 0, 8, 9, 12};
        const int32_t ctx[12] = {0, 0, 1, 2, 3, 1, 2, 0, 0, 2, 3, 2};
        engine_scratch *sb, *sf;
        assert_int_equal(engine_scratch_init(mb, 6, &sb), CTR_OK);
        assert_int_equal(engine_scratch_init(mf, 6, &sf), CTR_OK);
        for (int r = 0; r < 4; r++) {
            const float *hb[9], *hf[9], *cb[6], *cf[6];
            for (int j = 0; j < hl[r]; j++) {
                hb[j] = hid[j] ? xb + (hid[j] - 1) * vb : NULL;
                hf[j] = hid[j] ? xf + (hid[j] - 1) * vf : NULL;
            }
            for (int k = 0; k < 6; k++) {
                cb[k] = xb + (3 * k + r) * vb;
                cf[k] = xf + (3 * k + r) * vf;
            }
            float pb[6], pf[6];
            engine_request rb = {hb, hl[r], cb, ctx, 6, NULL, NULL},
                           rf = {hf, hl[r], cf, ctx, 6, NULL, NULL};
            assert_int_equal(engine_forward(mb, sb, &rb, pb, err, sizeof err), CTR_OK);
            assert_int_equal(engine_forward(mf, sf, &rf, pf, err, sizeof err), CTR_OK);
            if (memcmp(pb, pf, sizeof pb))
                fail_msg("%s, history %d: scores differ (%.9g vs %.9g)",
                         dense_precision_name(ep.precision), hl[r], pb[0], pf[0]);
        }
        printf("%s: bf16 item vectors (%zu floats against %zu), the same scores\n",
               dense_precision_name(ep.precision), vb, vf);
        engine_scratch_free(sb);
        engine_scratch_free(sf);
        free(xb);
        free(xf);
        engine_model_free(mb);
        engine_model_free(mf);
    }
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_item_vector),
        cmocka_unit_test(test_all_padding_tags),
        cmocka_unit_test(test_item_out_of_range),
        cmocka_unit_test(test_items_batch),
        cmocka_unit_test(test_attention_piece),
        cmocka_unit_test(test_qnn_layer_and_head),
        cmocka_unit_test(test_forward_whole),
        cmocka_unit_test(test_history_keeps_most_recent),
        cmocka_unit_test(test_forward_refusals),
        cmocka_unit_test(test_vec_bf16),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
