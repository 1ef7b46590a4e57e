/*
 * bench_forward.c - forward-pass benchmark by precision (`make bench`).
 *
 * MicroLens QIN configuration (embedding_dim 128, 4 QNN layers, R = 4,
 * D = 1024) with random weights, one user with a full history of 64, and N
 * candidates in {1, 16, 64, 256}, one thread.  Item vectors are computed
 * beforehand, as the service's item cache has them warm, so this times
 * qin_forward alone.  Everything of one N is timed in interleaved rounds
 * (each round runs every variant once, in an order rotated from round to
 * round), so other load on the machine falls on all of them alike:
 *
 *   - the whole forward pass in each precision (fp32, bf16, int8);
 *   - the QNN layers alone in each precision (product + fused pass);
 *   - the fp32 QNN layers on each kernel (the packed AVX-512 kernel of
 *     gemm.c, and oneDNN), which is how dense.h's packed_below is chosen;
 *   - the forward pass in fp32 and int8 without the first layer's split
 *     (qin.c, "the first layer"): the whole D x D product like the others;
 *   - the forward pass in each precision whose item vectors carry the
 *     history's operands in bf16 (qin_internal.h), again on fp32 vectors
 *     that each request converts (qin_model_vec_bf16 off);
 *   - the attention's two products (N x 64 x E and N x E x 64) on OpenBLAS
 *     and on oneDNN's sgemm (linear_gemm, what qin.c uses);
 *   - the yardstick: plain oneDNN matmul primitives of the QNN's shapes
 *     (N x D by D x D, four distinct weights as the model has, weights
 *     reordered beforehand), in f32, bf16 and u8 x s8, on inputs already in
 *     that type: what the library does on its own.
 *
 *   build/release/bench/bench_forward [--seconds S] [--n N]... [--model FILE]
 *                                     [--precision fp32|bf16|int8]...
 *
 * Every call is timed twice: wall clock, and the thread's CPU time.  On a
 * quiet machine they agree; on a shared one the CPU time leaves out the
 * stretches when another process had the core, so the tables use the
 * medians of CPU time (the "cpu" columns) and print the wall-clock medians
 * and p99 beside them.
 *
 * --seconds is the timing budget per N (default 3).  With --model it times
 * that model file instead (random item features and contexts within its
 * vocabularies, history of its max_len); with --precision only those
 * precisions (and no kernel or yardstick columns).  Machine-readable lines
 * start with "forward", one per (N, precision).
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <oneapi/dnnl/dnnl.h>

#include "bench/bench.h"
#include "core/engine.h"
#include "core/gemm.h"
#include "core/linear.h"
#include "core/qin_internal.h"
#include "tests/core/testmodel.h"

#define MAXV 32

/* --- the oneDNN yardstick -------------------------------------------------- */

#define CK(call)                                                                          \
    do {                                                                                  \
        if ((call) != dnnl_success) {                                                     \
            fprintf(stderr, "oneDNN: %s failed\n", #call);                                \
            exit(1);                                                                      \
        }                                                                                 \
    } while (0)

typedef struct yard {
    const char *name;
    int layers;
    dnnl_engine_t eng;
    dnnl_stream_t strm;
    dnnl_primitive_t prim;
    dnnl_memory_t src, dst, pad, w[64];
} yard;

/* n x D by D x D matmuls, `layers` distinct weights, in type st x wt. */
static void yard_init(yard *y, const char *name, int n, int D, int layers, dnnl_data_type_t st,
                      dnnl_data_type_t wt, dnnl_data_type_t dt) {
    memset(y, 0, sizeof *y);
    y->name = name;
    y->layers = layers;
    CK(dnnl_engine_create(&y->eng, dnnl_cpu, 0));
    CK(dnnl_stream_create(&y->strm, y->eng, dnnl_stream_default_flags));
    dnnl_memory_desc_t smd, wmd, dmd, wplain;
    dnnl_dims_t sd = {n, D}, wd = {D, D}, dd = {n, D};
    CK(dnnl_memory_desc_init_by_tag(&smd, 2, sd, st, dnnl_ab));
    CK(dnnl_memory_desc_init_by_tag(&wmd, 2, wd, wt, dnnl_format_tag_any));
    CK(dnnl_memory_desc_init_by_tag(&wplain, 2, wd, dnnl_f32, dnnl_ba));
    CK(dnnl_memory_desc_init_by_tag(&dmd, 2, dd, dt, dnnl_ab));
    dnnl_matmul_desc_t md;
    CK(dnnl_matmul_desc_init(&md, &smd, &wmd, NULL, &dmd));
    dnnl_primitive_attr_t attr;
    CK(dnnl_primitive_attr_create(&attr));
    CK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    dnnl_primitive_desc_t pd;
    CK(dnnl_primitive_desc_create(&pd, &md, attr, y->eng, NULL));
    CK(dnnl_primitive_create(&y->prim, pd));
    const dnnl_memory_desc_t *wq = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *pq = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    /* Weights: small values (int8 takes them as they come: a reorder from
     * f32 to s8 rounds; the rate does not depend on the values). */
    float *plain = malloc((size_t)D * D * sizeof *plain);
    for (int l = 0; l < layers; l++) {
        for (size_t i = 0; i < (size_t)D * D; i++)
            plain[i] = (float)((i * 2654435761u + l) % 200) - 100.0f;
        if (wt != dnnl_s8)
            for (size_t i = 0; i < (size_t)D * D; i++) plain[i] *= 0.001f;
        dnnl_memory_t from;
        CK(dnnl_memory_create(&from, &wplain, y->eng, plain));
        CK(dnnl_memory_create(&y->w[l], wq, y->eng, DNNL_MEMORY_ALLOCATE));
        dnnl_primitive_desc_t rpd;
        dnnl_primitive_t r;
        CK(dnnl_reorder_primitive_desc_create(&rpd, &wplain, y->eng, wq, y->eng, NULL));
        CK(dnnl_primitive_create(&r, rpd));
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, y->w[l]}};
        CK(dnnl_primitive_execute(r, y->strm, 2, args));
        CK(dnnl_stream_wait(y->strm));
        dnnl_primitive_destroy(r);
        dnnl_primitive_desc_destroy(rpd);
        dnnl_memory_destroy(from);
    }
    free(plain);
    CK(dnnl_memory_create(&y->src, &smd, y->eng, DNNL_MEMORY_ALLOCATE));
    CK(dnnl_memory_create(&y->dst, &dmd, y->eng, DNNL_MEMORY_ALLOCATE));
    /* Inputs of the usual size for the type (bf16 1.0 + noise, u8 values
     * around 128, f32 in -1..1). */
    void *sp;
    CK(dnnl_memory_get_data_handle(y->src, &sp));
    for (int i = 0; i < n * D; i++) {
        if (st == dnnl_f32) ((float *)sp)[i] = (float)((i * 7919) % 2001) * 0.001f - 1.0f;
        else if (st == dnnl_bf16) ((unsigned short *)sp)[i] = (unsigned short)(0x3f00 + i % 97);
        else ((unsigned char *)sp)[i] = (unsigned char)(60 + i % 137);
    }
    if (pq && dnnl_memory_desc_get_size(pq))
        CK(dnnl_memory_create(&y->pad, pq, y->eng, DNNL_MEMORY_ALLOCATE));
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_attr_destroy(attr);
}

static void yard_run(yard *y) {
    for (int l = 0; l < y->layers; l++) {
        dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, y->src}, {DNNL_ARG_WEIGHTS, y->w[l]},
                                   {DNNL_ARG_DST, y->dst}, {DNNL_ARG_SCRATCHPAD, y->pad}};
        CK(dnnl_primitive_execute(y->prim, y->strm, y->pad ? 4 : 3, args));
    }
}

static void yard_free(yard *y) {
    for (int l = 0; l < y->layers; l++) dnnl_memory_destroy(y->w[l]);
    dnnl_memory_destroy(y->src);
    dnnl_memory_destroy(y->dst);
    if (y->pad) dnnl_memory_destroy(y->pad);
    dnnl_primitive_destroy(y->prim);
    dnnl_stream_destroy(y->strm);
    dnnl_engine_destroy(y->eng);
}

/* --- the model -------------------------------------------------------------- */

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

/* Every model loaded, freed at the end. */
static engine_model *loaded[MAXV];
static int nloaded;

/* The file (or the buffer) through engine.h in precision p; its QIN
 * insides. */
static qin_model *load(const char *path, const unsigned char *buf, size_t len,
                       dense_precision p) {
    engine_params ep = engine_default_params();
    ep.precision = p;
    engine_model *em;
    char err[1024];
    int rc = path ? engine_model_load_with(path, &ep, &em, err, sizeof err)
                  : engine_model_load_buffer_with(buf, len, &ep, &em, err, sizeof err);
    if (rc < 0 || !qin_model_of(em) || nloaded == MAXV) {
        fprintf(stderr, "load: %s\n", rc < 0 ? err : "not a QIN model, or too many");
        exit(1);
    }
    loaded[nloaded++] = em;
    return qin_model_of(em);
}

/* The benchmark's items and, per model, their vectors in that model's
 * layout (qin_item_vec_floats), computed the first time they are asked
 * for. */
static struct {
    int n;
    engine_item *items;
    int nm;
    const qin_model *m[MAXV];
    float *vecs[MAXV];
    const float **ptr[MAXV];
} iset;

static const float *const *vectors_of(const qin_model *qm) {
    for (int k = 0; k < iset.nm; k++)
        if (iset.m[k] == qm) return iset.ptr[k];
    engine_model *em = NULL;
    for (int k = 0; k < nloaded; k++)
        if (qin_model_of(loaded[k]) == qm) em = loaded[k];
    const size_t vf = qin_item_vec_floats(qm);
    float *vecs = em && iset.nm < MAXV ? linear_falloc((size_t)iset.n * vf) : NULL;
    const float **ptr = malloc((size_t)iset.n * sizeof *ptr);
    char err[1024];
    if (!vecs || !ptr || engine_items_compute(em, iset.n, iset.items, vecs, NULL, err,
                                              sizeof err) < 0) {
        fprintf(stderr, "item vectors: %s\n", vecs && ptr ? err : "out of memory");
        exit(1);
    }
    for (int i = 0; i < iset.n; i++) ptr[i] = vecs + (size_t)i * vf;
    iset.m[iset.nm] = qm;
    iset.vecs[iset.nm] = vecs;
    iset.ptr[iset.nm++] = ptr;
    return ptr;
}

/* One timed thing of a round. */
typedef enum kind { FORWARD, QNN, YARD, ATTN_BLAS, ATTN_DNNL } kind;
typedef struct variant {
    char name[32];
    kind k;
    qin_model *m;
    qin_request req;              /* FORWARD: on m's own vectors */
    qin_scratch *s;
    yard y;
    double *t, *tc;               /* wall and CPU time of each call */
    int nt;
} variant;

int main(int argc, char **argv) {
    double seconds = 3;
    int ns[16] = {1, 16, 64, 256}, nn = 4, custom = 0;
    int precs[DENSE_PRECISION_COUNT], np = 0;
    const char *model_path = NULL;
    for (int i = 1; i < argc; i++) {
        dense_precision p;
        if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            model_path = argv[++i];
        } else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else if (!strcmp(argv[i], "--n") && i + 1 < argc && nn < 16) {
            if (!custom) nn = 0, custom = 1;
            ns[nn++] = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--precision") && i + 1 < argc &&
                   dense_precision_parse(argv[i + 1], &p) == CTR_OK &&
                   np < DENSE_PRECISION_COUNT) {
            precs[np++] = p;
            i++;
        } else {
            fprintf(stderr, "usage: %s [--seconds S] [--n N]... [--model FILE] "
                            "[--precision fp32|bf16|int8]...\n", argv[0]);
            return 2;
        }
    }
    const int all = np == 0;
    if (all)
        for (int p = 0; p < DENSE_PRECISION_COUNT; p++) precs[np++] = p;
    int max_n = 1;
    for (int i = 0; i < nn; i++) max_n = ns[i] > max_n ? ns[i] : max_n;

    unsigned char *buf = NULL;
    size_t len = 0;
    if (!model_path) {
        qin_config cfg = microlens_config();
        test_model tm;
        tm_init(&tm, &cfg, 42);
        buf = tm_serialize(&tm, NULL, &len);
        tm_free(&tm);
    }
    double t0 = bench_now_s();
    qin_model *m = load(model_path, buf, len, precs[0]);
    double load_s = bench_now_s() - t0;
    const qin_config *c = &m->cfg;
    const int D = c->input_dim, E = c->item_dim, L = c->max_len;

    /* Items for the history and the candidates; their vectors in each
     * model's layout (vectors_of). */
    int nitems = L + max_n;
    const int ntags = c->num_tags ? c->num_tags : 1;
    float *mm = malloc((size_t)nitems * c->mm_in * sizeof *mm);
    int32_t *tags = malloc((size_t)nitems * ntags * sizeof *tags);
    engine_item *items = malloc((size_t)nitems * sizeof *items);
    if (!mm || !tags || !items) return 1;
    uint64_t rng = 1;
    char err[1024];
    for (int i = 0; i < nitems; i++) {
        float *mi = mm + (size_t)i * c->mm_in;
        int32_t *ti = tags + (size_t)i * ntags;
        for (int k = 0; k < c->mm_in; k++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            mi[k] = (float)((double)(rng >> 11) / 9007199254740992.0) - 0.5f;
        }
        for (int k = 0; k < c->num_tags; k++) ti[k] = (int32_t)((i * 31 + k * 977) % c->tag_vocab);
        items[i] = (engine_item){1 + (i * 7919) % (c->item_vocab - 1), ti, c->num_tags, mi, 0};
    }
    iset.n = nitems;
    iset.items = items;
    t0 = bench_now_s();
    const float *const *ptr = vectors_of(m);
    double item_us = (bench_now_s() - t0) / nitems * 1e6;
    int32_t *ctx = malloc((size_t)max_n * (c->num_ctx ? c->num_ctx : 1) * sizeof *ctx);
    for (int i = 0; i < max_n * c->num_ctx; i++) ctx[i] = i % c->ctx_vocab[i % c->num_ctx];

    /* One model per precision (and per fp32 kernel), each with a scratch. */
    variant v[MAXV];
    int nv = 0;
    qin_model *pm[DENSE_PRECISION_COUNT] = {0};
    for (int k = 0; k < np; k++) pm[k] = k == 0 ? m : load(model_path, buf, len, precs[k]);
    /* The QNN layers on each kernel, fp32 and int8: ours (the packed
     * AVX-512 fp32 kernel, the AVX512_VNNI int8 kernel) and oneDNN's. */
    enum { NKERN = 4 };
    qin_model *kern[NKERN] = {NULL, NULL, NULL, NULL};
    const char *kname[NKERN] = {"fp32 packed kernel", "fp32 oneDNN", "int8 VNNI kernel",
                                "int8 oneDNN"};
    const dense_backend kb[NKERN] = {DENSE_BACKEND_PACKED, DENSE_BACKEND_ONEDNN,
                                     DENSE_BACKEND_PACKED, DENSE_BACKEND_ONEDNN};
    const dense_precision kp[NKERN] = {DENSE_FP32, DENSE_FP32, DENSE_INT8, DENSE_INT8};
    for (int k = 0; all && k < NKERN; k++) {
        if (kb[k] == DENSE_BACKEND_PACKED &&
            (kp[k] == DENSE_FP32 ? !gemm_packed_supported(D) : !dense_vnni_supported(D, D)))
            continue;
        kern[k] = load(model_path, buf, len, DENSE_FP32);
        dense_params dp = dense_default_params();
        dp.backend = kb[k];
        dp.precision = kp[k];
        if (qin_model_prepare(kern[k], &dp, err, sizeof err) < 0) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
    }
    /* Each precision whose vectors carry the history in bf16, again with
     * fp32 vectors (the request converting them). */
    qin_model *f32vec[DENSE_PRECISION_COUNT] = {0};
    for (int k = 0; k < np; k++)
        if (pm[k]->vec_bf16) {
            f32vec[k] = load(model_path, buf, len, precs[k]);
            qin_model_vec_bf16(f32vec[k], 0);
        }
    qin_model *unsplit[2] = {NULL, NULL};
    const dense_precision unsplit_prec[2] = {DENSE_FP32, DENSE_INT8};
    if (all)
        for (int k = 0; k < 2; k++) {
            unsplit[k] = load(model_path, buf, len, unsplit_prec[k]);
            qin_model_fold_first(unsplit[k], 0);
        }
    free(buf);

    printf("QIN forward pass, %s (d=%d, E=%d, D=%d, %d layers, R=%d), history %d, 1 thread\n",
           model_path ? model_path : "MicroLens configuration, random weights", c->embedding_dim,
           E, D, c->num_layers, c->num_row, L);
    printf("OpenBLAS %s, core %s (attention, head); model load %.2f s; item vectors %.1f "
           "us/item (%d at once, %zu floats each)\n", openblas_get_config(),
           openblas_get_corename(), load_s, item_us, nitems, qin_item_vec_floats(m));
    for (int k = 0; k < np; k++) printf("QNN %s\n", qin_model_describe(pm[k]));

    float *prob = malloc((size_t)max_n * sizeof *prob);
    float *x0 = linear_falloc((size_t)max_n * qin_ldx(c));
    for (int k = 0; k < nn; k++) {
        int n = ns[k];
        if (n < 1 || n > max_n) continue;
        nv = 0;
        for (int p = 0; p < np; p++) {
            variant *a = &v[nv++], *b = &v[nv++];
            memset(a, 0, sizeof *a);
            memset(b, 0, sizeof *b);
            snprintf(a->name, sizeof a->name, "%s", dense_precision_name(precs[p]));
            a->k = FORWARD;
            a->m = b->m = pm[p];
            b->k = QNN;
            snprintf(b->name, sizeof b->name, "%s", dense_precision_name(precs[p]));
        }
        for (int q = 0; q < 2; q++) {
            if (!unsplit[q]) continue;
            variant *a = &v[nv++];
            memset(a, 0, sizeof *a);
            snprintf(a->name, sizeof a->name, "%s unsplit", dense_precision_name(unsplit_prec[q]));
            a->k = FORWARD;
            a->m = unsplit[q];
        }
        for (int p = 0; p < np; p++) {
            if (!f32vec[p]) continue;
            variant *a = &v[nv++];
            memset(a, 0, sizeof *a);
            snprintf(a->name, sizeof a->name, "%s f32vec", dense_precision_name(precs[p]));
            a->k = FORWARD;
            a->m = f32vec[p];
        }
        for (int q = 0; q < NKERN; q++) {
            if (!kern[q]) continue;
            variant *a = &v[nv++];
            memset(a, 0, sizeof *a);
            snprintf(a->name, sizeof a->name, "%s", kname[q]);
            a->k = QNN;
            a->m = kern[q];
        }
        if (all && !m->vec_bf16) { /* reads the fp32 layout's A e, B e */
            for (int q = 0; q < 2; q++) {
                variant *a = &v[nv++];
                memset(a, 0, sizeof *a);
                snprintf(a->name, sizeof a->name, "%s", q ? "oneDNN sgemm" : "OpenBLAS");
                a->k = q ? ATTN_DNNL : ATTN_BLAS;
            }
            static const char *yn[3] = {"f32", "bf16", "u8s8"};
            dnnl_data_type_t st[3] = {dnnl_f32, dnnl_bf16, dnnl_u8},
                             wt[3] = {dnnl_f32, dnnl_bf16, dnnl_s8},
                             dt[3] = {dnnl_f32, dnnl_f32, dnnl_s32};
            for (int q = 0; q < 3; q++) {
                variant *a = &v[nv++];
                memset(a, 0, sizeof *a);
                snprintf(a->name, sizeof a->name, "%s", yn[q]);
                a->k = YARD;
                yard_init(&a->y, yn[q], n, D, c->num_layers, st[q], wt[q], dt[q]);
            }
        }
        int cap = 100000;
        for (int i = 0; i < nv; i++) {
            if ((v[i].k == FORWARD || v[i].k == QNN) && qin_scratch_init(v[i].m, n, &v[i].s) < 0)
                return 1;
            v[i].t = malloc((size_t)cap * sizeof(double));
            v[i].tc = malloc((size_t)cap * sizeof(double));
            v[i].nt = 0;
        }
        for (int i = 0; i < nv; i++)
            if (v[i].k == FORWARD) {
                const float *const *vp = vectors_of(v[i].m);
                v[i].req = (qin_request){vp, L, vp + L, ctx, n, NULL};
            }
        /* The attention's operands: the candidates' rows t, the history's
         * A h and B h, weights s (n x L), pool (n x E). */
        float *at = linear_falloc((size_t)n * E), *ah = linear_falloc((size_t)L * E),
              *bh = linear_falloc((size_t)L * E), *as = linear_falloc((size_t)n * L),
              *ap = linear_falloc((size_t)n * E);
        for (int i = 0; i < n; i++) memcpy(at + (size_t)i * E, ptr[L + i], (size_t)E * sizeof *at);
        for (int j = 0; j < L && !m->vec_bf16; j++) {
            memcpy(ah + (size_t)j * E, qin_vec_a(m, ptr[j]), (size_t)E * sizeof *ah);
            memcpy(bh + (size_t)j * E, qin_vec_b(m, ptr[j]), (size_t)E * sizeof *bh);
        }
        /* A QNN input of the usual magnitude, to time the layers alone. */
        for (size_t i = 0; i < (size_t)n * qin_ldx(c); i++)
            x0[i] = (float)((i * 2654435761u) % 2000) * 0.001f - 1.0f;
        for (int w = 0; w < 2; w++)
            for (int i = 0; i < nv; i++) {
                if (v[i].k == FORWARD) qin_forward(v[i].m, v[i].s, &v[i].req, prob, NULL, 0);
                if (v[i].k == YARD) yard_run(&v[i].y);
            }
        double end = bench_now_s() + seconds;
        int rounds = 0;
        while ((bench_now_s() < end || rounds < 10) && rounds < cap) {
            for (int j = 0; j < nv; j++) {
                variant *a = &v[(j + rounds) % nv];
                if (a->k == QNN) memcpy(a->s->x, x0, (size_t)n * qin_ldx(c) * sizeof *x0);
                double a0 = bench_now_s(), c0 = bench_cpu_s();
                if (a->k == FORWARD) {
                    if (qin_forward(a->m, a->s, &a->req, prob, err, sizeof err) < 0) {
                        fprintf(stderr, "forward: %s\n", err);
                        return 1;
                    }
                } else if (a->k == QNN) {
                    for (int l = 0; l < c->num_layers; l++)
                        qin_qnn_layer(a->m, a->s->dws, l, n, a->s->x, a->s->y);
                } else if (a->k == ATTN_BLAS) {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, L, E, 1.0f, at, E, ah,
                                E, 0.0f, as, L);
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, E, L, 1.0f, as, L,
                                bh, E, 1.0f, ap, E);
                } else if (a->k == ATTN_DNNL) {
                    linear_gemm(n, L, E, at, E, ah, E, 1, 0.0f, as, L);
                    linear_gemm(n, E, L, as, L, bh, E, 0, 1.0f, ap, E);
                } else {
                    yard_run(&a->y);
                }
                a->t[a->nt] = bench_now_s() - a0;
                a->tc[a->nt++] = bench_cpu_s() - c0;
            }
            rounds++;
        }
        double qnn_flops = 2.0 * c->num_layers * n * (double)D * D;
        double flops = qnn_flops + 2.0 * 2 * n * (double)L * E + 2.0 * n * D;
        double med[MAXV], p99[MAXV], wall[MAXV];
        for (int i = 0; i < nv; i++) {
            med[i] = bench_quantile(v[i].tc, v[i].nt, 0.5);
            wall[i] = bench_quantile(v[i].t, v[i].nt, 0.5);
            p99[i] = bench_quantile(v[i].t, v[i].nt, 0.99);
        }
        double fp32_yard = 0;
        for (int i = 0; i < nv; i++)
            if (v[i].k == YARD && !strcmp(v[i].name, "f32")) fp32_yard = med[i];
        printf("\nN = %d: %d interleaved rounds; medians of CPU time (wall-clock median and "
               "p99 beside)\n", n, rounds);
        printf("  %-6s %11s %9s %9s %9s %9s %10s %9s\n", "prec", "forward_us", "wall_us",
               "wall_p99", "us/cand", "GFLOP/s", "qnn_us", "qnn_GF/s");
        for (int i = 0; i < nv; i++) {
            if (v[i].k != FORWARD || v[i].m == unsplit[0] || v[i].m == unsplit[1] ||
                strstr(v[i].name, "f32vec"))
                continue;
            double q = med[i + 1];
            printf("  %-6s %11.1f %9.1f %9.1f %9.2f %9.1f %10.1f %9.1f\n", v[i].name,
                   med[i] * 1e6, wall[i] * 1e6, p99[i] * 1e6, med[i] * 1e6 / n,
                   flops / med[i] * 1e-9, q * 1e6, qnn_flops / q * 1e-9);
            printf("forward n=%d precision=%s median_ms=%.4f wall_ms=%.4f p99_ms=%.4f "
                   "qnn_ms=%.4f\n", n, v[i].name, med[i] * 1e3, wall[i] * 1e3, p99[i] * 1e3,
                   q * 1e3);
        }
        for (int i = 0; i < nv; i++)
            if (v[i].k == FORWARD && (v[i].m == unsplit[0] || v[i].m == unsplit[1]))
                for (int j = 0; j < nv; j++)
                    if (v[j].k == FORWARD && v[j].m == pm[v[i].m == unsplit[0] ? 0 : 2])
                        printf("  %-12s forward %9.1f us: the first layer's split saves %.0f%%\n",
                               v[i].name, med[i] * 1e6, 100.0 * (1 - med[j] / med[i]));
        for (int i = 0; i < nv; i++)
            for (int p = 0; v[i].k == FORWARD && p < np; p++)
                if (f32vec[p] && v[i].m == f32vec[p])
                    for (int j = 0; j < nv; j++)
                        if (v[j].k == FORWARD && v[j].m == pm[p])
                            printf("  %-12s forward %9.1f us (fp32 item vectors): the bf16 "
                                   "history in the vectors saves %.1f%%\n", v[i].name,
                                   med[i] * 1e6, 100.0 * (1 - med[j] / med[i]));
        for (int i = 0; i < nv; i++) {
            for (int q = 0; q < NKERN; q++)
                if (v[i].k == QNN && v[i].m && v[i].m == kern[q])
                    printf("  QNN layers on the %-19s %9.1f us %6.1f G(FL)OP/s\n", v[i].name,
                           med[i] * 1e6, qnn_flops / med[i] * 1e-9);
        }
        for (int i = 0; i < nv; i++)
            if (v[i].k == ATTN_BLAS || v[i].k == ATTN_DNNL)
                printf("  attention's two products (%d x %d x %d, %d x %d x %d) on %-12s %8.1f us\n",
                       n, L, E, n, E, L, v[i].name, med[i] * 1e6);
        for (int i = 0; i < nv; i++)
            if (v[i].k == YARD)
                printf("  oneDNN matmul alone, %-5s %d x %d x %d x %d layers: %9.1f us %6.1f "
                       "G(FL)OP/s\n", v[i].name, n, D, D, c->num_layers, med[i] * 1e6,
                       qnn_flops / med[i] * 1e-9);
        if (fp32_yard > 0)
            for (int i = 0; i < nv; i++)
                if (v[i].k == QNN && v[i].m == pm[0] && precs[0] == DENSE_FP32)
                    printf("  fp32 QNN layers at %.0f%% of the same-run oneDNN f32 matmul rate "
                           "(target >= 90%%)\n", 100.0 * fp32_yard / med[i]);
        free(at); free(ah); free(bh); free(as); free(ap);
        for (int i = 0; i < nv; i++) {
            if (v[i].k == YARD) yard_free(&v[i].y);
            else qin_scratch_free(v[i].s);
            free(v[i].t);
            free(v[i].tc);
        }
    }
    printf("\nflops count the folded model: %d layers x 2 N D^2 + attention 4 N L E + head 2 N D\n",
           c->num_layers);
    for (int k = 0; k < nloaded; k++) engine_model_free(loaded[k]);
    free(x0); free(prob); free(ctx); free(mm); free(tags); free(items);
    for (int k = 0; k < iset.nm; k++) {
        free(iset.vecs[k]);
        free(iset.ptr[k]);
    }
    return 0;
}
