/*
 * service.h - the state ctr-server's request handlers share.
 *
 * One service per process, built by ctr_server.c from the configuration
 * and read-only afterwards except for the models' holders (reload) and the
 * atomics.  A service serves 1..SERVICE_MAX_MODELS models, each under a
 * name (service_model); a request names one ("model"), or gets the first.
 * Per-thread state (a Redis connection and an engine scratch per model, the
 * request arena, the answer buffer) lives in a worker (worker.h), created
 * on a thread's first request and freed when the thread exits.
 */
#ifndef CTR_SERVICE_H
#define CTR_SERVICE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/engine.h"
#include "server/store/featstore.h"
#include "server/implog.h"
#include "server/item_cache.h"
#include "server/metrics.h"
#include "server/model_slot.h"
#include "server/pool.h"

#define SERVICE_MAX_MODELS 8

/* How one request is run across the scoring threads (--split):
 * on the thread that took it; its candidates in parts across the pool
 * (each part streams every layer's whole weight); or each layer's output
 * columns in parts (engine_par: a model loaded with column parts, each
 * core multiplying by its own part of the weights). */
typedef enum service_split {
    SERVICE_SPLIT_ONE,
    SERVICE_SPLIT_CANDIDATES,
    SERVICE_SPLIT_COLUMNS,
    SERVICE_SPLIT_COUNT
} service_split;

/* Request sizes --split auto times and chooses for apart: requests of up to
 * 32 candidates (timed at 16), up to 128 (at 64), more (at 256). */
#define SERVICE_SPLIT_CLASSES 3

/* One model the service serves: its name, its current slot, and where its
 * features live. */
typedef struct service_model {
    int index;                     /* in service.models; also its metrics
                                      series (metrics_add_model) */
    char name[ENGINE_NAME_MAX];    /* "model" in requests, the model label */
    char path[1024];               /* reloaded from here on SIGHUP */
    model_slot_params slot_params;
    model_holder *holder;
    featstore_params fs_params;    /* the service's, with this model's key
                                      prefix and item layout */
    char prefix[1024];             /* fs_params.prefix points here */
    atomic_int feature_set;        /* SERVICE_FS_*: the health check's view
                                      of the feature-set marker under the
                                      model's prefix */
    atomic_llong score_ns_per_mflop;  /* running estimate of the forward
                                         pass's speed, for deadlines */
    double impression_sample;      /* share of its answers the impression
                                      log records, 0..1 */
    /* How a request of each size class is split (service_split): the
     * setting's, or with --split auto what rank_split_plan measured
     * fastest at start; and what it measured (microseconds of one
     * request, < 0: not timed). */
    service_split split[SERVICE_SPLIT_CLASSES];
    double split_us[SERVICE_SPLIT_CLASSES][SERVICE_SPLIT_COUNT];
    char split_desc[160];          /* the above in words (/v1/models) */
} service_model;

typedef struct service {
    service_model models[SERVICE_MAX_MODELS];  /* models[0] is the default */
    int num_models;
    pool *scorers;                 /* helpers for splitting big requests */
    metrics *metrics;
    implog *implog;                /* the impression log; NULL: off */
    featstore_params fs_params;    /* address, timeouts, breaker: shared */
    int max_candidates;            /* per request; 422 above */
    int max_seq;                   /* item_seq entries accepted in a request */
    size_t max_body;               /* bytes; 413 above */
    int split_min;                 /* candidates per part when splitting */
    int split_min_mflops;          /* and arithmetic per part, MFLOP */
    int score_parts;               /* most parts a request is cut into */
    service_split split;           /* --split: CANDIDATES or COLUMNS for
                                      every request size; ONE with one
                                      score thread */
    atomic_int ranking;            /* rank requests in rank_handle: one
                                      that scores while others are in
                                      hand takes fewer parts (none when
                                      they hold every score thread), and
                                      reads its history and looks up its
                                      candidates on its own thread */
    int split_auto;                /* --split auto: each model's choice per
                                      size class measured at start
                                      (rank_split_plan), models loaded with
                                      column parts */
    int skip_scoring;              /* answer with score 0, model not run */
    int deadline_ms;               /* a request's budget when it names none */
    int max_deadline_ms;           /* the most a request may ask for */
    atomic_int draining;           /* set on SIGTERM: /readyz 503; rank
                                      requests on open connections are
                                      still served, answered with
                                      Connection: close */
    atomic_int stopping;           /* set once the drain's wait is over:
                                      requests still queued get 503 */
} service;

/* What the last health check found (service_model.feature_set). */
enum {
    SERVICE_FS_UNKNOWN,            /* not checked yet, or Redis unreachable */
    SERVICE_FS_OK,                 /* marker present, schema matches */
    SERVICE_FS_MISSING,            /* Redis answers, no marker: empty or
                                      half-loaded feature store */
    SERVICE_FS_MISMATCH            /* marker of another schema */
};

/* "one", "candidates", "columns"; "?" otherwise.  Static strings. */
const char *service_split_name(service_split s);
/* The size class (0..SERVICE_SPLIT_CLASSES-1) of a request of n
 * candidates, and the candidates a class is timed at. */
int service_split_class(int n);
int service_split_rows(int c);
/* m->split in words into m->split_desc: "candidates", or per size class,
 * e.g. "up to 32 one; up to 128 columns; more columns (measured)". */
void service_split_describe(service_model *m, int measured);

/* The model named name, or the default (the first) for NULL; NULL when no
 * model has that name.  Thread-safe (names never change). */
service_model *service_find_model(service *svc, const char *name);

/* Sets up svc->models[svc->num_models] (and counts it): name, path, slot
 * params, its first slot (the holder takes it over), its feature-store
 * params from svc->fs_params with the given key prefix and the item layout
 * the slot's schema reads (service_fs_params), its metrics series.
 * CTR_EINVAL when full or the name is taken, CTR_ENOMEM; on failure the
 * caller still owns first. */
int service_add_model(service *svc, const char *name, const char *path,
                      const model_slot_params *sp, const char *prefix, model_slot *first,
                      char *err, size_t errlen);

/* The feature-store params of a model of schema sc: base with the item
 * layout the model reads (tag slots, embedding width, a category). */
featstore_params service_fs_params(const featstore_params *base, const engine_schema *sc);

/* Frees every model's holder (the service struct itself is the caller's). */
void service_free_models(service *svc);

#endif
