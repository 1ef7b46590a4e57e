/*
 * blockclient.c - a blocking, one-connection HTTP/1.1 client for latency
 * percentiles (bench/latency.py): send one request, read its whole answer,
 * send the next.  No event loop, no second thread, no timer wheel: the
 * client adds as little as a client can to each figure (on these VMs an
 * event-loop generator such as wrk adds about 0.5 ms at p99 on its own), so
 * p50, p99 and p99.9 over up to millions of requests are the server's.
 *
 *   blockclient --port P [--port2 P] [--host 127.0.0.1] [--path /v1/rank] [--get]
 *               [--requests FILE] [--count N] [--warmup N] [--seconds S]
 *               [--dump FILE]
 *
 * FILE holds one JSON body a line, sent in turn (POST); --get sends GETs of
 * --path with no body (e.g. /healthz: the floor of the server and of this
 * client).  --warmup N answers are sent first and not counted.  Stops at
 * --count answers or after --seconds, whichever comes first.  An answer
 * other than 200 counts as an error (its latency is kept apart).  Output:
 * one line `BLOCKCLIENT key=value ...`: count, errors, req/s, and the
 * latency's min, p50, p90, p99, p99.9, max in microseconds.
 *
 * --port2 P: a second server (another build, or other settings) on the
 * same machine; each request is sent to both, one after the other (which
 * goes first alternates), so both see the same moments of whatever else
 * the machine runs: a same-run A/B of the tail.  A second line
 * `BLOCKCLIENT2 ...` has the second server's figures, and --count counts
 * each server's answers.
 *
 * --dump FILE writes one line per counted answer: its start (microseconds
 * since the first counted request), its latency, and the server's took_us
 * and stage_us (queue, decode, history, items, score) from the answer's
 * body (-1 where absent), and the server (0, or 1 for --port2), so the
 * slowest requests can be taken apart (bench/latency.py --tail).  The parse runs after the clock stops.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"

static int dial(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Reads one answer (headers, then Content-Length bytes of body) into buf;
 * returns the status code, or -1 (connection lost, no Content-Length). */
static int read_answer(int fd, char *buf, size_t cap) {
    size_t have = 0;
    char *body = NULL;
    long clen = -1;
    for (;;) {
        if (have == cap) return -1;
        ssize_t k = recv(fd, buf + have, cap - have, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        have += (size_t)k;
        if (!body) {
            buf[have < cap ? have : cap - 1] = '\0';
            char *end = strstr(buf, "\r\n\r\n");
            if (!end) continue;
            body = end + 4;
            for (char *l = strstr(buf, "\r\n"); l && l < end; l = strstr(l + 2, "\r\n"))
                if (!strncasecmp(l + 2, "content-length:", 15)) clen = strtol(l + 17, NULL, 10);
            if (clen < 0) return -1;
        }
        if ((size_t)(buf + have - body) >= (size_t)clen) break;
    }
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) return -1;
    return status;
}

/* The integer after "key": in an answer's body; -1 when absent. */
static long long json_int(const char *body, const char *key) {
    const char *p = strstr(body, key);
    return p ? strtoll(p + strlen(key), NULL, 10) : -1;
}

/* One --dump line: start and latency (microseconds), took_us, stage_us. */
static void dump_answer(FILE *f, double start, double t, const char *buf, int server) {
    static const char *const keys[] = {"\"took_us\":", "\"queue\":", "\"decode\":",
                                       "\"history\":", "\"items\":", "\"score\":"};
    const char *body = strstr(buf, "\r\n\r\n");
    body = body ? body + 4 : buf;
    /* took_us follows the items; the stages are keys of stage_us alone
     * (an item also has a "score"). */
    const char *took = strstr(body, "\"took_us\":"), *st = strstr(body, "\"stage_us\":{");
    fprintf(f, "%.1f %.1f", start * 1e6, t * 1e6);
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        const char *from = i == 0 ? took : st;
        fprintf(f, " %lld", from ? json_int(from, keys[i]) : -1);
    }
    fprintf(f, " %d\n", server);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *path = "/v1/rank", *file = NULL, *dump = NULL;
    int port = 0, port2 = 0, get = 0;
    long count = 10000, warm = 200;
    double seconds = 3600;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--port2") && i + 1 < argc) port2 = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--host") && i + 1 < argc) host = argv[++i];
        else if (!strcmp(argv[i], "--path") && i + 1 < argc) path = argv[++i];
        else if (!strcmp(argv[i], "--requests") && i + 1 < argc) file = argv[++i];
        else if (!strcmp(argv[i], "--count") && i + 1 < argc) count = atol(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) warm = atol(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--dump") && i + 1 < argc) dump = argv[++i];
        else if (!strcmp(argv[i], "--get")) get = 1;
        else {
            fprintf(stderr, "usage: %s --port P [--port2 P] [--host H] [--path P] [--get] [--requests FILE] "
                    "[--count N] [--warmup N] [--seconds S] [--dump FILE]\n", argv[0]);
            return 2;
        }
    }
    if (port <= 0 || count < 1 || (!get && !file)) {
        fprintf(stderr, "blockclient: --port and --requests FILE (or --get) are needed\n");
        return 2;
    }
    /* The requests, each as one whole HTTP message. */
    char **msg = NULL;
    size_t *len = NULL;
    int nmsg = 0;
    if (get) {
        msg = malloc(sizeof *msg);
        len = malloc(sizeof *len);
        msg[0] = malloc(strlen(path) + 128);
        len[0] = (size_t)sprintf(msg[0], "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host);
        nmsg = 1;
    } else {
        FILE *f = fopen(file, "r");
        if (!f) {
            perror(file);
            return 1;
        }
        char *line = NULL;
        size_t lcap = 0;
        ssize_t n;
        while ((n = getline(&line, &lcap, f)) > 0) {
            while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
            if (!n) continue;
            msg = realloc(msg, (size_t)(nmsg + 1) * sizeof *msg);
            len = realloc(len, (size_t)(nmsg + 1) * sizeof *len);
            msg[nmsg] = malloc((size_t)n + strlen(path) + 160);
            len[nmsg] = (size_t)sprintf(msg[nmsg],
                                        "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: "
                                        "application/json\r\nContent-Length: %zd\r\n\r\n%s",
                                        path, host, n, line);
            nmsg++;
        }
        free(line);
        fclose(f);
        if (!nmsg) {
            fprintf(stderr, "blockclient: %s has no requests\n", file);
            return 1;
        }
    }
    const size_t cap = 8 << 20;
    const int nsrv = port2 > 0 ? 2 : 1;
    char *buf = malloc(cap);
    double *lat[2] = {malloc((size_t)count * sizeof **lat), malloc((size_t)count * sizeof **lat)};
    if (!buf || !lat[0] || !lat[1]) return 1;
    FILE *df = NULL;
    if (dump && !(df = fopen(dump, "w"))) {
        perror(dump);
        return 1;
    }
    const int ports[2] = {port, port2};
    int fd[2] = {-1, -1};
    for (int s = 0; s < nsrv; s++)
        if ((fd[s] = dial(host, ports[s])) < 0) {
            perror("blockclient: connect");
            return 1;
        }
    /* With --port2, each request goes to one server and then to the
     * other (which goes first alternates), so both see the same moments
     * of the machine's other load. */
    long done[2] = {0, 0}, errors = 0, k = 0;
    double t_start = 0, end = 0;
    for (long i = 0; done[0] < count || (nsrv > 1 && done[1] < count); i++) {
        if (i == warm) {
            t_start = bench_now_s();
            end = t_start + seconds;
        }
        const int m = (int)(k++ % nmsg);
        for (int r = 0; r < nsrv; r++) {
            const int s = nsrv > 1 ? (int)((r + i) & 1) : 0;
            double t0 = bench_now_s();
            int st = send_all(fd[s], msg[m], len[m]) < 0 ? -1 : read_answer(fd[s], buf, cap);
            double t = bench_now_s() - t0;
            if (st < 0) { /* reconnect once, and count it */
                close(fd[s]);
                if ((fd[s] = dial(host, ports[s])) < 0) {
                    perror("blockclient: reconnect");
                    return 1;
                }
            }
            if (i < warm) continue;
            if (st == 200 && done[s] < count) {
                lat[s][done[s]++] = t;
                if (df) dump_answer(df, t0 - t_start, t, buf, s);
            } else if (st != 200) {
                errors++;
            }
        }
        if (i >= warm && (bench_now_s() > end || errors > count)) break;
    }
    double took = bench_now_s() - t_start;
    for (int s = 0; s < nsrv; s++) close(fd[s]);
    if (df && fclose(df)) perror(dump);
    for (int s = 0; s < nsrv; s++) {
        const int n = (int)done[s];
        if (!n) {
            printf("BLOCKCLIENT%s count=0 errors=%ld\n", s ? "2" : "", errors);
            return 1;
        }
        printf("BLOCKCLIENT%s count=%d errors=%ld rps=%.0f min_us=%.1f p50_us=%.1f p90_us=%.1f "
               "p99_us=%.1f p999_us=%.1f max_us=%.1f\n", s ? "2" : "", n, errors, n / took,
               bench_quantile(lat[s], n, 0.0) * 1e6, bench_quantile(lat[s], n, 0.5) * 1e6,
               bench_quantile(lat[s], n, 0.9) * 1e6, bench_quantile(lat[s], n, 0.99) * 1e6,
               bench_quantile(lat[s], n, 0.999) * 1e6, bench_quantile(lat[s], n, 1.0) * 1e6);
    }
    for (int i = 0; i < nmsg; i++) free(msg[i]);
    free(msg);
    free(len);
    free(buf);
    free(lat[0]);
    free(lat[1]);
    return errors ? 1 : 0;
}
