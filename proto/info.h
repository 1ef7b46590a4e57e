/*
 * info.h - the small JSON answers of the operations endpoints:
 *   GET /healthz, GET /readyz   {"status": "ok" | "ready", ...}
 *   GET /v1/models              {"models": [{"name", "default", "version",
 *                                "arch", "precision", "exact", "path",
 *                                "generation", "redis_prefix", "cache": {...},
 *                                "config": {...}}, ...]}
 * Thread-safe; everything is appended to the caller's buffer.
 */
#ifndef CTR_PROTO_INFO_H
#define CTR_PROTO_INFO_H

#include <stdint.h>

#include <stddef.h>

#include "core/engine.h"
#include "proto/buf.h"

/* {"status": status} plus, when detail is non-NULL, "detail": detail. */
int proto_status_encode(const char *status, const char *detail, proto_buf *out);

/* What /v1/models says of one model served. */
typedef struct proto_model_info {
    const char *name;               /* what requests call it */
    int is_default;                 /* the one a request naming none gets */
    const char *path;               /* the file loaded */
    uint64_t generation;            /* loads of it, reloads included */
    const engine_schema *schema;    /* the file's metadata */
    dense_precision precision;      /* its dense layers' arithmetic */
    dense_backend kernel_setting;   /* as loaded (AUTO: planned) */
    const char *split;              /* how one request is split across the
                                       scoring threads, or NULL */
    const char *kernel;             /* what runs its largest dense layer
                                       (engine_model_describe) */
    const char *redis_prefix;       /* its feature keys' prefix */
    size_t cache_bytes;             /* its item cache's budget */
    uint64_t cache_entries;         /* item vectors cached now */
} proto_model_info;

/* The n models being served, in order. */
int proto_models_encode(const proto_model_info *models, int n, proto_buf *out);

#endif
