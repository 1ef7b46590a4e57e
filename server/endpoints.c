/*
 * endpoints.c - the GET endpoints' answers (see endpoints.h).
 */
#include "server/endpoints.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "proto/error.h"
#include "proto/info.h"
#include "server/item_cache.h"
#include "server/metrics.h"
#include "server/model_slot.h"

#define JSON_TYPE "application/json"

/* Why the service is not ready (NULL: it is): the first model whose
 * feature set the health check did not find ready, named. */
static const char *not_ready_reason(service *svc, char *buf, size_t cap) {
    for (int i = 0; i < svc->num_models; i++) {
        const char *why;
        switch (atomic_load(&svc->models[i].feature_set)) {
        case SERVICE_FS_OK: continue;
        case SERVICE_FS_MISSING:
            why = "the feature store has no feature-set marker (Redis empty or not loaded: "
                  "run ctr-load)";
            break;
        case SERVICE_FS_MISMATCH:
            why = "the feature set in Redis was loaded for another schema than the model's";
            break;
        default: why = "feature store not reachable"; break;
        }
        snprintf(buf, cap, "model %s (prefix \"%s\"): %s", svc->models[i].name,
                 svc->models[i].prefix, why);
        return buf;
    }
    return NULL;
}

static int answer_error(proto_buf *out, proto_error e, const char *msg) {
    proto_error_encode(e, msg, out);
    return proto_error_http(e);
}

static int readyz(service *svc, proto_buf *out) {
    /* The health check's last view (ctr_server.c), no I/O here. */
    if (atomic_load(&svc->stopping) || atomic_load(&svc->draining))
        return answer_error(out, PROTO_ERROR_NOT_READY, "shutting down");
    char buf[1400];
    const char *why = not_ready_reason(svc, buf, sizeof buf);
    if (why) return answer_error(out, PROTO_ERROR_NOT_READY, why);
    proto_buf_puts(out, "{\"status\":\"ready\"}");
    return 200;
}

/* /v1/models and /metrics, from each model's current slot. */
static void models(service *svc, model_slot *const *slot, proto_buf *out) {
    proto_model_info info[SERVICE_MAX_MODELS];
    for (int i = 0; i < svc->num_models; i++) {
        const service_model *m = &svc->models[i];
        item_cache_stats st;
        item_cache_stats_get(slot[i]->cache, &st);
        info[i] = (proto_model_info){
            .name = m->name, .is_default = i == 0, .path = slot[i]->path,
            .generation = slot[i]->generation, .schema = slot[i]->schema,
            .precision = engine_model_precision(slot[i]->model),
            .kernel_setting = engine_model_kernel(slot[i]->model),
            .kernel = engine_model_describe(slot[i]->model), .split = m->split_desc,
            .redis_prefix = m->prefix, .cache_bytes = m->slot_params.cache.max_bytes,
            .cache_entries = st.entries};
    }
    proto_models_encode(info, svc->num_models, out);
}

static void metrics_text(service *svc, model_slot *const *slot, proto_buf *out) {
    item_cache_stats st[SERVICE_MAX_MODELS];
    for (int i = 0; i < svc->num_models; i++) item_cache_stats_get(slot[i]->cache, &st[i]);
    metrics_render(svc->metrics, st, svc->num_models, out);
}

int endpoint_get(service *svc, const char *path, proto_buf *out, const char **ctype) {
    *ctype = JSON_TYPE;
    if (strcmp(path, "/healthz") == 0) {
        proto_buf_puts(out, "{\"status\":\"ok\"}");
        return 200;
    }
    if (strcmp(path, "/readyz") == 0) return readyz(svc, out);
    int is_models = strcmp(path, "/v1/models") == 0;
    if (!is_models && strcmp(path, "/metrics") != 0)
        return answer_error(out, PROTO_ERROR_NOT_FOUND, "no such endpoint");
    model_slot *slot[SERVICE_MAX_MODELS];
    for (int i = 0; i < svc->num_models; i++) slot[i] = model_holder_acquire(svc->models[i].holder);
    if (is_models) {
        models(svc, slot, out);
    } else {
        metrics_text(svc, slot, out);
        *ctype = METRICS_CONTENT_TYPE;
    }
    for (int i = 0; i < svc->num_models; i++) model_slot_release(slot[i]);
    return 200;
}
