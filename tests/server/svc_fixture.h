/*
 * svc_fixture.h - a ctr-server service for the server unit tests
 * (test_rank.c, test_http.c): the golden "small" QIN model ($CTR_GOLDEN)
 * as model "qin", the default, and the "tin-small" TIN model as "tin"; a
 * feature store at $CTR_REDIS under per-process prefixes (one per model)
 * with synthetic features for items 1..SVC_ITEMS (TIN: 0..SVC_ITEMS) and a
 * user "u1", no scoring helpers.
 *
 * Its timeouts and deadlines are generous (seconds): a sanitizer build on
 * a loaded machine must not turn them into latency checks.  Tests of
 * deadlines set their own, per request.  svc_free and svc_workers_free
 * undo whatever part of the set-up succeeded, so a group teardown may
 * call them after a failed setup.
 */
#ifndef CTR_TESTS_SVC_FIXTURE_H
#define CTR_TESTS_SVC_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/features.h"
#include "proto/meta.h"
#include "core/base/clock.h"
#include "server/service.h"
#include "server/worker.h"

#define SVC_ITEMS 20
#define SVC_TIMEOUT_MS 5000      /* Redis connect and command */
#define SVC_DEADLINE_MS 10000    /* a rank request's default budget */

static char svc_prefix[64], svc_prefix_tin[64];
static char svc_model[1024];

static inline const char *svc_golden(const char *name) {
    const char *g = getenv("CTR_GOLDEN");
    snprintf(svc_model, sizeof svc_model, "%s/%s/model.safetensors", g && *g ? g : "build/golden",
             name);
    return svc_model;
}

static inline const char *svc_golden_model(void) { return svc_golden("small"); }

/* Writes items' features (1..SVC_ITEMS; with a category 0..SVC_ITEMS),
 * user u1 (history 1..5) and the marker. */
static inline int svc_load_features(const featstore_params *fp, const engine_schema *c) {
    featstore *fs;
    char err[256];
    if (featstore_open(fp, &fs, err, sizeof err) < 0) return -1;
    unsigned char buf[8192];
    size_t len;
    float mm[1024];
    int32_t tags[2] = {1 % (c->tag_vocab ? c->tag_vocab : 1), 2 % (c->tag_vocab ? c->tag_vocab : 1)};
    for (int64_t id = c->item_id_min; id <= SVC_ITEMS; id++) {
        for (int k = 0; k < c->mm_dim; k++) mm[k] = (float)((id * 31 + k * 7) % 13) / 13.0f - 0.5f;
        int rc = c->cate_vocab
                     ? features_item_encode_cate(NULL, 0, NULL, 0, (int32_t)(id % c->cate_vocab),
                                                 buf, sizeof buf, &len, err, sizeof err)
                     : features_item_encode(tags, 2, mm, c->mm_dim, buf, sizeof buf, &len, err,
                                            sizeof err);
        if (rc < 0 || featstore_put_item(fs, id, buf, len, err, sizeof err) < 0) goto fail;
    }
    int64_t hist[5] = {1, 2, 3, 4, 5};
    if (features_user_encode(hist, 5, buf, sizeof buf, &len, err, sizeof err) < 0 ||
        featstore_put_user(fs, "u1", buf, len, err, sizeof err) < 0 ||
        featstore_put_meta(fs, "{}", 2, err, sizeof err) < 0 ||
        featstore_flush(fs, err, sizeof err) < 0)
        goto fail;
    featstore_close(fs);
    return 0;
fail:
    fprintf(stderr, "svc_fixture: %s\n", err);
    featstore_close(fs);
    return -1;
}

/* A service ready for rank_handle / http_start.  0, or -1 (printed). */
static inline int svc_init(service *svc) {
    memset(svc, 0, sizeof *svc);
    char err[512];
    if (metrics_init(&svc->metrics) < 0 || pool_init(0, &svc->scorers) < 0) return -1;
    featstore_default_params(&svc->fs_params);
    const char *r = getenv("CTR_REDIS");
    svc->fs_params.addr = r && *r ? r : "127.0.0.1:6379";
    svc->fs_params.connect_timeout_ms = SVC_TIMEOUT_MS;
    svc->fs_params.command_timeout_ms = SVC_TIMEOUT_MS;
    svc->fs_params.max_seq = 100;
    snprintf(svc_prefix, sizeof svc_prefix, "svc%d:", (int)getpid());
    snprintf(svc_prefix_tin, sizeof svc_prefix_tin, "svc%d-tin:", (int)getpid());
    const char *names[2] = {"qin", "tin"}, *files[2] = {"small", "tin-small"};
    const char *prefixes[2] = {svc_prefix, svc_prefix_tin};
    for (int i = 0; i < 2; i++) {
        model_slot_params sp = model_slot_default_params();
        sp.cache.max_bytes = 16 << 20;
        model_slot *s;
        if (model_slot_load(svc_golden(files[i]), &sp, 1, &s, err, sizeof err) < 0) {
            fprintf(stderr, "svc_fixture: %s\n", err);
            return -1;
        }
        if (service_add_model(svc, names[i], svc_model, &sp, prefixes[i], s, err, sizeof err) < 0) {
            fprintf(stderr, "svc_fixture: %s\n", err);
            model_slot_release(s);
            return -1;
        }
        atomic_init(&svc->models[i].feature_set, SERVICE_FS_OK);
        if (svc_load_features(&svc->models[i].fs_params, s->schema) < 0) return -1;
    }
    svc->max_candidates = 64;
    svc->max_seq = 100;
    svc->max_body = 1 << 20;
    svc->split_min = 32;
    svc->split_min_mflops = 25;
    svc->score_parts = 1;
    svc->deadline_ms = SVC_DEADLINE_MS;
    svc->max_deadline_ms = 2 * SVC_DEADLINE_MS;
    return 0;
}

/* Frees what svc_init made, also after it failed part way. */
static inline void svc_free(service *svc) {
    pool_free(svc->scorers);
    svc->scorers = NULL;
    service_free_models(svc);
    metrics_free(svc->metrics);
    svc->metrics = NULL;
}

static int svc_workers_made;   /* svc_workers_init succeeded */

/* worker_global_init, remembered so that svc_workers_free undoes it only
 * if it happened.  0, or -1. */
static inline int svc_workers_init(void) {
    if (worker_global_init() < 0) return -1;
    svc_workers_made = 1;
    return 0;
}

static inline void svc_workers_free(void) {
    if (svc_workers_made) worker_global_free();
    svc_workers_made = 0;
}

#endif
