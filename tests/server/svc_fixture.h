/*
 * svc_fixture.h - a ctr-server service for the server unit tests
 * (test_rank.c, test_http.c): the golden "small" model ($CTR_GOLDEN), a
 * feature store at $CTR_REDIS under a per-process prefix with synthetic
 * features for items 1..SVC_ITEMS and a user "u1", no scoring helpers.
 */
#ifndef CTR_TESTS_SVC_FIXTURE_H
#define CTR_TESTS_SVC_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/features.h"
#include "proto/meta.h"
#include "server/clock.h"
#include "server/service.h"

#define SVC_ITEMS 20

static char svc_prefix[64];
static char svc_model[1024];

static inline const char *svc_golden_model(void) {
    const char *g = getenv("CTR_GOLDEN");
    snprintf(svc_model, sizeof svc_model, "%s/small/model.safetensors", g && *g ? g : "build/golden");
    return svc_model;
}

/* Writes item 1..SVC_ITEMS features, user u1 (history 1..5) and the marker. */
static inline int svc_load_features(const featstore_params *fp, const qin_config *c) {
    featstore *fs;
    char err[256];
    if (featstore_open(fp, &fs, err, sizeof err) < 0) return -1;
    unsigned char buf[8192];
    size_t len;
    float mm[1024];
    int32_t tags[2] = {1 % c->tag_vocab, 2 % c->tag_vocab};
    for (int64_t id = 1; id <= SVC_ITEMS; id++) {
        for (int k = 0; k < c->mm_in; k++) mm[k] = (float)((id * 31 + k * 7) % 13) / 13.0f - 0.5f;
        if (features_item_encode(tags, 2, mm, c->mm_in, buf, sizeof buf, &len, err, sizeof err) < 0 ||
            featstore_put_item(fs, id, buf, len, err, sizeof err) < 0)
            goto fail;
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
    item_cache_params cp = item_cache_default_params();
    cp.max_bytes = 16 << 20;
    svc->cache_params = cp;
    model_slot *s;
    if (model_slot_load(svc_golden_model(), &cp, DENSE_FP32, 1, &s, err, sizeof err) < 0) {
        fprintf(stderr, "svc_fixture: %s\n", err);
        return -1;
    }
    svc->models = model_holder_new(s);
    if (!svc->models || metrics_init(&svc->metrics) < 0 || pool_init(0, &svc->scorers) < 0)
        return -1;
    s->metrics = svc->metrics;
    svc->max_candidates = 64;
    svc->max_seq = 100;
    svc->max_body = 1 << 20;
    svc->split_min = 32;
    svc->split_min_mflops = 25;
    svc->score_parts = 1;
    svc->deadline_ms = 500;
    svc->max_deadline_ms = 1000;
    atomic_init(&svc->feature_set, SERVICE_FS_OK);
    featstore_default_params(&svc->fs_params);
    const char *r = getenv("CTR_REDIS");
    svc->fs_params.addr = r && *r ? r : "127.0.0.1:6379";
    snprintf(svc_prefix, sizeof svc_prefix, "svc%d:", (int)getpid());
    svc->fs_params.prefix = svc_prefix;
    svc->fs_params.command_timeout_ms = 500;
    svc->fs_params.max_tags = s->cfg->num_tags;
    svc->fs_params.mm_dim = s->cfg->mm_in;
    svc->fs_params.max_seq = 100;
    return svc_load_features(&svc->fs_params, s->cfg);
}

static inline void svc_free(service *svc) {
    pool_free(svc->scorers);
    model_holder_free(svc->models);
    metrics_free(svc->metrics);
}

#endif
