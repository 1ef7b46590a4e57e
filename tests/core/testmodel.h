/*
 * testmodel.h - random QIN models built in C for the core unit tests.
 *
 * A test_model holds the raw, unfolded weights (FuxiCTR names) of a small
 * configuration, so tests can (a) serialize it into a safetensors buffer,
 * optionally damaged, to exercise the loader, and (b) compute the forward
 * pass naively, in double and without any fold, as an independent check of
 * the engine.  Header-only: each test binary includes it once.
 */
#ifndef CTR_TESTMODEL_H
#define CTR_TESTMODEL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/qin_internal.h"

#define TM_P "embedding_layer.embedding_layer."
#define TM_MAX 64

typedef struct tm_tensor {
    char name[128];
    int ndim;
    int64_t shape[2];
    float *data;
    int i8;                  /* written as I8 (data holds the integers) */
} tm_tensor;

typedef struct test_model {
    qin_config cfg;
    tm_tensor t[TM_MAX];
    int nt;
    uint64_t rng;
} test_model;

/* Damage to apply when serializing (all optional). */
typedef struct tm_damage {
    const char *skip;        /* leave this tensor out */
    const char *dtype_of;    /* write this tensor as F16 (same bytes) */
    const char *shape_of;    /* write this tensor with its first dim + 1 */
    uint64_t end_extra;      /* add to the last tensor's end offset */
    const char *extra;       /* add an unexpected tensor of this name */
    const char *meta_key;    /* override one metadata value */
    const char *meta_value;
} tm_damage;

static inline float tm_uniform(test_model *tm, float lo, float hi) {
    tm->rng = tm->rng * 6364136223846793005ULL + 1442695040888963407ULL;
    double u = (double)(tm->rng >> 11) / 9007199254740992.0;
    return (float)(lo + (hi - lo) * u);
}

static inline float *tm_add(test_model *tm, const char *name, int64_t d0, int64_t d1, float lo,
                            float hi) {
    tm_tensor *t = &tm->t[tm->nt++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = d1 < 0 ? 1 : 2;
    t->shape[0] = d0;
    t->shape[1] = d1 < 0 ? 1 : d1;
    size_t n = (size_t)d0 * (size_t)(d1 < 0 ? 1 : d1);
    t->data = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) t->data[i] = tm_uniform(tm, lo, hi);
    return t->data;
}

/* An I8 tensor (int8 weights) of d0 x d1 values v. */
static inline void tm_add_i8(test_model *tm, const char *name, int64_t d0, int64_t d1,
                             const signed char *v) {
    float *p = tm_add(tm, name, d0, d1, 0.0f, 0.0f);
    for (int64_t i = 0; i < d0 * d1; i++) p[i] = (float)v[i];
    tm->t[tm->nt - 1].i8 = 1;
}

static inline float *tm_get(test_model *tm, const char *name) {
    for (int i = 0; i < tm->nt; i++)
        if (strcmp(tm->t[i].name, name) == 0) return tm->t[i].data;
    return NULL;
}

/* A small, deliberately odd-sized configuration (E = 13, D = 34). */
static inline qin_config tm_small_config(void) {
    qin_config c;
    memset(&c, 0, sizeof c);
    strcpy(c.name, "qin-test");
    strcpy(c.version, "t1");
    c.embedding_dim = 4;
    c.max_len = 5;
    c.num_layers = 2;
    c.num_row = 3;
    c.batch_norm = 1;
    c.item_vocab = 20;
    c.tag_vocab = 9;
    c.num_tags = 3;
    c.mm_in = 6;
    c.mm_out = 5;
    c.num_ctx = 2;
    strcpy(c.ctx_name[0], "likes_level");
    strcpy(c.ctx_name[1], "views_level");
    c.ctx_vocab[0] = 4;
    c.ctx_vocab[1] = 3;
    c.item_dim = 2 * c.embedding_dim + c.mm_out;
    c.attn_dim = 2 * c.item_dim;
    c.input_dim = c.num_ctx * c.embedding_dim + 2 * c.item_dim;
    return c;
}

static inline void tm_init(test_model *tm, const qin_config *c, uint64_t seed) {
    memset(tm, 0, sizeof *tm);
    tm->cfg = *c;
    tm->rng = seed * 2654435761ULL + 1;
    const int d = c->embedding_dim, E = c->item_dim, H = c->attn_dim, D = c->input_dim;
    char name[128];
    for (int f = 0; f < c->num_ctx; f++) {
        snprintf(name, sizeof name, TM_P "embedding_layers.%s.weight", c->ctx_name[f]);
        float *w = tm_add(tm, name, c->ctx_vocab[f], d, -0.5f, 0.5f);
        memset(w, 0, (size_t)d * sizeof *w); /* padding row */
    }
    float *it = tm_add(tm, TM_P "embedding_layers.item_id.weight", c->item_vocab, d, -0.5f, 0.5f);
    memset(it, 0, (size_t)d * sizeof *it);
    float *tg = tm_add(tm, TM_P "embedding_layers.item_tags.weight", c->tag_vocab, d, -0.5f, 0.5f);
    memset(tg, 0, (size_t)d * sizeof *tg);
    tm_add(tm, TM_P "feature_encoders.item_emb_d128.weight", c->mm_out, c->mm_in, -0.4f, 0.4f);
    float sa = 1.0f / sqrtf((float)E);
    tm_add(tm, "attention_layers.W_q.weight", H, E, -sa, sa);
    tm_add(tm, "attention_layers.W_k.weight", H, E, -sa, sa);
    tm_add(tm, "attention_layers.W_v.weight", H, E, -sa, sa);
    tm_add(tm, "attention_layers.W_o.weight", E, H, -sa, sa);
    float sq = 0.5f / sqrtf((float)D * c->num_row);
    for (int l = 0; l < c->num_layers; l++) {
        snprintf(name, sizeof name, "qnn.layer.%d.linear.0.weight", l);
        tm_add(tm, name, (int64_t)c->num_row * D, D, -sq, sq);
        snprintf(name, sizeof name, "qnn.layer.%d.linear.0.bias", l);
        tm_add(tm, name, (int64_t)c->num_row * D, -1, -0.2f, 0.2f);
        if (c->batch_norm) {
            snprintf(name, sizeof name, "qnn.norm.%d.weight", l);
            tm_add(tm, name, D, -1, 0.5f, 1.5f);
            snprintf(name, sizeof name, "qnn.norm.%d.bias", l);
            tm_add(tm, name, D, -1, -0.2f, 0.2f);
            snprintf(name, sizeof name, "qnn.norm.%d.running_mean", l);
            tm_add(tm, name, D, -1, -0.1f, 0.1f);
            snprintf(name, sizeof name, "qnn.norm.%d.running_var", l);
            tm_add(tm, name, D, -1, 0.5f, 2.0f);
        }
        snprintf(name, sizeof name, "qnn.activation.%d.weight", l);
        tm_add(tm, name, 1, -1, -0.3f, 0.5f);
    }
    tm_add(tm, "qnn.fc.weight", 1, D, -0.5f, 0.5f);
    tm_add(tm, "qnn.fc.bias", 1, -1, -0.2f, 0.2f);
}

static inline void tm_free(test_model *tm) {
    for (int i = 0; i < tm->nt; i++) free(tm->t[i].data);
    tm->nt = 0;
}

/* Serializes into a malloc'd safetensors buffer (*len bytes). */
static inline unsigned char *tm_serialize(const test_model *tm, const tm_damage *dmg,
                                          size_t *len) {
    static const tm_damage none;
    if (!dmg) dmg = &none;
    const qin_config *c = &tm->cfg;
    size_t cap = 1 << 16;
    char *h = malloc(cap);
    int w = 0;
    char fields[512] = "", vocabs[256] = "";
    for (int f = 0; f < c->num_ctx; f++) {
        snprintf(fields + strlen(fields), sizeof fields - strlen(fields), "%s%s", f ? "," : "",
                 c->ctx_name[f]);
        snprintf(vocabs + strlen(vocabs), sizeof vocabs - strlen(vocabs), "%s%d", f ? "," : "",
                 c->ctx_vocab[f]);
    }
    const char *keys[] = {"format", "arch", "name", "version", "embedding_dim", "max_len",
                          "num_layers", "num_row", "batch_norm", "item_vocab", "tag_vocab",
                          "num_tags", "mm_in", "mm_out", "context_fields", "context_vocab"};
    char vals[16][512];
    snprintf(vals[0], 512, "ctr-qin-1");
    snprintf(vals[1], 512, "qin");
    snprintf(vals[2], 512, "%s", c->name);
    snprintf(vals[3], 512, "%s", c->version);
    snprintf(vals[4], 512, "%d", c->embedding_dim);
    snprintf(vals[5], 512, "%d", c->max_len);
    snprintf(vals[6], 512, "%d", c->num_layers);
    snprintf(vals[7], 512, "%d", c->num_row);
    snprintf(vals[8], 512, "%d", c->batch_norm);
    snprintf(vals[9], 512, "%d", c->item_vocab);
    snprintf(vals[10], 512, "%d", c->tag_vocab);
    snprintf(vals[11], 512, "%d", c->num_tags);
    snprintf(vals[12], 512, "%d", c->mm_in);
    snprintf(vals[13], 512, "%d", c->mm_out);
    snprintf(vals[14], 512, "%s", fields);
    snprintf(vals[15], 512, "%s", vocabs);
    w += snprintf(h + w, cap - w, "{\"__metadata__\":{");
    for (int k = 0; k < 16; k++) {
        const char *v = vals[k];
        if (dmg->meta_key && strcmp(dmg->meta_key, keys[k]) == 0) v = dmg->meta_value;
        w += snprintf(h + w, cap - w, "%s\"%s\":\"%s\"", k ? "," : "", keys[k], v);
    }
    w += snprintf(h + w, cap - w, "}");
    uint64_t off = 0;
    int last = -1;
    for (int i = 0; i < tm->nt; i++)
        if (!dmg->skip || strcmp(dmg->skip, tm->t[i].name)) last = i;
    for (int i = 0; i < tm->nt; i++) {
        const tm_tensor *t = &tm->t[i];
        if (dmg->skip && strcmp(dmg->skip, t->name) == 0) continue;
        uint64_t bytes = (uint64_t)t->shape[0] * (uint64_t)t->shape[1] * (t->i8 ? 1 : 4);
        int64_t d0 = t->shape[0];
        const char *dt = t->i8 ? "I8" : "F32";
        if (dmg->dtype_of && strcmp(dmg->dtype_of, t->name) == 0) dt = "I32";
        if (dmg->shape_of && strcmp(dmg->shape_of, t->name) == 0) d0 += 1;
        uint64_t end = off + bytes + (i == last ? dmg->end_extra : 0);
        if (t->ndim == 1)
            w += snprintf(h + w, cap - w,
                          ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],\"data_offsets\":[%llu,%llu]}",
                          t->name, dt, (long long)d0, (unsigned long long)off,
                          (unsigned long long)end);
        else
            w += snprintf(h + w, cap - w,
                          ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],\"data_offsets\":[%llu,%llu]}",
                          t->name, dt, (long long)d0, (long long)t->shape[1],
                          (unsigned long long)off, (unsigned long long)end);
        off += bytes;
    }
    if (dmg->extra)
        w += snprintf(h + w, cap - w,
                      ",\"%s\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[%llu,%llu]}",
                      dmg->extra, (unsigned long long)off, (unsigned long long)off + 4);
    w += snprintf(h + w, cap - w, "}");
    while (w % 8) h[w++] = ' ';
    size_t total = 8 + (size_t)w + (size_t)off + (dmg->extra ? 4 : 0);
    unsigned char *buf = calloc(1, total);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(((uint64_t)w >> (8 * i)) & 0xff);
    memcpy(buf + 8, h, (size_t)w);
    unsigned char *p = buf + 8 + w;
    for (int i = 0; i < tm->nt; i++) {
        const tm_tensor *t = &tm->t[i];
        if (dmg->skip && strcmp(dmg->skip, t->name) == 0) continue;
        size_t n = (size_t)t->shape[0] * (size_t)t->shape[1];
        if (t->i8)
            for (size_t k = 0; k < n; k++) *p++ = (unsigned char)(signed char)t->data[k];
        else {
            memcpy(p, t->data, n * 4);
            p += n * 4;
        }
    }
    free(h);
    *len = total;
    return buf;
}

/* --- naive forward pass, double, no folds ------------------------------ */

/* Item vector e = [E_item[id] | masked tag mean | W_mm mm] (item_dim). */
static inline void tm_item(test_model *tm, int64_t id, const int32_t *tags, int ntags,
                           const float *mm, double *e) {
    const qin_config *c = &tm->cfg;
    const int d = c->embedding_dim;
    const float *it = tm_get(tm, TM_P "embedding_layers.item_id.weight");
    const float *tg = tm_get(tm, TM_P "embedding_layers.item_tags.weight");
    const float *wm = tm_get(tm, TM_P "feature_encoders.item_emb_d128.weight");
    for (int j = 0; j < d; j++) e[j] = it[id * d + j];
    int n = 0;
    for (int j = 0; j < d; j++) e[d + j] = 0;
    for (int k = 0; k < ntags; k++) {
        int nz = 0;
        for (int j = 0; j < d; j++) nz |= tg[tags[k] * d + j] != 0.0f;
        if (!nz) continue;
        n++;
        for (int j = 0; j < d; j++) e[d + j] += tg[tags[k] * d + j];
    }
    for (int j = 0; j < d; j++) e[d + j] /= (n + 1e-12);
    for (int o = 0; o < c->mm_out; o++) {
        double s = 0;
        for (int i = 0; i < c->mm_in; i++) s += (double)wm[o * c->mm_in + i] * (mm ? mm[i] : 0);
        e[2 * d + o] = s;
    }
}

static inline void tm_matvec(const float *w, int rows, int cols, const double *x, double *y) {
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int k = 0; k < cols; k++) s += (double)w[(size_t)r * cols + k] * x[k];
        y[r] = s;
    }
}

/* pool = W_o sum_j relu(q.k_j / sqrt(H)) v_j + t, unfolded. hist: nh x E. */
static inline void tm_attention(test_model *tm, const double *t, const double *hist, int nh,
                                double *pool) {
    const int E = tm->cfg.item_dim, H = tm->cfg.attn_dim;
    double *q = calloc(H, sizeof *q), *k = calloc(H, sizeof *k), *v = calloc(H, sizeof *v),
           *acc = calloc(H, sizeof *acc);
    tm_matvec(tm_get(tm, "attention_layers.W_q.weight"), H, E, t, q);
    for (int j = 0; j < nh; j++) {
        tm_matvec(tm_get(tm, "attention_layers.W_k.weight"), H, E, hist + (size_t)j * E, k);
        tm_matvec(tm_get(tm, "attention_layers.W_v.weight"), H, E, hist + (size_t)j * E, v);
        double a = 0;
        for (int i = 0; i < H; i++) a += q[i] * k[i];
        a /= sqrt((double)H);
        if (a < 0) a = 0;
        for (int i = 0; i < H; i++) acc[i] += a * v[i];
    }
    tm_matvec(tm_get(tm, "attention_layers.W_o.weight"), E, H, acc, pool);
    for (int i = 0; i < E; i++) pool[i] += t[i];
    free(q); free(k); free(v); free(acc);
}

/* One QNN layer, unfolded: z = x * sum_r (W_r x + b_r); BN; PReLU; x += z. */
static inline void tm_qnn_layer(test_model *tm, int l, double *x) {
    const qin_config *c = &tm->cfg;
    const int D = c->input_dim, R = c->num_row;
    char name[128];
    snprintf(name, sizeof name, "qnn.layer.%d.linear.0.weight", l);
    const float *w = tm_get(tm, name);
    snprintf(name, sizeof name, "qnn.layer.%d.linear.0.bias", l);
    const float *b = tm_get(tm, name);
    snprintf(name, sizeof name, "qnn.activation.%d.weight", l);
    double a = tm_get(tm, name)[0];
    double *h = calloc((size_t)R * D, sizeof *h), *z = calloc(D, sizeof *z);
    tm_matvec(w, R * D, D, x, h);
    for (int i = 0; i < D; i++) {
        double s = 0;
        for (int r = 0; r < R; r++) s += h[r * D + i] + b[r * D + i];
        z[i] = x[i] * s;
    }
    if (c->batch_norm) {
        snprintf(name, sizeof name, "qnn.norm.%d.weight", l);
        const float *g = tm_get(tm, name);
        snprintf(name, sizeof name, "qnn.norm.%d.bias", l);
        const float *be = tm_get(tm, name);
        snprintf(name, sizeof name, "qnn.norm.%d.running_mean", l);
        const float *mu = tm_get(tm, name);
        snprintf(name, sizeof name, "qnn.norm.%d.running_var", l);
        const float *var = tm_get(tm, name);
        for (int i = 0; i < D; i++) z[i] = (z[i] - mu[i]) / sqrt((double)var[i] + 1e-5) * g[i] + be[i];
    }
    for (int i = 0; i < D; i++) x[i] += z[i] > 0 ? z[i] : a * z[i];
    free(h); free(z);
}

static inline double tm_head(test_model *tm, const double *x) {
    const float *w = tm_get(tm, "qnn.fc.weight");
    double s = tm_get(tm, "qnn.fc.bias")[0];
    for (int i = 0; i < tm->cfg.input_dim; i++) s += w[i] * x[i];
    return 1.0 / (1.0 + exp(-s));
}

/* Whole model for one candidate: ctx values, target vector t, history hist
 * (nh x E, real behaviours only). */
static inline double tm_forward(test_model *tm, const int32_t *ctx, const double *t,
                                const double *hist, int nh) {
    const qin_config *c = &tm->cfg;
    const int d = c->embedding_dim, E = c->item_dim, D = c->input_dim;
    double *x = calloc(D, sizeof *x);
    char name[128];
    for (int f = 0; f < c->num_ctx; f++) {
        snprintf(name, sizeof name, TM_P "embedding_layers.%s.weight", c->ctx_name[f]);
        const float *emb = tm_get(tm, name);
        for (int j = 0; j < d; j++) x[f * d + j] = emb[(ctx ? ctx[f] : 0) * d + j];
    }
    for (int j = 0; j < E; j++) x[c->num_ctx * d + j] = t[j];
    tm_attention(tm, t, hist, nh, x + c->num_ctx * d + E);
    for (int l = 0; l < c->num_layers; l++) tm_qnn_layer(tm, l, x);
    double p = tm_head(tm, x);
    free(x);
    return p;
}

#endif
