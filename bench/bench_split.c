/*
 * bench_split.c - one request on two cores, part of `make bench`: the
 * forward pass of a model at N candidates on one thread, with its
 * candidates split in two across the scoring pool (what ctr-server does
 * with --split candidates), and with every layer's output columns split in
 * two (engine_request.par on a model loaded with column_parts 2: each core
 * multiplies by its own half of every weight, which can stay in its L2).
 * The three run in interleaved rounds (order rotated each round), so the
 * ratios are of one run.
 *
 *   build/release/bench/bench_split [--seconds S] [--hist H] [--n N]...
 *                                   [--precision fp32|bf16|int8]... MODEL
 *
 * Workload: as bench_models (random item features within the model's
 * vocabularies, H distinct behaviours, item vectors computed beforehand:
 * a warm item cache).  The pool is server/pool.h with one helper thread,
 * the caller taking parts too, as in ctr-server with score_threads 2.
 * Wall-clock medians and p99 (the helper's time is not the caller's CPU
 * time).  Machine-readable lines start with "split".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "bench/bench_inputs.h"
#include "core/engine.h"
#include "server/pool.h"

enum { ONE, CANDS, COLS, NMODES };
static const char *const mode_name[NMODES] = {"one", "cands", "cols"};

static void par_run(void *ctx, engine_part_fn fn, void *arg, int nparts) {
    pool_run(ctx, fn, arg, nparts);
}

typedef struct cand_job {
    const engine_model *m;
    engine_scratch *s[2];
    const engine_request *req;
    float *prob;
} cand_job;

/* Half the candidates (part 0: the first half), on its own scratch. */
static void cand_part(void *arg, int part, int nparts) {
    cand_job *j = arg;
    const int n = j->req->num_cand, lo = n * part / nparts, hi = n * (part + 1) / nparts;
    const int nctx = engine_model_schema(j->m)->num_ctx;
    engine_request r = *j->req;
    r.cand += lo;
    r.ctx = r.ctx ? r.ctx + (size_t)lo * nctx : NULL;
    r.num_cand = hi - lo;
    engine_forward(j->m, j->s[part], &r, j->prob + lo, NULL, 0);
}

static int bench_one(const char *path, dense_precision prec, int hist, const int *ns, int nn,
                     double seconds, pool *pl) {
    char err[512];
    engine_params ep = engine_default_params();
    ep.precision = prec;
    ep.column_parts = 2;
    engine_model *m;
    if (engine_model_load_with(path, &ep, &m, err, sizeof err) < 0) {
        fprintf(stderr, "bench_split: %s\n", err);
        return 1;
    }
    const engine_schema *sc = engine_model_schema(m);
    int max_n = 1;
    for (int k = 0; k < nn; k++) max_n = ns[k] > max_n ? ns[k] : max_n;
    const int H = hist < sc->max_len ? hist : sc->max_len, nitems = H + max_n;
    const size_t vf = engine_item_vec_floats(m);
    bench_inputs in;
    float *prob = malloc((size_t)max_n * sizeof *prob);
    float *vecs = engine_item_vecs_alloc(m, nitems);
    const float **ptr = malloc((size_t)nitems * sizeof *ptr);
    if (bench_inputs_make(&in, sc, nitems, max_n) < 0 || !prob || !vecs || !ptr) return 1;
    const int32_t *ctx = in.ctx;
    for (int i = 0; i < nitems; i++) ptr[i] = vecs + (size_t)i * vf;
    if (engine_items_compute(m, nitems, in.items, vecs, NULL, err, sizeof err) < 0) {
        fprintf(stderr, "bench_split: items: %s\n", err);
        return 1;
    }
    cand_job cj = {m, {NULL, NULL}, NULL, prob};
    if (engine_scratch_init(m, max_n, &cj.s[0]) < 0 || engine_scratch_init(m, max_n, &cj.s[1]) < 0)
        return 1;
    engine_par par = {par_run, pl, 1};

    printf("\n%s model %s (%s), %s, history %d: %s\n", engine_arch_name(sc->arch), sc->name,
           path, dense_precision_name(prec), H, engine_model_describe(m));
    printf("%5s %5s %10s %10s %10s %10s %10s %10s %9s %9s %7s\n", "N", "prec", "one_us",
           "one_p99", "cands_us", "cands_p99", "cols_us", "cols_p99", "cands/1", "cols/1",
           "rounds");
    for (int k = 0; k < nn; k++) {
        const int n = ns[k];
        if (n < 1 || n > max_n) continue;
        engine_request one = {ptr, H, ptr + H, ctx, n, NULL, NULL}, cols = one;
        cols.par = &par;
        cj.req = &one;
        for (int i = 0; i < 3; i++) {
            engine_forward(m, cj.s[0], &one, prob, NULL, 0);
            engine_forward(m, cj.s[0], &cols, prob, NULL, 0);
            pool_run(pl, cand_part, &cj, 2);
        }
        int cap = 100000, it = 0;
        double *t = malloc((size_t)cap * NMODES * sizeof *t);
        if (!t) return 1;
        double end = bench_now_s() + seconds;
        while ((bench_now_s() < end || it < 10) && it < cap) {
            for (int r = 0; r < NMODES; r++) {
                int q = (r + it) % NMODES;
                double a0 = bench_now_s();
                if (q == ONE) engine_forward(m, cj.s[0], &one, prob, NULL, 0);
                else if (q == COLS) engine_forward(m, cj.s[0], &cols, prob, NULL, 0);
                else pool_run(pl, cand_part, &cj, 2);
                t[(size_t)q * cap + it] = bench_now_s() - a0;
            }
            it++;
        }
        double med[NMODES], p99[NMODES];
        for (int q = 0; q < NMODES; q++) {
            p99[q] = bench_quantile(t + (size_t)q * cap, it, 0.99);
            med[q] = bench_quantile(t + (size_t)q * cap, it, 0.5);
        }
        printf("%5d %5s %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %8.2fx %8.2fx %7d\n", n,
               dense_precision_name(prec), med[ONE] * 1e6, p99[ONE] * 1e6, med[CANDS] * 1e6,
               p99[CANDS] * 1e6, med[COLS] * 1e6, p99[COLS] * 1e6, med[CANDS] / med[ONE],
               med[COLS] / med[ONE], it);
        for (int q = 0; q < NMODES; q++)
            printf("split model=%s precision=%s n=%d mode=%s median_us=%.1f p99_us=%.1f\n",
                   sc->name, dense_precision_name(prec), n, mode_name[q], med[q] * 1e6,
                   p99[q] * 1e6);
        free(t);
    }
    engine_scratch_free(cj.s[0]);
    engine_scratch_free(cj.s[1]);
    engine_model_free(m);
    bench_inputs_free(&in);
    free(prob); free(vecs); free(ptr);
    return 0;
}

int main(int argc, char **argv) {
    double seconds = 1.5;
    int ns[16] = {16, 64, 256}, nn = 3, custom = 0, hist = 64, np = 0;
    dense_precision precs[DENSE_PRECISION_COUNT];
    const char *model = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--hist") && i + 1 < argc) {
            hist = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--n") && i + 1 < argc && nn < 16) {
            if (!custom) nn = 0, custom = 1;
            ns[nn++] = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--precision") && i + 1 < argc &&
                   np < DENSE_PRECISION_COUNT) {
            char err[128];
            if (engine_precision_parse(argv[++i], &precs[np++], err, sizeof err) < 0) {
                fprintf(stderr, "bench_split: %s\n", err);
                return 2;
            }
        } else if (argv[i][0] != '-' && !model) {
            model = argv[i];
        } else {
            fprintf(stderr, "usage: %s [--seconds S] [--hist H] [--n N]... [--precision P]... "
                    "MODEL\n", argv[0]);
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "usage: %s [--seconds S] [--hist H] [--n N]... [--precision P]... MODEL\n",
                argv[0]);
        return 2;
    }
    if (!np) precs[np++] = DENSE_FP32;
    pool *pl;
    if (pool_init(1, &pl) < 0) return 1;
    printf("one request on two cores: one thread, candidates split in two, every layer's "
           "columns split in two (pool of 1 helper + the caller); oneDNN instruction set %s\n",
           dense_cpu_isa());
    int rc = 0;
    for (int p = 0; p < np; p++) rc |= bench_one(model, precs[p], hist, ns, nn, seconds, pl);
    pool_free(pl);
    return rc;
}
