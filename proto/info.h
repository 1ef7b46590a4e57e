/*
 * info.h - the small JSON answers of the operations endpoints:
 *   GET /healthz, GET /readyz   {"status": "ok" | "ready", ...}
 *   GET /v1/models              {"models": [{"name", "version", "arch",
 *                                "precision", "exact", "path", "generation",
 *                                "config": {...}}]}
 * Thread-safe; everything is appended to the caller's buffer.
 */
#ifndef CTR_PROTO_INFO_H
#define CTR_PROTO_INFO_H

#include <stdint.h>

#include "core/qin.h"
#include "proto/buf.h"

/* {"status": status} plus, when detail is non-NULL, "detail": detail. */
int proto_status_encode(const char *status, const char *detail, proto_buf *out);

/* The one model being served. */
int proto_models_encode(const qin_config *cfg, const char *path, uint64_t generation,
                        proto_buf *out);

#endif
