/*
 * test_featstore_fresh.c - the feature store's appends and item changes
 * (featstore.h, "Appends and item changes"), and its reads of user values
 * of both versions, on a real Redis ($CTR_REDIS) and the real Redis Cluster
 * ($CTR_CLUSTER_SEEDS): the Redis Functions library loaded on every master,
 * appends answered per user (a key that is not a user value refused, the
 * others appended), values byte for byte, histories read back as appended
 * and past max_seq; item-change records and their reads; and, on a fake
 * Redis, a value that shrank between the history's reads refused instead of
 * read as ids.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "server/cmd/redis_functions.h"
#include "tests/server/store/store_fixture.h"
#include "tests/server/store/fake_redis.h"

/* A version 1 value of ids (the layout before appends). */
static size_t v1_value(const int64_t *ids, int n, unsigned char *buf, size_t cap) {
    size_t len = 0;
    assert_int_equal(features_user_encode(ids, n, buf, cap, &len, err, sizeof err), CTR_OK);
    return len;
}

/* The value of key, whole, into buf (via c). */
static size_t get_value(redisContext *c, const char *key, unsigned char *buf, size_t cap) {
    redisReply *r = admin_cmd(c, "GET %s", key);
    size_t n = r->type == REDIS_REPLY_STRING ? r->len : 0;
    assert_true(n <= cap);
    memcpy(buf, r->str, n);
    freeReplyObject(r);
    return n;
}

/* The admin connection of the node owning key (cluster), or `admin`. */
static redisContext *owner(const char *key) {
    if (!nnodes) return admin;
    for (int i = 0; i < nnodes; i++) {
        redisReply *r = admin_cmd(node_admin[i], "EXISTS %s", key);
        int moved = r->type == REDIS_REPLY_ERROR;
        freeReplyObject(r);
        if (!moved && node_is_master(node_admin[i])) return node_admin[i];
    }
    fail_msg("no master owns %s", key);
    return NULL;
}

/* Everything, on a featstore of params p (one Redis or the cluster). */
static void appends_and_changes(const featstore_params *p) {
    featstore *fs = open_fs(p);
    assert_int_equal(featstore_load_functions(fs, redis_functions_lua, redis_functions_lua_len,
                                              err, sizeof err),
                     CTR_OK);
    /* Loaded on every master: each answers ctr_version. */
    for (int i = 0; i < (nnodes ? nnodes : 1); i++) {
        redisContext *c = nnodes ? node_admin[i] : admin;
        if (nnodes && !node_is_master(c)) continue;
        redisReply *r = admin_cmd(c, "FCALL_RO ctr_version 0");
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        assert_int_equal(r->integer, REDIS_FUNCTIONS_VERSION);
        freeReplyObject(r);
    }

    /* Three users: a new one, a version 1 value, a hash. */
    char key[3][128];
    const char *users[3] = {"new", "old", "hash"};
    for (int i = 0; i < 3; i++) snprintf(key[i], sizeof key[i], "%su:%s", prefix, users[i]);
    unsigned char buf[4096];
    const int64_t old_ids[3] = {4, 5, 6};
    size_t len = v1_value(old_ids, 3, buf, sizeof buf);
    admin_do(owner(key[1]), "SET %s %b", key[1], buf, len);
    admin_do(owner(key[2]), "HSET %s a b", key[2]);
    const int counts[3] = {2, 1, 1};
    const int64_t ids[4] = {17, 0, 7, 9};
    int status[3];
    int64_t held[3] = {-1, -1, -1};
    arena_reset(&A);
    assert_int_equal(featstore_append(fs, 3, users, counts, ids, 6, &A, status, held, err,
                                      sizeof err),
                     CTR_OK);
    assert_int_equal(status[0], CTR_OK);
    assert_int_equal(held[0], 2);
    assert_int_equal(status[1], CTR_OK);
    assert_int_equal(held[1], 4);
    assert_int_equal(status[2], CTR_EFORMAT);
    assert_non_null(strstr(err, "user hash"));
    assert_non_null(strstr(err, "WRONGTYPE"));
    /* Byte for byte: version 2, max_seq 6. */
    unsigned char want[64];
    size_t wlen;
    const int64_t new_ids[2] = {17, 0}, old_after[4] = {4, 5, 6, 7};
    assert_int_equal(features_user_encode_v2(new_ids, 2, 6, want, sizeof want, &wlen, err,
                                             sizeof err),
                     CTR_OK);
    assert_int_equal(get_value(owner(key[0]), key[0], buf, sizeof buf), wlen);
    assert_memory_equal(buf, want, wlen);
    assert_int_equal(features_user_encode_v2(old_after, 4, 6, want, sizeof want, &wlen, err,
                                             sizeof err),
                     CTR_OK);
    assert_int_equal(get_value(owner(key[1]), key[1], buf, sizeof buf), wlen);
    assert_memory_equal(buf, want, wlen);

    /* Read back as histories: keep = max_seq 4 (fs_params): the newest. */
    int64_t *h;
    int n;
    arena_reset(&A);
    assert_int_equal(featstore_get_user(fs, "old", 0, 0, &A, &h, &n, err, sizeof err), CTR_OK);
    assert_int_equal(n, 4);
    assert_memory_equal(h, old_after, sizeof old_after);
    /* Many more, past the value's max_seq 6 (cut at 6 + 1): the newest
     * four are read, whatever the value holds between cuts. */
    for (int64_t k = 100; k < 140; k++) {
        const char *u = "old";
        const int one = 1;
        arena_reset(&A);
        assert_int_equal(featstore_append(fs, 1, &u, &one, &k, 6, &A, status, held, err,
                                          sizeof err),
                         CTR_OK);
        assert_true(held[0] >= 5 && held[0] <= 7);
        arena_reset(&A);
        assert_int_equal(featstore_get_user(fs, "old", 0, 0, &A, &h, &n, err, sizeof err),
                         CTR_OK);
        assert_int_equal(n, 4);
        for (int j = 0; j < 4; j++) assert_int_equal(h[j], k - 3 + j >= 100 ? k - 3 + j : h[j]);
        assert_int_equal(h[3], k);
    }
    /* Refusals before anything is sent. */
    const char *u1 = "x";
    const int zero = 0, one = 1;
    const int64_t neg = -1;
    assert_int_equal(featstore_append(fs, 1, &u1, &zero, ids, 6, &A, status, NULL, err,
                                      sizeof err),
                     CTR_EINVAL);
    assert_int_equal(featstore_append(fs, 1, &u1, &one, &neg, 6, &A, status, NULL, err,
                                      sizeof err),
                     CTR_EINVAL);
    assert_int_equal(featstore_append(fs, 1, &u1, &one, ids, 0, &A, status, NULL, err,
                                      sizeof err),
                     CTR_EINVAL);

    /* Item changes: none yet, then generations 1 and 2. */
    featstore_change ch[8];
    arena_reset(&A);
    assert_int_equal(featstore_get_item_changes(fs, NULL, 8, 0, &A, ch, &n, err, sizeof err),
                     CTR_OK);
    assert_int_equal(n, 0);
    uint64_t gen;
    const int64_t c1[3] = {1, 22, 333}, c2[1] = {4};
    assert_int_equal(featstore_record_item_changes(fs, c1, 3, 100, 0, &gen, err, sizeof err),
                     CTR_OK);
    assert_int_equal(gen, 1);
    assert_int_equal(featstore_record_item_changes(fs, c2, 1, 100, 0, &gen, err, sizeof err),
                     CTR_OK);
    assert_int_equal(gen, 2);
    /* The end of the stream, then what follows an entry. */
    arena_reset(&A);
    assert_int_equal(featstore_get_item_changes(fs, "", 8, 0, &A, ch, &n, err, sizeof err),
                     CTR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ch[0].gen, 2);
    assert_int_equal(ch[0].n, 1);
    assert_int_equal(ch[0].ids[0], 4);
    assert_true(ch[0].ms > 1500000000000ull);
    assert_int_equal(featstore_get_item_changes(fs, "0-0", 8, 0, &A, ch, &n, err, sizeof err),
                     CTR_OK);
    assert_int_equal(n, 2);
    assert_int_equal(ch[0].gen, 1);
    assert_int_equal(ch[0].n, 3);
    assert_memory_equal(ch[0].ids, c1, sizeof c1);
    char first[48];
    snprintf(first, sizeof first, "%s", ch[0].id);
    assert_int_equal(featstore_get_item_changes(fs, first, 8, 0, &A, ch, &n, err, sizeof err),
                     CTR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ch[0].gen, 2);
    /* At most max. */
    assert_int_equal(featstore_get_item_changes(fs, "0-0", 1, 0, &A, ch, &n, err, sizeof err),
                     CTR_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ch[0].gen, 1);
    /* An entry another writer made, and a key that is not a stream. */
    char skey[128];
    snprintf(skey, sizeof skey, "%sitem-changes", prefix);
    admin_do(owner(skey), "XADD %s * gen x ids 1", skey);
    assert_int_equal(featstore_get_item_changes(fs, first, 8, 0, &A, ch, &n, err, sizeof err),
                     CTR_EFORMAT);
    assert_non_null(strstr(err, "not an item-change record"));
    admin_do(owner(skey), "DEL %s", skey);
    admin_do(owner(skey), "SET %s x", skey);
    assert_int_equal(featstore_get_item_changes(fs, NULL, 8, 0, &A, ch, &n, err, sizeof err),
                     CTR_EFORMAT);
    assert_int_equal(featstore_record_item_changes(fs, c2, 1, 100, 0, &gen, err, sizeof err),
                     CTR_EFORMAT);
    admin_do(owner(skey), "DEL %s", skey);
    featstore_close(fs);
}

static void test_one_redis(void **state) {
    featstore_params p = fs_params();
    p.addr = redis_addr;
    appends_and_changes(&p);
}

static void test_cluster(void **state) {
    if (cluster_open("test_featstore_fresh") < 0) fail_msg("no cluster");
    featstore_params p = fs_params();
    p.cluster = getenv("CTR_CLUSTER_SEEDS");
    p.addr = NULL;
    appends_and_changes(&p);
    cluster_close();
}

/* Without the library, an append fails the call, saying why (then the
 * library is loaded again, as found). */
static void test_no_library(void **state) {
    featstore_params p = fs_params();
    p.addr = redis_addr;
    featstore *fs = open_fs(&p);
    freeReplyObject(admin_cmd(admin, "FUNCTION DELETE ctr"));
    const char *u = "u";
    const int one = 1;
    const int64_t id = 5;
    int status;
    arena_reset(&A);
    assert_int_equal(featstore_append(fs, 1, &u, &one, &id, 10, &A, &status, NULL, err,
                                      sizeof err),
                     CTR_EBACKEND);
    assert_non_null(strstr(err, "Function not found"));
    assert_int_equal(status, CTR_EBACKEND);
    featstore_close(fs);   /* its breaker is open now */
    fs = open_fs(&p);
    assert_int_equal(featstore_load_functions(fs, redis_functions_lua, redis_functions_lua_len,
                                              err, sizeof err),
                     CTR_OK);
    featstore_close(fs);
}

/* A value that shrank between the history's reads (an append cut it back
 * to its max_seq): STRLEN said 1008 bytes (250 ids), the tail that came
 * back is the whole, shorter value.  Refused, never read as ids. */
static void test_value_cut_while_read(void **state) {
    fake f;
    fake_start(&f, FAKE_STORE, NULL);
    char key[128];
    snprintf(key, sizeof key, "%su:cut", prefix);
    /* Seven ids: the 36-byte value holds 32 bytes past its first 4, as
     * many as 8 ids would need; only their header shows they are not. */
    const int64_t ids[7] = {3, 4, 5, 6, 7, 8, 9};
    unsigned char v[64];
    size_t len;
    assert_int_equal(features_user_encode_v2(ids, 7, 7, v, sizeof v, &len, err, sizeof err),
                     CTR_OK);
    fake_store_set(&f, key, v, len);
    featstore_params p = fs_params();
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", f.port);
    p.addr = addr;
    p.max_seq = 8;
    featstore *fs = open_fs(&p);
    int64_t *h;
    int n;
    /* As stored: read whole. */
    arena_reset(&A);
    assert_int_equal(featstore_get_user(fs, "cut", 0, 0, &A, &h, &n, err, sizeof err), CTR_OK);
    assert_int_equal(n, 7);
    assert_int_equal(h[6], 9);
    /* STRLEN from before the cut. */
    fake_replace(&f, ":1008\r\n");
    arena_reset(&A);
    assert_int_equal(featstore_get_user(fs, "cut", 0, 0, &A, &h, &n, err, sizeof err),
                     CTR_EFORMAT);
    assert_non_null(strstr(err, "changed while being read"));
    featstore_close(fs);
    fake_stop(&f);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);   /* featstore.h: the process must ignore SIGPIPE */
    if (redis_open("test_featstore_fresh") < 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_one_redis, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cluster, setup, teardown),
        cmocka_unit_test_setup_teardown(test_value_cut_while_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_library, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    redis_close();
    return failed;
}
