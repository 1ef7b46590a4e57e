/*
 * meta.h - the feature-set marker: one small JSON value per key prefix
 * (key <prefix>meta) that ctr-load writes after every item and user value
 * of a load, so its presence says "this prefix holds a complete feature
 * set" and its fields say which:
 *
 *   {"format": 1, "num_tags": 5, "mm_dim": 128, "items": 91717,
 *    "users": 100000, "loaded_at": 1714557600.25, "model_version": "v1",
 *    "item_changes": 12}
 *
 * item_changes is the generation of the last record on the prefix's
 * item-change stream (<prefix>item-changes, deploy/REDIS_SCHEMA.md) when
 * the marker was written: a server that has applied fewer changes, and
 * finds no more on the stream, has lost some (the stream was trimmed or
 * deleted) and drops its item cache.  0 (or absent, from older loaders):
 * none recorded.
 *
 * The server reads it in its health check: /readyz is not ready while it
 * is missing (a Redis restarted empty) or names another schema than the
 * model's, and /metrics shows loaded_at.  Readers ignore fields they do
 * not know, so later loaders may add some.  Thread-safe (no state).
 */
#ifndef CTR_PROTO_META_H
#define CTR_PROTO_META_H

#include <stddef.h>
#include <stdint.h>

#include "proto/buf.h"

#define PROTO_META_FORMAT 1

typedef struct proto_meta {
    int format;               /* PROTO_META_FORMAT */
    int num_tags;             /* tag slots of the item values */
    int mm_dim;               /* embedding width of the item values */
    int64_t items, users;     /* values written by the load */
    double loaded_at;         /* unix seconds at the end of the load */
    char model_version[64];   /* the model the load was checked against */
    uint64_t item_changes;    /* generation of the last item change (0:
                                 none) */
} proto_meta;

/* Appends the marker's JSON (no newline).  CTR_OK or CTR_ENOMEM. */
int proto_meta_encode(const proto_meta *m, proto_buf *out);

/* Decodes a marker.  CTR_OK; CTR_EFORMAT (not JSON, a field of the wrong
 * type, a missing field or another format), with a message. */
int proto_meta_decode(const char *buf, size_t len, proto_meta *out, char *err,
                      size_t errlen);

#endif
