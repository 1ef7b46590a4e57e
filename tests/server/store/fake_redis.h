/*
 * fake_redis.h - fake Redis servers for the feature-store tests: a
 * listening loopback socket served by a thread of its own, which reads
 * RESP commands and answers them as its mode says (a fixed reply, a reply
 * held back until a group of fakes has every command, silence, or a hang
 * up).  Header-only: each test binary includes it once, after
 * store_fixture.h.
 */
#ifndef CTR_TESTS_FAKE_REDIS_H
#define CTR_TESTS_FAKE_REDIS_H

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>

typedef enum fake_mode {
    FAKE_REPLY,         /* every command gets `reply` (ASKING/READONLY: +OK) */
    FAKE_BARRIER,       /* as REPLY, but only once every fake in the group
                           has received `expect` commands */
    FAKE_SILENT,        /* reads, never answers */
    FAKE_HANGUP,        /* closes the connection on the first command */
} fake_mode;

typedef struct fake {
    int lfd, port;
    fake_mode mode;
    pthread_mutex_t lock;       /* guards reply and the BARRIER fields,
                                   which a test sets while the fake runs
                                   (fake_set_reply, fake_set_barrier) */
    char reply[128];
    int expect;                 /* BARRIER: commands before the group is ready */
    atomic_int *ready;          /* BARRIER: fakes of the group with all theirs */
    int group;                  /* BARRIER: fakes in the group */
    atomic_int commands;        /* commands received (ASKING/READONLY too) */
    atomic_int counted;         /* BARRIER: this fake is counted in ready */
    atomic_int stop;
    pthread_t th;
} fake;

/* Complete commands at the start of buf[0..n): their count, and the bytes
 * they take in *used; names of the first 64 in names[]. */
static inline int parse_cmds(const char *buf, size_t n, size_t *used, char names[][16]) {
    size_t p = 0;
    int count = 0;
    for (;;) {
        size_t q = p;
        if (q >= n || buf[q] != '*') break;
        const char *nl = memchr(buf + q, '\n', n - q);
        if (!nl) break;
        int argc = atoi(buf + q + 1);
        q = (size_t)(nl - buf) + 1;
        int ok = 1;
        for (int a = 0; a < argc && ok; a++) {
            if (q >= n || buf[q] != '$') { ok = 0; break; }
            nl = memchr(buf + q, '\n', n - q);
            if (!nl) { ok = 0; break; }
            size_t len = (size_t)atol(buf + q + 1);
            size_t start = (size_t)(nl - buf) + 1;
            if (start + len + 2 > n) { ok = 0; break; }
            if (a == 0 && count < 64) {
                size_t k = len < 15 ? len : 15;
                memcpy(names[count], buf + start, k);
                names[count][k] = '\0';
            }
            q = start + len + 2;
        }
        if (!ok) break;
        p = q;
        count++;
    }
    *used = p;
    return count;
}

static inline void write_all(int fd, const char *s, size_t n) {
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

static inline void *fake_main(void *arg) {
    fake *f = arg;
    int cfd[8], ncl = 0;
    static __thread char buf[1 << 16];
    size_t have[8] = {0};
    char pending[8][1 << 12];   /* replies held back (BARRIER) */
    size_t npend[8] = {0};
    while (!atomic_load(&f->stop)) {
        struct pollfd pfd[9];
        pfd[0] = (struct pollfd){.fd = f->lfd, .events = POLLIN};
        for (int i = 0; i < ncl; i++) pfd[1 + i] = (struct pollfd){.fd = cfd[i], .events = POLLIN};
        int r = poll(pfd, (nfds_t)(1 + ncl), 5);
        pthread_mutex_lock(&f->lock);
        atomic_int *ready = f->ready;
        int group = f->group, expect = f->expect;
        pthread_mutex_unlock(&f->lock);
        if (f->mode == FAKE_BARRIER && ready && atomic_load(ready) == group) {
            for (int i = 0; i < ncl; i++) {
                write_all(cfd[i], pending[i], npend[i]);
                npend[i] = 0;
            }
        }
        if (r <= 0) continue;
        if ((pfd[0].revents & POLLIN) && ncl < 8) {
            int c = accept(f->lfd, NULL, NULL);
            if (c >= 0) {
                cfd[ncl] = c;
                have[ncl] = 0;
                npend[ncl] = 0;
                ncl++;
            }
        }
        for (int i = 0; i < ncl; i++) {
            if (!(pfd[1 + i].revents & (POLLIN | POLLHUP))) continue;
            char *b = buf;
            ssize_t got = read(cfd[i], b + have[i], sizeof buf - have[i]);
            if (got <= 0) continue;
            have[i] += (size_t)got;
            size_t used;
            char names[64][16];
            int k = parse_cmds(b, have[i], &used, names);
            memmove(b, b + used, have[i] - used);
            have[i] -= used;
            atomic_fetch_add(&f->commands, k);
            char reply[sizeof f->reply];
            pthread_mutex_lock(&f->lock);
            memcpy(reply, f->reply, sizeof reply);
            pthread_mutex_unlock(&f->lock);
            if (f->mode == FAKE_HANGUP && k) {
                close(cfd[i]);
                cfd[i] = -1;
                continue;
            }
            if (f->mode == FAKE_SILENT) continue;
            for (int j = 0; j < k; j++) {
                const char *rep = (j < 64 && (strcmp(names[j], "ASKING") == 0 ||
                                              strcmp(names[j], "READONLY") == 0))
                                      ? "+OK\r\n"
                                      : reply;
                if (f->mode == FAKE_BARRIER) {
                    size_t len = strlen(rep);
                    if (npend[i] + len <= sizeof pending[i]) {
                        memcpy(pending[i] + npend[i], rep, len);
                        npend[i] += len;
                    }
                } else {
                    write_all(cfd[i], rep, strlen(rep));
                }
            }
            if (f->mode == FAKE_BARRIER && ready && !atomic_load(&f->counted) &&
                atomic_load(&f->commands) >= expect) {
                atomic_store(&f->counted, 1);
                atomic_fetch_add(ready, 1);
            }
        }
    }
    for (int i = 0; i < ncl; i++)
        if (cfd[i] >= 0) close(cfd[i]);
    return NULL;
}

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

#endif
