/*
 * item_changes.c - applying ctr-load's item-change records to a model's
 * item cache (item_changes.h).
 */
#include "server/item_changes.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static double now_unix_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* Orders two stream ids ("ms-seq"). */
static int id_cmp(const char *x, const char *y) {
    unsigned long long xm = 0, xs = 0, ym = 0, ys = 0;
    sscanf(x, "%llu-%llu", &xm, &xs);
    sscanf(y, "%llu-%llu", &ym, &ys);
    if (xm != ym) return xm < ym ? -1 : 1;
    return xs < ys ? -1 : xs > ys;
}

/* Drops every cached vector: what changed is not known. */
static void drop_all(item_cache *cache, item_changes_result *out, const char *why) {
    if (cache) item_cache_clear(cache);
    if (!out->dropped_all) out->why = why;   /* the first reason */
    out->dropped_all = 1;
}

/* Finds where the stream ends: its last record, or "0-0" before the first
 * when there is none yet. */
static int position(item_changes *st, featstore *fs, int64_t deadline_ns, arena *a,
                    char *err, size_t errlen) {
    featstore_change last;
    int n;
    arena_reset(a);
    int rc = featstore_get_item_changes(fs, NULL, 1, deadline_ns, a, &last, &n, err, errlen);
    if (rc < 0) return rc;
    if (n) {
        snprintf(st->last_id, sizeof st->last_id, "%s", last.id);
        st->last_gen = last.gen;
    } else {
        snprintf(st->last_id, sizeof st->last_id, "0-0");
        st->last_gen = 0;
    }
    return CTR_OK;
}

int item_changes_poll(item_changes *st, featstore *fs, item_cache *cache, uint64_t marker_gen,
                      int marker_back, int64_t deadline_ns, arena *a, item_changes_result *out,
                      char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    out->lag_s = -1;
    int rc;
    if (marker_back) {
        /* A feature set loaded anew (Redis restarted empty): values may
         * differ from what was cached before, without a record saying so. */
        drop_all(cache, out, "the feature set was loaded anew");
        st->last_id[0] = '\0';
    }
    if (!st->last_id[0]) {
        if ((rc = position(st, fs, deadline_ns, a, err, errlen)) < 0) return rc;
        /* Nothing should be cached before the first position is known; if
         * something is, it cannot be told apart from a stale vector. */
        if (cache && !out->dropped_all) {
            item_cache_stats cs;
            item_cache_stats_get(cache, &cs);
            if (cs.entries) drop_all(cache, out, "vectors were cached before the change "
                                                 "stream's position was known");
        }
        if (marker_gen > st->last_gen) st->last_gen = marker_gen;
        return CTR_OK;
    }
    /* The stream's last record first: usually the one last applied (no
     * change; one round trip).  Lower than it, or the same id with another
     * generation: the stream was deleted and begun again within what its
     * ids can tell apart (the same millisecond, or Redis's clock stepped
     * back), so reading after the position would see nothing of it. */
    featstore_change tail;
    int n = 0;
    arena_reset(a);
    if ((rc = featstore_get_item_changes(fs, NULL, 1, deadline_ns, a, &tail, &n, err, errlen)) < 0)
        return rc;
    if (n) {
        int c = id_cmp(tail.id, st->last_id);
        if (c < 0 || (c == 0 && tail.gen != st->last_gen)) {
            drop_all(cache, out, "the item-change stream began again");
            snprintf(st->last_id, sizeof st->last_id, "%s", tail.id);
            st->last_gen = tail.gen;
            n = 0;
        }
    }
    int tail_newer = n && id_cmp(tail.id, st->last_id) > 0;
    n = 0;
    for (int round = 0; tail_newer && round < ITEM_CHANGES_ROUNDS; round++) {
        arena_reset(a);
        featstore_change *recs = arena_alloc(a, ITEM_CHANGES_CHUNK * sizeof *recs,
                                             _Alignof(featstore_change));
        if (!recs) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
        rc = featstore_get_item_changes(fs, st->last_id, ITEM_CHANGES_CHUNK, deadline_ns, a, recs,
                                        &n, err, errlen);
        if (rc < 0) return rc;
        for (int i = 0; i < n; i++) {
            if (recs[i].gen != st->last_gen + 1) {
                drop_all(cache, out, recs[i].gen > st->last_gen + 1
                                         ? "item-change records were trimmed before they "
                                           "were read"
                                         : "the item-change stream began again");
            } else if (cache) {
                out->applied += item_cache_invalidate(cache, recs[i].ids, (size_t)recs[i].n);
            }
            snprintf(st->last_id, sizeof st->last_id, "%s", recs[i].id);
            st->last_gen = recs[i].gen;
            out->lag_s = (now_unix_ms() - (double)recs[i].ms) * 1e-3;
            out->records++;
        }
        if (n < ITEM_CHANGES_CHUNK) break;
    }
    out->more = n == ITEM_CHANGES_CHUNK;
    /* Read to the end, and the marker names later changes than the stream
     * holds: they were lost (the stream deleted). */
    if (!out->more && marker_gen > st->last_gen) {
        drop_all(cache, out, "the feature-set marker names item changes the stream no "
                             "longer holds");
        st->last_gen = marker_gen;
    }
    return CTR_OK;
}
