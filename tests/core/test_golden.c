/* test_golden.c - the whole engine against golden probabilities that the
 * PyTorch reference (tools/qin_reference.py, unfolded, as training runs it)
 * computed on random weights and inputs.  tools/make_golden.py writes the
 * data into $CTR_GOLDEN (build/golden) in every clean build, so the check
 * follows the reference.  Tolerance: 1e-5 absolute on the probability. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/qin.h"

#define TOL 1e-5

typedef struct golden_item {
    int64_t id;
    int32_t tags[64];
    float *mm;
} golden_item;

static const char *golden_dir(void) {
    const char *d = getenv("CTR_GOLDEN");
    return d && *d ? d : "build/golden";
}

static void run_config(const char *name) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/%s/model.safetensors", golden_dir(), name);
    qin_model *m;
    if (qin_model_load(path, &m, err, sizeof err) < 0) fail_msg("load: %s", err);
    const qin_config *c = qin_model_config(m);
    snprintf(path, sizeof path, "%s/%s/golden.txt", golden_dir(), name);
    FILE *f = fopen(path, "r");
    if (!f) fail_msg("cannot open %s (run make golden)", path);

    int ver, nitems, ntags, mm_in;
    if (fscanf(f, " qin-golden %d items %d %d %d", &ver, &nitems, &ntags, &mm_in) != 4 ||
        ver != 1 || ntags != c->num_tags || mm_in != c->mm_in || ntags > 64)
        fail_msg("%s: bad golden header", path);
    golden_item *items = calloc((size_t)nitems, sizeof *items);
    /* Item vectors, by position in the file; id -> position via a table. */
    int *pos = malloc((size_t)c->item_vocab * sizeof *pos);
    for (int i = 0; i < c->item_vocab; i++) pos[i] = -1;
    size_t vf = qin_item_vec_floats(m);
    float *vecs = calloc((size_t)nitems * vf, sizeof *vecs);
    for (int i = 0; i < nitems; i++) {
        golden_item *it = &items[i];
        long long id;
        if (fscanf(f, "%lld", &id) != 1 || id < 1 || id >= c->item_vocab) fail_msg("item %d", i);
        it->id = id;
        for (int k = 0; k < ntags; k++)
            if (fscanf(f, "%d", &it->tags[k]) != 1) fail_msg("item %d tags", i);
        it->mm = malloc((size_t)mm_in * sizeof *it->mm);
        for (int k = 0; k < mm_in; k++)
            if (fscanf(f, "%f", &it->mm[k]) != 1) fail_msg("item %d mm", i);
        qin_item_input in = {it->id, it->tags, ntags, it->mm};
        if (qin_item_compute(m, &in, vecs + (size_t)i * vf, err, sizeof err) < 0)
            fail_msg("item %lld: %s", id, err);
        pos[id] = i;
    }
    int ncases;
    if (fscanf(f, " cases %d", &ncases) != 1) fail_msg("%s: no cases", path);
    qin_scratch *s = NULL;
    int scratch_cap = 0;
    double worst = 0;
    int total = 0, mid = 0;
    for (int k = 0; k < ncases; k++) {
        int nh, nc, nctx;
        if (fscanf(f, " case %d %d %d", &nh, &nc, &nctx) != 3 || nctx != c->num_ctx)
            fail_msg("case %d header", k);
        const float **hist = calloc((size_t)nh + 1, sizeof *hist);
        for (int j = 0; j < nh; j++) {
            long long id;
            if (fscanf(f, "%lld", &id) != 1) fail_msg("case %d hist", k);
            hist[j] = id == 0 ? NULL : vecs + (size_t)pos[id] * vf;
            if (id != 0 && pos[id] < 0) fail_msg("case %d: history id %lld has no item", k, id);
        }
        const float **cand = calloc((size_t)nc, sizeof *cand);
        int32_t *ctx = calloc((size_t)nc * (nctx ? nctx : 1), sizeof *ctx);
        double *want = calloc((size_t)nc, sizeof *want);
        float *got = calloc((size_t)nc, sizeof *got);
        for (int i = 0; i < nc; i++) {
            long long id;
            if (fscanf(f, "%lld", &id) != 1 || id < 1 || id >= c->item_vocab || pos[id] < 0)
                fail_msg("case %d cand %d", k, i);
            cand[i] = vecs + (size_t)pos[id] * vf;
            for (int j = 0; j < nctx; j++)
                if (fscanf(f, "%d", &ctx[(size_t)i * nctx + j]) != 1) fail_msg("ctx");
            if (fscanf(f, "%lf", &want[i]) != 1) fail_msg("case %d expected", k);
        }
        if (nc > scratch_cap) {
            qin_scratch_free(s);
            scratch_cap = nc;
            assert_int_equal(qin_scratch_init(m, scratch_cap, &s), CTR_OK);
        }
        qin_request req = {hist, nh, cand, ctx, nc};
        if (qin_forward(m, s, &req, got, err, sizeof err) < 0) fail_msg("case %d: %s", k, err);
        for (int i = 0; i < nc; i++) {
            double diff = fabs(want[i] - got[i]);
            if (diff > worst) worst = diff;
            if (diff > TOL)
                fail_msg("%s case %d cand %d: reference %.9g engine %.9g (diff %.3g)", name, k,
                         i, want[i], (double)got[i], diff);
            mid += want[i] > 0.05 && want[i] < 0.95;
            total++;
        }
        free(hist); free(cand); free(ctx); free(want); free(got);
    }
    fclose(f);
    printf("golden %s: %d cases, %d probabilities (%d in 0.05..0.95), max |diff| %.3g\n", name,
           ncases, total, mid, worst);
    /* The check means something only if the reference was not saturated. */
    assert_true(total > 0 && mid * 4 >= total);
    for (int i = 0; i < nitems; i++) free(items[i].mm);
    free(items); free(pos); free(vecs);
    qin_scratch_free(s);
    qin_model_free(m);
}

static void test_golden_small(void **state) { (void)state; run_config("small"); }
static void test_golden_microlens(void **state) { (void)state; run_config("microlens"); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_small),
        cmocka_unit_test(test_golden_microlens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
