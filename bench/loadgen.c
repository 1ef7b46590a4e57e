/*
 * loadgen.c - an HTTP/1.1 load generator for the fault and overload
 * benchmarks (bench/faults.py), where wrk falls short: it keeps the latency
 * of each answer by status class (200 apart from 503, so the admitted
 * requests' p99 and the refused ones' are two figures), and it counts
 * answers carrying a null score.
 *
 *   loadgen --port P --conns C --seconds S --requests FILE [--rate R]
 *           [--path /v1/rank] [--count N] [--log FILE]
 *
 * --count N stops after N answers (or at --seconds, whichever is first).
 * SIGINT or SIGTERM ends the run early, with the figures so far.
 * --log FILE writes a first line "# start_unix_ms T" (the start, in the
 * wall clock's milliseconds), then one line per answer: its arrival in ms
 * since the start,
 * the HTTP status (0: connection failed), 1 when a 200 answer is degraded
 * (a non-empty "degraded" list), its latency in ms, and for an error
 * answer its error code ("-" otherwise); for fault tests that need to know
 * when answers went bad, how, and when they came back.
 *
 * FILE holds one JSON request body a line; connections cycle through them.
 * Closed loop by default (each connection sends its next request when the
 * answer is in); with --rate R, requests are scheduled at R per second over
 * all connections and latency counts from the scheduled time, so a stall
 * is not hidden by the requests it kept from being sent.  A connection the
 * server closes is reopened.  One epoll thread.
 *
 * Output: one line, `LOADGEN key=value ...`: sent, answered, per class
 * (ok = 200, shed = 503, other) the count and p50/p99/p99.9/max latency in
 * ms, req/s, nulls (200 answers with "score":null), degraded (200 answers
 * with a non-empty "degraded" list), errors (connection failures), and
 * took_p50/p99/p999/max: the server's own took_us of the 200
 * answers (arrival to answer, per answer), in ms.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef struct conn {
    int fd;
    int idx;                 /* next request */
    int busy;                /* a request is out */
    int64_t t0;              /* its start (scheduled time with --rate) */
    size_t sent, len;
    char *out;               /* the request being sent */
    char in[1 << 16];
    size_t got;
} conn;

typedef struct series {
    double *v;
    size_t n, cap;
} series;

static void push(series *s, double x) {
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 4096;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (!s->v) abort();
    }
    s->v[s->n++] = x;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(series *s, double p) {
    if (!s->n) return 0;
    size_t i = (size_t)(p * (double)(s->n - 1) + 0.5);
    return s->v[i];
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static char **reqs;
static size_t *req_len;
static int nreq;
static int port;
static const char *path = "/v1/rank";

static int open_conn(conn *c, int ep) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    /* Readable only, while idle: an idle socket is always writable, and
     * EPOLLOUT on it would make every epoll_wait return at once (a core
     * spinning between paced requests).  start_request's caller adds it. */
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    c->busy = 0;
    c->got = 0;
    return 0;
}

static void close_conn(conn *c, int ep) {
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
}

static void start_request(conn *c, int64_t t0) {
    c->out = reqs[c->idx];
    c->len = req_len[c->idx];
    c->idx = (c->idx + 1) % nreq;
    c->sent = 0;
    c->got = 0;
    c->busy = 1;
    c->t0 = t0;
}

/* 1 when c->in holds a whole response; *status, *keep set. */
static int whole(conn *c, int *status, int *keep, size_t *body_off, size_t *body_len) {
    c->in[c->got] = '\0';
    char *end = strstr(c->in, "\r\n\r\n");
    if (!end) return 0;
    *status = atoi(c->in + 9);
    char *cl = strcasestr(c->in, "\r\nContent-Length:");
    size_t n = cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0;
    *body_off = (size_t)(end + 4 - c->in);
    *body_len = n;
    if (c->got < *body_off + n) return 0;
    char *cc = strcasestr(c->in, "\r\nConnection: close");
    *keep = !(cc && cc < end);
    return 1;
}

int main(int argc, char **argv) {
    int conns = 8;
    double seconds = 5, rate = 0;
    const char *file = NULL;
    long count = 0;
    const char *logpath = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--conns")) conns = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--rate")) rate = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--requests")) file = argv[i + 1];
        else if (!strcmp(argv[i], "--path")) path = argv[i + 1];
        else if (!strcmp(argv[i], "--count")) count = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--log")) logpath = argv[i + 1];
        else { fprintf(stderr, "loadgen: unknown option %s\n", argv[i]); return 2; }
    }
    if (!port || !file || conns < 1) {
        fprintf(stderr, "usage: loadgen --port P --conns C --seconds S --requests FILE "
                        "[--rate R] [--path P]\n");
        return 2;
    }
    FILE *f = fopen(file, "r");
    if (!f) { perror(file); return 2; }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (!n) continue;
        reqs = realloc(reqs, (size_t)(nreq + 1) * sizeof *reqs);
        req_len = realloc(req_len, (size_t)(nreq + 1) * sizeof *req_len);
        size_t sz = (size_t)n + 256;
        reqs[nreq] = malloc(sz);
        req_len[nreq] = (size_t)snprintf(reqs[nreq], sz,
                                         "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                         "application/json\r\nContent-Length: %zd\r\n\r\n%s",
                                         path, n, line);
        nreq++;
    }
    free(line);
    fclose(f);
    if (!nreq) { fprintf(stderr, "loadgen: no requests in %s\n", file); return 2; }
    FILE *logf = NULL;
    if (logpath && !(logf = fopen(logpath, "w"))) { perror(logpath); return 2; }

    int ep = epoll_create1(0);
    conn *cs = calloc((size_t)conns, sizeof *cs);
    for (int i = 0; i < conns; i++) {
        cs[i].idx = (int)((long long)i * nreq / conns);
        if (open_conn(&cs[i], ep) < 0) { perror("connect"); return 1; }
    }
    series ok = {0}, shed = {0}, other = {0}, took = {0};
    long sent = 0, errors = 0, nulls = 0, degraded = 0;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    const int64_t start = now_ns(), end = start + (int64_t)(seconds * 1e9);
    if (logf) {
        struct timespec rt;
        clock_gettime(CLOCK_REALTIME, &rt);
        fprintf(logf, "# start_unix_ms %lld\n", (long long)rt.tv_sec * 1000 + rt.tv_nsec / 1000000);
    }
    const double interval = rate > 0 ? 1e9 * conns / rate : 0;  /* per connection */
    int64_t *next = calloc((size_t)conns, sizeof *next);
    for (int i = 0; i < conns; i++) next[i] = start + (int64_t)(interval * i / conns);
    struct epoll_event evs[256];
    int have_pwait2 = 1;
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);   /* wake when asked, not up to 50 us late */
    for (;;) {
        int64_t t = now_ns();
        if (t >= end || stop) break;
        if (count && (long)(ok.n + shed.n + other.n) >= count) break;
        /* Start what is due on idle connections. */
        for (int i = 0; i < conns; i++) {
            conn *c = &cs[i];
            if (c->fd < 0 && open_conn(c, ep) < 0) { errors++; continue; }
            if (c->busy) continue;
            if (rate > 0 && t < next[i]) continue;
            start_request(c, rate > 0 ? next[i] : t);
            if (rate > 0) next[i] += (int64_t)interval;
            sent++;
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
        /* Sleep until the next paced start is due (or 1 ms, closed loop
         * or all busy), to the nanosecond where the kernel has
         * epoll_pwait2: a request starting late would be charged the
         * delay. */
        int64_t wake = t + 1000000;
        for (int i = 0; rate > 0 && i < conns; i++)
            if (cs[i].fd >= 0 && !cs[i].busy && next[i] < wake) wake = next[i];
        int64_t wait_ns = wake > t ? wake - t : 0;
        struct timespec ts = {(time_t)(wait_ns / 1000000000), (long)(wait_ns % 1000000000)};
        int ne = have_pwait2 ? epoll_pwait2(ep, evs, 256, &ts, NULL) : -1;
        if (ne < 0 && errno == ENOSYS) have_pwait2 = 0;
        if (!have_pwait2) ne = epoll_wait(ep, evs, 256, (int)(wait_ns / 1000000));
        for (int k = 0; k < ne; k++) {
            conn *c = evs[k].data.ptr;
            if (c->fd < 0) continue;
            if ((evs[k].events & EPOLLOUT) && c->busy && c->sent < c->len) {
                ssize_t w = send(c->fd, c->out + c->sent, c->len - c->sent, MSG_NOSIGNAL);
                if (w > 0) c->sent += (size_t)w;
                else if (w < 0 && errno != EAGAIN) {
                    errors++;
                    close_conn(c, ep);
                    continue;
                }
                if (c->sent == c->len) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t r = recv(c->fd, c->in + c->got, sizeof c->in - 1 - c->got, 0);
                if (r <= 0) {
                    if (r == 0 || errno != EAGAIN) {
                        if (c->busy) {
                            errors++;
                            if (logf)
                                fprintf(logf, "%.3f 0 0 %.3f -\n", (double)(now_ns() - start) / 1e6,
                                        (double)(now_ns() - c->t0) / 1e6);
                        }
                        close_conn(c, ep);
                    }
                    continue;
                }
                c->got += (size_t)r;
                int status, keep;
                size_t boff, blen;
                if (!c->busy || !whole(c, &status, &keep, &boff, &blen)) continue;
                int64_t t_end = now_ns();
                double ms = (double)(t_end - c->t0) / 1e6;
                int deg = 0;
                char code[40] = "-";
                if (status != 200) {
                    c->in[boff + blen] = '\0';
                    const char *cd = strstr(c->in + boff, "\"code\":\"");
                    if (cd) sscanf(cd + 8, "%39[a-z_]", code);
                }
                if (status == 200) {
                    push(&ok, ms);
                    c->in[boff + blen] = '\0';
                    if (strstr(c->in + boff, "\"score\":null")) nulls++;
                    if (strstr(c->in + boff, "\"degraded\":[\"")) {
                        deg = 1;
                        degraded++;
                    }
                    const char *tk = strstr(c->in + boff, "\"took_us\":");
                    if (tk) push(&took, atof(tk + 10) / 1000.0);
                } else if (status == 503) {
                    push(&shed, ms);
                } else {
                    push(&other, ms);
                }
                if (logf)
                    fprintf(logf, "%.3f %d %d %.3f %s\n", (double)(t_end - start) / 1e6, status,
                            deg, ms, code);
                c->busy = 0;
                c->got = 0;
                if (!keep) close_conn(c, ep);
                else {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
        }
    }
    double secs = (double)(now_ns() - start) / 1e9;
    series *all[] = {&ok, &shed, &other};
    const char *name[] = {"ok", "shed", "other"};
    printf("LOADGEN sent=%ld answered=%zu seconds=%.3f rps=%.1f ok_rps=%.1f nulls=%ld "
           "degraded=%ld errors=%ld",
           sent, ok.n + shed.n + other.n, secs, (double)(ok.n + shed.n + other.n) / secs,
           (double)ok.n / secs, nulls, degraded, errors);
    for (int s = 0; s < 3; s++) {
        if (all[s]->n) qsort(all[s]->v, all[s]->n, sizeof(double), cmp);   /* v NULL when empty */
        printf(" %s=%zu %s_p50=%.3f %s_p99=%.3f %s_p999=%.3f %s_max=%.3f", name[s], all[s]->n,
               name[s], pct(all[s], 0.5), name[s], pct(all[s], 0.99), name[s],
               pct(all[s], 0.999), name[s], all[s]->n ? all[s]->v[all[s]->n - 1] : 0.0);
    }
    if (took.n) qsort(took.v, took.n, sizeof(double), cmp);
    printf(" took_p50=%.3f took_p99=%.3f took_p999=%.3f took_max=%.3f", pct(&took, 0.5),
           pct(&took, 0.99), pct(&took, 0.999), took.n ? took.v[took.n - 1] : 0.0);
    printf("\n");
    for (int i = 0; i < conns; i++) close_conn(&cs[i], ep);
    close(ep);
    if (logf) fclose(logf);
    for (int s = 0; s < 3; s++) free(all[s]->v);
    free(took.v);
    free(next);
    free(cs);
    for (int i = 0; i < nreq; i++) free(reqs[i]);
    free(reqs);
    free(req_len);
    return 0;
}
