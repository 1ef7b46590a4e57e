/*
 * din_load.c - DIN's loader (din_internal.h): reads a model file's tensors,
 * checks each against the schema's shapes, and makes the exact folds at
 * load (din.c's opening comment): attention layer 0 split into its item
 * and pair terms, batch norm into the DNN's Linear layers, Dice's batch
 * norm into a scale and a shift; then prepares the hidden layers in the
 * serving precision.  Runs once per model (load, reload).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "din_internal.h"
#include "modelfile.h"

#define P "embedding_layer.embedding_layer."
#define DIN_BN_EPS 1e-5
#define DIN_DICE_EPS 1e-9

static void act_free(din_act *a) {
    free(a->alpha);
    free(a->scale);
    free(a->shift);
}

typedef struct din_names {
    const din_model *m;
    const engine_schema *sc;
    int att_dice, dnn_dice, dnn_bn;
} din_names;

static int din_expected(const void *ctx, const char *name) {
    const din_names *nm = ctx;
    const din_model *m = nm->m;
    char buf[160];
    for (int f = 0; f < nm->sc->num_ctx; f++)
        if (!strcmp(name, modelfile_name(buf, sizeof buf, P "embedding_layers.%s.weight",
                                         nm->sc->ctx_name[f])))
            return 1;
    if (!strcmp(name, P "embedding_layers.item_id.weight") ||
        !strcmp(name, P "embedding_layers.item_tags.weight") ||
        !strcmp(name, P "feature_encoders.item_emb_d128.weight"))
        return 1;
    static const char *const lin[] = {"weight", "bias"};
    static const char *const dice[] = {"dice.alpha", "dice.running_mean", "dice.running_var"};
    static const char *const bn[] = {"bn.weight", "bn.bias", "bn.running_mean",
                                     "bn.running_var"};
    for (int net = 0; net < 2; net++) {
        const char *pre = net ? "dnn" : "attention";
        int nl = net ? m->nd : m->na;
        for (int k = 0; k < nl; k++) {
            for (int i = 0; i < 2; i++)
                if (!strcmp(name, modelfile_name(buf, sizeof buf, "%s.%d.%s", pre, k, lin[i])))
                    return 1;
            if (k == nl - 1) continue;
            if (net ? nm->dnn_dice : nm->att_dice)
                for (int i = 0; i < 3; i++)
                    if (!strcmp(name, modelfile_name(buf, sizeof buf, "%s.%d.%s", pre, k, dice[i])))
                        return 1;
            if (net && nm->dnn_bn)
                for (int i = 0; i < 4; i++)
                    if (!strcmp(name, modelfile_name(buf, sizeof buf, "dnn.%d.%s", k, bn[i])))
                        return 1;
        }
    }
    return 0;
}

/* Dice after layer k of a net: alpha, and its batch norm (no affine
 * part) as the scale and shift inside the sigmoid. */
static int load_dice(const st_file *f, const char *pre, int k, int units, din_act *a, char *err,
                     size_t errlen) {
    static const char *const stats[4] = {NULL, NULL, "running_mean", "running_var"};
    char name[96];
    double *sc = malloc((size_t)units * sizeof *sc), *sh = malloc((size_t)units * sizeof *sh);
    int rc;
    a->dice = 1;
    a->scale = linear_falloc((size_t)units);
    a->shift = linear_falloc((size_t)units);
    if (!sc || !sh || !a->scale || !a->shift) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = modelfile_tensor(f, modelfile_name(name, sizeof name, "%s.%d.dice.alpha", pre, k),
                               units, -1, &a->alpha, err, errlen)) < 0 ||
        (rc = modelfile_batch_norm(f, modelfile_name(name, sizeof name, "%s.%d.dice.", pre, k),
                                   stats, units, DIN_DICE_EPS, sc, sh, err, errlen)) < 0)
        goto done;
    for (int i = 0; i < units; i++) {
        a->scale[i] = (float)sc[i];
        a->shift[i] = (float)sh[i];
    }
done:
    free(sc);
    free(sh);
    return rc;
}

/* Loads Linear k of a net into l, folding "dnn.<k>.bn.*" when bn:
 * W' = diag(s) W, b' = s b + shift. */
static int load_linear(const st_file *f, const char *pre, int k, int in, int out, int bn,
                       linear_layer *l, char *err, size_t errlen) {
    char name[96];
    int rc;
    l->in = in;
    l->out = out;
    if ((rc = modelfile_tensor(f, modelfile_name(name, sizeof name, "%s.%d.weight", pre, k), out,
                               in, &l->w, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, modelfile_name(name, sizeof name, "%s.%d.bias", pre, k), out, -1,
                               &l->b, err, errlen)) < 0)
        return rc;
    if (!bn) return CTR_OK;
    double *s = malloc((size_t)out * sizeof *s), *sh = malloc((size_t)out * sizeof *sh);
    if (!s || !sh)
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    else
        rc = modelfile_batch_norm(f, modelfile_name(name, sizeof name, "%s.%d.bn.", pre, k),
                                  modelfile_bn_torch, out, DIN_BN_EPS, s, sh, err, errlen);
    for (int o = 0; o < out && rc == CTR_OK; o++) {
        for (int i = 0; i < in; i++)
            l->w[(size_t)o * in + i] = (float)(s[o] * l->w[(size_t)o * in + i]);
        l->b[o] = (float)(s[o] * l->b[o] + sh[o]);
    }
    free(s);
    free(sh);
    return rc;
}

/* Splits attention layer 0 (H1 x 4E) into w_t, w_h, w_d and b1. */
static int load_first(const st_file *f, din_model *m, char *err, size_t errlen) {
    const int E = m->E, H1 = m->att_units[0];
    float *w = NULL;
    int rc;
    if ((rc = modelfile_tensor(f, "attention.0.weight", H1, 4 * E, &w, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, "attention.0.bias", H1, -1, &m->b1, err, errlen)) < 0)
        goto done;
    m->w_t = linear_falloc((size_t)H1 * E);
    m->w_h = linear_falloc((size_t)H1 * E);
    m->w_d = linear_falloc((size_t)H1 * E);
    if (!m->w_t || !m->w_h || !m->w_d) {
        rc = ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        goto done;
    }
    for (int o = 0; o < H1; o++) {
        const float *row = w + (size_t)o * 4 * E;
        for (int i = 0; i < E; i++) {
            double wa = row[i], wb = row[E + i], wc = row[2 * E + i];
            m->w_t[(size_t)o * E + i] = (float)(wa + wc);
            m->w_h[(size_t)o * E + i] = (float)(wb - wc);
            m->w_d[(size_t)o * E + i] = row[3 * E + i];
        }
    }
done:
    free(w);
    return rc;
}

static int act_kind(const st_file *f, const char *key, int *dice, char *err, size_t errlen) {
    const char *v = st_meta_get(f, key);
    if (v && (!strcmp(v, "relu") || !strcmp(v, "dice"))) {
        *dice = !strcmp(v, "dice");
        return CTR_OK;
    }
    return ctr_fail(err, errlen, CTR_EMODEL, "metadata \"%s\" is \"%s\", expected relu or dice",
                    key, v ? v : "(none)");
}

void din_model_free(void *impl) {
    din_model *m = impl;
    if (!m) return;
    for (int f = 0; f < ENGINE_MAX_CTX; f++) free(m->ctx_emb[f]);
    itemvec_free(&m->iv);
    free(m->w_t);
    free(m->w_h);
    free(m->w_d);
    free(m->b1);
    for (int k = 0; k < DIN_MAX_LAYERS; k++) {
        dense_free(m->att_d[k]);
        dense_free(m->dnn_d[k]);
        linear_layer_free(&m->att[k]);
        linear_layer_free(&m->dnn[k]);
        act_free(&m->att_act[k]);
        act_free(&m->dnn_act[k]);
    }
    free(m);
}

int din_model_build(void *impl, const st_file *f, const engine_schema *sc, char *err,
                    size_t errlen) {
    din_model *m = impl;
    int rc, mm_out, au[DIN_MAX_LAYERS], du[DIN_MAX_LAYERS], nau, ndu;
    din_names nm = {m, sc, 0, 0, 0};
    if ((rc = modelfile_meta_int(f, "embedding_dim", 1, 4096, &m->d, err, errlen)) < 0 ||
        (rc = modelfile_meta_int(f, "mm_out", 1, 4096, &mm_out, err, errlen)) < 0 ||
        (rc = modelfile_meta_ints(f, "attention_units", DIN_MAX_LAYERS - 1, 1, 16384, au, &nau,
                                  err, errlen)) < 0 ||
        (rc = modelfile_meta_ints(f, "dnn_units", DIN_MAX_LAYERS - 1, 1, 16384, du, &ndu, err,
                                  errlen)) < 0 ||
        (rc = act_kind(f, "attention_activation", &nm.att_dice, err, errlen)) < 0 ||
        (rc = act_kind(f, "dnn_activation", &nm.dnn_dice, err, errlen)) < 0 ||
        (rc = modelfile_meta_int(f, "dnn_batch_norm", 0, 1, &nm.dnn_bn, err, errlen)) < 0 ||
        (rc = modelfile_meta_int(f, "softmax", 0, 1, &m->softmax, err, errlen)) < 0)
        return rc;
    if (nau < 1)
        return ctr_fail(err, errlen, CTR_EMODEL,
                        "metadata \"attention_units\": at least one hidden layer");
    const int d = m->d, E = 2 * d + mm_out;
    m->E = E;
    m->num_ctx = sc->num_ctx;
    m->max_len = sc->max_len;
    m->in_dim = sc->num_ctx * d + 2 * E;
    m->na = nau + 1;
    m->nd = ndu + 1;
    m->max_width = 1;
    for (int k = 0; k < nau; k++) {
        m->att_units[k] = au[k];
        if (au[k] > m->max_width) m->max_width = au[k];
    }
    m->att_units[nau] = 1;
    for (int k = 0; k < ndu; k++)
        if (du[k] > m->max_width) m->max_width = du[k];
    if ((long long)sc->item_vocab * d > INT32_MAX || (long long)sc->tag_vocab * d > INT32_MAX ||
        (long long)au[0] * 4 * E > INT32_MAX || m->in_dim > 65536)
        return ctr_fail(err, errlen, CTR_EMODEL, "configuration too large");

    if ((rc = modelfile_no_unexpected(f, din_expected, &nm, err, errlen)) < 0) return rc;
    char name[160];
    for (int i = 0; i < sc->num_ctx; i++) {
        m->ctx_vocab[i] = sc->ctx_vocab[i];
        if ((rc = modelfile_tensor(
                 f, modelfile_name(name, sizeof name, P "embedding_layers.%s.weight",
                                   sc->ctx_name[i]),
                 sc->ctx_vocab[i], d, &m->ctx_emb[i], err, errlen)) < 0)
            return rc;
    }
    m->iv = (itemvec_tables){.d = d, .item_vocab = sc->item_vocab, .tag_vocab = sc->tag_vocab,
                             .num_tags = sc->num_tags, .mm_in = sc->mm_dim, .mm_out = mm_out};
    if ((rc = itemvec_load(&m->iv, f, err, errlen)) < 0) return rc;

    if ((rc = load_first(f, m, err, errlen)) < 0) return rc;
    for (int k = 1; k < m->na; k++)
        if ((rc = load_linear(f, "attention", k, m->att_units[k - 1], m->att_units[k], 0,
                              &m->att[k], err, errlen)) < 0)
            return rc;
    for (int k = 0; k < nau; k++)
        if (nm.att_dice && (rc = load_dice(f, "attention", k, au[k], &m->att_act[k], err,
                                           errlen)) < 0)
            return rc;
    for (int k = 0; k < m->nd; k++) {
        int in = k ? du[k - 1] : m->in_dim, out = k < ndu ? du[k] : 1;
        if ((rc = load_linear(f, "dnn", k, in, out, nm.dnn_bn && k < ndu, &m->dnn[k], err,
                              errlen)) < 0)
            return rc;
        if (k < ndu && nm.dnn_dice &&
            (rc = load_dice(f, "dnn", k, out, &m->dnn_act[k], err, errlen)) < 0)
            return rc;
    }
    m->vec_floats = (E + 2 * au[0] + 15) & ~15;
    m->pair_rows = DIN_PAIR_ROWS;
    return CTR_OK;
}

/* Prepares one hidden layer's weight w (out x in) in precision p. */
static int din_dense(din_model *m, const char *what, int k, const float *w, int out, int in,
                     dense **d, char *err, size_t errlen) {
    dense_params dp = dense_default_params();
    dp.precision = m->precision;
    dp.backend = m->kernel;
    char inner[256] = "";
    int rc = dense_init(w, out, in, &dp, d, inner, sizeof inner);
    if (rc < 0)
        return ctr_fail(err, errlen, rc, "%s layer %d, %s: %s", what, k,
                        dense_precision_name(m->precision), inner);
    if (dense_ws_size(*d) > m->ws_bytes) m->ws_bytes = dense_ws_size(*d);
    return CTR_OK;
}

int din_model_prepare(void *impl, const engine_params *p, char *err, size_t errlen) {
    din_model *m = impl;
    int rc;
    m->precision = p->precision;
    m->kernel = p->kernel;
    if ((rc = din_dense(m, "attention", 0, m->w_d, m->att_units[0], m->E, &m->att_d[0], err,
                        errlen)) < 0)
        return rc;
    for (int k = 1; k < m->na - 1; k++)
        if ((rc = din_dense(m, "attention", k, m->att[k].w, m->att[k].out, m->att[k].in,
                            &m->att_d[k], err, errlen)) < 0)
            return rc;
    for (int k = 0; k < m->nd - 1; k++)
        if ((rc = din_dense(m, "dnn", k, m->dnn[k].w, m->dnn[k].out, m->dnn[k].in, &m->dnn_d[k],
                            err, errlen)) < 0)
            return rc;
    return CTR_OK;
}
