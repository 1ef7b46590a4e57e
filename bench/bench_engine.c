/*
 * bench_engine.c - our engine (core/engine.h: QIN, DIN or TIN) as a worker
 * process for `make bench-compare` (bench/compare.py drives it; see
 * bench/README.md).
 *
 * Workload: one request = one user's history shared by N candidates (N up
 * to NMAX).  The worker loads a model file, reads
 * input sets written by compare.py (the same raw tensors ONNX Runtime and
 * PyTorch are fed), computes the item vectors of every history item and
 * candidate once (not timed: the service keeps them in its item cache),
 * then answers commands on stdin, one line each, with one line on stdout:
 *
 *   probs S N      ->  ok p_1 .. p_N            (engine_forward on set S, %.9g)
 *   time S N K     ->  ok CPU_NS t_1 .. t_K     (K timed engine_forward calls, ns)
 *   sgemm N K      ->  ok CPU_NS t_1 .. t_K     (K timed sgemm yardsticks, ns;
 *                                                QIN models only)
 *   both S N K     ->  ok CPU_NS f_1 g_1 .. f_K g_K  (alternately: forward
 *                      f_i, then the sgemm yardstick g_i, so that both see
 *                      the same machine state; what compare.py uses)
 *   quit
 *
 * CPU_NS is the process CPU time of the whole command, so the coordinator
 * can check that the work ran on one thread (CPU time ~ wall time).
 *
 * The sgemm yardstick (QIN) is what the folded QNN cannot do better than:
 * for each of the model's num_layers layers, one single-threaded
 * cblas_sgemm(N x D) x (D x D)^T with a distinct D x D matrix per layer (as
 * the model has), the shape and the transposition qin_qnn_layer uses.
 *
 *   bench_engine MODEL NMAX SETDIR...
 *
 * A set directory holds, for NMAX rows (row-major, little-endian; the
 * history is the same in every row, as the training code sees it, and this
 * worker reads row 0):
 *   QIN, DIN: item_id.i64 (NMAX)   item_tags.i64 (NMAX x T)
 *             item_mm.f32 (NMAX x M)   ctx.i64 (NMAX x C)
 *             seq_id.i64 (NMAX x L)    seq_tags.i64 (NMAX x L x T)
 *             seq_mm.f32 (NMAX x L x M)
 *             with T = num_tags, M = mm_in, C = num_ctx, L = max_len;
 *             history id 0 is padding
 *   TIN:      item_id.i64 (NMAX)   cate.i64 (NMAX)   seq_id.i64 (NMAX x L)
 *             seq_cate.i64 (NMAX x L)   sl.i64 (NMAX), the history being
 *             the first sl of the L entries (ids from 0, 0 an item)
 * The banner line gives the model's multiply-adds per candidate at the
 * set's history length, folded and as trained (engine_model_cost).
 */
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/engine.h"
#include "core/qin_internal.h" /* the QIN yardstick's shapes */

#define MAX_SETS 8

typedef struct input_set {
    int nhist;
    const float **hist;        /* nhist item vectors (NULL: padding) */
    const float **cand;        /* nmax item vectors */
    int32_t *ctx;              /* nmax x num_ctx */
    float *vecs;               /* backing store of the item vectors */
} input_set;

static int64_t now_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what, const char *detail) {
    fprintf(stderr, "bench_engine: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

/* Elements in dir/name (its size / size), or -1 when it does not exist. */
static long raw_count(const char *dir, const char *name, size_t size) {
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0 ? (long)((size_t)st.st_size / size) : -1;
}

/* Reads exactly `count` elements of `size` bytes from dir/name. */
static void *read_raw(const char *dir, const char *name, size_t size, size_t count) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open", path);
    void *p = malloc(size * count > 0 ? size * count : 1);
    if (!p) die("out of memory", NULL);
    if (fread(p, size, count, f) != count || fgetc(f) != EOF) die("wrong size", path);
    fclose(f);
    return p;
}

/* The item vector of one item, as engine_items_compute wants it. */
static void item_vector(const engine_model *m, int64_t id, const int64_t *tags, const float *mm,
                        int64_t cate, float *vec) {
    const engine_schema *c = engine_model_schema(m);
    int32_t t32[64];
    if (c->num_tags > 64) die("too many tag slots", NULL);
    for (int k = 0; k < c->num_tags; k++) t32[k] = (int32_t)tags[k];
    engine_item in = {id, t32, c->num_tags, mm, (int32_t)cate};
    char err[256];
    if (engine_items_compute(m, 1, &in, vec, NULL, err, sizeof err) < 0) die("item vector", err);
}

static void load_set(const engine_model *m, const char *dir, int nmax, input_set *s) {
    const engine_schema *c = engine_model_schema(m);
    const int tin = c->arch == ENGINE_ARCH_TIN;
    const int T = c->num_tags, M = c->mm_dim, C = c->num_ctx;
    const size_t vf = engine_item_vec_floats(m);
    long L = raw_count(dir, "seq_id.i64", 8) / nmax;
    if (L < 0 || L > 100000) die("bad seq_id.i64 in", dir);
    int64_t *item_id = read_raw(dir, "item_id.i64", 8, (size_t)nmax);
    int64_t *seq_id = read_raw(dir, "seq_id.i64", 8, (size_t)nmax * L);
    int64_t *item_tags = NULL, *ctx = NULL, *seq_tags = NULL, *cate = NULL, *seq_cate = NULL,
            *sl = NULL;
    float *item_mm = NULL, *seq_mm = NULL;
    if (tin) {
        cate = read_raw(dir, "cate.i64", 8, (size_t)nmax);
        seq_cate = read_raw(dir, "seq_cate.i64", 8, (size_t)nmax * L);
        sl = read_raw(dir, "sl.i64", 8, (size_t)nmax);
    } else {
        item_tags = read_raw(dir, "item_tags.i64", 8, (size_t)nmax * T);
        item_mm = read_raw(dir, "item_mm.f32", 4, (size_t)nmax * M);
        ctx = read_raw(dir, "ctx.i64", 8, (size_t)nmax * C);
        seq_tags = read_raw(dir, "seq_tags.i64", 8, (size_t)nmax * L * T);
        seq_mm = read_raw(dir, "seq_mm.f32", 4, (size_t)nmax * L * M);
    }
    s->nhist = tin ? (int)sl[0] : (int)L;
    if (s->nhist < 0 || s->nhist > L) die("bad sl.i64 in", dir);
    s->vecs = engine_item_vecs_alloc(m, (int)L + nmax);
    s->hist = calloc((size_t)L + 1, sizeof *s->hist);
    s->cand = calloc((size_t)nmax, sizeof *s->cand);
    s->ctx = calloc((size_t)nmax * (C ? C : 1), sizeof *s->ctx);
    if (!s->vecs || !s->hist || !s->cand || !s->ctx) die("out of memory", NULL);
    /* History: row 0 (every row holds the same copy). */
    for (int j = 0; j < s->nhist; j++) {
        if (!tin && seq_id[j] == 0) continue; /* padding */
        float *v = s->vecs + (size_t)j * vf;
        item_vector(m, seq_id[j], tin ? NULL : seq_tags + (size_t)j * T,
                    tin ? NULL : seq_mm + (size_t)j * M, tin ? seq_cate[j] : 0, v);
        s->hist[j] = v;
    }
    for (int i = 0; i < nmax; i++) {
        float *v = s->vecs + (size_t)(L + i) * vf;
        item_vector(m, item_id[i], tin ? NULL : item_tags + (size_t)i * T,
                    tin ? NULL : item_mm + (size_t)i * M, tin ? cate[i] : 0, v);
        s->cand[i] = v;
        for (int f = 0; f < C; f++) s->ctx[(size_t)i * C + f] = (int32_t)ctx[(size_t)i * C + f];
    }
    free(item_id); free(item_tags); free(item_mm); free(ctx); free(seq_id); free(seq_tags);
    free(seq_mm); free(cate); free(seq_cate); free(sl);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL NMAX SETDIR...\n", argv[0]);
        return 2;
    }
    const int nmax = atoi(argv[2]);
    const int nsets = argc - 3;
    if (nmax < 1 || nsets > MAX_SETS) die("bad NMAX or too many sets", NULL);

    engine_model *m;
    char err[512];
    if (engine_model_load(argv[1], &m, err, sizeof err) < 0) die("load", err); /* 1 BLAS thread */
    const engine_schema *sc = engine_model_schema(m);
    /* The QIN yardstick's shapes. */
    int D = 0, layers = 0;
    if (sc->arch == ENGINE_ARCH_QIN) {
        const qin_config *qc = &qin_model_of(m)->cfg;
        D = qc->input_dim;
        layers = qc->num_layers;
    }

    input_set sets[MAX_SETS];
    for (int k = 0; k < nsets; k++) load_set(m, argv[3 + k], nmax, &sets[k]);

    engine_scratch *scratch;
    if (engine_scratch_init(m, nmax, &scratch) < 0) die("scratch", NULL);
    float *prob = malloc((size_t)nmax * sizeof *prob);

    /* The sgemm yardstick's operands: an input of the usual magnitude and
     * one distinct D x D matrix per layer. */
    float *a = NULL, *y = NULL, **w = calloc((size_t)layers + 1, sizeof *w);
    if (D) {
        a = aligned_alloc(64, ((size_t)nmax * D * 4 + 63) & ~(size_t)63);
        y = aligned_alloc(64, ((size_t)nmax * D * 4 + 63) & ~(size_t)63);
        if (!a || !y) die("out of memory", NULL);
        for (size_t i = 0; i < (size_t)nmax * D; i++)
            a[i] = (float)((i * 2654435761u) % 2000) * 0.001f - 1.0f;
        for (int l = 0; l < layers; l++) {
            w[l] = aligned_alloc(64, ((size_t)D * D * 4 + 63) & ~(size_t)63);
            if (!w[l]) die("out of memory", NULL);
            for (size_t i = 0; i < (size_t)D * D; i++) w[l][i] = (float)((i + l) % 7) * 0.01f - 0.03f;
        }
    }
    if (!prob || !w) die("out of memory", NULL);

    engine_cost cost = engine_model_cost(m, sets[0].nhist);
    printf("ready arch=%s hist=%d madds_per_cand_folded=%.0f madds_per_cand_unfolded=%.0f "
           "vec_floats=%zu openblas=\"%s\" core=%s threads=%d\n",
           engine_arch_name(sc->arch), sets[0].nhist, cost.folded, cost.unfolded,
           engine_item_vec_floats(m), openblas_get_config(), openblas_get_corename(),
           openblas_get_num_threads());
    fflush(stdout);

    char line[256], cmd[32];
    int64_t *t = NULL;
    size_t tcap = 0;
    while (fgets(line, sizeof line, stdin)) {
        int set = 0, n = 0, k = 0;
        if (sscanf(line, "%31s", cmd) != 1) continue;
        if (!strcmp(cmd, "quit")) break;
        int is_probs = !strcmp(cmd, "probs"), is_time = !strcmp(cmd, "time"),
            is_sgemm = !strcmp(cmd, "sgemm") && D, is_both = !strcmp(cmd, "both") && D;
        int ok = (is_probs && sscanf(line, "%*s %d %d", &set, &n) == 2) ||
                 ((is_time || is_both) && sscanf(line, "%*s %d %d %d", &set, &n, &k) == 3) ||
                 (is_sgemm && sscanf(line, "%*s %d %d", &n, &k) == 2);
        if (!ok || set < 0 || set >= nsets || n < 1 || n > nmax || k < 0) {
            printf("error bad command: %s", line);
            fflush(stdout);
            continue;
        }
        const input_set *s = &sets[set];
        engine_request req = {s->hist, s->nhist, s->cand, s->ctx, n, NULL, NULL};
        if (is_probs) {
            if (engine_forward(m, scratch, &req, prob, err, sizeof err) < 0) {
                printf("error %s\n", err);
            } else {
                printf("ok");
                for (int i = 0; i < n; i++) printf(" %.9g", prob[i]);
                printf("\n");
            }
            fflush(stdout);
            continue;
        }
        const size_t nt = (size_t)k * (is_both ? 2 : 1);
        if (nt > tcap) {
            tcap = nt;
            t = realloc(t, tcap * sizeof *t);
            if (!t) die("out of memory", NULL);
        }
        int64_t cpu0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
        for (size_t i = 0; i < nt; i++) {
            /* In `both`, even slots time the forward pass, odd ones sgemm. */
            int fwd = is_time || (is_both && i % 2 == 0);
            int64_t t0 = now_ns(CLOCK_MONOTONIC);
            if (fwd) {
                engine_forward(m, scratch, &req, prob, NULL, 0);
            } else {
                for (int l = 0; l < layers; l++)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, D, D, 1.0f, a, D,
                                w[l], D, 0.0f, y, D);
            }
            t[i] = now_ns(CLOCK_MONOTONIC) - t0;
        }
        int64_t cpu = now_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
        printf("ok %lld", (long long)cpu);
        for (size_t i = 0; i < nt; i++) printf(" %lld", (long long)t[i]);
        printf("\n");
        fflush(stdout);
    }
    free(t);
    for (int l = 0; l < layers; l++) free(w[l]);
    free(w); free(a); free(y); free(prob);
    for (int k = 0; k < nsets; k++) {
        free(sets[k].vecs); free(sets[k].hist); free(sets[k].cand); free(sets[k].ctx);
    }
    engine_scratch_free(scratch);
    engine_model_free(m);
    return 0;
}
