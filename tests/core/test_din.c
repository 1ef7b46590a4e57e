/* test_din.c - DIN's forward pass (core/din.c) on models built here, with
 * widths chosen to land on every edge of its passes over the pair rows
 * (item width 17, hidden layers of 40, 24, 36, 48, 33, 20 and 17 units:
 * whole 32-float steps, a 16-float step, masked tails), ReLU and Dice, batch
 * norm and softmax on and off, one and two attention hidden layers, a DNN
 * with and without hidden layers:
 *   - against a naive double-precision reference of the model as trained
 *     (written here from docs/MODEL_SPEC.md: the first attention layer on
 *     [t | h | t - h | t * h] for every pair, no fold), from the engine's own
 *     item vectors (their part e; test_golden.c checks those against the
 *     PyTorch reference), fp32 within 1e-5, and the explanation's weights;
 *   - the AVX-512 passes (the DIN_AVX512 path of core/base/cpu.h) against
 *     the portable ones in every precision, on histories that cut the pair
 *     rows into blocks of several sizes;
 *   - the MicroLens-shape golden model likewise (at 64 behaviours, the block
 *     size the service runs). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/cpu.h"
#include "core/engine.h"

#define P "embedding_layer.embedding_layer."
#define MAXT 64
#define MAXL 4

/* --- a DIN model built in memory ------------------------------------------- */

typedef struct din_spec {
    int d, mm_in, mm_out, item_vocab, tag_vocab, num_tags, max_len;
    int na, att[MAXL];          /* attention hidden units */
    int nd, dnn[MAXL];          /* DNN hidden units (0..) */
    int att_dice, dnn_dice, bn, softmax;
} din_spec;

typedef struct tensor {
    char name[96];
    int d0, d1;                 /* d1 0: one dimension */
    float *v;
} tensor;

typedef struct din_file {
    din_spec sp;
    tensor t[MAXT];
    int nt;
    uint64_t rng;
} din_file;

static const int ctx_vocab[2] = {4, 6};

static double uni(din_file *f, double lo, double hi) {
    f->rng = f->rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return lo + (hi - lo) * (double)(f->rng >> 11) / 9007199254740992.0;
}

static float *add(din_file *f, const char *name, int d0, int d1, double lo, double hi) {
    tensor *t = &f->t[f->nt++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->d0 = d0;
    t->d1 = d1;
    size_t n = (size_t)d0 * (d1 ? d1 : 1);
    t->v = malloc(n * sizeof *t->v);
    for (size_t i = 0; i < n; i++) t->v[i] = (float)uni(f, lo, hi);
    return t->v;
}

static const float *get(const din_file *f, const char *fmt, ...) {
    char name[96];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    for (int i = 0; i < f->nt; i++)
        if (!strcmp(f->t[i].name, name)) return f->t[i].v;
    fail_msg("no tensor %s", name);
    return NULL;
}

static int item_width(const din_spec *s) { return 2 * s->d + s->mm_out; }

/* Dice after layer k of a net: alpha and its batch norm's statistics. */
static void add_dice(din_file *f, const char *net, int k, int units) {
    char n[96];
    snprintf(n, sizeof n, "%s.%d.dice.alpha", net, k);
    add(f, n, units, 0, -0.5, 1.0);
    snprintf(n, sizeof n, "%s.%d.dice.running_mean", net, k);
    add(f, n, units, 0, -0.3, 0.3);
    snprintf(n, sizeof n, "%s.%d.dice.running_var", net, k);
    add(f, n, units, 0, 0.2, 1.5);
}

static void din_make(din_file *f, const din_spec *sp, uint64_t seed) {
    memset(f, 0, sizeof *f);
    f->sp = *sp;
    f->rng = seed;
    const int d = sp->d, E = item_width(sp);
    char n[96];
    static const char *const ctx_name[2] = {"a", "b"};
    for (int c = 0; c < 2; c++) {
        snprintf(n, sizeof n, P "embedding_layers.%s.weight", ctx_name[c]);
        float *w = add(f, n, ctx_vocab[c], d, -0.5, 0.5);
        memset(w, 0, (size_t)d * sizeof *w); /* padding row */
    }
    float *it = add(f, P "embedding_layers.item_id.weight", sp->item_vocab, d, -0.5, 0.5);
    memset(it, 0, (size_t)d * sizeof *it);
    float *tg = add(f, P "embedding_layers.item_tags.weight", sp->tag_vocab, d, -0.5, 0.5);
    memset(tg, 0, (size_t)d * sizeof *tg);
    add(f, P "feature_encoders.item_emb_d128.weight", sp->mm_out, sp->mm_in, -0.3, 0.3);
    /* Attention: 4E -> att[0] -> ... -> 1. */
    int in = 4 * E;
    for (int k = 0; k <= sp->na; k++) {
        const int out = k < sp->na ? sp->att[k] : 1;
        const double r = 1.0 / sqrt((double)in);
        snprintf(n, sizeof n, "attention.%d.weight", k);
        add(f, n, out, in, -2 * r, 2 * r);
        snprintf(n, sizeof n, "attention.%d.bias", k);
        add(f, n, out, 0, -0.2, 0.2);
        if (k < sp->na && sp->att_dice) add_dice(f, "attention", k, out);
        in = out;
    }
    /* DNN: [ctx | t | u] -> dnn[0] -> ... -> 1. */
    in = 2 * d + 2 * E;
    for (int k = 0; k <= sp->nd; k++) {
        const int out = k < sp->nd ? sp->dnn[k] : 1;
        const double r = 1.0 / sqrt((double)in);
        snprintf(n, sizeof n, "dnn.%d.weight", k);
        add(f, n, out, in, -2 * r, 2 * r);
        snprintf(n, sizeof n, "dnn.%d.bias", k);
        add(f, n, out, 0, -0.2, 0.2);
        if (k < sp->nd && sp->bn) {
            static const char *const bn[4] = {"weight", "bias", "running_mean", "running_var"};
            static const double lo[4] = {0.5, -0.3, -0.3, 0.3}, hi[4] = {1.5, 0.3, 0.3, 1.5};
            for (int b = 0; b < 4; b++) {
                snprintf(n, sizeof n, "dnn.%d.bn.%s", k, bn[b]);
                add(f, n, out, 0, lo[b], hi[b]);
            }
        }
        if (k < sp->nd && sp->dnn_dice) add_dice(f, "dnn", k, out);
        in = out;
    }
}

static void din_drop(din_file *f) {
    for (int i = 0; i < f->nt; i++) free(f->t[i].v);
}

static void units_text(char *buf, size_t cap, const int *u, int n) {
    buf[0] = '\0';
    for (int k = 0; k < n; k++)
        snprintf(buf + strlen(buf), cap - strlen(buf), "%s%d", k ? "," : "", u[k]);
}

/* The model as a safetensors file in memory (malloc'd, *len bytes). */
static unsigned char *din_serialize(const din_file *f, size_t *len) {
    const din_spec *s = &f->sp;
    char au[64], du[64], *h = malloc(1 << 16);
    units_text(au, sizeof au, s->att, s->na);
    units_text(du, sizeof du, s->dnn, s->nd);
    int w = snprintf(
        h, 1 << 16,
        "{\"__metadata__\":{\"format\":\"ctr-model-2\",\"arch\":\"din\",\"item_fields\":"
        "\"item_id,item_tags,item_emb_d128\",\"name\":\"din-test\",\"version\":\"t1\","
        "\"embedding_dim\":\"%d\",\"max_len\":\"%d\",\"item_vocab\":\"%d\",\"tag_vocab\":\"%d\","
        "\"num_tags\":\"%d\",\"mm_in\":\"%d\",\"mm_out\":\"%d\",\"context_fields\":\"a,b\","
        "\"context_vocab\":\"%d,%d\",\"attention_units\":\"%s\",\"attention_activation\":\"%s\","
        "\"dnn_units\":\"%s\",\"dnn_activation\":\"%s\",\"dnn_batch_norm\":\"%d\","
        "\"softmax\":\"%d\"}",
        s->d, s->max_len, s->item_vocab, s->tag_vocab, s->num_tags, s->mm_in, s->mm_out,
        ctx_vocab[0], ctx_vocab[1], au, s->att_dice ? "dice" : "relu", du,
        s->dnn_dice ? "dice" : "relu", s->bn, s->softmax);
    size_t off = 0;
    for (int i = 0; i < f->nt; i++) {
        const tensor *t = &f->t[i];
        size_t bytes = (size_t)t->d0 * (t->d1 ? t->d1 : 1) * 4;
        if (t->d1)
            w += snprintf(h + w, (1 << 16) - w,
                          ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[%zu,%zu]}",
                          t->name, t->d0, t->d1, off, off + bytes);
        else
            w += snprintf(h + w, (1 << 16) - w,
                          ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[%zu,%zu]}",
                          t->name, t->d0, off, off + bytes);
        off += bytes;
    }
    h[w++] = '}';
    while (w % 8) h[w++] = ' ';
    unsigned char *buf = calloc(1, 8 + (size_t)w + off);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)w >> (8 * i));
    memcpy(buf + 8, h, (size_t)w);
    unsigned char *p = buf + 8 + w;
    for (int i = 0; i < f->nt; i++) {
        size_t bytes = (size_t)f->t[i].d0 * (f->t[i].d1 ? f->t[i].d1 : 1) * 4;
        memcpy(p, f->t[i].v, bytes);
        p += bytes;
    }
    free(h);
    *len = 8 + (size_t)w + off;
    return buf;
}

/* --- the naive reference: the model as trained, in double ------------------ */

/* y = W x + b for a Linear "net.k" (out x in). */
static void ref_linear(const din_file *f, const char *net, int k, int in, int out,
                       const double *x, double *y) {
    const float *w = get(f, "%s.%d.weight", net, k), *b = get(f, "%s.%d.bias", net, k);
    for (int o = 0; o < out; o++) {
        double a = b[o];
        for (int i = 0; i < in; i++) a += (double)w[(size_t)o * in + i] * x[i];
        y[o] = a;
    }
}

/* Dice after "net.k": p = sigmoid((x - mean) / sqrt(var + 1e-9)),
 * y = p x + alpha (1 - p) x. */
static void ref_dice(const din_file *f, const char *net, int k, int units, double *x) {
    const float *al = get(f, "%s.%d.dice.alpha", net, k),
                *mu = get(f, "%s.%d.dice.running_mean", net, k),
                *var = get(f, "%s.%d.dice.running_var", net, k);
    for (int o = 0; o < units; o++) {
        double p = 1.0 / (1.0 + exp(-(x[o] - mu[o]) / sqrt((double)var[o] + 1e-9)));
        x[o] = p * x[o] + al[o] * (1.0 - p) * x[o];
    }
}

/* Probability of candidate t (item part e, E floats) with context ctx (2
 * values) and the nh behaviours h (NULL entries: padding, masked), into
 * *p, and the weights s_j after mask and softmax into s (max_len). */
static void ref_forward(const din_file *f, const float *t, const int32_t *ctx,
                        const float *const *h, int nh, double *p, double *s) {
    const din_spec *sp = &f->sp;
    const int E = item_width(sp), d = sp->d;
    double x[4 * 64], a[128], b[128];
    const int first = nh > sp->max_len ? nh - sp->max_len : 0, L = nh - first;
    int real = 0;
    for (int j = 0; j < L; j++) {
        const float *hj = h[first + j];
        if (!hj) {
            s[j] = sp->softmax ? -1e9 : 0.0;
            continue;
        }
        real++;
        for (int k = 0; k < E; k++) {
            x[k] = t[k];
            x[E + k] = hj[k];
            x[2 * E + k] = (double)t[k] - hj[k];
            x[3 * E + k] = (double)t[k] * hj[k];
        }
        int in = 4 * E;
        double *cur = x;
        for (int k = 0; k <= sp->na; k++) {
            const int out = k < sp->na ? sp->att[k] : 1;
            double *y = cur == a ? b : a;
            ref_linear(f, "attention", k, in, out, cur, y);
            if (k < sp->na) {
                if (sp->att_dice) ref_dice(f, "attention", k, out, y);
                else
                    for (int o = 0; o < out; o++) y[o] = y[o] > 0 ? y[o] : 0;
            }
            cur = y;
            in = out;
        }
        s[j] = cur[0];
    }
    if (sp->softmax && real > 0) {
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < L; j++) mx = s[j] > mx ? s[j] : mx;
        for (int j = 0; j < L; j++) sum += (s[j] = exp(s[j] - mx));
        for (int j = 0; j < L; j++) s[j] /= sum;
    }
    /* u = sum s_j h_j over the real behaviours (no behaviour: 0). */
    double in0[256];
    static const char *const ctx_name[2] = {"a", "b"};
    for (int c = 0; c < 2; c++) {
        const float *emb = get(f, P "embedding_layers.%s.weight", ctx_name[c]);
        for (int k = 0; k < d; k++) in0[c * d + k] = emb[(size_t)ctx[c] * d + k];
    }
    for (int k = 0; k < E; k++) {
        in0[2 * d + k] = t[k];
        double u = 0;
        for (int j = 0; j < L; j++)
            if (h[first + j]) u += s[j] * h[first + j][k];
        in0[2 * d + E + k] = real ? u : 0.0;
    }
    int in = 2 * d + 2 * E;
    double *cur = in0;
    for (int k = 0; k <= sp->nd; k++) {
        const int out = k < sp->nd ? sp->dnn[k] : 1;
        double *y = cur == a ? b : a;
        ref_linear(f, "dnn", k, in, out, cur, y);
        if (k < sp->nd) {
            if (sp->bn) {
                const float *g = get(f, "dnn.%d.bn.weight", k), *be = get(f, "dnn.%d.bn.bias", k),
                            *mu = get(f, "dnn.%d.bn.running_mean", k),
                            *var = get(f, "dnn.%d.bn.running_var", k);
                for (int o = 0; o < out; o++)
                    y[o] = (y[o] - mu[o]) / sqrt((double)var[o] + 1e-5) * g[o] + be[o];
            }
            if (sp->dnn_dice) ref_dice(f, "dnn", k, out, y);
            else
                for (int o = 0; o < out; o++) y[o] = y[o] > 0 ? y[o] : 0;
        }
        cur = y;
        in = out;
    }
    *p = 1.0 / (1.0 + exp(-cur[0]));
}

/* --- the workload ------------------------------------------------------------ */

enum { NC = 23, NI = 120 };

/* NI items with random tags and embeddings, their vectors from m, and
 * NC candidates' contexts. */
typedef struct items {
    engine_item it[NI];
    int32_t tags[NI][4];
    float mm[NI][16];
    float *v;
    const float *ptr[NI];
    int32_t ctx[NC * 2];
} items;

static void items_make(items *w, engine_model *m, uint64_t seed) {
    const engine_schema *sc = engine_model_schema(m);
    assert_true(sc->num_tags <= 4 && sc->mm_dim <= 16);
    for (int i = 0; i < NI; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        for (int k = 0; k < sc->num_tags; k++)
            w->tags[i][k] = (int32_t)((seed >> (20 + 5 * k)) % (uint64_t)sc->tag_vocab);
        for (int k = 0; k < sc->mm_dim; k++) w->mm[i][k] = (float)((i * 37 + k * 11) % 29) / 14.5f - 1.0f;
        w->it[i] = (engine_item){1 + (i * 7) % (sc->item_vocab - 1), w->tags[i], sc->num_tags,
                                 w->mm[i], 0};
    }
    for (int i = 0; i < NC * 2; i++) w->ctx[i] = (int32_t)((i * 5 + 1) % ctx_vocab[i % 2]);
    char err[256];
    w->v = engine_item_vecs_alloc(m, NI);
    if (engine_items_compute(m, NI, w->it, w->v, NULL, err, sizeof err) < 0) fail_msg("%s", err);
    for (int i = 0; i < NI; i++) w->ptr[i] = w->v + (size_t)i * engine_item_vec_floats(m);
}

/* History of nh behaviours from item NC on, every fifth one padding. */
static void history(const items *w, int nh, const float **h) {
    for (int j = 0; j < nh; j++) h[j] = j % 5 == 3 ? NULL : w->ptr[NC + j];
}

static engine_model *load_buf(const unsigned char *buf, size_t len, dense_precision p) {
    engine_params ep = engine_default_params();
    ep.precision = p;
    engine_model *m;
    char err[512];
    if (engine_model_load_buffer_with(buf, len, &ep, &m, err, sizeof err) < 0)
        fail_msg("load %s: %s", dense_precision_name(p), err);
    return m;
}

/* The configurations: item width 17 (5 + 5 + 7) everywhere. */
static const din_spec specs[] = {
    /* ReLU, batch norm, two attention layers: 40 (32 + 8) and 24 (16 + 8);
     * DNN 48 (32 + 16) and 20. */
    {5, 9, 7, 60, 12, 3, 10, 2, {40, 24}, 2, {48, 20}, 0, 0, 1, 0},
    /* Dice in both nets, softmax, one attention layer of 36 (the output
     * unit in layer 0's pass), DNN 33 and 17 (masked tails). */
    {5, 9, 7, 60, 12, 3, 10, 1, {36}, 2, {33, 17}, 1, 1, 0, 1},
    /* ReLU, one attention layer of 64, no DNN hidden layer at all. */
    {5, 9, 7, 60, 12, 3, 70, 1, {64}, 0, {0}, 0, 0, 0, 0},
};
static const int hist_lens[] = {0, 1, 4, 9, 10, 14, 70, 75};

/* Configuration c in fp32 against the reference, with the explanation,
 * on the passes that avx chooses. */
static void reference_one(size_t c, int avx) {
    cpu_path_set(CPU_PATH_DIN_AVX512, avx);
    din_file f;
    din_make(&f, &specs[c], 1234 + c);
    size_t len;
    unsigned char *buf = din_serialize(&f, &len);
    engine_model *m = load_buf(buf, len, DENSE_FP32);
    items w;
    items_make(&w, m, 99 + c);
    engine_scratch *s;
    assert_int_equal(engine_scratch_init(m, NC, &s), CTR_OK);
    const int E = item_width(&specs[c]), L = specs[c].max_len;
    double maxd = 0, maxw = 0;
    for (size_t q = 0; q < sizeof hist_lens / sizeof hist_lens[0]; q++) {
        const int nh = hist_lens[q];
        const float *h[80];
        history(&w, nh, h);
        float p[NC], wt[NC * 3];
        int32_t pos[NC * 3];
        engine_explain ex = {3, pos, wt};
        engine_request r = {h, nh, w.ptr, w.ctx, NC, &ex, NULL};
        char err[256];
        if (engine_forward(m, s, &r, p, err, sizeof err) < 0) fail_msg("%s", err);
        for (int i = 0; i < NC; i++) {
            double want, sw[80];
            ref_forward(&f, w.ptr[i], w.ctx + 2 * i, h, nh, &want, sw);
            const double dp = fabs(p[i] - want);
            if (dp > 1e-5)
                fail_msg("config %zu, history %d, candidate %d: %.9g, reference %.9g", c, nh,
                         i, (double)p[i], want);
            maxd = dp > maxd ? dp : maxd;
            /* Each listed weight is the reference's at its position. */
            const int first = nh > L ? nh - L : 0;
            for (int k = 0; k < 3; k++) {
                const int at = pos[i * 3 + k];
                if (at < 0) continue;
                assert_true(at >= first && at < nh && h[at] != NULL);
                const double dw = fabs(wt[i * 3 + k] - sw[at - first]);
                if (dw > 1e-5 * (1 + fabs(sw[at - first])))
                    fail_msg("config %zu, history %d, candidate %d: weight at %d %.9g, "
                             "reference %.9g", c, nh, i, at, (double)wt[i * 3 + k],
                             sw[at - first]);
                maxw = dw > maxw ? dw : maxw;
            }
        }
    }
    printf("din config %zu (E %d), %s passes: max |p - reference| %.3g, max weight diff "
           "%.3g\n", c, E, avx ? "AVX-512" : "portable", maxd, maxw);
    engine_scratch_free(s);
    free(w.v);
    engine_model_free(m);
    free(buf);
    din_drop(&f);
    cpu_path_set(CPU_PATH_DIN_AVX512, 1);
}

/* On the portable passes and, where the CPU has them, the AVX-512 ones. */
static void test_reference(void **state) {
    (void)state;
    for (int avx = 0; avx <= cpu_has(CPU_AVX512F); avx++)
        for (size_t c = 0; c < sizeof specs / sizeof specs[0]; c++) reference_one(c, avx);
}

/* Scores of m on the history lengths with the DIN_AVX512 path on and off:
 * the largest difference. */
static double paths_differ(engine_model *m, const items *w, const int *lens, int nlens) {
    engine_scratch *s;
    assert_int_equal(engine_scratch_init(m, NC, &s), CTR_OK);
    double maxd = 0;
    for (int q = 0; q < nlens; q++) {
        const float *h[80];
        history(w, lens[q], h);
        float p[2][NC];
        for (int on = 0; on < 2; on++) {
            cpu_path_set(CPU_PATH_DIN_AVX512, on);
            engine_request r = {h, lens[q], w->ptr, w->ctx, NC, NULL, NULL};
            char err[256];
            if (engine_forward(m, s, &r, p[on], err, sizeof err) < 0) fail_msg("%s", err);
        }
        for (int i = 0; i < NC; i++) {
            const double d = fabs((double)p[0][i] - p[1][i]);
            maxd = d > maxd ? d : maxd;
        }
    }
    cpu_path_set(CPU_PATH_DIN_AVX512, 1);
    engine_scratch_free(s);
    return maxd;
}

/* Only the order of the passes' float sums differs: fp32 to rounding; the
 * other precisions round the next layer's input, so a sum that differs
 * in its last bit can move one input a rounding step. */
static double path_bound(dense_precision p) {
    return p == DENSE_FP32 ? 1e-5 : 1e-3;
}

static void test_avx512_paths(void **state) {
    (void)state;
    if (!cpu_has(CPU_AVX512F)) {
        printf("no AVX-512F on this CPU: only the portable passes run (checked by "
               "test_reference)\n");
        return;
    }
    for (size_t c = 0; c < sizeof specs / sizeof specs[0]; c++) {
        din_file f;
        din_make(&f, &specs[c], 777 + c);
        size_t len;
        unsigned char *buf = din_serialize(&f, &len);
        for (int pr = 0; pr < DENSE_PRECISION_COUNT; pr++) {
            engine_model *m = load_buf(buf, len, (dense_precision)pr);
            items w;
            items_make(&w, m, 5 + c);
            const double d = paths_differ(m, &w, hist_lens,
                                          (int)(sizeof hist_lens / sizeof hist_lens[0]));
            printf("din config %zu %s: AVX-512 passes vs portable, max |dp| %.3g\n", c,
                   dense_precision_name((dense_precision)pr), d);
            if (d > path_bound((dense_precision)pr))
                fail_msg("config %zu %s: %.3g", c, dense_precision_name((dense_precision)pr), d);
            free(w.v);
            engine_model_free(m);
        }
        free(buf);
        din_drop(&f);
    }
}

/* The challenge's shapes (E 256, attention 512 -> 256, DNN 1024 -> 512 ->
 * 256) from the golden file, at the history of 64 the service runs and a
 * shorter one. */
static void test_microlens_paths(void **state) {
    (void)state;
    if (!cpu_has(CPU_AVX512F)) {
        printf("no AVX-512F on this CPU: nothing to compare\n");
        return;
    }
    const char *g = getenv("CTR_GOLDEN");
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/din-microlens/model.safetensors", g && *g ? g : "build/golden");
    static const int lens[] = {64, 37};
    for (int pr = 0; pr < DENSE_PRECISION_COUNT; pr++) {
        engine_params ep = engine_default_params();
        ep.precision = (dense_precision)pr;
        engine_model *m;
        if (engine_model_load_with(path, &ep, &m, err, sizeof err) < 0) fail_msg("%s", err);
        const engine_schema *sc = engine_model_schema(m);
        /* Items within the file's vocabularies; its 128-wide multimodal
         * input left zero (items_make holds 16). */
        items *w = calloc(1, sizeof *w);
        for (int i = 0; i < NI; i++) {
            for (int k = 0; k < 4 && k < sc->num_tags; k++)
                w->tags[i][k] = (int32_t)((i * 13 + k * 101) % sc->tag_vocab);
            w->it[i] = (engine_item){1 + (i * 761) % (sc->item_vocab - 1), w->tags[i],
                                     sc->num_tags < 4 ? sc->num_tags : 4, NULL, 0};
        }
        for (int i = 0; i < NC * 2; i++) w->ctx[i] = (int32_t)(i % 5);
        w->v = engine_item_vecs_alloc(m, NI);
        if (engine_items_compute(m, NI, w->it, w->v, NULL, err, sizeof err) < 0)
            fail_msg("%s", err);
        for (int i = 0; i < NI; i++) w->ptr[i] = w->v + (size_t)i * engine_item_vec_floats(m);
        const double d = paths_differ(m, w, lens, 2);
        printf("din-microlens %s: AVX-512 passes vs portable, max |dp| %.3g\n",
               dense_precision_name((dense_precision)pr), d);
        if (d > path_bound((dense_precision)pr))
            fail_msg("%s: %.3g", dense_precision_name((dense_precision)pr), d);
        free(w->v);
        free(w);
        engine_model_free(m);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference),
        cmocka_unit_test(test_avx512_paths),
        cmocka_unit_test(test_microlens_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
