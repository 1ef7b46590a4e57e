/*
 * bench_models.c - the engine interface (core/engine.h) on any model file,
 * part of `make bench`: for each model, its multiply-adds per candidate
 * folded (what the engine does) against unfolded (what the training code's
 * graph does), then the forward pass at N candidates with a history of H
 * behaviours, timed with and without the explanation (top-3 attention
 * weights per candidate), interleaved call by call so both see the same
 * machine state.
 *
 *   build/release/bench/bench_models [--seconds S] [--hist H] [--n N]... MODEL...
 *
 * Workload: random item features within the model's vocabularies (tags,
 * multimodal vector, or category), H distinct behaviours, N candidates,
 * context values random; item vectors computed beforehand (a warm item
 * cache), one thread.  `make bench` runs it on the golden MicroLens QIN,
 * MicroLens DIN and Amazon TIN files (random weights, real shapes).
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "core/engine.h"

static uint64_t rng = 88172645463325252ULL;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int bench_one(const char *path, int hist, const int *ns, int nn, double seconds) {
    engine_model *m;
    char err[512];
    double t0 = bench_now_s();
    if (engine_model_load(path, &m, err, sizeof err) < 0) {
        fprintf(stderr, "bench_models: %s\n", err);
        return 1;
    }
    double load_s = bench_now_s() - t0;
    const engine_schema *sc = engine_model_schema(m);
    int max_n = 1;
    for (int k = 0; k < nn; k++) max_n = ns[k] > max_n ? ns[k] : max_n;
    const int H = hist < sc->max_len ? hist : sc->max_len, nitems = H + max_n;
    const size_t vf = engine_item_vec_floats(m);

    /* Items: distinct ids, random features. */
    engine_item *items = calloc((size_t)nitems, sizeof *items);
    int32_t *tags = calloc((size_t)nitems * (sc->num_tags ? sc->num_tags : 1), sizeof *tags);
    float *mm = calloc((size_t)nitems * (sc->mm_dim ? sc->mm_dim : 1), sizeof *mm);
    float *vecs = engine_item_vecs_alloc(m, nitems);
    const float **ptr = malloc((size_t)nitems * sizeof *ptr);
    int32_t *ctx = calloc((size_t)max_n * (sc->num_ctx ? sc->num_ctx : 1), sizeof *ctx);
    float *prob = malloc((size_t)max_n * sizeof *prob);
    int32_t *xpos = malloc((size_t)max_n * 3 * sizeof *xpos);
    float *xw = malloc((size_t)max_n * 3 * sizeof *xw);
    if (!items || !tags || !mm || !vecs || !ptr || !ctx || !prob || !xpos || !xw) return 1;
    const int64_t span = sc->item_vocab - sc->item_id_min;
    for (int i = 0; i < nitems; i++) {
        engine_item *it = &items[i];
        it->id = sc->item_id_min + (int64_t)(((uint64_t)i * 7919u + 13) % (uint64_t)span);
        it->tags = tags + (size_t)i * sc->num_tags;
        it->num_tags = sc->num_tags;
        for (int k = 0; k < sc->num_tags; k++)
            tags[(size_t)i * sc->num_tags + k] = (int32_t)(next() % (uint64_t)sc->tag_vocab);
        if (sc->mm_dim) {
            it->mm = mm + (size_t)i * sc->mm_dim;
            for (int k = 0; k < sc->mm_dim; k++)
                mm[(size_t)i * sc->mm_dim + k] = (float)(next() % 2000) * 0.001f - 1.0f;
        }
        it->cate = sc->cate_vocab ? (int32_t)(next() % (uint64_t)sc->cate_vocab) : 0;
        ptr[i] = vecs + (size_t)i * vf;
    }
    t0 = bench_now_s();
    if (engine_items_compute(m, nitems, items, vecs, NULL, err, sizeof err) < 0) {
        fprintf(stderr, "bench_models: items: %s\n", err);
        return 1;
    }
    double item_us = (bench_now_s() - t0) / nitems * 1e6;
    for (int i = 0; i < max_n; i++)
        for (int f = 0; f < sc->num_ctx; f++)
            ctx[(size_t)i * sc->num_ctx + f] = (int32_t)(next() % (uint64_t)sc->ctx_vocab[f]);
    engine_scratch *s;
    if (engine_scratch_init(m, max_n, &s) < 0) return 1;

    engine_cost c = engine_model_cost(m, H), cl = engine_model_cost(m, sc->max_len);
    printf("\n%s model %s (%s), load %.2f s, item vectors %.1f us/item (%zu floats each)\n",
           engine_arch_name(sc->arch), sc->name, path, load_s, item_us, vf);
    printf("multiply-adds per candidate, history %d: folded %.3fM, unfolded %.3fM (%.2fx); "
           "history %d (max_len): folded %.3fM, unfolded %.3fM (%.2fx)\n",
           H, c.folded / 1e6, c.unfolded / 1e6, c.unfolded / c.folded, sc->max_len,
           cl.folded / 1e6, cl.unfolded / 1e6, cl.unfolded / cl.folded);
    printf("%5s %10s %10s %10s %10s %9s %12s %12s %12s %7s\n", "N", "median_us", "p99_us",
           "cpu_us", "us/cand", "GFLOP/s", "explain3_us", "explain_cost", "explain_cpu", "iters");
    for (int k = 0; k < nn; k++) {
        int n = ns[k];
        if (n < 1 || n > max_n) continue;
        engine_explain ex = {3, xpos, xw};
        engine_request plain = {ptr, H, ptr + H, ctx, n, NULL}, expl = plain;
        expl.explain = &ex;
        for (int i = 0; i < 3; i++) {
            engine_forward(m, s, &plain, prob, NULL, 0);
            engine_forward(m, s, &expl, prob, NULL, 0);
        }
        int cap = 100000, it = 0;
        double *tf = malloc(cap * sizeof *tf), *te = malloc(cap * sizeof *te);
        double *tc = malloc(cap * sizeof *tc), *tce = malloc(cap * sizeof *tce);
        double end = bench_now_s() + seconds;
        while ((bench_now_s() < end || it < 10) && it < cap) {
            /* Alternate which goes first, so neither always sees a warmer
             * cache. */
            for (int r = 0; r < 2; r++) {
                int with = (r + it) % 2;
                double a0 = bench_now_s(), c0 = bench_cpu_s();
                engine_forward(m, s, with ? &expl : &plain, prob, NULL, 0);
                double d = bench_now_s() - a0;
                double cd = bench_cpu_s() - c0;
                if (with) te[it] = d, tce[it] = cd;
                else tf[it] = d, tc[it] = cd;
            }
            it++;
        }
        double med = bench_quantile(tf, it, 0.5), p99 = bench_quantile(tf, it, 0.99);
        double emed = bench_quantile(te, it, 0.5), cmed = bench_quantile(tc, it, 0.5);
        double cemed = bench_quantile(tce, it, 0.5);
        printf("%5d %10.1f %10.1f %10.1f %10.2f %9.1f %12.1f %11.1f%% %11.1f%% %7d\n", n,
               med * 1e6, p99 * 1e6, cmed * 1e6, med * 1e6 / n, 2.0 * c.folded * n / med * 1e-9,
               emed * 1e6, 100.0 * (emed - med) / med, 100.0 * (cemed - cmed) / cmed, it);
        free(tf);
        free(te);
        free(tc);
        free(tce);
    }
    engine_scratch_free(s);
    free(items); free(tags); free(mm); free(vecs); free(ptr); free(ctx); free(prob);
    free(xpos); free(xw);
    engine_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    double seconds = 1.5;
    int ns[16] = {16, 64, 256}, nn = 3, custom = 0, hist = 64, nm = 0;
    const char *models[16];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--hist") && i + 1 < argc) {
            hist = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--n") && i + 1 < argc && nn < 16) {
            if (!custom) nn = 0, custom = 1;
            ns[nn++] = atoi(argv[++i]);
        } else if (argv[i][0] != '-' && nm < 16) {
            models[nm++] = argv[i];
        } else {
            fprintf(stderr, "usage: %s [--seconds S] [--hist H] [--n N]... MODEL...\n", argv[0]);
            return 2;
        }
    }
    if (!nm) {
        fprintf(stderr, "usage: %s [--seconds S] [--hist H] [--n N]... MODEL...\n", argv[0]);
        return 2;
    }
    printf("engine forward pass per model, history %d, 1 thread, fp32; explain3: the same "
           "call returning the top-3 attention weights per candidate\n", hist);
    printf("OpenBLAS %s, core %s; DIN/TIN dense products on %s (CTR_DENSE_OPENBLAS=1: "
           "OpenBLAS)\n", openblas_get_config(), openblas_get_corename(),
           getenv("CTR_DENSE_OPENBLAS") && strcmp(getenv("CTR_DENSE_OPENBLAS"), "0")
               ? "OpenBLAS" : "oneDNN sgemm");
    int rc = 0;
    for (int k = 0; k < nm; k++) rc |= bench_one(models[k], hist, ns, nn, seconds);
    printf("\nGFLOP/s counts the folded multiply-adds x 2; cpu_us: median thread CPU time "
           "(without explain); explain_cost = (explain3 - median) / median, medians of "
           "interleaved calls (wall time); explain_cpu: the same on thread CPU time\n");
    return rc;
}
