/*
 * bench_forward.c - forward-pass benchmark (`make bench`).
 *
 * MicroLens QIN configuration (embedding_dim 128, 4 QNN layers, R = 4,
 * D = 1024) with random weights, one user with a full history of 64, and N
 * candidates in {1, 16, 64, 256}.  Item vectors are computed beforehand,
 * as the service's item cache has them warm, so this times qin_forward
 * alone.  For each N it prints the median and p99 time per request, the
 * time per candidate, the achieved GFLOP/s of the whole pass and of the QNN
 * layers alone, and the rate of a plain single-threaded OpenBLAS sgemm of
 * the QNN's shape (N x 1024 x 1024) measured in the same run, interleaved
 * with the forward passes so both see the same machine state.
 *
 *   build/release/bench/bench_forward [--seconds S] [--n N]... [--model FILE]
 *
 * With --model it times that model file instead (random item features and
 * contexts within its vocabularies, history of its max_len).
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "core/qin_internal.h"
#include "tests/core/testmodel.h"

/* The core's FMA peak: 24 independent 16-wide FMA chains, no memory
 * traffic, so the figure is what the FMA units can do at the clock this
 * core runs now (AVX-512; 0 when the CPU has none). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx512f"))) static double fma_peak_gflops(void) {
    if (!__builtin_cpu_supports("avx512f")) return 0;
    __m512 a[24], m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 24; i++) a[i] = _mm512_set1_ps((float)i);
    const long iters = 2000000;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = bench_now_s();
        for (long k = 0; k < iters; k++)
#pragma GCC unroll 24
            for (int i = 0; i < 24; i++) a[i] = _mm512_fmadd_ps(a[i], m, c);
        double g = 24.0 * 16 * 2 * iters / (bench_now_s() - t0) * 1e-9;
        if (g > best) best = g;
    }
    float sink = 0;
    for (int i = 0; i < 24; i++) sink += _mm512_reduce_add_ps(a[i]);
    if (sink == 12345.0f) printf(" ");
    return best;
}
#else
static double fma_peak_gflops(void) { return 0; }
#endif

static qin_config microlens_config(void) {
    qin_config c = tm_small_config();
    strcpy(c.name, "qin-bench");
    c.embedding_dim = 128;
    c.max_len = 64;
    c.num_layers = 4;
    c.num_row = 4;
    c.item_vocab = 91718;
    c.tag_vocab = 11740;
    c.num_tags = 5;
    c.mm_in = 128;
    c.mm_out = 128;
    c.ctx_vocab[0] = c.ctx_vocab[1] = 11;
    c.item_dim = 2 * c.embedding_dim + c.mm_out;
    c.attn_dim = 2 * c.item_dim;
    c.input_dim = c.num_ctx * c.embedding_dim + 2 * c.item_dim;
    return c;
}

int main(int argc, char **argv) {
    double seconds = 1.5;
    int ns[16] = {1, 16, 64, 256}, nn = 4, custom = 0;
    const char *model_path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            model_path = argv[++i];
        } else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--n") && i + 1 < argc && nn < 16) {
            if (!custom) nn = 0, custom = 1;
            ns[nn++] = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [--seconds S] [--n N]... [--model FILE]\n", argv[0]);
            return 2;
        }
    }
    int max_n = 1;
    for (int i = 0; i < nn; i++) max_n = ns[i] > max_n ? ns[i] : max_n;

    qin_model *m;
    char err[1024];
    double t0 = bench_now_s();
    if (model_path) {
        if (qin_model_load(model_path, &m, err, sizeof err) < 0) {
            fprintf(stderr, "load: %s\n", err);
            return 1;
        }
    } else {
        qin_config cfg = microlens_config();
        test_model tm;
        tm_init(&tm, &cfg, 42);
        size_t len;
        unsigned char *buf = tm_serialize(&tm, NULL, &len);
        tm_free(&tm);
        int rc = qin_model_load_buffer(buf, len, &m, err, sizeof err);
        free(buf);
        if (rc < 0) {
            fprintf(stderr, "load: %s\n", err);
            return 1;
        }
    }
    double load_s = bench_now_s() - t0;
    const qin_config *c = qin_model_config(m);
    const int D = c->input_dim, E = c->item_dim, L = c->max_len;

    /* Item vectors for the history and the candidates. */
    int nitems = L + max_n;
    float *vecs = qin_falloc((size_t)nitems * qin_item_vec_floats(m));
    const float **ptr = malloc((size_t)nitems * sizeof *ptr);
    float *mm = malloc((size_t)c->mm_in * sizeof *mm);
    int32_t *tags = malloc((size_t)(c->num_tags ? c->num_tags : 1) * sizeof *tags);
    uint64_t rng = 1;
    t0 = bench_now_s();
    for (int i = 0; i < nitems; i++) {
        for (int k = 0; k < c->mm_in; k++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            mm[k] = (float)((double)(rng >> 11) / 9007199254740992.0) - 0.5f;
        }
        for (int k = 0; k < c->num_tags; k++) tags[k] = (int32_t)((i * 31 + k * 977) % c->tag_vocab);
        qin_item_input in = {1 + (i * 7919) % (c->item_vocab - 1), tags, c->num_tags, mm};
        float *v = vecs + (size_t)i * qin_item_vec_floats(m);
        if (qin_item_compute(m, &in, v, err, sizeof err) < 0) {
            fprintf(stderr, "item: %s\n", err);
            return 1;
        }
        ptr[i] = v;
    }
    double item_us = (bench_now_s() - t0) / nitems * 1e6;
    int32_t *ctx = malloc((size_t)max_n * (c->num_ctx ? c->num_ctx : 1) * sizeof *ctx);
    for (int i = 0; i < max_n * c->num_ctx; i++) ctx[i] = i % c->ctx_vocab[i % c->num_ctx];

    qin_scratch *s;
    if (qin_scratch_init(m, max_n, &s) < 0) return 1;
    float *prob = malloc((size_t)max_n * sizeof *prob);
    /* The sgemm yardstick: the same shapes as the QNN, one distinct D x D
     * matrix per layer (as the model has), so both stream the same bytes. */
    float *a = qin_falloc((size_t)max_n * D), *y = qin_falloc((size_t)max_n * D);
    float *w[64];
    for (int l = 0; l < c->num_layers; l++) {
        w[l] = qin_falloc((size_t)D * D);
        for (size_t i = 0; i < (size_t)D * D; i++) w[l][i] = (float)((i + l) % 7) * 0.01f;
    }
    float *x0 = qin_falloc((size_t)max_n * s->ldx);

    printf("QIN forward pass, %s (d=%d, E=%d, D=%d, %d layers, R=%d), history %d, 1 thread\n",
           model_path ? model_path : "MicroLens configuration, random weights", c->embedding_dim,
           E, D, c->num_layers, c->num_row, L);
    printf("OpenBLAS %s, core %s; model load %.2f s; item vector %.1f us/item\n",
           openblas_get_config(), openblas_get_corename(), load_s, item_us);
    printf("QNN GEMM: %s (CTR_QNN_OPENBLAS=1 forces OpenBLAS); sgemm columns: plain OpenBLAS "
           "sgemm of the QNN's shapes, same run\n",
           m->use_packed ? "packed AVX-512 kernel (core/gemm.c)" : "OpenBLAS sgemm");
    printf("%5s %10s %10s %10s %9s %9s %10s %10s %7s\n", "N", "median_us", "p99_us",
           "us/cand", "GFLOP/s", "qnn_GF/s", "sgemm_GF/s", "qnn/sgemm", "iters");

    for (int k = 0; k < nn; k++) {
        int n = ns[k];
        if (n < 1 || n > max_n) continue;
        qin_request req = {ptr, L, ptr + L, ctx, n};
        /* Folded arithmetic per request, in flops (2 per multiply-add). */
        double qnn_flops = 2.0 * c->num_layers * n * (double)D * D;
        double flops = qnn_flops + 2.0 * 2 * n * (double)L * E + 2.0 * n * D;
        /* Warm up, then interleave: forward, QNN layers alone, sgemm. */
        for (int i = 0; i < 3; i++) qin_forward(m, s, &req, prob, NULL, 0);
        /* A QNN input of the usual magnitude, to time the layers alone. */
        for (size_t i = 0; i < (size_t)n * s->ldx; i++)
            x0[i] = (float)((i * 2654435761u) % 2000) * 0.001f - 1.0f;
        memcpy(a, x0, (size_t)n * D * sizeof *a);
        int cap = 200000, it = 0;
        double *tf = malloc(cap * sizeof *tf), *tq = malloc(cap * sizeof *tq),
               *tg = malloc(cap * sizeof *tg);
        double end = bench_now_s() + seconds;
        while ((bench_now_s() < end || it < 20) && it < cap) {
            double a0 = bench_now_s();
            qin_forward(m, s, &req, prob, NULL, 0);
            double a1 = bench_now_s();
            memcpy(s->x, x0, (size_t)n * s->ldx * sizeof *x0);
            double a1b = bench_now_s();
            for (int l = 0; l < c->num_layers; l++) qin_qnn_layer(m, l, n, s->x, s->ldx, s->y);
            double a2 = bench_now_s();
            for (int l = 0; l < c->num_layers; l++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, D, D, 1.0f, a, D, w[l],
                            D, 0.0f, y, D);
            double a3 = bench_now_s();
            tf[it] = a1 - a0;
            tq[it] = a2 - a1b;
            tg[it] = a3 - a2;
            it++;
        }
        double med = bench_quantile(tf, it, 0.5), p99 = bench_quantile(tf, it, 0.99);
        double qmed = bench_quantile(tq, it, 0.5), gmed = bench_quantile(tg, it, 0.5);
        printf("%5d %10.1f %10.1f %10.2f %9.1f %9.1f %10.1f %9.0f%% %7d\n", n, med * 1e6,
               p99 * 1e6, med * 1e6 / n, flops / med * 1e-9, qnn_flops / qmed * 1e-9,
               qnn_flops / gmed * 1e-9, 100.0 * gmed / qmed, it);
        free(tf); free(tq); free(tg);
    }
    printf("flops count the folded model: %d layers x 2 N D^2 + attention 4 N L E + head 2 N D\n",
           c->num_layers);
    double peak = fma_peak_gflops();
    if (peak > 0)
        printf("this core's AVX-512 FMA peak, measured now: %.1f GFLOP/s (the QNN's qnn_GF/s "
               "above as a share of it is the distance to the machine's limit)\n", peak);
    for (int l = 0; l < c->num_layers; l++) free(w[l]);
    free(a); free(x0); free(y); free(prob); free(ctx); free(ptr); free(vecs); free(mm); free(tags);
    qin_scratch_free(s);
    qin_model_free(m);
    return 0;
}
