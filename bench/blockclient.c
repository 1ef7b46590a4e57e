/*
 * blockclient.c - a blocking, one-connection HTTP/1.1 client for latency
 * percentiles (bench/latency.py): send one request, read its whole answer,
 * send the next.  No event loop, no second thread, no timer wheel: the
 * client adds as little as a client can to each figure (on these VMs an
 * event-loop generator such as wrk adds about 0.5 ms at p99 on its own), so
 * p50, p99 and p99.9 over up to millions of requests are the server's.
 *
 *   blockclient --port P [--host 127.0.0.1] [--path /v1/rank] [--get]
 *               [--requests FILE] [--count N] [--warmup N] [--seconds S]
 *
 * FILE holds one JSON body a line, sent in turn (POST); --get sends GETs of
 * --path with no body (e.g. /healthz: the floor of the server and of this
 * client).  --warmup N answers are sent first and not counted.  Stops at
 * --count answers or after --seconds, whichever comes first.  An answer
 * other than 200 counts as an error (its latency is kept apart).  Output:
 * one line `BLOCKCLIENT key=value ...`: count, errors, req/s, and the
 * latency's min, p50, p90, p99, p99.9, max in microseconds.
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

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *path = "/v1/rank", *file = NULL;
    int port = 0, get = 0;
    long count = 10000, warm = 200;
    double seconds = 3600;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--host") && i + 1 < argc) host = argv[++i];
        else if (!strcmp(argv[i], "--path") && i + 1 < argc) path = argv[++i];
        else if (!strcmp(argv[i], "--requests") && i + 1 < argc) file = argv[++i];
        else if (!strcmp(argv[i], "--count") && i + 1 < argc) count = atol(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) warm = atol(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--get")) get = 1;
        else {
            fprintf(stderr, "usage: %s --port P [--host H] [--path P] [--get] [--requests FILE] "
                    "[--count N] [--warmup N] [--seconds S]\n", argv[0]);
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
    char *buf = malloc(cap);
    double *lat = malloc((size_t)count * sizeof *lat);
    if (!buf || !lat) return 1;
    int fd = dial(host, port);
    if (fd < 0) {
        perror("blockclient: connect");
        return 1;
    }
    long done = 0, errors = 0, k = 0;
    double t_start = 0, end = 0;
    for (long i = 0; done < count; i++) {
        if (i == warm) {
            t_start = bench_now_s();
            end = t_start + seconds;
        }
        const int m = (int)(k++ % nmsg);
        double t0 = bench_now_s();
        int st = send_all(fd, msg[m], len[m]) < 0 ? -1 : read_answer(fd, buf, cap);
        double t = bench_now_s() - t0;
        if (st < 0) { /* reconnect once, and count it */
            close(fd);
            if ((fd = dial(host, port)) < 0) {
                perror("blockclient: reconnect");
                return 1;
            }
        }
        if (i < warm) continue;
        if (st == 200) lat[done++] = t;
        else errors++;
        if (bench_now_s() > end || errors > count) break;
    }
    double took = bench_now_s() - t_start;
    close(fd);
    if (!done) {
        printf("BLOCKCLIENT count=0 errors=%ld\n", errors);
        return 1;
    }
    double mn = bench_quantile(lat, (int)done, 0.0);
    printf("BLOCKCLIENT count=%ld errors=%ld rps=%.0f min_us=%.1f p50_us=%.1f p90_us=%.1f "
           "p99_us=%.1f p999_us=%.1f max_us=%.1f\n", done, errors, done / took, mn * 1e6,
           bench_quantile(lat, (int)done, 0.5) * 1e6, bench_quantile(lat, (int)done, 0.9) * 1e6,
           bench_quantile(lat, (int)done, 0.99) * 1e6, bench_quantile(lat, (int)done, 0.999) * 1e6,
           bench_quantile(lat, (int)done, 1.0) * 1e6);
    for (int i = 0; i < nmsg; i++) free(msg[i]);
    free(msg);
    free(len);
    free(buf);
    free(lat);
    return errors ? 1 : 0;
}
