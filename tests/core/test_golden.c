/* test_golden.c - the whole engine (engine.h), for each architecture,
 * against golden probabilities and attention weights that the PyTorch
 * references (tools/qin_reference.py, din_reference.py, tin_reference.py:
 * unfolded, as training runs them) computed on random weights and inputs.
 * tools/make_golden.py writes the data into $CTR_GOLDEN (build/golden) in
 * every clean build, from checkpoints with the real key names converted by
 * tools/convert.py, so the check follows the references.  Tolerance: 1e-5
 * absolute on the probability; the explanation's weights within 1e-5 and
 * its positions equal wherever the reference's weights are not tied.
 * Each configuration runs with the dense product on oneDNN and again on
 * OpenBLAS (linear.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/engine.h"
#include "core/linear.h"

#define TOL 1e-5
#define WTOL 1e-5
#define MAXK 8

static const char *golden_dir(void) {
    const char *d = getenv("CTR_GOLDEN");
    return d && *d ? d : "build/golden";
}

static void run_config(const char *name, const char *arch) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/%s/model.safetensors", golden_dir(), name);
    engine_model *m;
    if (engine_model_load(path, &m, err, sizeof err) < 0) fail_msg("load: %s", err);
    const engine_schema *sc = engine_model_schema(m);
    assert_string_equal(engine_arch_name(sc->arch), arch);
    snprintf(path, sizeof path, "%s/%s/golden.txt", golden_dir(), name);
    FILE *f = fopen(path, "r");
    if (!f) fail_msg("cannot open %s (run make golden)", path);

    char farch[16];
    int ver, nitems, ntags, mm, has_cate;
    if (fscanf(f, " ctr-golden %d %15s items %d %d %d %d", &ver, farch, &nitems, &ntags, &mm,
               &has_cate) != 6 ||
        ver != 2 || strcmp(farch, arch) || ntags != sc->num_tags || mm != sc->mm_dim ||
        has_cate != (sc->cate_vocab > 0) || ntags > 64)
        fail_msg("%s: bad golden header", path);
    int32_t *tags = calloc((size_t)nitems * (ntags ? ntags : 1), sizeof *tags);
    float *mmv = calloc((size_t)nitems * (mm ? mm : 1), sizeof *mmv);
    engine_item *items = calloc((size_t)nitems, sizeof *items);
    int *pos = malloc((size_t)sc->item_vocab * sizeof *pos);
    for (int i = 0; i < sc->item_vocab; i++) pos[i] = -1;
    for (int i = 0; i < nitems; i++) {
        long long id;
        if (fscanf(f, "%lld", &id) != 1 || id < sc->item_id_min || id >= sc->item_vocab)
            fail_msg("item %d", i);
        items[i].id = id;
        items[i].tags = tags + (size_t)i * ntags;
        items[i].num_tags = ntags;
        items[i].mm = mm ? mmv + (size_t)i * mm : NULL;
        for (int k = 0; k < ntags; k++)
            if (fscanf(f, "%d", &tags[(size_t)i * ntags + k]) != 1) fail_msg("item %d tags", i);
        for (int k = 0; k < mm; k++)
            if (fscanf(f, "%f", &mmv[(size_t)i * mm + k]) != 1) fail_msg("item %d mm", i);
        if (has_cate && fscanf(f, "%d", &items[i].cate) != 1) fail_msg("item %d cate", i);
        pos[id] = i;
    }
    const size_t vf = engine_item_vec_floats(m);
    float *vecs = engine_item_vecs_alloc(m, nitems);
    int bad = -1;
    if (engine_items_compute(m, nitems, items, vecs, &bad, err, sizeof err) < 0)
        fail_msg("item %d: %s", bad, err);

    int ncases;
    if (fscanf(f, " cases %d", &ncases) != 1) fail_msg("%s: no cases", path);
    engine_scratch *s = NULL;
    int scratch_cap = 0;
    double worst = 0, worst_w = 0;
    int total = 0, mid = 0, explained = 0;
    for (int k = 0; k < ncases; k++) {
        int nh, nc, nctx, K;
        if (fscanf(f, " case %d %d %d %d", &nh, &nc, &nctx, &K) != 4 || nctx != sc->num_ctx ||
            K < 2 || K > MAXK)
            fail_msg("case %d header", k);
        const float **hist = calloc((size_t)nh + 1, sizeof *hist);
        for (int j = 0; j < nh; j++) {
            long long id;
            if (fscanf(f, "%lld", &id) != 1) fail_msg("case %d hist", k);
            if (id < sc->item_id_min) continue; /* padding */
            if (pos[id] < 0) fail_msg("case %d: history id %lld has no item", k, id);
            hist[j] = vecs + (size_t)pos[id] * vf;
        }
        const float **cand = calloc((size_t)nc, sizeof *cand);
        int32_t *ctx = calloc((size_t)nc * (nctx ? nctx : 1), sizeof *ctx);
        int64_t *cid = calloc((size_t)nc, sizeof *cid);
        double *want = calloc((size_t)nc, sizeof *want);
        int32_t *want_pos = calloc((size_t)nc * K, sizeof *want_pos);
        float *want_w = calloc((size_t)nc * K, sizeof *want_w);
        float *got = calloc((size_t)nc, sizeof *got);
        int32_t *got_pos = calloc((size_t)nc * K, sizeof *got_pos);
        float *got_w = calloc((size_t)nc * K, sizeof *got_w);
        for (int i = 0; i < nc; i++) {
            long long id;
            if (fscanf(f, "%lld", &id) != 1 || id < sc->item_id_min || id >= sc->item_vocab ||
                pos[id] < 0)
                fail_msg("case %d cand %d", k, i);
            cid[i] = id;
            cand[i] = vecs + (size_t)pos[id] * vf;
            for (int j = 0; j < nctx; j++)
                if (fscanf(f, "%d", &ctx[(size_t)i * nctx + j]) != 1) fail_msg("ctx");
            if (fscanf(f, "%lf", &want[i]) != 1) fail_msg("case %d expected", k);
            for (int r = 0; r < K; r++)
                if (fscanf(f, "%d %f", &want_pos[(size_t)i * K + r], &want_w[(size_t)i * K + r]) !=
                    2)
                    fail_msg("case %d explain", k);
        }
        if (nc > scratch_cap) {
            engine_scratch_free(s);
            scratch_cap = nc;
            assert_int_equal(engine_scratch_init(m, scratch_cap, &s), CTR_OK);
        }
        if (engine_request_check(m, cid, ctx, nc, err, sizeof err) < 0)
            fail_msg("case %d: %s", k, err);
        /* Without an explanation, then with one: the scores must not move. */
        engine_request req = {hist, nh, cand, ctx, nc, NULL};
        if (engine_forward(m, s, &req, got, err, sizeof err) < 0) fail_msg("case %d: %s", k, err);
        for (int i = 0; i < nc; i++) {
            double diff = fabs(want[i] - got[i]);
            if (diff > worst) worst = diff;
            if (diff > TOL)
                fail_msg("%s case %d cand %d: reference %.9g engine %.9g (diff %.3g)", name, k,
                         i, want[i], (double)got[i], diff);
            mid += want[i] > 0.05 && want[i] < 0.95;
            total++;
        }
        float *again = calloc((size_t)nc, sizeof *again);
        /* The file lists K weights per candidate; the engine is asked for
         * K - 1, the last one tells a tie at the engine's last rank. */
        const int KE = K - 1;
        engine_explain ex = {KE, got_pos, got_w};
        req.explain = &ex;
        if (engine_forward(m, s, &req, again, err, sizeof err) < 0) fail_msg("case %d: %s", k, err);
        for (int i = 0; i < nc; i++) {
            if (again[i] != got[i]) fail_msg("%s case %d: explain changed a score", name, k);
            for (int r = 0; r < KE; r++) {
                size_t q = (size_t)i * K + r, g = (size_t)i * KE + r;
                double dw = fabs((double)want_w[q] - got_w[g]);
                if (dw > worst_w) worst_w = dw;
                if (dw > WTOL)
                    fail_msg("%s case %d cand %d rank %d: weight %.7g, engine %.7g", name, k, i,
                             r, (double)want_w[q], (double)got_w[g]);
                /* Positions must agree unless the reference has a near tie
                 * at this rank, or a weight of about 0 (QIN's ReLU: any of
                 * the zeroed behaviours is right). */
                int tied = fabsf(want_w[q]) < WTOL || (r > 0 && fabsf(fabsf(want_w[q]) - fabsf(want_w[q - 1])) < WTOL) ||
                           (r + 1 < K && fabsf(fabsf(want_w[q]) - fabsf(want_w[q + 1])) < WTOL);
                if (!tied && want_pos[q] != got_pos[g])
                    fail_msg("%s case %d cand %d rank %d: position %d, engine %d", name, k, i, r,
                             want_pos[q], got_pos[g]);
                explained += want_pos[q] >= 0;
            }
        }
        free(again);
        free(hist); free(cand); free(ctx); free(cid); free(want); free(want_pos);
        free(want_w); free(got); free(got_pos); free(got_w);
    }
    fclose(f);
    printf("golden %s (%s, dense on %s): %d cases, %d probabilities (%d in 0.05..0.95), "
           "max |diff| %.3g; %d explained behaviours, max weight diff %.3g\n",
           name, arch, linear_use_dnnl(-1) ? "oneDNN" : "OpenBLAS", ncases, total, mid, worst,
           explained, worst_w);
    /* The check means something only if the reference was not saturated. */
    assert_true(total > 0 && mid * 4 >= total && explained > 0);
    free(tags); free(mmv); free(items); free(pos); free(vecs);
    engine_scratch_free(s);
    engine_model_free(m);
}

/* Each configuration with oneDNN, then with OpenBLAS behind linear.h. */
static void run_both(const char *name, const char *arch) {
    linear_use_dnnl(1);
    run_config(name, arch);
    linear_use_dnnl(0);
    run_config(name, arch);
    linear_use_dnnl(1);
}

#define GOLDEN_TEST(fn, name, arch) \
    static void fn(void **state) { (void)state; run_both(name, arch); }
GOLDEN_TEST(test_qin_small, "small", "qin")
GOLDEN_TEST(test_qin_microlens, "microlens", "qin")
GOLDEN_TEST(test_din_small, "din-small", "din")
GOLDEN_TEST(test_din_dice_softmax, "din-dice-softmax", "din")
GOLDEN_TEST(test_din_microlens, "din-microlens", "din")
GOLDEN_TEST(test_tin_small, "tin-small", "tin")
GOLDEN_TEST(test_tin_amazon, "tin-amazon", "tin")

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qin_small),        cmocka_unit_test(test_qin_microlens),
        cmocka_unit_test(test_din_small),        cmocka_unit_test(test_din_dice_softmax),
        cmocka_unit_test(test_din_microlens),    cmocka_unit_test(test_tin_small),
        cmocka_unit_test(test_tin_amazon),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
