/*
 * bench_models.c - the engine interface (core/engine.h) on any model file,
 * part of `make bench`: for each model, its multiply-adds per candidate
 * folded (what the engine does) against unfolded (what the training code's
 * graph does), then the forward pass at N candidates with a history of H
 * behaviours, timed with and without the explanation (top-3 attention
 * weights per candidate), interleaved call by call so both see the same
 * machine state.
 *
 *   build/release/bench/bench_models [--seconds S] [--hist H] [--n N]...
 *                                    [--precision fp32|bf16|int8|int8x2]...
 *                                    [--kernel auto|onednn|packed|openblas] MODEL...
 *
 * --kernel sets every dense layer's kernel (engine_params.kernel; default
 * auto, the planner's choice), e.g. packed for int8 on this project's VNNI
 * kernel whatever the CPU has.
 *
 * With several --precision, each model is loaded once per precision and
 * their forward passes run in interleaved rounds (the order rotated each
 * round), so the ratios between precisions are of one run.
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
#include "bench/bench_inputs.h"
#include "core/base/cpu.h"
#include "core/engine.h"

#define MAXP DENSE_PRECISION_COUNT

/* One model file in each precision of precs: the same items, history and
 * candidates; for each N, the precisions' forward passes in interleaved
 * rounds (the order rotated round by round), and the first precision's
 * pass with the explanation beside its plain one. */
static dense_backend kernel = DENSE_BACKEND_AUTO;

static int bench_one(const char *path, const dense_precision *precs, int np, int hist,
                     const int *ns, int nn, double seconds) {
    engine_model *m[MAXP];
    engine_scratch *s[MAXP];
    float *vecs[MAXP];
    const float **ptr[MAXP];
    double load_s[MAXP], item_us[MAXP];
    char err[512];
    for (int p = 0; p < np; p++) {
        engine_params ep = engine_default_params();
        ep.precision = precs[p];
        ep.kernel = kernel;
        double t0 = bench_now_s();
        if (engine_model_load_with(path, &ep, &m[p], err, sizeof err) < 0) {
            fprintf(stderr, "bench_models: %s\n", err);
            return 1;
        }
        load_s[p] = bench_now_s() - t0;
    }
    const engine_schema *sc = engine_model_schema(m[0]);
    int max_n = 1;
    for (int k = 0; k < nn; k++) max_n = ns[k] > max_n ? ns[k] : max_n;
    const int H = hist < sc->max_len ? hist : sc->max_len, nitems = H + max_n;
    /* Each model's own vectors: their layout follows its precision. */

    /* Items: distinct ids, random features. */
    bench_inputs in;
    float *prob = malloc((size_t)max_n * sizeof *prob);
    int32_t *xpos = malloc((size_t)max_n * 3 * sizeof *xpos);
    float *xw = malloc((size_t)max_n * 3 * sizeof *xw);
    if (bench_inputs_make(&in, sc, nitems, max_n) < 0 || !prob || !xpos || !xw) return 1;
    const int32_t *ctx = in.ctx;
    for (int p = 0; p < np; p++) {
        vecs[p] = engine_item_vecs_alloc(m[p], nitems);
        ptr[p] = malloc((size_t)nitems * sizeof *ptr[p]);
        if (!vecs[p] || !ptr[p]) return 1;
        const size_t vfp = engine_item_vec_floats(m[p]);
        for (int i = 0; i < nitems; i++) ptr[p][i] = vecs[p] + (size_t)i * vfp;
        double t0 = bench_now_s();
        if (engine_items_compute(m[p], nitems, in.items, vecs[p], NULL, err, sizeof err) < 0) {
            fprintf(stderr, "bench_models: items: %s\n", err);
            return 1;
        }
        item_us[p] = (bench_now_s() - t0) / nitems * 1e6;
        if (engine_scratch_init(m[p], max_n, &s[p]) < 0) return 1;
    }

    engine_cost c = engine_model_cost(m[0], H), cl = engine_model_cost(m[0], sc->max_len);
    printf("\n%s model %s (%s)\n", engine_arch_name(sc->arch), sc->name, path);
    for (int p = 0; p < np; p++)
        printf("  %s: load %.2f s; item vectors %.1f us/item, %zu floats each; %s\n",
               dense_precision_name(precs[p]), load_s[p], item_us[p],
               engine_item_vec_floats(m[p]), engine_model_describe(m[p]));
    printf("multiply-adds per candidate, history %d: folded %.3fM, unfolded %.3fM (%.2fx); "
           "history %d (max_len): folded %.3fM, unfolded %.3fM (%.2fx)\n",
           H, c.folded / 1e6, c.unfolded / 1e6, c.unfolded / c.folded, sc->max_len,
           cl.folded / 1e6, cl.unfolded / 1e6, cl.unfolded / cl.folded);
    printf("%5s %5s %10s %10s %10s %10s %9s %8s %12s %12s %12s %7s\n", "N", "prec", "median_us",
           "p99_us", "cpu_us", "us/cand", "GFLOP/s", "cpu/1st", "explain3_us", "explain_cost",
           "explain_cpu", "rounds");
    for (int k = 0; k < nn; k++) {
        int n = ns[k];
        if (n < 1 || n > max_n) continue;
        engine_explain ex = {3, xpos, xw};
        engine_request plain[MAXP];
        for (int p = 0; p < np; p++) {
            plain[p] = (engine_request){ptr[p], H, ptr[p] + H, ctx, n, NULL, NULL};
            for (int i = 0; i < 3; i++) engine_forward(m[p], s[p], &plain[p], prob, NULL, 0);
        }
        engine_request expl = plain[0];
        expl.explain = &ex;
        const int slots = np + 1; /* every precision, then the first with explain */
        int cap = 100000, it = 0;
        double *tw = malloc((size_t)cap * slots * sizeof *tw);
        double *tc = malloc((size_t)cap * slots * sizeof *tc);
        double end = bench_now_s() + seconds;
        while ((bench_now_s() < end || it < 10) && it < cap) {
            /* Rotate the order, so none always sees a warmer cache. */
            for (int r = 0; r < slots; r++) {
                int q = (r + it) % slots, p = q < np ? q : 0;
                double a0 = bench_now_s(), c0 = bench_cpu_s();
                engine_forward(m[p], s[p], q < np ? &plain[p] : &expl, prob, NULL, 0);
                tw[(size_t)q * cap + it] = bench_now_s() - a0;
                tc[(size_t)q * cap + it] = bench_cpu_s() - c0;
            }
            it++;
        }
        double med[MAXP + 1], p99[MAXP + 1], cmed[MAXP + 1];
        for (int q = 0; q < slots; q++) {
            p99[q] = bench_quantile(tw + (size_t)q * cap, it, 0.99);
            med[q] = bench_quantile(tw + (size_t)q * cap, it, 0.5);
            cmed[q] = bench_quantile(tc + (size_t)q * cap, it, 0.5);
        }
        for (int p = 0; p < np; p++) {
            printf("%5d %5s %10.1f %10.1f %10.1f %10.2f %9.1f %7.2fx", n,
                   dense_precision_name(precs[p]), med[p] * 1e6, p99[p] * 1e6, cmed[p] * 1e6,
                   cmed[p] * 1e6 / n, 2.0 * c.folded * n / cmed[p] * 1e-9, cmed[p] / cmed[0]);
            if (p == 0)
                printf(" %12.1f %11.1f%% %11.1f%% %7d\n", med[np] * 1e6,
                       100.0 * (med[np] - med[0]) / med[0],
                       100.0 * (cmed[np] - cmed[0]) / cmed[0], it);
            else
                printf(" %12s %12s %12s %7d\n", "-", "-", "-", it);
        }
        free(tw);
        free(tc);
    }
    for (int p = 0; p < np; p++) {
        engine_scratch_free(s[p]);
        free(vecs[p]);
        free(ptr[p]);
        engine_model_free(m[p]);
    }
    bench_inputs_free(&in);
    free(prob); free(xpos); free(xw);
    return 0;
}

int main(int argc, char **argv) {
    double seconds = 1.5;
    int ns[16] = {16, 64, 256}, nn = 3, custom = 0, hist = 64, nm = 0, np = 0;
    dense_precision precs[MAXP];
    const char *models[16];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--kernel") && i + 1 < argc) {
            if (dense_backend_parse(argv[++i], &kernel) < 0) {
                fprintf(stderr, "bench_models: --kernel: auto, onednn, packed or openblas\n");
                return 2;
            }
        } else if (!strcmp(argv[i], "--hist") && i + 1 < argc) {
            hist = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--n") && i + 1 < argc && nn < 16) {
            if (!custom) nn = 0, custom = 1;
            ns[nn++] = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--precision") && i + 1 < argc) {
            dense_precision p;
            char err[128];
            if (engine_precision_parse(argv[++i], &p, err, sizeof err) < 0) {
                fprintf(stderr, "bench_models: %s\n", err);
                return 2;
            }
            int dup = 0;
            for (int k = 0; k < np; k++) dup |= precs[k] == p;
            if (!dup) precs[np++] = p;
        } else if (argv[i][0] != '-' && nm < 16) {
            models[nm++] = argv[i];
        } else {
            fprintf(stderr, "usage: %s [--seconds S] [--hist H] [--n N]... [--precision P]... [--kernel K] MODEL...\n", argv[0]);
            return 2;
        }
    }
    if (!nm) {
        fprintf(stderr, "usage: %s [--seconds S] [--hist H] [--n N]... [--precision P]... [--kernel K] MODEL...\n", argv[0]);
        return 2;
    }
    if (!np) precs[np++] = DENSE_FP32;
    printf("engine forward pass per model and precision, history %d, 1 thread; explain3: the "
           "first precision's call returning the top-3 attention weights per candidate\n",
           hist);
    printf("OpenBLAS %s, core %s; CPU %s; DIN/TIN dense products on %s "
           "(CTR_DENSE_OPENBLAS=1: OpenBLAS)\n", openblas_get_config(), openblas_get_corename(),
           cpu_describe(), cpu_path_on(CPU_PATH_LINEAR_ONEDNN) ? "oneDNN sgemm" : "OpenBLAS");
    printf("oneDNN instruction set %s (ONEDNN_MAX_CPU_ISA %s); dense kernels planned at load "
           "(each model's largest layer below)\n", dense_cpu_isa(),
           getenv("ONEDNN_MAX_CPU_ISA") ? getenv("ONEDNN_MAX_CPU_ISA") : "unset");
    int rc = 0;
    for (int k = 0; k < nm; k++) rc |= bench_one(models[k], precs, np, hist, ns, nn, seconds);
    printf("\nGFLOP/s counts the folded multiply-adds x 2 over the median thread CPU time "
           "(cpu_us); cpu/1st: cpu_us against the first precision's, same rounds; "
           "explain_cost = (explain3 - median) / median, medians of interleaved calls (wall "
           "time); explain_cpu: the same on thread CPU time\n");
    return rc;
}
