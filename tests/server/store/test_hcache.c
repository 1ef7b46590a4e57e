/*
 * test_hcache.c - the users' history cache (server/store/hcache.h) under
 * the feature store, on real redis-servers: the run's Redis ($CTR_REDIS)
 * and, for what would disturb other tests (FLUSHDB, CLIENT KILL of the
 * subscriber, a restart, an ACL user), a redis-server of the test's own.
 *
 * Checked: a cached history answers without a command reaching Redis
 * (INFO commandstats); a write by another client (SET, FCALL ctr_append) is
 * seen by the very next read, every time; a missing user is cached as
 * missing and seen once written; an insert stamped before an invalidation
 * of its key is refused; the link killed, Redis restarted, FLUSHDB, or
 * tracking refused: nothing stale is served, reads go to Redis, and
 * caching resumes when the link is back; eviction, TTL, shorter and longer
 * reads of one key.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "server/cmd/redis_functions.h"
#include "server/store/hcache.h"
#include "tests/server/store/store_fixture.h"

/* --- Helpers ------------------------------------------------------------ */

static void set_user(redisContext *c, const char *user, const int64_t *ids, int n) {
    unsigned char v[4096];
    size_t len = 0;
    assert_int_equal(features_user_encode_v2(ids, n, 100, v, sizeof v, &len, err, sizeof err),
                     CTR_OK);
    redisReply *r = admin_cmd(c, "SET %su:%s %b", prefix, user, v, len);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
}

static hcache *start_cache(const char *addr, int max_ids, size_t bytes, int ttl_ms,
                           const char *user, const char *password) {
    hcache_params hp = hcache_default_params();
    hp.max_ids = max_ids;
    hp.max_bytes = bytes;
    hp.ttl_ms = ttl_ms;
    hcache *c;
    assert_int_equal(hcache_init(&hp, &c, err, sizeof err), CTR_OK);
    char up[128];
    snprintf(up, sizeof up, "%su:", prefix);
    const char *prefixes[] = {up};
    hcache_link_params lp = {.addr = addr, .user = user, .password = password,
                             .connect_timeout_ms = 2000, .prefixes = prefixes,
                             .nprefixes = 1, .retry_ms = 20, .ping_ms = 100};
    assert_int_equal(hcache_start(c, &lp, err, sizeof err), CTR_OK);
    return c;
}

static featstore *cached_fs(const char *addr, hcache *c, int max_seq) {
    featstore_params p = fs_params();
    p.addr = addr;
    p.max_seq = max_seq;
    p.history_cache = c;
    return open_fs(&p);
}

/* Reads user (keep: max_seq); returns the status, *trips 1 when it went to
 * Redis. */
static int read_user(featstore *fs, const char *user, int keep, int64_t **h, int *n,
                     int *trips) {
    uint64_t t0 = featstore_round_trips(fs);
    arena_reset(&A);
    int rc = featstore_get_user(fs, user, keep, ms_from_now(2000), &A, h, n, err, sizeof err);
    *trips = (int)(featstore_round_trips(fs) - t0);
    return rc;
}

/* Reads user until a read is answered from the cache (a read right after
 * a write may overtake the write's invalidation, and its insert is then
 * refused); fails the test after 200 reads. */
static void warm(featstore *fs, const char *user) {
    int64_t *h;
    int n, trips = 1;
    for (int k = 0; k < 200 && trips; k++) {
        read_user(fs, user, 0, &h, &n, &trips);
        if (trips) sleep_ms(1);
    }
    assert_int_equal(trips, 0);
}

static void check_ids(const int64_t *h, int n, const int64_t *want, int wn) {
    assert_int_equal(n, wn);
    for (int i = 0; i < n; i++) assert_int_equal(h[i], want[i]);
}

static hcache_stats stats(const hcache *c) {
    hcache_stats st;
    hcache_stats_get(c, &st);
    return st;
}

/* Waits until the link has been told of `more` invalidations more than
 * `base` (up to 2 s). */
static void wait_invalidations(const hcache *c, uint64_t base, uint64_t more) {
    for (int i = 0; i < 2000 && stats(c).invalidations < base + more; i++) sleep_ms(1);
    assert_true(stats(c).invalidations >= base + more);
}

static void wait_down(const hcache *c) {
    for (int i = 0; i < 2000 && stats(c).up; i++) sleep_ms(1);
    assert_int_equal(stats(c).up, 0);
}

/* --- A redis-server of the test's own --------------------------------------- */

static pid_t own_pid;
static int own_port;
static char own_addr[64];

static void own_start(int port) {
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    own_pid = fork();
    assert_true(own_pid >= 0);
    if (own_pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 1), dup2(devnull, 2);
        execlp("redis-server", "redis-server", "--port", ps, "--bind", "127.0.0.1", "--save",
               "", "--appendonly", "no", (char *)NULL);
        _exit(127);
    }
    own_port = port;
    snprintf(own_addr, sizeof own_addr, "127.0.0.1:%d", port);
    for (int i = 0; i < 600; i++) {   /* a loaded machine may start it slowly */
        redisContext *c = admin_connect("127.0.0.1", port);
        if (c) {
            redisFree(c);
            return;
        }
        sleep_ms(10);
    }
    fail_msg("redis-server on port %d did not start", port);
}

static void own_stop(void) {
    if (own_pid <= 0) return;
    kill(own_pid, SIGTERM);
    waitpid(own_pid, NULL, 0);
    own_pid = 0;
}

/* --- Tests ---------------------------------------------------------------------- */

/* Read once, then from the cache with no command reaching Redis; a SET
 * and appends by another client are seen by the very next read. */
static void test_cached_and_fresh(void **state) {
    (void)state;
    featstore_params lp = fs_params();
    lp.addr = redis_addr;
    featstore *loader = open_fs(&lp);
    assert_int_equal(featstore_load_functions(loader, redis_functions_lua,
                                              redis_functions_lua_len, err, sizeof err),
                     CTR_OK);
    featstore_close(loader);

    hcache *c = start_cache(redis_addr, 64, 4 << 20, 60000, NULL, NULL);
    assert_true(hcache_wait_up(c, 5000));
    featstore *fs = cached_fs(redis_addr, c, 64);
    int64_t ids[200];
    for (int i = 0; i < 200; i++) ids[i] = 1000 + i;
    set_user(admin, "a", ids, 3);
    int64_t *h;
    int n, trips;
    assert_int_equal(read_user(fs, "a", 0, &h, &n, &trips), CTR_OK);
    check_ids(h, n, ids, 3);
    assert_int_equal(trips, 1);
    warm(fs, "a");
    long long strlen0 = admin_calls(admin, "strlen"), getrange0 = admin_calls(admin, "getrange");
    for (int k = 0; k < 5; k++) {
        assert_int_equal(read_user(fs, "a", 0, &h, &n, &trips), CTR_OK);
        check_ids(h, n, ids, 3);
        assert_int_equal(trips, 0);
    }
    assert_int_equal(admin_calls(admin, "strlen"), strlen0);
    assert_int_equal(admin_calls(admin, "getrange"), getrange0);
    assert_true(stats(c).hits >= 5);

    /* Another client's SET: the next read has it (no sleep between). */
    set_user(admin, "a", ids, 5);
    assert_int_equal(read_user(fs, "a", 0, &h, &n, &trips), CTR_OK);
    check_ids(h, n, ids, 5);

    /* Appends through the Functions library, each seen at once, each
     * cached until the next. */
    uint64_t hits0 = stats(c).hits;
    for (int i = 5; i < 150; i++) {
        redisReply *r = admin_cmd(admin, "FCALL ctr_append 1 %su:a %lld", prefix,
                                  (long long)ids[i]);
        assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
        freeReplyObject(r);
        int want = i + 1 < 64 ? i + 1 : 64;
        assert_int_equal(read_user(fs, "a", 0, &h, &n, &trips), CTR_OK);
        check_ids(h, n, ids + (i + 1 - want), want);
        warm(fs, "a");   /* then cached */
        assert_int_equal(read_user(fs, "a", 0, &h, &n, &trips), CTR_OK);
        check_ids(h, n, ids + (i + 1 - want), want);
        assert_int_equal(trips, 0);
    }
    assert_true(stats(c).hits - hits0 >= 2 * 145);

    /* An append through the feature store (FCALL ctr_append_packed, as
     * ctr-load --events sends it), seen at the next read. */
    featstore *writer = open_fs(&lp);
    const char *u = "a";
    const int one = 1;
    int status;
    int64_t held;
    assert_int_equal(featstore_append(writer, 1, &u, &one, &ids[150], 64, &A, &status, &held, err,
                                      sizeof err),
                     CTR_OK);
    assert_int_equal(status, CTR_OK);
    featstore_close(writer);
    assert_int_equal(read_user(fs, "a", 0, &h, &n, &trips), CTR_OK);
    check_ids(h, n, ids + 151 - 64, 64);
    warm(fs, "a");

    /* A missing user is cached as missing, and seen once written. */
    assert_int_equal(read_user(fs, "none", 0, &h, &n, &trips), CTR_ENOTFOUND);
    assert_int_equal(trips, 1);
    warm(fs, "none");
    assert_int_equal(read_user(fs, "none", 0, &h, &n, &trips), CTR_ENOTFOUND);
    assert_int_equal(trips, 0);
    set_user(admin, "none", ids, 2);
    assert_int_equal(read_user(fs, "none", 0, &h, &n, &trips), CTR_OK);
    check_ids(h, n, ids, 2);

    /* DEL invalidates too. */
    admin_do(admin, "DEL %su:none", prefix);
    assert_int_equal(read_user(fs, "none", 0, &h, &n, &trips), CTR_ENOTFOUND);

    /* Shorter and longer reads of one key: 100 ids, read keeping 10 (an
     * entry of the last 10), then keeping 40 (not served from the 10). */
    set_user(admin, "long", ids, 100);
    for (int k = 0; k < 50 && stats(c).invalidations == 0; k++) sleep_ms(1);
    sleep_ms(20);   /* the SET's invalidation applied */
    assert_int_equal(read_user(fs, "long", 10, &h, &n, &trips), CTR_OK);
    check_ids(h, n, ids + 90, 10);
    assert_int_equal(read_user(fs, "long", 40, &h, &n, &trips), CTR_OK);
    check_ids(h, n, ids + 60, 40);
    assert_int_equal(trips, 1);
    assert_int_equal(read_user(fs, "long", 5, &h, &n, &trips), CTR_OK);
    check_ids(h, n, ids + 95, 5);
    assert_int_equal(trips, 0);
    /* 100 ids, keep 64 = the entry's capacity; a whole short history
     * serves any keep. */
    assert_int_equal(read_user(fs, "long", 64, &h, &n, &trips), CTR_OK);
    check_ids(h, n, ids + 36, 64);
    assert_int_equal(read_user(fs, "a", 3, &h, &n, &trips), CTR_OK);
    assert_int_equal(trips, 0);
    featstore_close(fs);
    hcache_free(c);
}

/* The race between a read and an invalidation of its key, provoked: a
 * miss stamps, the key changes and its invalidation arrives, then the
 * (now stale) insert is refused; without an invalidation it is taken. */
static void test_insert_race(void **state) {
    (void)state;
    hcache *c = start_cache(redis_addr, 16, 1 << 20, 60000, NULL, NULL);
    assert_true(hcache_wait_up(c, 5000));
    char key[128];
    size_t klen = (size_t)snprintf(key, sizeof key, "%su:race", prefix);
    const int64_t old_ids[2] = {1, 2}, new_ids[3] = {1, 2, 3};
    int64_t *h;
    int n;
    hcache_stamp st;
    assert_int_equal(hcache_get(c, key, klen, 16, &A, &h, &n, &st), HCACHE_MISS);
    uint64_t inv0 = stats(c).invalidations, refused0 = stats(c).stale_refused;
    set_user(admin, "race", new_ids, 3);   /* the write the read did not see */
    wait_invalidations(c, inv0, 1);
    hcache_put(c, &st, key, klen, 16, old_ids, 2, 1);
    assert_int_equal(stats(c).stale_refused, refused0 + 1);
    assert_int_equal(hcache_get(c, key, klen, 16, &A, &h, &n, &st), HCACHE_MISS);
    /* No invalidation in between: taken and served. */
    hcache_put(c, &st, key, klen, 16, new_ids, 3, 1);
    assert_int_equal(hcache_get(c, key, klen, 16, &A, &h, &n, &st), HCACHE_HIT);
    check_ids(h, n, new_ids, 3);
    /* A flush in between refuses it as well. */
    hcache_invalidate(c, key, klen);
    assert_int_equal(hcache_get(c, key, klen, 16, &A, &h, &n, &st), HCACHE_MISS);
    hcache_flush(c);
    hcache_put(c, &st, key, klen, 16, new_ids, 3, 1);
    assert_int_equal(hcache_get(c, key, klen, 16, &A, &h, &n, &st), HCACHE_MISS);
    hcache_free(c);
}

/* A writer that changes users' keys without pause. */
static atomic_int writing;

static void *writer(void *arg) {
    (void)arg;
    redisContext *c = admin_connect(redis_host, redis_port);
    for (long k = 0; c && atomic_load(&writing); k++) {
        redisReply *r = redisCommand(c, "SET %su:w%ld x", prefix, k % 100);
        if (!r) break;
        freeReplyObject(r);
    }
    if (c) redisFree(c);
    return NULL;
}

/* The link comes up while users' keys change all the time (invalidations
 * right behind the subscription's reply), and follows them. */
static void test_up_under_writes(void **state) {
    (void)state;
    pthread_t t;
    atomic_store(&writing, 1);
    assert_int_equal(pthread_create(&t, NULL, writer, NULL), 0);
    sleep_ms(20);
    hcache *c = start_cache(redis_addr, 16, 1 << 20, 60000, NULL, NULL);
    int up = hcache_wait_up(c, 5000);
    uint64_t inv = stats(c).invalidations;
    sleep_ms(50);
    int following = stats(c).invalidations > inv;
    atomic_store(&writing, 0);
    pthread_join(t, NULL);
    assert_true(up);
    assert_true(following);
    assert_int_equal(stats(c).link_connects, 1);   /* never dropped */
    hcache_free(c);
}

/* Capacity, LRU and TTL, through the link of the run's Redis. */
static void test_evict_and_expire(void **state) {
    (void)state;
    /* 64 shards of one 4-id entry each: two keys of one shard evict. */
    hcache_params hp = hcache_default_params();
    hp.max_ids = 4;
    assert_int_equal(hcache_init(&(hcache_params){.max_bytes = 1000, .max_ids = 4}, &(hcache *){0},
                                 err, sizeof err),
                     CTR_EINVAL);
    hcache *c = start_cache(redis_addr, 4, 64 * 400, 400, NULL, NULL);
    assert_true(hcache_wait_up(c, 5000));
    assert_int_equal(stats(c).capacity, 64);
    const int64_t ids[4] = {7, 8, 9, 10};
    int64_t *h;
    int n;
    hcache_stamp st;
    char key[128];
    for (int k = 0; k < 200; k++) {
        size_t kl = (size_t)snprintf(key, sizeof key, "%su:e%d", prefix, k);
        assert_int_equal(hcache_get(c, key, kl, 4, &A, &h, &n, &st), HCACHE_MISS);
        hcache_put(c, &st, key, kl, 4, ids, 4, 1);
    }
    assert_true(stats(c).entries <= 64);
    assert_true(stats(c).evictions >= 136);
    /* The last one is there; after its TTL it is not. */
    size_t kl = (size_t)snprintf(key, sizeof key, "%su:e199", prefix);
    assert_int_equal(hcache_get(c, key, kl, 4, &A, &h, &n, &st), HCACHE_HIT);
    check_ids(h, n, ids, 4);
    sleep_ms(500);
    assert_int_equal(hcache_get(c, key, kl, 4, &A, &h, &n, &st), HCACHE_MISS);
    assert_true(stats(c).expirations >= 1);
    /* A key longer than HCACHE_KEY_MAX is never cached. */
    char longkey[HCACHE_KEY_MAX + 2];
    memset(longkey, 'k', sizeof longkey);
    assert_int_equal(hcache_get(c, longkey, sizeof longkey, 4, &A, &h, &n, &st), HCACHE_OFF);
    hcache_free(c);
    /* Never started: every lookup goes to Redis. */
    assert_int_equal(hcache_init(&hp, &c, err, sizeof err), CTR_OK);
    assert_int_equal(hcache_get(c, key, kl, 4, &A, &h, &n, &st), HCACHE_OFF);
    hcache_free(c);
}

/* The link killed (CLIENT KILL), FLUSHDB, Redis restarted: nothing stale
 * is served, reads go to Redis meanwhile, caching resumes. */
static void test_link_lost(void **state) {
    (void)state;
    int port;
    close(loopback_socket(0, 0, &port));
    own_start(port);
    redisContext *oa = admin_connect("127.0.0.1", port);
    assert_non_null(oa);
    hcache *c = start_cache(own_addr, 64, 4 << 20, 60000, NULL, NULL);
    assert_true(hcache_wait_up(c, 5000));
    featstore *fs = cached_fs(own_addr, c, 64);
    const int64_t ids[5] = {11, 12, 13, 14, 15};
    set_user(oa, "k", ids, 3);
    int64_t *h;
    int n, trips;
    assert_int_equal(read_user(fs, "k", 0, &h, &n, &trips), CTR_OK);
    warm(fs, "k");

    /* The subscriber killed: bypassed (a read per call) until it is back. */
    uint64_t connects = stats(c).link_connects;
    redisReply *r = admin_cmd(oa, "CLIENT KILL TYPE pubsub");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    set_user(oa, "k", ids, 4);   /* while the link may be down */
    assert_int_equal(read_user(fs, "k", 0, &h, &n, &trips), CTR_OK);
    check_ids(h, n, ids, 4);
    for (int i = 0; i < 2000 && stats(c).link_connects == connects; i++) sleep_ms(1);
    assert_true(stats(c).link_connects > connects);
    assert_true(hcache_wait_up(c, 5000));
    assert_true(stats(c).flushes >= 2);   /* emptied when lost and when back */
    assert_int_equal(read_user(fs, "k", 0, &h, &n, &trips), CTR_OK);
    check_ids(h, n, ids, 4);
    warm(fs, "k");

    /* Redis frozen (SIGSTOP): the link's keep-alive goes unanswered, the
     * cache is bypassed; back (SIGCONT), caching resumes. */
    connects = stats(c).link_connects;
    kill(own_pid, SIGSTOP);
    wait_down(c);
    kill(own_pid, SIGCONT);
    for (int i = 0; i < 3000 && stats(c).link_connects == connects; i++) sleep_ms(1);
    assert_true(hcache_wait_up(c, 5000));
    assert_int_equal(read_user(fs, "k", 0, &h, &n, &trips), CTR_OK);
    check_ids(h, n, ids, 4);
    warm(fs, "k");

    /* FLUSHDB: a null invalidation empties the cache. */
    uint64_t flushes = stats(c).flushes;
    admin_do(oa, "FLUSHDB");
    for (int i = 0; i < 2000 && stats(c).flushes == flushes; i++) sleep_ms(1);
    assert_true(stats(c).flushes > flushes);
    assert_int_equal(read_user(fs, "k", 0, &h, &n, &trips), CTR_ENOTFOUND);
    assert_int_equal(trips, 1);

    /* Redis restarted, empty: no cached history while it is down, none
     * from before once it is back. */
    set_user(oa, "k", ids, 5);
    warm(fs, "k");
    redisFree(oa);
    own_stop();
    wait_down(c);
    assert_int_not_equal(read_user(fs, "k", 0, &h, &n, &trips), CTR_OK);
    own_start(port);
    assert_true(hcache_wait_up(c, 5000));
    featstore_close(fs);
    fs = cached_fs(own_addr, c, 64);   /* past the breaker the failure opened */
    assert_int_equal(read_user(fs, "k", 0, &h, &n, &trips), CTR_ENOTFOUND);
    featstore_close(fs);
    hcache_free(c);
    own_stop();
}

/* Tracking refused (an ACL user without CLIENT): the cache stays off and
 * every read goes to Redis, answered right. */
static void test_tracking_refused(void **state) {
    (void)state;
    int port;
    close(loopback_socket(0, 0, &port));
    own_start(port);
    redisContext *oa = admin_connect("127.0.0.1", port);
    assert_non_null(oa);
    admin_do(oa, "ACL SETUSER reader on >pw ~* +@read +@connection -client +subscribe");
    hcache *c = start_cache(own_addr, 64, 4 << 20, 60000, "reader", "pw");
    featstore_params p = fs_params();
    p.addr = own_addr;
    p.max_seq = 64;
    p.history_cache = c;
    p.user = "reader";
    p.password = "pw";
    featstore *fs = open_fs(&p);
    const int64_t ids[3] = {21, 22, 23};
    set_user(oa, "t", ids, 3);
    assert_false(hcache_wait_up(c, 300));
    int64_t *h;
    int n, trips;
    for (int k = 0; k < 3; k++) {
        assert_int_equal(read_user(fs, "t", 0, &h, &n, &trips), CTR_OK);
        check_ids(h, n, ids, 3);
        assert_int_equal(trips, 1);
    }
    assert_true(stats(c).bypassed >= 3);
    assert_int_equal(stats(c).hits, 0);
    featstore_close(fs);
    hcache_free(c);
    redisFree(oa);
    own_stop();
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);   /* featstore.h: the process must ignore SIGPIPE */
    if (redis_open("test_hcache") < 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cached_and_fresh, setup, teardown),
        cmocka_unit_test_setup_teardown(test_insert_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_up_under_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_evict_and_expire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_link_lost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tracking_refused, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    own_stop();
    redis_close();
    return failed;
}
