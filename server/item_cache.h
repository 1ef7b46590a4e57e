/*
 * item_cache.h - the process's cache of item vectors, shared by every
 * worker thread.
 *
 * A rank request names ~300 candidate items plus the user's history; each
 * needs its item vector (engine_item_vec_floats floats; QIN's is about 12.5
 * KiB for the production model, 9 KiB where its attention runs in bf16;
 * copied as opaque bytes).  Computing one costs a Redis round trip
 * and a few small matrix-vector products, so the server keeps recent ones
 * here.  The workload: 2..64 threads, each looking up a few hundred ids per
 * request, almost all hits once warm; inserts only on misses.
 *
 * Usage:
 *
 *     item_cache_params p = item_cache_default_params();
 *     p.vec_floats = engine_item_vec_floats(model);
 *     item_cache *c;
 *     if (item_cache_init(&p, &c, err, sizeof err) < 0) ...
 *
 *     item_cache_ref ref;
 *     const float *v = item_cache_get(c, id, &ref);
 *     if (!v) {
 *         ... compute vec ...
 *         v = item_cache_put(c, id, vec, &ref);   // NULL only out of memory
 *     }
 *     ... read v in place ...
 *     item_cache_release(c, &ref);
 *
 * Pinning: a vector returned by get or put stays valid until its ref is
 * released, even if it is evicted, expires or is replaced meanwhile; the
 * cache only unlinks such an entry and the last release frees it.  Readers
 * therefore never copy a vector, and never hold a lock while scoring.
 *
 * One cache belongs to one loaded model (vectors depend on the weights): the
 * server creates a fresh cache with each model and frees it once the old
 * model is no longer in use.  Keys are item ids only.  Releasing a ref into a
 * different cache than the one that produced it is caught by an assert.
 *
 * Memory: `max_bytes` bounds the bytes of the entries held by the table (each
 * entry is a 64-byte header plus the vector, rounded up to 64 bytes).  On top
 * of that come the bucket arrays (8 bytes per entry the budget allows) and
 * entries that were evicted while pinned, which live only until their pins
 * are released (at most the number of refs the workers hold at once).
 * Entries are carved from 2 MB chunks backed by transparent huge pages where
 * the kernel allows (madvise), and a freed entry's memory is reused for the
 * next one: the chunks, up to the most entries alive at once rounded up to
 * 2 MB, are returned to the system when the cache is freed.
 *
 * Thread-safety: every function except init and free may be called from any
 * number of threads at once.  Locks: one mutex per shard, held only for the
 * hash lookup, the LRU update and the pin; release takes none, except the
 * cache's allocator lock when it frees an entry evicted while pinned (put
 * takes it too, to allocate).
 */
#ifndef CTR_SERVER_ITEM_CACHE_H
#define CTR_SERVER_ITEM_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/status.h"

typedef struct item_cache item_cache;

typedef struct item_cache_params {
    /* Bytes the table may hold (256 MiB).  0 disables caching: get always
     * misses and put hands back a private pinned copy that release frees,
     * so callers need no separate code path. */
    size_t max_bytes;
    /* Lifetime of an entry from its insertion, in ms (600000 = 10 min).
     * Vectors depend only on the model, which never changes under a cache,
     * but item features (tags, multimodal embedding) in the feature store
     * may be rewritten; the TTL bounds how stale a vector can get.  0 means
     * entries never expire. */
    uint64_t ttl_ms;
    /* Floats per vector: engine_item_vec_floats(model).  Required (> 0). */
    size_t vec_floats;
    /* Lock stripes (64), rounded up to a power of two.  Fewer are used when
     * max_bytes is too small to give every shard room for 4 entries, since
     * each shard evicts within its own share of the budget. */
    int shards;
    /* Clock in milliseconds for the TTL; NULL means CLOCK_MONOTONIC.  Tests
     * pass their own to expire entries without sleeping. */
    uint64_t (*clock_ms)(void *arg);
    void *clock_arg;
} item_cache_params;

item_cache_params item_cache_default_params(void);

/* A pin on one entry, filled in by get/put and given back to release.
 * Plain data the caller owns (on its stack or in a per-request array).
 * A zeroed ref, or one left by a miss, is empty: releasing it is a no-op. */
typedef struct item_cache_ref {
    void *entry;
} item_cache_ref;

/* Counters since init; each is read with an atomic load, without locks, so
 * a snapshot taken while other threads work is only approximately
 * consistent across fields (each field on its own is exact). */
typedef struct item_cache_stats {
    uint64_t hits;
    uint64_t misses;        /* includes lookups that found an expired entry */
    uint64_t insertions;    /* puts that added an entry (not lost races) */
    uint64_t evictions;     /* entries dropped to stay within max_bytes */
    uint64_t expirations;   /* entries dropped because their TTL passed */
    uint64_t invalidations; /* entries dropped by invalidate or clear */
    uint64_t entries;       /* entries in the table now */
    uint64_t bytes;         /* bytes of those entries */
} item_cache_stats;

/* Builds a cache.  CTR_EINVAL (with a message) for vec_floats == 0 or
 * shards < 1, CTR_ENOMEM.  On success *out owns the cache. */
int item_cache_init(const item_cache_params *p, item_cache **out, char *err,
                    size_t errlen);

/* Frees the cache and every entry.  Every ref must have been released
 * (asserted in debug builds).  NULL is a no-op. */
void item_cache_free(item_cache *c);

/* The vector of `id`, pinned through *ref, or NULL (and an empty *ref) when
 * it is not cached or has expired.  The pointer is 64-byte aligned, holds
 * vec_floats floats and is valid until item_cache_release(c, ref). */
const float *item_cache_get(item_cache *c, int64_t id, item_cache_ref *ref);

/* Copies vec (vec_floats floats) into a new entry for `id` and returns that
 * entry pinned through *ref.  If another thread cached `id` first, returns
 * its entry instead (the two are equal, both computed from the same model
 * and features) and vec is not used.  Inserting may evict the least
 * recently used entries of the shard.  NULL (and an empty *ref) only when
 * out of memory; the caller then goes on with its own vec. */
const float *item_cache_put(item_cache *c, int64_t id, const float *vec,
                            item_cache_ref *ref);

/* Invalidation, for item features rewritten in the feature store (the
 * health check reads ctr-load's change records).  A worker that read an
 * item's features before the rewrite may put its stale vector after the
 * invalidation ran; to keep that vector out, a worker reads the epoch
 * before it reads features from the store and puts with item_cache_put_at,
 * which does not cache (it hands back a private pinned copy, as a disabled
 * cache does) when any invalidation ran since that epoch.  Invalidations
 * come a few times a second at most, so the puts they turn away cost a
 * recomputation of those items on their next request, nothing more. */

/* The cache's invalidation count, for item_cache_put_at. */
uint64_t item_cache_epoch(const item_cache *c);

/* item_cache_put, unless an invalidation ran since epoch was read (see
 * above): then the vector is handed back pinned but not cached. */
const float *item_cache_put_at(item_cache *c, int64_t id, const float *vec, uint64_t epoch,
                               item_cache_ref *ref);

/* Drops the entries of ids[0..n) (absent ones are skipped; pinned ones
 * live on for their pins, unlinked).  Returns how many were cached. */
size_t item_cache_invalidate(item_cache *c, const int64_t *ids, size_t n);

/* Drops every entry.  Returns how many there were. */
size_t item_cache_clear(item_cache *c);

/* Unpins; the pointer from get/put must not be used afterwards.  Frees the
 * entry if it was unlinked and this was its last pin.  Empties *ref. */
void item_cache_release(item_cache *c, item_cache_ref *ref);

/* get for n ids: vecs[i] and refs[i] as item_cache_get would set them.
 * Returns the number of hits.  Every refs[i] must be released (release_many
 * does it, and ignores the empty ones). */
size_t item_cache_get_many(item_cache *c, const int64_t *ids, size_t n,
                           const float **vecs, item_cache_ref *refs);

void item_cache_release_many(item_cache *c, item_cache_ref *refs, size_t n);

/* The counters; thread-safe, lock-free. */
void item_cache_stats_get(const item_cache *c, item_cache_stats *out);

/* The vec_floats the cache was built with. */
size_t item_cache_vec_floats(const item_cache *c);

/* Bytes one entry costs against max_bytes (header + vector, rounded up to
 * 64), for sizing and logs. */
size_t item_cache_entry_bytes(const item_cache *c);

#endif
