/*
 * service.c - the models a ctr-server serves, by name (see service.h).
 *
 * Set up once at startup (service_add_model per model); afterwards only
 * read, so lookups by name need no lock.  A handful of models at most:
 * lookups are linear.
 */
#include <stdio.h>
#include <string.h>

#include "server/service.h"

const char *service_split_name(service_split s) {
    switch (s) {
    case SERVICE_SPLIT_ONE: return "one";
    case SERVICE_SPLIT_CANDIDATES: return "candidates";
    case SERVICE_SPLIT_COLUMNS: return "columns";
    default: return "?";
    }
}

static const int split_rows[SERVICE_SPLIT_CLASSES] = {16, 64, 256};
static const int split_top[SERVICE_SPLIT_CLASSES - 1] = {32, 128};

int service_split_class(int n) {
    int c = 0;
    while (c < SERVICE_SPLIT_CLASSES - 1 && n > split_top[c]) c++;
    return c;
}

int service_split_rows(int c) {
    return c >= 0 && c < SERVICE_SPLIT_CLASSES ? split_rows[c] : 0;
}

void service_split_describe(service_model *m, int measured) {
    int same = 1;
    for (int c = 1; c < SERVICE_SPLIT_CLASSES; c++) same &= m->split[c] == m->split[0];
    if (same && !measured) {
        snprintf(m->split_desc, sizeof m->split_desc, "%s", service_split_name(m->split[0]));
        return;
    }
    size_t len = 0;
    for (int c = 0; c < SERVICE_SPLIT_CLASSES && len < sizeof m->split_desc; c++) {
        char size[32];
        if (c < SERVICE_SPLIT_CLASSES - 1) snprintf(size, sizeof size, "up to %d", split_top[c]);
        else snprintf(size, sizeof size, "more");
        len += (size_t)snprintf(m->split_desc + len, sizeof m->split_desc - len, "%s%s %s",
                                c ? "; " : "", size, service_split_name(m->split[c]));
    }
    if (measured && len < sizeof m->split_desc)
        snprintf(m->split_desc + len, sizeof m->split_desc - len, " (measured)");
}

service_model *service_find_model(service *svc, const char *name) {
    if (!name) return svc->num_models ? &svc->models[0] : NULL;
    for (int i = 0; i < svc->num_models; i++)
        if (strcmp(svc->models[i].name, name) == 0) return &svc->models[i];
    return NULL;
}

featstore_params service_fs_params(const featstore_params *base, const engine_schema *sc) {
    featstore_params p = *base;
    p.max_tags = sc->num_tags;
    p.mm_dim = sc->mm_dim;
    p.cate = sc->cate_vocab > 0;
    return p;
}

int service_add_model(service *svc, const char *name, const char *path,
                      const model_slot_params *sp, const char *prefix, model_slot *first,
                      char *err, size_t errlen) {
    if (svc->num_models == SERVICE_MAX_MODELS)
        return ctr_fail(err, errlen, CTR_EINVAL, "more than %d models", SERVICE_MAX_MODELS);
    if (service_find_model(svc, name) && svc->num_models)
        return ctr_fail(err, errlen, CTR_EINVAL, "two models named \"%s\" (name them with "
                        "--model NAME=PATH)", name);
    service_model *m = &svc->models[svc->num_models];
    memset(m, 0, sizeof *m);
    m->index = svc->num_models;
    snprintf(m->name, sizeof m->name, "%s", name);
    snprintf(m->path, sizeof m->path, "%s", path);
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    m->slot_params = *sp;
    m->fs_params = service_fs_params(&svc->fs_params, first->schema);
    m->fs_params.prefix = m->prefix;
    atomic_init(&m->feature_set, SERVICE_FS_UNKNOWN);
    atomic_init(&m->score_ns_per_mflop, 0);
    for (int c = 0; c < SERVICE_SPLIT_CLASSES; c++) {
        m->split[c] = svc->split;
        for (int k = 0; k < SERVICE_SPLIT_COUNT; k++) m->split_us[c][k] = -1;
    }
    service_split_describe(m, 0);
    if (svc->metrics) {
        int k = metrics_add_model(svc->metrics, name);
        if (k != m->index)
            return ctr_fail(err, errlen, CTR_EINVAL, "metrics: no room for model %s", name);
        first->metrics = svc->metrics;
        first->metrics_model = k;
        metrics_set_model(svc->metrics, k, first->schema->name, first->schema->version,
                          engine_arch_name(first->schema->arch));
        dense_precision pr = engine_model_precision(first->model);
        metrics_set_precision(svc->metrics, k, dense_precision_name(pr),
                              dense_precision_exact(pr));
        metrics_set_kernel(svc->metrics, k, dense_cpu_isa(), engine_model_describe(first->model));
    }
    if (!(m->holder = model_holder_new(first)))
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    svc->num_models++;
    return CTR_OK;
}

void service_free_models(service *svc) {
    for (int i = 0; i < svc->num_models; i++) {
        model_holder_free(svc->models[i].holder);
        svc->models[i].holder = NULL;
    }
    svc->num_models = 0;
}
