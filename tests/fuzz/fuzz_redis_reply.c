/*
 * fuzz_redis_reply.c - fuzz target for the Redis reply path: whatever bytes
 * a Redis (or something pretending to be one) sends back, the feature
 * store must turn them into values, a miss, a malformed value or a failed
 * call, never a crash, a leak or a value read out of step.  The bytes go
 * through the real code: hiredis's reader, the connection's checks
 * (server/store/rconn.c: each reply's type, nothing left over) and the
 * front end's decoding (server/store/featstore.c), over a loopback socket
 * whose other end is a thread of this program that answers every
 * connection with the input and then closes its side.
 *
 * The first byte picks what is asked (mod 5), the rest is the answer:
 *   0  featstore_get_user("u1", keep 4)   STRLEN, GETRANGE 0 7, GETRANGE -16 -1
 *   1  featstore_get_items(1, 2, 3)       three GETRANGE 0 32 (2 tags, width 4)
 *   2  featstore_ping                     PING
 *   3  featstore_get_meta                 GETRANGE 0 4096
 *   4  (no socket) hiredis's reader over the bytes, each reply given to
 *      rcluster_map_parse (CLUSTER SLOTS) and, when it is an error, to
 *      rcluster_redirect_parse (MOVED / ASK)
 *
 * Oracles, beyond the sanitizers: every result is one its function
 * documents, with its outputs consistent (a found item has the schema's
 * shape; a failure leaves no history); and the one that matters most here:
 * an independent count of the replies in the input (a second hiredis
 * reader) says how many complete replies there are and whether bytes are
 * left after those the commands asked for.  When bytes are left, the call
 * must not succeed (they would answer the next command), and must have
 * counted a desync.
 *
 * `make test` builds it as a plain program: with file arguments it runs
 * each once (tests/run.sh gives it the committed corpus,
 * tests/fuzz/corpus/redis_reply); with none, a deterministic sweep over the built-in seeds (every truncation,
 * then seeded byte mutations).  `fuzz_redis_reply --write-seeds DIR`
 * writes those seeds (the committed corpus).  `make fuzz` runs it under
 * libFuzzer.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "core/base/arena.h"
#include "core/base/clock.h"
#include "core/base/status.h"
#include "server/store/featstore.h"
#include "server/store/rcluster.h"
#include "tests/fuzz/fuzz_files.h"

#define MAX_TAGS 2
#define MM_DIM 4
#define KEEP 4

/* --- The other end: answers each connection with the current input ------- */

static int lfd = -1, lport;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static unsigned char *answer;       /* the current input's answer (mu) */
static size_t answer_len;
static unsigned long served;        /* connections answered and closed (mu) */

static void *server_main(void *arg) {
    (void)arg;
    for (;;) {
        int c = accept(lfd, NULL, NULL);
        if (c < 0) continue;
        pthread_mutex_lock(&mu);
        const unsigned char *p = answer;
        size_t n = answer_len;
        pthread_mutex_unlock(&mu);
        while (n) {
            ssize_t w = write(c, p, n);
            if (w <= 0) break;
            p += w;
            n -= (size_t)w;
        }
        shutdown(c, SHUT_WR);       /* end of the answer */
        char sink[4096];
        while (read(c, sink, sizeof sink) > 0) {}   /* until the client closes */
        close(c);
        pthread_mutex_lock(&mu);
        served++;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
    }
    return NULL;
}

static void server_start(void) {
    signal(SIGPIPE, SIG_IGN);   /* featstore.h */
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 8) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &sl) < 0) {
        perror("fuzz_redis_reply: listen");
        abort();
    }
    lport = ntohs(sa.sin_port);
    pthread_t th;
    if (pthread_create(&th, NULL, server_main, NULL) != 0) abort();
    pthread_detach(th);
}

/* --- An independent count of the replies --------------------------------- */

/* Parses data with a reader of its own: the complete replies it holds, up
 * to `want` (*types gets their hiredis types), and whether any byte is
 * left after the first `want` (1), none (0), or they are not all there or
 * not all valid (-1). */
static int count_replies(const uint8_t *data, size_t size, int want, int *types, int *got) {
    redisReader *rd = redisReaderCreate();
    if (!rd) abort();
    redisReaderFeed(rd, (const char *)data, size);
    *got = 0;
    int ok = 1;
    while (*got < want) {
        void *r = NULL;
        if (redisReaderGetReply(rd, &r) != REDIS_OK || !r) {
            ok = 0;
            break;
        }
        types[(*got)++] = ((redisReply *)r)->type;
        freeReplyObject(r);
    }
    int left = ok ? rd->len > rd->pos : -1;
    redisReaderFree(rd);
    return left;
}

/* --- One input --------------------------------------------------------------- */

static void check(int cond) {
    if (!cond) abort();
}

static void one_call(int what, const uint8_t *data, size_t size) {
    static arena a;
    static int ready;
    if (!ready) {
        arena_init(&a, 1 << 16);
        server_start();
        ready = 1;
    }
    pthread_mutex_lock(&mu);
    free(answer);
    answer = malloc(size ? size : 1);
    if (!answer) abort();
    if (size) memcpy(answer, data, size);
    answer_len = size;
    unsigned long before = served;
    pthread_mutex_unlock(&mu);

    char addr[32], err[512];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", lport);
    featstore_params p;
    featstore_default_params(&p);
    p.addr = addr;
    p.prefix = "f:";
    p.max_tags = MAX_TAGS;
    p.mm_dim = MM_DIM;
    p.max_seq = KEEP;
    p.connect_timeout_ms = 2000;
    p.command_timeout_ms = 2000;   /* never reached: the other end closes */
    featstore *fs;
    if (featstore_open(&p, &fs, err, sizeof err) != CTR_OK) abort();
    int want = what == 0 ? 3 : what == 1 ? 3 : 1;
    int rc;
    err[0] = '\0';
    if (what == 0) {
        int64_t *ids = (int64_t *)1;
        int n = -1;
        rc = featstore_get_user(fs, "u1", KEEP, 0, &a, &ids, &n, err, sizeof err);
        check(rc == CTR_OK || rc == CTR_ENOTFOUND || rc == CTR_EFORMAT || rc == CTR_EBACKEND);
        if (rc == CTR_OK) check(n >= 0 && n <= KEEP && (n == 0) == (ids == NULL));
        else check(n == 0 && ids == NULL && err[0]);
    } else if (what == 1) {
        const int64_t ids[3] = {1, 2, 3};
        featstore_item out[3];
        rc = featstore_get_items(fs, ids, 3, 0, &a, out, err, sizeof err);
        check(rc == CTR_OK || rc == CTR_EBACKEND);
        for (int i = 0; rc == CTR_OK && i < 3; i++) {
            const featstore_item *it = &out[i];
            if (it->found) {
                check(it->status == CTR_OK && it->mm_dim == MM_DIM && it->mm &&
                      ((uintptr_t)it->mm & 63) == 0 && it->num_tags >= 0 &&
                      it->num_tags <= MAX_TAGS && (it->num_tags == 0 || it->tags));
                for (int k = 0; k < MM_DIM; k++) (void)it->mm[k];   /* readable */
            } else {
                check(it->status == CTR_ENOTFOUND || it->status == CTR_EFORMAT);
            }
        }
    } else if (what == 2) {
        rc = featstore_ping(fs, 0, err, sizeof err);
        check(rc == CTR_OK || rc == CTR_EBACKEND);
    } else {
        char buf[FEATSTORE_META_MAX + 1];
        size_t len = 99;
        rc = featstore_get_meta(fs, 0, buf, sizeof buf, &len, err, sizeof err);
        check(rc == CTR_OK || rc == CTR_ENOTFOUND || rc == CTR_EFORMAT || rc == CTR_EBACKEND);
        if (rc == CTR_OK) check(len <= FEATSTORE_META_MAX && buf[len] == '\0');
        else check(len == 0);
    }
    if (rc < 0) check(err[0] != '\0');
    featstore_stats st;
    featstore_stats_get(fs, &st);
    check(st.desyncs <= 1 && st.connects <= 1);
    /* One reply too many (or a byte too many): never a success. */
    int types[3], got;
    if (count_replies(data, size, want, types, &got) == 1) check(rc < 0 && st.desyncs == 1);
    featstore_close(fs);
    pthread_mutex_lock(&mu);   /* the other end is done with this input */
    while (st.connects && served == before) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    arena_reset(&a);
}

/* Every reply of the bytes through the slot-map and redirect parsers. */
static void one_parse(const uint8_t *data, size_t size) {
    redisReader *rd = redisReaderCreate();
    if (!rd) abort();
    redisReaderFeed(rd, (const char *)data, size);
    for (;;) {
        void *r = NULL;
        if (redisReaderGetReply(rd, &r) != REDIS_OK || !r) break;
        const redisReply *rep = r;
        rcluster_map *m = NULL;
        char err[256];
        int rc = rcluster_map_parse(rep, "127.0.0.1", &m, err, sizeof err);
        check(rc == CTR_OK || rc == CTR_EFORMAT || rc == CTR_ENOMEM);
        check((rc == CTR_OK) == (m != NULL));
        if (m) {
            int nodes = rcluster_map_nodes(m), covered = rcluster_map_covered(m), seen = 0;
            for (int s = 0; s < RCLUSTER_SLOTS; s++) {
                int k = rcluster_map_master(m, s);
                check(k >= -1 && k < nodes);
                seen += k >= 0;
            }
            check(seen == covered);
            rcluster_map_free(m);
        }
        if (rep->type == REDIS_REPLY_ERROR && rep->str) {
            rcluster_redirect rd2;
            rc = rcluster_redirect_parse(rep->str, rep->len, &rd2);
            check(rc == CTR_OK || rc == CTR_ENOTFOUND || rc == CTR_EFORMAT);
            if (rc == CTR_OK)
                check(rd2.slot >= 0 && rd2.slot < RCLUSTER_SLOTS && rd2.port > 0 &&
                      rd2.port <= 65535 && strlen(rd2.host) < RCLUSTER_HOST_MAX);
        }
        freeReplyObject(r);
    }
    redisReaderFree(rd);
}

static int one_input(const uint8_t *data, size_t size) {
    if (!size) return 0;
    int what = data[0] % 5;
    if (what == 4) one_parse(data + 1, size - 1);
    else one_call(what, data + 1, size - 1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) { return one_input(data, size); }

#ifndef FUZZ_LIBFUZZER
/* --- Seeds, and the sweep run without libFuzzer -------------------------- */

typedef struct seed {
    const char *name;
    char bytes[600];
    size_t len;
} seed;

static void put(seed *s, const void *p, size_t n) {
    if (s->len + n > sizeof s->bytes) abort();
    memcpy(s->bytes + s->len, p, n);
    s->len += n;
}

static void putf(seed *s, const char *t) { put(s, t, strlen(t)); }

static void bulk(seed *s, const void *p, size_t n) {
    char h[32];
    snprintf(h, sizeof h, "$%zu\r\n", n);
    putf(s, h);
    put(s, p, n);
    putf(s, "\r\n");
}

/* An item value: 2 tags, 4 floats (proto/features.h: "CI", version 1). */
static size_t item_value(unsigned char *v, int id) {
    const unsigned char head[8] = {'C', 'I', 1, 2, 4, 0, 0, 0};
    memcpy(v, head, 8);
    int32_t tags[2] = {id, -id};
    float mm[4] = {(float)id, 0.5f, -1.0f, 2.0f};
    memcpy(v + 8, tags, 8);     /* little-endian hosts (x86-64) */
    memcpy(v + 16, mm, 16);
    return 32;
}

static int make_seeds(seed *out, int max) {
    int n = 0;
    unsigned char v[64];
    /* get_user: a history of 6 ids, keep 4: STRLEN 32, header, last 16 bytes. */
    const unsigned char uh[8] = {'C', 'U', 1, 0, 6, 0, 0, 0};
    unsigned char ids[16];
    for (int i = 0; i < 4; i++) {
        int32_t id = 3 + i;
        memcpy(ids + 4 * i, &id, 4);
    }
    /* The first byte says what is asked (0: the history, 1: items...). */
    out[n] = (seed){"user", {0}, 1};
    putf(&out[n], ":32\r\n");
    bulk(&out[n], uh, 8);
    bulk(&out[n], ids, 16);
    out[n + 1] = out[n];
    out[n + 1].name = "user_extra_reply";
    putf(&out[n + 1], "$3\r\nabc\r\n");
    n += 2;
    out[n] = (seed){"user_missing", {0}, 1};
    putf(&out[n], ":0\r\n$0\r\n\r\n$0\r\n\r\n");
    n++;
    out[n] = (seed){"user_wrong_type", {0}, 1};
    putf(&out[n], "$2\r\n32\r\n$0\r\n\r\n$0\r\n\r\n");
    n++;
    out[n] = (seed){"user_wrongtype_error", {0}, 1};
    putf(&out[n], "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
                  "-WRONGTYPE x\r\n-WRONGTYPE x\r\n");
    n++;
    /* get_items: found, absent, a malformed value. */
    out[n] = (seed){"items", {1}, 1};
    for (int id = 1; id <= 2; id++) bulk(&out[n], v, item_value(v, id));
    putf(&out[n], "$0\r\n\r\n");
    out[n + 1] = out[n];
    out[n + 1].name = "items_extra_reply";
    bulk(&out[n + 1], v, item_value(v, 4));
    n += 2;
    out[n] = (seed){"items_bad_value", {1}, 1};
    putf(&out[n], "$4\r\nCIxx\r\n$1\r\nC\r\n-LOADING Redis is loading the dataset\r\n");
    n++;
    out[n] = (seed){"items_integer", {1}, 1};
    putf(&out[n], ":7\r\n$0\r\n\r\n$0\r\n\r\n");
    n++;
    out[n] = (seed){"items_nested", {1}, 1};
    putf(&out[n], "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n");
    n++;
    out[n] = (seed){"items_huge_length", {1}, 1};
    putf(&out[n], "$9223372036854775807\r\nabc\r\n$-5\r\n");
    n++;
    /* ping; the marker. */
    out[n] = (seed){"ping", {2}, 1};
    putf(&out[n], "+PONG\r\n");
    n++;
    out[n] = (seed){"ping_ok", {2}, 1};
    putf(&out[n], "+OK\r\n");
    n++;
    out[n] = (seed){"meta", {3}, 1};
    putf(&out[n], "$12\r\n{\"format\":1}\r\n");
    n++;
    /* The slot map and redirects. */
    out[n] = (seed){"cluster_slots", {4}, 1};
    putf(&out[n], "*2\r\n*4\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n"
                  "*2\r\n$0\r\n\r\n:7003\r\n*3\r\n:8192\r\n:16383\r\n*2\r\n$1\r\n?\r\n:7001\r\n");
    n++;
    out[n] = (seed){"redirects", {4}, 1};
    putf(&out[n], "-MOVED 3999 127.0.0.1:6381\r\n-ASK 3999 [::1]:6381\r\n-MOVED 1 :7000\r\n"
                  "-CLUSTERDOWN The cluster is down\r\n");
    n++;
    if (n > max) abort();
    return n;
}

static int write_seeds(const char *dir) {
    seed s[32];
    int n = make_seeds(s, 32), bad = 0;
    for (int i = 0; i < n; i++) {
        bad |= fuzz_write_seed(dir, s[i].name, s[i].bytes, s[i].len);
    }
    return bad;
}

/* Every truncation of every seed, then seeded mutations; returns the runs. */
static int sweep(void) {
    seed s[32];
    int n = make_seeds(s, 32), runs = 0;
    for (int i = 0; i < n; i++)
        for (size_t cut = 1; cut <= s[i].len; cut++, runs++) one_input((uint8_t *)s[i].bytes, cut);
    uint64_t rng = 12345;
    const unsigned char vals[] = {0, 0xff, '\r', '\n', '$', '*', ':', '+', '-', '0', '9', 'C'};
    unsigned char b[sizeof s[0].bytes];
    for (int k = 0; k < 1500; k++, runs++) {
        const seed *sd = &s[k % n];
        memcpy(b, sd->bytes, sd->len);
        for (int j = 0; j < 1 + k % 3; j++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            size_t pos = 1 + (size_t)(rng >> 33) % (sd->len > 1 ? sd->len - 1 : 1);
            if (pos < sd->len) b[pos] = vals[(rng >> 20) % sizeof vals];
        }
        one_input(b, sd->len);
    }
    return runs;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--write-seeds") == 0) return write_seeds(argv[2]);
    if (argc > 1) return fuzz_run_files("fuzz_redis_reply", argc, argv, one_input);
    printf("fuzz_redis_reply: %d inputs swept, no crash\n", sweep());
    return 0;
}
#endif
