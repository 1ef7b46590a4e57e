/*
 * itemvec.c - the shared item vector of QIN and DIN (see itemvec.h).
 *
 * Runs once per item (the callers cache the result), so clarity wins over
 * speed here; the one product (W_mm x) is BLAS.
 */
#include "itemvec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "linear.h"
#include "modelfile.h"
#include "core/base/status.h"

#define P "embedding_layer.embedding_layer."

int itemvec_load(itemvec_tables *t, const st_file *f, char *err, size_t errlen) {
    int rc;
    if ((rc = modelfile_tensor(f, P "embedding_layers.item_id.weight", t->item_vocab, t->d,
                               &t->item_emb, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, P "embedding_layers.item_tags.weight", t->tag_vocab, t->d,
                               &t->tag_emb, err, errlen)) < 0 ||
        (rc = modelfile_tensor(f, P "feature_encoders.item_emb_d128.weight", t->mm_out, t->mm_in,
                               &t->w_mm, err, errlen)) < 0)
        return rc;
    /* The training code averages a tag list over the rows that are not all
     * zero (padding rows are zero); which rows those are is fixed by the
     * weights, so decide it once. */
    t->tag_live = malloc((size_t)t->tag_vocab);
    if (!t->tag_live) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    for (int g = 0; g < t->tag_vocab; g++) {
        const float *row = t->tag_emb + (size_t)g * t->d;
        int live = 0;
        for (int k = 0; k < t->d && !live; k++) live = row[k] != 0.0f;
        t->tag_live[g] = (unsigned char)live;
    }
    return CTR_OK;
}

void itemvec_free(itemvec_tables *t) {
    free(t->item_emb);
    free(t->tag_emb);
    free(t->tag_live);
    free(t->w_mm);
    t->item_emb = t->tag_emb = t->w_mm = NULL;
    t->tag_live = NULL;
}

int itemvec_check(const itemvec_tables *t, const itemvec_input *item, char *err, size_t errlen) {
    if (item->id < 1 || item->id >= t->item_vocab)
        return ctr_fail(err, errlen, CTR_ERANGE, "item_id %lld outside 1..%d",
                        (long long)item->id, t->item_vocab - 1);
    if (item->num_tags < 0 || item->num_tags > t->num_tags)
        return ctr_fail(err, errlen, CTR_EINVAL, "item %lld: %d tags, at most %d",
                        (long long)item->id, item->num_tags, t->num_tags);
    for (int k = 0; k < item->num_tags; k++)
        if (item->tags[k] < 0 || item->tags[k] >= t->tag_vocab)
            return ctr_fail(err, errlen, CTR_ERANGE, "item %lld: tag %d outside 0..%d",
                            (long long)item->id, (int)item->tags[k], t->tag_vocab - 1);
    if (item->mm)
        for (int k = 0; k < t->mm_in; k++)
            if (!isfinite(item->mm[k]))
                return ctr_fail(err, errlen, CTR_EINVAL,
                                "item %lld: non-finite multimodal value at %d",
                                (long long)item->id, k);
    return CTR_OK;
}

/* [E_item[id] | tag mean] into e; the multimodal part is the caller's. */
static void id_and_tags(const itemvec_tables *t, const itemvec_input *item, float *e) {
    const int d = t->d;
    float *e_tag = e + d;
    memcpy(e, t->item_emb + (size_t)item->id * d, (size_t)d * sizeof *e);
    /* Masked mean over the tags whose embedding row is not all zero; the
     * divisor n + 1e-12 is the training code's, and makes all-padding
     * tags give zero. */
    memset(e_tag, 0, (size_t)d * sizeof *e_tag);
    int live = 0;
    for (int k = 0; k < item->num_tags; k++) {
        if (!t->tag_live[item->tags[k]]) continue;
        const float *row = t->tag_emb + (size_t)item->tags[k] * d;
        for (int j = 0; j < d; j++) e_tag[j] += row[j];
        live++;
    }
    float denom = (float)live + 1e-12f;
    for (int j = 0; j < d; j++) e_tag[j] /= denom;
}

void itemvec_base(const itemvec_tables *t, const itemvec_input *item, float *e) {
    id_and_tags(t, item, e);
    float *e_mm = e + 2 * t->d;
    if (item->mm)
        linear_gemm(1, t->mm_out, t->mm_in, item->mm, t->mm_in, t->w_mm, t->mm_in, 1, 0.0f,
                    e_mm, t->mm_out);
    else
        memset(e_mm, 0, (size_t)t->mm_out * sizeof *e_mm);
}
