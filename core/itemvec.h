/*
 * itemvec.h - the item vector QIN and DIN share (docs/MODEL_SPEC.md
 * section 2): e = [E_item[id] | masked mean of E_tag over the tags |
 * W_mm x], width 2 d + mm_out.  The tables are loaded from the model file
 * under their FuxiCTR names; each architecture appends its own item-side
 * folds after e (QIN: A e, B e, U e, V e; DIN: the two halves of its first
 * attention layer).
 *
 * Thread-safe once loaded (read-only).
 */
#ifndef CTR_ITEMVEC_H
#define CTR_ITEMVEC_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

/* The features e reads (engine_item's id, tags and mm: engine_item_base). */
typedef struct itemvec_input {
    int64_t id;             /* 1..item_vocab-1 */
    const int32_t *tags;    /* num_tags tag ids (fewer than the model's
                               slots: the rest are padding) */
    int num_tags;
    const float *mm;        /* mm_in floats; NULL means all zeros */
} itemvec_input;

typedef struct itemvec_tables {
    int d;                  /* embedding_dim */
    int item_vocab;         /* rows of E_item; ids 1..item_vocab-1 */
    int tag_vocab;          /* rows of E_tag; 0 is padding */
    int num_tags;           /* tag slots */
    int mm_in, mm_out;      /* W_mm: mm_out x mm_in */
    float *item_emb;        /* item_vocab x d */
    float *tag_emb;         /* tag_vocab x d */
    unsigned char *tag_live;/* tag_vocab: 1 when the row is not all zero */
    float *w_mm;            /* mm_out x mm_in ([out, in]) */
} itemvec_tables;

/* Width of e: 2 d + mm_out. */
static inline int itemvec_dim(const itemvec_tables *t) { return 2 * t->d + t->mm_out; }

/* Loads E_item, E_tag and W_mm (names under
 * "embedding_layer.embedding_layer."), checking each against the sizes
 * already in t (d, item_vocab, tag_vocab, mm_in, mm_out; num_tags is kept
 * as given).  CTR_OK or CTR_EMODEL / CTR_ENOMEM with a message; on failure
 * the caller frees t with itemvec_free. */
int itemvec_load(itemvec_tables *t, const st_file *f, char *err, size_t errlen);

void itemvec_free(itemvec_tables *t);

/* Checks an item against the tables: id in 1..item_vocab-1 (CTR_ERANGE),
 * at most num_tags tags (CTR_EINVAL) each in 0..tag_vocab-1 (CTR_ERANGE),
 * finite multimodal values (CTR_EINVAL). */
int itemvec_check(const itemvec_tables *t, const itemvec_input *item, char *err, size_t errlen);

/* e of a checked item into e (itemvec_dim floats); W_mm x is one sgemv. */
void itemvec_base(const itemvec_tables *t, const itemvec_input *item, float *e);

/* 1 when every one of the n floats of v is finite.  Finite features can
 * still give an item vector that overflows (3e38 in the multimodal
 * embedding), and such a vector would poison every score it touches (and
 * keep doing so from a cache), so every architecture's vectors are checked
 * with this (engine_items_compute).  Branch-free: v[k] * 0 is NaN exactly
 * when v[k] is infinite or NaN, and a NaN survives the sum. */
static inline int itemvec_finite(const float *v, size_t n) {
    float acc = 0.0f;
    for (size_t k = 0; k < n; k++) acc += v[k] * 0.0f;
    return acc == 0.0f;
}

#endif
