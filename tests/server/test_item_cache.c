/*
 * test_item_cache.c - server/item_cache.c: hits and misses, TTL with a
 * clock the test drives, the byte bound, pinned entries surviving eviction
 * (a use after free would trip ASan), the disabled cache, and threads
 * hammering overlapping ids with a value pattern every reader checks,
 * followed by a consistency check of the counters.  Run under
 * SANITIZE=thread for the data-race check.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sched.h>
#include <time.h>

#include "server/item_cache.h"

#define VF 1152   /* floats per vector, the production model's size */

/* The pattern every vector carries: vec[k] = id + k (exact in float for the
 * ids used here). */
static void fill(float *v, size_t n, int64_t id) {
    for (size_t k = 0; k < n; k++) v[k] = (float)(id + (int64_t)k);
}

static int check(const float *v, size_t n, int64_t id) {
    for (size_t k = 0; k < n; k++)
        if (v[k] != (float)(id + (int64_t)k)) return 0;
    return 1;
}

static uint64_t fake_now;
static uint64_t fake_clock(void *arg) {
    (void)arg;
    return fake_now;
}

static item_cache *make(size_t max_bytes, uint64_t ttl_ms, int shards, size_t vf) {
    item_cache_params p = item_cache_default_params();
    p.max_bytes = max_bytes;
    p.ttl_ms = ttl_ms;
    p.shards = shards;
    p.vec_floats = vf;
    p.clock_ms = fake_clock;
    item_cache *c;
    char err[128];
    if (item_cache_init(&p, &c, err, sizeof err) != CTR_OK) fail_msg("%s", err);
    return c;
}

static void test_defaults_and_errors(void **state) {
    item_cache_params p = item_cache_default_params();
    assert_int_equal(p.max_bytes, (size_t)256 << 20);
    assert_int_equal(p.ttl_ms, 600000);
    assert_int_equal(p.shards, 64);
    item_cache *c = (item_cache *)1;
    char err[128];
    assert_int_equal(item_cache_init(&p, &c, err, sizeof err), CTR_EINVAL);
    assert_null(c);
    assert_non_null(strstr(err, "vec_floats"));
    p.vec_floats = 4;
    p.shards = 0;
    assert_int_equal(item_cache_init(&p, &c, err, sizeof err), CTR_EINVAL);
    assert_non_null(strstr(err, "shards"));
    item_cache_free(NULL);
}

static void test_hit_miss(void **state) {
    item_cache *c = make(1 << 20, 0, 4, VF);
    assert_int_equal(item_cache_vec_floats(c), VF);
    assert_int_equal(item_cache_entry_bytes(c), 64 + VF * 4);
    float vec[VF];
    item_cache_ref ref = {(void *)1};

    assert_null(item_cache_get(c, 7, &ref));
    assert_null(ref.entry);
    item_cache_release(c, &ref);   /* empty ref: no-op */

    fill(vec, VF, 7);
    const float *v = item_cache_put(c, 7, vec, &ref);
    assert_non_null(v);
    assert_true(v != vec);                      /* a copy */
    assert_int_equal((uintptr_t)v % 64, 0);     /* aligned for SIMD */
    assert_true(check(v, VF, 7));
    memset(vec, 0, sizeof vec);                 /* the cache owns its copy */
    assert_true(check(v, VF, 7));
    item_cache_release(c, &ref);
    assert_null(ref.entry);

    item_cache_ref r2;
    const float *g = item_cache_get(c, 7, &r2);
    assert_ptr_equal(g, v);
    assert_true(check(g, VF, 7));
    assert_null(item_cache_get(c, 8, &ref));
    item_cache_release(c, &r2);

    /* A put for an id already cached returns the cached entry. */
    fill(vec, VF, 1000);
    const float *p2 = item_cache_put(c, 7, vec, &ref);
    assert_ptr_equal(p2, v);
    assert_true(check(p2, VF, 7));
    item_cache_release(c, &ref);

    item_cache_stats st;
    item_cache_stats_get(c, &st);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.insertions, 1);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.bytes, item_cache_entry_bytes(c));
    assert_int_equal(st.evictions, 0);
    item_cache_free(c);
}

static void test_many(void **state) {
    item_cache *c = make(1 << 20, 0, 8, 16);
    float vec[16];
    item_cache_ref ref;
    for (int64_t id = 0; id < 50; id += 2) {
        fill(vec, 16, id);
        item_cache_put(c, id, vec, &ref);
        item_cache_release(c, &ref);
    }
    int64_t ids[50];
    const float *vecs[50];
    item_cache_ref refs[50];
    for (int i = 0; i < 50; i++) ids[i] = 49 - i;
    assert_int_equal(item_cache_get_many(c, ids, 50, vecs, refs), 25);
    for (int i = 0; i < 50; i++) {
        if (ids[i] % 2 == 0) {
            assert_non_null(vecs[i]);
            assert_true(check(vecs[i], 16, ids[i]));
        } else {
            assert_null(vecs[i]);
            assert_null(refs[i].entry);
        }
    }
    item_cache_release_many(c, refs, 50);
    for (int i = 0; i < 50; i++) assert_null(refs[i].entry);
    item_cache_free(c);
}

static void test_ttl(void **state) {
    fake_now = 1000;
    item_cache *c = make(1 << 20, 50, 4, 8);
    float vec[8];
    item_cache_ref ref;
    fill(vec, 8, 3);
    item_cache_put(c, 3, vec, &ref);
    item_cache_release(c, &ref);

    fake_now = 1049;
    assert_non_null(item_cache_get(c, 3, &ref));
    item_cache_release(c, &ref);
    fake_now = 1050;                             /* inserted at 1000 + 50 */
    assert_null(item_cache_get(c, 3, &ref));
    item_cache_stats st;
    item_cache_stats_get(c, &st);
    assert_int_equal(st.expirations, 1);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);

    /* Pinned while it expires: still readable, then freed on release. */
    fill(vec, 8, 4);
    const float *v = item_cache_put(c, 4, vec, &ref);
    fake_now = 2000;
    item_cache_ref r2;
    assert_null(item_cache_get(c, 4, &r2));
    assert_true(check(v, 8, 4));
    item_cache_release(c, &ref);

    /* A put over an expired entry replaces it. */
    fill(vec, 8, 5);
    item_cache_put(c, 5, vec, &ref);
    item_cache_release(c, &ref);
    fake_now = 3000;
    fill(vec, 8, 6);      /* a different pattern proves it is the new copy */
    const float *n = item_cache_put(c, 5, vec, &ref);
    assert_true(check(n, 8, 6));
    item_cache_release(c, &ref);
    item_cache_stats_get(c, &st);
    assert_int_equal(st.expirations, 3);
    assert_int_equal(st.insertions, 4);
    assert_int_equal(st.entries, 1);

    /* ttl 0: never expires. */
    item_cache_free(c);
    c = make(1 << 20, 0, 4, 8);
    item_cache_put(c, 1, vec, &ref);
    item_cache_release(c, &ref);
    fake_now = UINT64_MAX - 1;
    assert_non_null(item_cache_get(c, 1, &ref));
    item_cache_release(c, &ref);
    item_cache_free(c);
    fake_now = 0;
}

static void test_byte_bound(void **state) {
    const size_t max = 1 << 20;
    item_cache *c = make(max, 0, 16, VF);
    size_t eb = item_cache_entry_bytes(c);
    float vec[VF];
    item_cache_ref ref;
    item_cache_stats st;
    for (int64_t id = 1; id <= 20000; id++) {
        fill(vec, VF, id % 1000);
        const float *v = item_cache_put(c, id, vec, &ref);
        assert_non_null(v);
        item_cache_release(c, &ref);
        if (id % 97 == 0) {
            item_cache_stats_get(c, &st);
            assert_true(st.bytes <= max);
            assert_int_equal(st.bytes, st.entries * eb);
        }
    }
    item_cache_stats_get(c, &st);
    assert_true(st.bytes <= max);
    assert_int_equal(st.bytes, st.entries * eb);
    assert_int_equal(st.insertions, 20000);
    assert_int_equal(st.insertions - st.evictions, st.entries);
    /* Sharded LRU may leave each shard short of its share, but not by much. */
    assert_true(st.bytes > max / 2);
    /* The most recent id survives, the oldest does not. */
    assert_non_null(item_cache_get(c, 20000, &ref));
    item_cache_release(c, &ref);
    assert_null(item_cache_get(c, 1, &ref));
    item_cache_free(c);

    /* A budget smaller than one entry caches nothing, yet put still hands
     * back a usable pinned vector. */
    c = make(100, 0, 64, VF);
    fill(vec, VF, 9);
    const float *v = item_cache_put(c, 9, vec, &ref);
    assert_non_null(v);
    assert_true(check(v, VF, 9));
    item_cache_stats_get(c, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.evictions, 1);
    item_cache_release(c, &ref);
    item_cache_free(c);
}

static void test_lru_order(void **state) {
    /* One shard, room for exactly 4 entries. */
    item_cache *c = make(4 * (64 + 64), 0, 1, 16);
    float vec[16];
    item_cache_ref ref;
    for (int64_t id = 1; id <= 4; id++) {
        fill(vec, 16, id);
        item_cache_put(c, id, vec, &ref);
        item_cache_release(c, &ref);
    }
    assert_non_null(item_cache_get(c, 1, &ref));   /* 1 becomes recent */
    item_cache_release(c, &ref);
    fill(vec, 16, 5);
    item_cache_put(c, 5, vec, &ref);               /* evicts 2, the LRU */
    item_cache_release(c, &ref);
    assert_null(item_cache_get(c, 2, &ref));
    for (int64_t id = 1; id <= 5; id++) {
        if (id == 2) continue;
        assert_non_null(item_cache_get(c, id, &ref));
        item_cache_release(c, &ref);
    }
    item_cache_free(c);
}

static void test_pinned_eviction(void **state) {
    item_cache *c = make(4 * (64 + VF * 4), 0, 1, VF);
    float vec[VF];
    item_cache_ref pinned, ref;
    fill(vec, VF, 1);
    const float *v = item_cache_put(c, 1, vec, &pinned);
    /* Push id 1 out while it is pinned. */
    for (int64_t id = 2; id < 40; id++) {
        fill(vec, VF, id);
        item_cache_put(c, id, vec, &ref);
        item_cache_release(c, &ref);
    }
    assert_null(item_cache_get(c, 1, &ref));
    /* Still ours: reading it is valid (ASan would flag a freed block). */
    assert_true(check(v, VF, 1));
    /* A fresh copy can be cached alongside the pinned orphan. */
    fill(vec, VF, 1);
    const float *v2 = item_cache_put(c, 1, vec, &ref);
    assert_true(v2 != v);
    assert_true(check(v2, VF, 1));
    item_cache_release(c, &ref);
    item_cache_release(c, &pinned);   /* frees the orphan (LSan checks) */
    item_cache_stats st;
    item_cache_stats_get(c, &st);
    assert_int_equal(st.entries, 4);
    assert_int_equal(st.insertions, 40);
    item_cache_free(c);
}

static void test_disabled(void **state) {
    item_cache *c = make(0, 600000, 64, VF);
    float vec[VF];
    item_cache_ref a, b;
    assert_null(item_cache_get(c, 1, &a));
    fill(vec, VF, 1);
    const float *v1 = item_cache_put(c, 1, vec, &a);
    const float *v2 = item_cache_put(c, 1, vec, &b);
    assert_non_null(v1);
    assert_non_null(v2);
    assert_true(v1 != v2 && v1 != vec);    /* private copies */
    memset(vec, 0, sizeof vec);
    assert_true(check(v1, VF, 1) && check(v2, VF, 1));
    item_cache_ref miss;
    assert_null(item_cache_get(c, 1, &miss));
    item_cache_release(c, &a);
    item_cache_release(c, &b);
    item_cache_stats st;
    item_cache_stats_get(c, &st);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.hits, 0);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    item_cache_free(c);
}

/* --- Threads ---------------------------------------------------------- */

#define NTHREADS 8
#define NIDS 600
#define HOLD 24     /* refs a thread keeps pinned at once, like a request */

typedef struct worker {
    item_cache *c;
    uint64_t seed;
    uint64_t gets, hits, bad;
    struct timespec deadline;
} worker;

static atomic_int stop;

static uint64_t rnd(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int past(const struct timespec *d) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > d->tv_sec || (now.tv_sec == d->tv_sec && now.tv_nsec >= d->tv_nsec);
}

static void *hammer(void *arg) {
    worker *w = arg;
    size_t vf = item_cache_vec_floats(w->c);
    float *vec = malloc(vf * sizeof *vec);
    const float *held[HOLD];
    int64_t held_id[HOLD];
    item_cache_ref refs[HOLD];
    for (int round = 0; !atomic_load(&stop); round++) {
        for (int i = 0; i < HOLD; i++) {
            /* Skewed ids: low ids are hot, so threads collide on them. */
            uint64_t r = rnd(&w->seed);
            int64_t id = (int64_t)((r % NIDS) * ((r >> 32) % NIDS) / NIDS) + 1;
            held_id[i] = id;
            w->gets++;
            held[i] = item_cache_get(w->c, id, &refs[i]);
            if (held[i]) {
                w->hits++;
            } else {
                fill(vec, vf, id);
                held[i] = item_cache_put(w->c, id, vec, &refs[i]);
                if (!held[i]) w->bad++;
            }
        }
        /* Everything pinned must still read right while others evict. */
        for (int i = 0; i < HOLD; i++)
            if (held[i] && !check(held[i], vf, held_id[i])) w->bad++;
        item_cache_release_many(w->c, refs, HOLD);
        if ((round & 15) == 0 && past(&w->deadline)) break;
    }
    atomic_store(&stop, 1);
    free(vec);
    return NULL;
}

static void run_threads(item_cache *c, double seconds) {
    pthread_t t[NTHREADS];
    worker w[NTHREADS];
    struct timespec d;
    clock_gettime(CLOCK_MONOTONIC, &d);
    d.tv_sec += (time_t)seconds;
    d.tv_nsec += (long)((seconds - (double)(time_t)seconds) * 1e9);
    if (d.tv_nsec >= 1000000000L) d.tv_sec++, d.tv_nsec -= 1000000000L;
    atomic_store(&stop, 0);
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (worker){.c = c, .seed = 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1),
                        .deadline = d};
        assert_int_equal(pthread_create(&t[i], NULL, hammer, &w[i]), 0);
    }
    uint64_t gets = 0, hits = 0, bad = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(t[i], NULL);
        gets += w[i].gets;
        hits += w[i].hits;
        bad += w[i].bad;
    }
    assert_int_equal(bad, 0);
    item_cache_stats st;
    item_cache_stats_get(c, &st);
    assert_int_equal(st.hits, hits);
    assert_int_equal(st.hits + st.misses, gets);
    assert_true(st.insertions <= st.misses);
    assert_int_equal(st.insertions - st.evictions - st.expirations - st.invalidations,
                     st.entries);
    assert_int_equal(st.bytes, st.entries * item_cache_entry_bytes(c));
    print_message("    %llu gets, %llu hits, %llu insertions, %llu evictions, "
                  "%llu expirations\n",
                  (unsigned long long)gets, (unsigned long long)st.hits,
                  (unsigned long long)st.insertions, (unsigned long long)st.evictions,
                  (unsigned long long)st.expirations);
}

static void test_threads_evicting(void **state) {
    /* Room for ~200 of 600 ids in 8 shards: constant eviction of pinned
     * entries. */
    item_cache_params p = item_cache_default_params();
    p.vec_floats = 256;
    p.max_bytes = 200 * (64 + 256 * 4);
    p.shards = 8;
    p.ttl_ms = 0;
    item_cache *c;
    assert_int_equal(item_cache_init(&p, &c, NULL, 0), CTR_OK);
    run_threads(c, 0.4);
    item_cache_stats st;
    item_cache_stats_get(c, &st);
    assert_true(st.evictions > 0);
    assert_true(st.bytes <= p.max_bytes);
    item_cache_free(c);
}

static void test_threads_expiring(void **state) {
    /* Everything fits; a 2 ms TTL on the real clock makes entries expire
     * under the readers instead. */
    item_cache_params p = item_cache_default_params();
    p.vec_floats = 64;
    p.max_bytes = 64 << 20;
    p.ttl_ms = 2;
    item_cache *c;
    assert_int_equal(item_cache_init(&p, &c, NULL, 0), CTR_OK);
    run_threads(c, 0.4);
    item_cache_stats st;
    item_cache_stats_get(c, &st);
    assert_true(st.expirations > 0);
    assert_int_equal(st.evictions, 0);
    item_cache_free(c);
}

/* Invalidate and clear drop entries (pinned ones live on for their pins);
 * a put_at whose epoch an invalidation passed hands back a private copy
 * and caches nothing. */
static void test_invalidate(void **state) {
    item_cache *c = make(1 << 22, 0, 4, VF);
    float vec[VF];
    item_cache_ref ref, pin;
    for (int64_t id = 1; id <= 10; id++) {
        fill(vec, VF, id);
        assert_non_null(item_cache_put(c, id, vec, &ref));
        item_cache_release(c, &ref);
    }
    const float *held = item_cache_get(c, 3, &pin);
    assert_non_null(held);
    uint64_t e0 = item_cache_epoch(c);
    const int64_t ids[] = {3, 5, 99};
    assert_int_equal(item_cache_invalidate(c, ids, 3), 2);
    assert_true(item_cache_epoch(c) != e0);
    assert_null(item_cache_get(c, 3, &ref));
    assert_null(item_cache_get(c, 5, &ref));
    assert_non_null(item_cache_get(c, 4, &ref));
    item_cache_release(c, &ref);
    assert_true(check(held, VF, 3));   /* still pinned, still whole */
    item_cache_release(c, &pin);

    /* A vector computed from features read before the invalidation. */
    fill(vec, VF, 5);
    const float *v = item_cache_put_at(c, 5, vec, e0, &ref);
    assert_non_null(v);
    assert_true(check(v, VF, 5));
    item_cache_ref r2;
    assert_null(item_cache_get(c, 5, &r2));   /* not cached */
    item_cache_release(c, &ref);
    /* Read after it: cached. */
    v = item_cache_put_at(c, 5, vec, item_cache_epoch(c), &ref);
    item_cache_release(c, &ref);
    assert_non_null(item_cache_get(c, 5, &r2));
    item_cache_release(c, &r2);

    item_cache_stats st;
    item_cache_stats_get(c, &st);
    assert_int_equal(st.entries, 9);
    assert_int_equal(st.invalidations, 2);
    assert_int_equal(item_cache_clear(c), 9);
    item_cache_stats_get(c, &st);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.invalidations, 11);
    assert_int_equal(st.insertions - st.evictions - st.expirations - st.invalidations,
                     st.entries);
    assert_null(item_cache_get(c, 1, &ref));
    item_cache_free(c);

    /* A disabled cache: nothing to drop, put_at still hands back copies. */
    c = make(0, 0, 1, VF);
    assert_int_equal(item_cache_invalidate(c, ids, 3), 0);
    assert_int_equal(item_cache_clear(c), 0);
    v = item_cache_put_at(c, 1, vec, 0, &ref);
    assert_non_null(v);
    item_cache_release(c, &ref);
    item_cache_free(c);
}

/* Workers read an item's "features" (a version per id) and cache its
 * vector, as rank.c does, while an updater rewrites features (the version
 * goes up) and then invalidates, as the health check does after ctr-load:
 * once both stop, no entry may hold a vector of an older version. */
#define RACE_IDS 16
static atomic_uint_fast64_t race_version[RACE_IDS];   /* the "feature store" */
static atomic_uint_fast64_t race_applied[RACE_IDS];   /* versions invalidated for */
static atomic_int race_stale;

typedef struct racer {
    item_cache *c;
    uint64_t seed;
} racer;

static void *race_reader(void *arg) {
    racer *r = arg;
    float vec[64];
    while (!atomic_load(&stop)) {
        int64_t id = (int64_t)(rnd(&r->seed) % RACE_IDS);
        uint64_t applied = atomic_load(&race_applied[id]);
        item_cache_ref ref;
        const float *v = item_cache_get(r->c, id, &ref);
        if (v) {
            /* Once a change is applied, no older vector may be found. */
            if (v[0] < (float)applied) atomic_fetch_add(&race_stale, 1);
        } else {
            uint64_t e = item_cache_epoch(r->c);                  /* before the read */
            uint64_t ver = atomic_load(&race_version[id]);         /* the "Redis" read */
            for (int k = 0; k < 64; k++) vec[k] = (float)ver;
            if (rnd(&r->seed) % 4 == 0) sched_yield();             /* widen the window */
            v = item_cache_put_at(r->c, id, vec, e, &ref);
        }
        item_cache_release(r->c, &ref);
    }
    return NULL;
}

static void test_invalidate_race(void **state) {
    item_cache *c = make(1 << 22, 0, 4, 64);
    for (int i = 0; i < RACE_IDS; i++) {
        atomic_store(&race_version[i], 0);
        atomic_store(&race_applied[i], 0);
    }
    atomic_store(&race_stale, 0);
    atomic_store(&stop, 0);
    pthread_t t[4];
    racer r[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (racer){c, 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 3)};
        assert_int_equal(pthread_create(&t[i], NULL, race_reader, &r[i]), 0);
    }
    uint64_t seed = 7;
    for (int round = 0; round < 20000; round++) {
        int64_t id = (int64_t)(rnd(&seed) % RACE_IDS);
        uint64_t v = atomic_fetch_add(&race_version[id], 1) + 1;   /* ctr-load's SET ... */
        item_cache_invalidate(c, &id, 1);        /* ... then the change applied */
        atomic_store(&race_applied[id], v);
        if (round % 8 == 0) sched_yield();
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    int stale = 0;
    for (int64_t id = 0; id < RACE_IDS; id++) {
        item_cache_ref ref;
        const float *v = item_cache_get(c, id, &ref);
        if (v && v[0] != (float)atomic_load(&race_version[id])) stale++;
        item_cache_release(c, &ref);
    }
    assert_int_equal(stale, 0);
    assert_int_equal(atomic_load(&race_stale), 0);
    item_cache_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_errors),
        cmocka_unit_test(test_hit_miss),
        cmocka_unit_test(test_many),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_byte_bound),
        cmocka_unit_test(test_lru_order),
        cmocka_unit_test(test_pinned_eviction),
        cmocka_unit_test(test_disabled),
        cmocka_unit_test(test_invalidate),
        cmocka_unit_test(test_invalidate_race),
        cmocka_unit_test(test_threads_evicting),
        cmocka_unit_test(test_threads_expiring),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
