/*
 * fake_redis.h - fake Redis servers for the feature-store tests: a
 * listening loopback socket served by a thread of its own, which reads
 * RESP commands and answers them as its mode says:
 *
 *   FAKE_REPLY     every command gets one fixed reply (ASKING and READONLY
 *                  get +OK);
 *   FAKE_BARRIER   the same, held back until every fake of a group has
 *                  received its commands;
 *   FAKE_SILENT    reads, never answers;
 *   FAKE_HANGUP    closes the connection at the first command;
 *   FAKE_STORE     a small Redis: SET, GET, GETRANGE, STRLEN, PING, ECHO,
 *                  CLUSTER SLOTS (by default one range, every slot, served
 *                  by the fake itself; fake_set_slots), and +OK to
 *                  READONLY, ASKING and AUTH; an error to anything else.
 *
 * fake_mute makes a fake that answers silent until it is unmuted (a
 * Redis that hangs, for as long as the test says, not for a fixed time).
 *
 * And it misbehaves on request, once each (any mode that answers):
 * fake_inject writes bytes no command asked for after the replies of the
 * next batch of commands it reads (in the same write, some milliseconds
 * later, or when the test calls fake_release: then the client has read
 * the replies and its connection is idle, however slow the machine),
 * fake_replace answers the next command with given bytes instead.
 *
 * Header-only: each test binary includes it once, after store_fixture.h.
 * Thread-safety: the test thread changes a running fake only through the
 * fake_set_* / fake_inject / fake_replace / fake_store_set functions.
 */
#ifndef CTR_TESTS_FAKE_REDIS_H
#define CTR_TESTS_FAKE_REDIS_H

#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <strings.h>

typedef enum fake_mode {
    FAKE_REPLY,
    FAKE_BARRIER,
    FAKE_SILENT,
    FAKE_HANGUP,
    FAKE_STORE,
} fake_mode;

#define FAKE_KEYS 64
#define FAKE_HOLD (-1)          /* fake_inject: until fake_release */
#define FAKE_CLIENTS 8

typedef struct fake {
    int lfd, port;
    fake_mode mode;
    pthread_mutex_t lock;       /* guards what the test thread changes while
                                   the fake runs: reply, the BARRIER fields,
                                   the store, the injections */
    char reply[128];
    int expect;                 /* BARRIER: commands before the group is ready */
    atomic_int *ready;          /* BARRIER: fakes of the group with all theirs */
    int group;                  /* BARRIER: fakes in the group */
    char *key[FAKE_KEYS], *val[FAKE_KEYS];  /* STORE */
    size_t klen[FAKE_KEYS], vlen[FAKE_KEYS];
    int nkeys;
    char extra[1024];           /* fake_inject: pending when extra_len */
    size_t extra_len;
    int extra_delay_ms;
    char replace[256];          /* fake_replace: pending when replace_len */
    size_t replace_len;
    char slots[512];            /* STORE: CLUSTER SLOTS's reply; "": itself */
    atomic_int commands;        /* commands received (ASKING/READONLY too) */
    atomic_int injected;        /* injections and replacements done */
    atomic_int release;         /* fake_release: write a held injection */
    atomic_int muted;           /* fake_mute: reads, answers nothing */
    atomic_int delivered;       /* delayed or held injections written */
    atomic_int counted;         /* BARRIER: this fake is counted in ready */
    atomic_int stop;
    pthread_t th;
} fake;

/* A growing output buffer. */
typedef struct fake_out {
    char *p;
    size_t n, cap;
} fake_out;

static inline void fake_put(fake_out *o, const void *s, size_t n) {
    if (o->n + n > o->cap) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap < o->n + n) cap *= 2;
        char *p = realloc(o->p, cap);
        if (!p) abort();
        o->p = p;
        o->cap = cap;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

__attribute__((format(printf, 2, 3)))
static inline void fake_putf(fake_out *o, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    fake_put(o, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

static inline void fake_bulk(fake_out *o, const char *s, size_t n) {
    fake_putf(o, "$%zu\r\n", n);
    fake_put(o, s, n);
    fake_put(o, "\r\n", 2);
}

/* One complete command at buf[0..n): 1 with its arguments (pointers into
 * buf, at most max kept) and the bytes it takes in *used; 0 when it is
 * not all there yet. */
static inline int fake_parse(const char *buf, size_t n, size_t *used, int *argc,
                             const char **argv, size_t *lens, int max) {
    if (!n || buf[0] != '*') return 0;
    const char *nl = memchr(buf, '\n', n);
    if (!nl) return 0;
    int na = atoi(buf + 1);
    size_t q = (size_t)(nl - buf) + 1;
    *argc = 0;
    for (int a = 0; a < na; a++) {
        if (q >= n || buf[q] != '$') return 0;
        nl = memchr(buf + q, '\n', n - q);
        if (!nl) return 0;
        size_t len = (size_t)atol(buf + q + 1);
        size_t start = (size_t)(nl - buf) + 1;
        if (start + len + 2 > n) return 0;
        if (*argc < max) {
            argv[*argc] = buf + start;
            lens[(*argc)++] = len;
        }
        q = start + len + 2;
    }
    *used = q;
    return 1;
}

static inline int fake_is(const char *a, size_t alen, const char *name) {
    return alen == strlen(name) && strncasecmp(a, name, alen) == 0;
}

/* The value of key in the store, or -1 (f->lock held). */
static inline int fake_find(const fake *f, const char *k, size_t klen) {
    for (int i = 0; i < f->nkeys; i++)
        if (f->klen[i] == klen && memcmp(f->key[i], k, klen) == 0) return i;
    return -1;
}

/* Sets key to value in the store (f->lock held). */
static inline void fake_store_put(fake *f, const char *k, size_t klen, const void *v, size_t vlen) {
    int i = fake_find(f, k, klen);
    if (i < 0) {
        if (f->nkeys == FAKE_KEYS) abort();
        i = f->nkeys++;
        f->key[i] = malloc(klen + 1);
        memcpy(f->key[i], k, klen);
        f->klen[i] = klen;
        f->val[i] = NULL;
    }
    free(f->val[i]);
    f->val[i] = malloc(vlen + 1);
    memcpy(f->val[i], v, vlen);
    f->vlen[i] = vlen;
}

/* Redis's GETRANGE: negative offsets count from the end, clamped. */
static inline void fake_getrange(fake_out *o, const char *v, size_t vlen, long start, long end) {
    long len = (long)vlen;
    if (start < 0) start += len;
    if (end < 0) end += len;
    if (start < 0) start = 0;
    if (end < 0) end = 0;
    if (end >= len) end = len - 1;
    if (!len || start > end) fake_bulk(o, "", 0);
    else fake_bulk(o, v + start, (size_t)(end - start + 1));
}

/* FAKE_STORE's answer to one command (f->lock held). */
static inline void fake_answer(fake *f, int argc, const char **argv, const size_t *lens,
                               fake_out *o) {
    char num[2][24];
    for (int k = 0; k < 2 && k + 2 < argc; k++)
        snprintf(num[k], sizeof num[k], "%.*s", (int)(lens[k + 2] < 23 ? lens[k + 2] : 23),
                 argv[k + 2]);
    const char *c = argv[0];
    size_t cl = lens[0];
    int i = argc >= 2 ? fake_find(f, argv[1], lens[1]) : -1;
    if (fake_is(c, cl, "PING")) {
        fake_putf(o, "+PONG\r\n");
    } else if (fake_is(c, cl, "READONLY") || fake_is(c, cl, "ASKING") || fake_is(c, cl, "AUTH")) {
        fake_putf(o, "+OK\r\n");
    } else if (fake_is(c, cl, "ECHO") && argc == 2) {
        fake_bulk(o, argv[1], lens[1]);
    } else if (fake_is(c, cl, "SET") && argc == 3) {
        fake_store_put(f, argv[1], lens[1], argv[2], lens[2]);
        fake_putf(o, "+OK\r\n");
    } else if (fake_is(c, cl, "GET") && argc == 2) {
        if (i < 0) fake_putf(o, "$-1\r\n");
        else fake_bulk(o, f->val[i], f->vlen[i]);
    } else if (fake_is(c, cl, "STRLEN") && argc == 2) {
        fake_putf(o, ":%zu\r\n", i < 0 ? 0 : f->vlen[i]);
    } else if (fake_is(c, cl, "GETRANGE") && argc == 4) {
        fake_getrange(o, i < 0 ? "" : f->val[i], i < 0 ? 0 : f->vlen[i], atol(num[0]),
                      atol(num[1]));
    } else if (fake_is(c, cl, "CLUSTER") && argc == 2 && fake_is(argv[1], lens[1], "SLOTS")) {
        if (f->slots[0])
            fake_put(o, f->slots, strlen(f->slots));
        else
            fake_putf(o, "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:%d\r\n"
                         "$40\r\n%040d\r\n", f->port, 0);
    } else {
        fake_putf(o, "-ERR unknown command '%.*s'\r\n", (int)(cl < 32 ? cl : 32), c);
    }
}

/* The replies to every complete command in buf[0..*have) (consumed), into
 * o; returns how many commands. */
static inline int fake_serve(fake *f, char *buf, size_t *have, fake_out *o) {
    int k = 0;
    size_t used;
    int argc;
    const char *argv[8];
    size_t lens[8];
    size_t off = 0;
    while (fake_parse(buf + off, *have - off, &used, &argc, argv, lens, 8)) {
        k++;
        pthread_mutex_lock(&f->lock);
        if (f->replace_len) {
            fake_put(o, f->replace, f->replace_len);
            f->replace_len = 0;
            atomic_fetch_add(&f->injected, 1);
        } else if (argc && (fake_is(argv[0], lens[0], "ASKING") ||
                            fake_is(argv[0], lens[0], "READONLY"))) {
            fake_putf(o, "+OK\r\n");
        } else if (f->mode == FAKE_STORE) {
            fake_answer(f, argc, argv, lens, o);
        } else {
            fake_put(o, f->reply, strlen(f->reply));
        }
        pthread_mutex_unlock(&f->lock);
        off += used;
    }
    memmove(buf, buf + off, *have - off);
    *have -= off;
    return k;
}

static inline void write_all(int fd, const char *s, size_t n) {
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

typedef struct fake_client {
    int fd;                     /* -1: closed */
    char *buf;                  /* commands read, not yet complete */
    size_t have;
    fake_out held;              /* BARRIER: replies held back */
    char later[1024];           /* fake_inject with a delay: due at later_ns */
    size_t later_len;
    int64_t later_ns;
} fake_client;

#define FAKE_BUF (1 << 18)

/* After a batch's replies in o: the injection, if one is armed. */
static inline void fake_inject_now(fake *f, fake_client *cl, fake_out *o) {
    pthread_mutex_lock(&f->lock);
    if (f->extra_len) {
        if (f->extra_delay_ms == 0) {
            fake_put(o, f->extra, f->extra_len);
        } else {
            memcpy(cl->later, f->extra, f->extra_len);
            cl->later_len = f->extra_len;
            cl->later_ns = f->extra_delay_ms == FAKE_HOLD
                               ? INT64_MAX
                               : clock_now_ns() + (int64_t)f->extra_delay_ms * 1000000;
        }
        f->extra_len = 0;
        atomic_fetch_add(&f->injected, 1);
    }
    pthread_mutex_unlock(&f->lock);
}

static inline void *fake_main(void *arg) {
    fake *f = arg;
    fake_client cl[FAKE_CLIENTS];
    int ncl = 0;
    while (!atomic_load(&f->stop)) {
        struct pollfd pfd[1 + FAKE_CLIENTS];
        pfd[0] = (struct pollfd){.fd = f->lfd, .events = POLLIN};
        for (int i = 0; i < ncl; i++) pfd[1 + i] = (struct pollfd){.fd = cl[i].fd, .events = POLLIN};
        int r = poll(pfd, (nfds_t)(1 + ncl), 5);
        pthread_mutex_lock(&f->lock);
        atomic_int *ready = f->ready;
        int group = f->group, expect = f->expect;
        pthread_mutex_unlock(&f->lock);
        for (int i = 0; i < ncl; i++) {
            if (f->mode == FAKE_BARRIER && ready && atomic_load(ready) == group) {
                write_all(cl[i].fd, cl[i].held.p, cl[i].held.n);
                cl[i].held.n = 0;
            }
            if (cl[i].later_len &&
                (clock_now_ns() >= cl[i].later_ns || atomic_exchange(&f->release, 0))) {
                write_all(cl[i].fd, cl[i].later, cl[i].later_len);
                cl[i].later_len = 0;
                atomic_fetch_add(&f->delivered, 1);
            }
        }
        if (r <= 0) continue;
        if ((pfd[0].revents & POLLIN) && ncl < FAKE_CLIENTS) {
            int c = accept(f->lfd, NULL, NULL);
            if (c >= 0) {
                int one = 1;   /* as Redis: no Nagle delay on small replies */
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                memset(&cl[ncl], 0, sizeof cl[ncl]);
                cl[ncl].fd = c;
                cl[ncl].buf = malloc(FAKE_BUF);
                ncl++;
            }
        }
        for (int i = 0; i < ncl; i++) {
            if (cl[i].fd < 0 || !(pfd[1 + i].revents & (POLLIN | POLLHUP))) continue;
            ssize_t got = read(cl[i].fd, cl[i].buf + cl[i].have, FAKE_BUF - cl[i].have);
            if (got <= 0) continue;
            cl[i].have += (size_t)got;
            fake_out o = {0};
            int k = fake_serve(f, cl[i].buf, &cl[i].have, &o);
            atomic_fetch_add(&f->commands, k);
            if (f->mode == FAKE_HANGUP && k) {
                close(cl[i].fd);
                cl[i].fd = -1;
            } else if (f->mode != FAKE_SILENT && !atomic_load(&f->muted) && k) {
                fake_inject_now(f, &cl[i], &o);
                if (f->mode == FAKE_BARRIER) fake_put(&cl[i].held, o.p, o.n);
                else write_all(cl[i].fd, o.p, o.n);
            }
            free(o.p);
            if (f->mode == FAKE_BARRIER && ready && !atomic_load(&f->counted) &&
                atomic_load(&f->commands) >= expect) {
                atomic_store(&f->counted, 1);
                atomic_fetch_add(ready, 1);
            }
        }
    }
    for (int i = 0; i < ncl; i++) {
        if (cl[i].fd >= 0) close(cl[i].fd);
        free(cl[i].buf);
        free(cl[i].held.p);
    }
    return NULL;
}

/* Starts a fake in `mode`; `reply` is FAKE_REPLY's and FAKE_BARRIER's
 * answer (NULL: "$1\r\nv\r\n"). */
static inline void fake_start(fake *f, fake_mode mode, const char *reply) {
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->lock, NULL);
    f->mode = mode;
    snprintf(f->reply, sizeof f->reply, "%s", reply ? reply : "$1\r\nv\r\n");
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(f->lfd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(f->lfd, 8), 0);
    socklen_t sl = sizeof sa;
    getsockname(f->lfd, (struct sockaddr *)&sa, &sl);
    f->port = ntohs(sa.sin_port);
    assert_int_equal(pthread_create(&f->th, NULL, fake_main, f), 0);
}

static inline void fake_stop(fake *f) {
    atomic_store(&f->stop, 1);
    pthread_join(f->th, NULL);
    close(f->lfd);
    for (int i = 0; i < f->nkeys; i++) {
        free(f->key[i]);
        free(f->val[i]);
    }
    pthread_mutex_destroy(&f->lock);
}

/* BARRIER: answer once `group` fakes sharing `ready` have each received
 * their `expect` commands. */
static inline void fake_set_barrier(fake *f, int expect, atomic_int *ready, int group) {
    pthread_mutex_lock(&f->lock);
    f->expect = expect;
    f->ready = ready;
    f->group = group;
    pthread_mutex_unlock(&f->lock);
}

/* Changes what a running fake answers. */
__attribute__((format(printf, 2, 3)))
static inline void fake_set_reply(fake *f, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&f->lock);
    vsnprintf(f->reply, sizeof f->reply, fmt, ap);
    pthread_mutex_unlock(&f->lock);
    va_end(ap);
}

/* STORE: key := value. */
static inline void fake_store_set(fake *f, const char *key, const void *value, size_t len) {
    pthread_mutex_lock(&f->lock);
    fake_store_put(f, key, strlen(key), value, len);
    pthread_mutex_unlock(&f->lock);
}

/* STORE: CLUSTER SLOTS answers the cluster of fakes f[0..n), slots split
 * evenly between them in that order. */
static inline void fake_set_slots(fake *f, const fake *all, int n) {
    char buf[sizeof f->slots];
    size_t k = (size_t)snprintf(buf, sizeof buf, "*%d\r\n", n);
    for (int i = 0; i < n; i++)
        k += (size_t)snprintf(buf + k, sizeof buf - k,
                              "*3\r\n:%d\r\n:%d\r\n*3\r\n$9\r\n127.0.0.1\r\n:%d\r\n"
                              "$40\r\n%040d\r\n",
                              i * 16384 / n, (i + 1) * 16384 / n - 1, all[i].port, i + 1);
    assert_true(k < sizeof buf);
    pthread_mutex_lock(&f->lock);
    memcpy(f->slots, buf, k + 1);
    pthread_mutex_unlock(&f->lock);
}

/* Once: `bytes` (n of them) after the replies of the next batch of
 * commands, in the same write (delay_ms 0), delay_ms later, or held until
 * fake_release (delay_ms FAKE_HOLD). */
static inline void fake_inject(fake *f, const void *bytes, size_t n, int delay_ms) {
    assert_true(n <= sizeof f->extra);
    pthread_mutex_lock(&f->lock);
    memcpy(f->extra, bytes, n);
    f->extra_len = n;
    f->extra_delay_ms = delay_ms;
    pthread_mutex_unlock(&f->lock);
}

/* Writes the injection held back (FAKE_HOLD) now, and waits until it is
 * written (fails the test after 5 s). */
static inline void fake_release(fake *f) {
    int before = atomic_load(&f->delivered);
    atomic_store(&f->release, 1);
    int64_t dl = clock_now_ns() + 5000000000LL;
    while (atomic_load(&f->delivered) == before && clock_now_ns() < dl) sleep_ms(1);
    assert_true(atomic_load(&f->delivered) > before);
}

/* Muted (1): commands are read and never answered, as by a hung Redis;
 * unmuted (0): answered again from the next one on. */
static inline void fake_mute(fake *f, int on) { atomic_store(&f->muted, on); }

/* Once: the next command is answered with `bytes` instead. */
static inline void fake_replace(fake *f, const char *bytes) {
    assert_true(strlen(bytes) <= sizeof f->replace);
    pthread_mutex_lock(&f->lock);
    memcpy(f->replace, bytes, strlen(bytes));
    f->replace_len = strlen(bytes);
    pthread_mutex_unlock(&f->lock);
}

#endif
