/*
 * endpoints.h - what the service's GET endpoints answer, apart from the
 * HTTP library (server/http.c routes to them and sends the answer):
 *
 *   /healthz     200 {"status":"ok"}: the process answers
 *   /readyz      200 {"status":"ready"}, or 503 not_ready naming why: the
 *                drain, or the first model whose feature set the last
 *                health check did not find (ctr_server.c runs the check;
 *                nothing here does I/O)
 *   /v1/models   every model served (proto/info.h)
 *   /metrics     the Prometheus text of server/metrics.h
 *
 * Workload: probes and scrapes every few seconds, on the event loop, so
 * each answer is built from memory: the service's atomics, each model's
 * current slot (acquired for the call) and the metrics' slots.
 *
 * Thread-safety: safe against the request workers and a reload.
 */
#ifndef CTR_SERVER_ENDPOINTS_H
#define CTR_SERVER_ENDPOINTS_H

#include "proto/buf.h"
#include "server/service.h"

/* The answer to GET path (one of the four above) into out, its content
 * type into *ctype; returns its HTTP status.  An error answer is the JSON
 * error object of proto/error.h.  A path that is none of them: 404
 * not_found. */
int endpoint_get(service *svc, const char *path, proto_buf *out, const char **ctype);

#endif
