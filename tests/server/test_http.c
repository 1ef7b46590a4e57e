/* test_http.c - the HTTP front on a real socket: routing, /readyz from the
 * health state, framing refusals (two Content-Length, Transfer-Encoding),
 * 411/413, the deadline header, a rank through the worker queue, the
 * out-of-memory answer, and a clean stop.  Needs $CTR_REDIS, $CTR_GOLDEN. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "svc_fixture.h"
#include "server/http.h"
#include "server/worker.h"

static service svc;
static http_server *h;

static int setup(void **state) {
    (void)state;
    if (svc_init(&svc) < 0 || worker_global_init() < 0) return -1;
    http_params p = {"127.0.0.1", 0, 2, 4, 10, 1000, 64, 0, 5};
    char err[256];
    if (http_start(&svc, &p, &h, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    atomic_store(&svc.stopping, 1);
    http_stop(h, 1000);
    worker_global_free();
    svc_free(&svc);
    return 0;
}

/* Sends req on a new connection; reads until the server closes or 2 s. */
static int exchange(const char *req, size_t len, char *out, size_t cap, int *closed) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)http_port(h)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(send(fd, req, len, MSG_NOSIGNAL), (ssize_t)len);
    size_t n = 0;
    *closed = 0;
    for (;;) {
        ssize_t r = recv(fd, out + n, cap - 1 - n, 0);
        if (r == 0) { *closed = 1; break; }
        if (r < 0) break;
        n += (size_t)r;
        /* A whole answer with Content-Length: stop waiting. */
        out[n] = '\0';
        char *hdr_end = strstr(out, "\r\n\r\n"), *cl = strcasestr(out, "Content-Length: ");
        if (hdr_end && cl && (size_t)(out + n - hdr_end - 4) >= strtoul(cl + 16, NULL, 10) &&
            !strstr(out, "Connection: close"))
            break;
    }
    out[n] = '\0';
    close(fd);
    int status = 0;
    sscanf(out, "HTTP/1.1 %d", &status);
    return status;
}

static int get(const char *req, char *out, size_t cap, int *closed) {
    return exchange(req, strlen(req), out, cap, closed);
}

static void test_routes(void **state) {
    (void)state;
    static char out[1 << 17];
    int closed;
    assert_int_equal(get("GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", out, sizeof out, &closed), 200);
    assert_int_equal(get("GET /nope HTTP/1.1\r\nHost: t\r\n\r\n", out, sizeof out, &closed), 404);
    assert_int_equal(get("GET /v1/rank HTTP/1.1\r\nHost: t\r\n\r\n", out, sizeof out, &closed), 405);
    assert_non_null(strstr(out, "Allow: POST"));
    assert_int_equal(get("GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n", out, sizeof out, &closed), 200);
    /* Ready only when every model's feature set is: the answer names the
     * model that is not. */
    atomic_store(&svc.models[1].feature_set, SERVICE_FS_MISSING);
    assert_int_equal(get("GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n", out, sizeof out, &closed), 503);
    assert_non_null(strstr(out, "feature-set marker"));
    assert_non_null(strstr(out, "model tin (prefix"));
    atomic_store(&svc.models[1].feature_set, SERVICE_FS_OK);
    assert_int_equal(get("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", out, sizeof out, &closed), 200);
    assert_non_null(strstr(out, "ctr_redis_breaker_open"));
    assert_non_null(strstr(out, "ctr_model_info{model=\"tin\",name=\"tin-small\""));
    assert_int_equal(get("GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n", out, sizeof out, &closed), 200);
    assert_non_null(strstr(out, "\"name\":\"qin\",\"default\":true"));
    assert_non_null(strstr(out, "\"name\":\"tin\",\"default\":false"));
}

static void test_rank(void **state) {
    (void)state;
    char out[8192], req[1024];
    int closed;
    const char *body = "{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 3}]}";
    snprintf(req, sizeof req, "POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Type: "
             "application/json\r\nX-Request-Timeout-Ms: 200\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    assert_int_equal(get(req, out, sizeof out, &closed), 200);
    assert_non_null(strstr(out, "\"items\":[{\"item_id\":3,"));
    assert_int_equal(http_pending(h), 0);
    snprintf(req, sizeof req, "POST /v1/rank HTTP/1.1\r\nHost: t\r\nX-Request-Timeout-Ms: -4\r\n"
             "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
    assert_int_equal(get(req, out, sizeof out, &closed), 400);
    assert_non_null(strstr(out, "X-Request-Timeout-Ms"));
    /* A model the server does not have: 404, naming the ones it has. */
    body = "{\"model\": \"gbdt\", \"user_id\": \"u1\", \"candidates\": [{\"item_id\": 3}]}";
    snprintf(req, sizeof req, "POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Type: "
             "application/json\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
    assert_int_equal(get(req, out, sizeof out, &closed), 404);
    assert_non_null(strstr(out, "\"code\":\"not_found\""));
    assert_non_null(strstr(out, "no model named \\\"gbdt\\\" here (models: qin, tin)"));
}

static void test_framing(void **state) {
    (void)state;
    char out[8192];
    int closed;
    assert_int_equal(get("POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                         "Content-Length: 3\r\n\r\n{}", out, sizeof out, &closed), 400);
    assert_true(closed);
    assert_non_null(strstr(out, "more than one Content-Length"));
    assert_int_equal(get("POST /v1/rank HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked"
                         "\r\n\r\n0\r\n\r\n", out, sizeof out, &closed), 400);
    assert_true(closed);
    assert_int_equal(get("POST /v1/rank HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                         "Content-Length: 2\r\n\r\n{}", out, sizeof out, &closed), 400);
    assert_int_equal(get("POST /v1/rank HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "ffffffffffffffff\r\nab", out, sizeof out, &closed), 411);
    assert_true(closed);
    assert_int_equal(get("POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n"
                         "Expect: 100-continue\r\n\r\n", out, sizeof out, &closed), 413);
    /* Over max_body, sent whole: read, discarded, then answered. */
    static char big[(2 << 20) + 256];
    int n = snprintf(big, 256, "POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n",
                     2 << 20);
    memset(big + n, 'x', 2 << 20);
    assert_int_equal(exchange(big, (size_t)n + (2 << 20), out, sizeof out, &closed), 413);
}

static void test_body_of(void **state) {
    (void)state;
    proto_buf b;
    proto_buf_init(&b);
    proto_buf_puts(&b, "{\"a\":1}");
    const char *data;
    size_t len;
    int status = 200;
    http_body_of(&b, &data, &len, &status);
    assert_int_equal(len, 7);
    assert_int_equal(status, 200);
    b.oom = 1;   /* a failed growth: never the stale length with "" */
    http_body_of(&b, &data, &len, &status);
    assert_int_equal(status, 500);
    assert_int_equal(len, strlen(data));
    assert_non_null(strstr(data, "out of memory"));
    proto_buf_free(&b);
}

/* Reads one answer (headers and a Content-Length body) from fd into out;
 * its status, or 0.  *closed: the server closed the connection after it. */
static int read_answer(int fd, char *out, size_t cap, int *closed) {
    size_t n = 0;
    *closed = 0;
    for (;;) {
        ssize_t r = recv(fd, out + n, cap - 1 - n, 0);
        if (r <= 0) break;
        n += (size_t)r;
        out[n] = '\0';
        char *hdr_end = strstr(out, "\r\n\r\n"), *cl = strcasestr(out, "Content-Length: ");
        if (hdr_end && cl && (size_t)(out + n - hdr_end - 4) >= strtoul(cl + 16, NULL, 10))
            break;
    }
    out[n] = '\0';
    if (strstr(out, "Connection: close")) {
        char c;
        *closed = recv(fd, &c, 1, 0) == 0;
    }
    int status = 0;
    sscanf(out, "HTTP/1.1 %d", &status);
    return status;
}

/* A drain (SIGTERM sets draining): /readyz says 503 at once, but a rank
 * request on a connection already open is still answered, 200, with
 * Connection: close, so its client goes elsewhere for the next one. */
static void test_drain(void **state) {
    (void)state;
    char out[8192], req[1024];
    int closed;
    const char *body = "{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 3}]}";
    int len = snprintf(req, sizeof req, "POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Type: "
                       "application/json\r\nX-Request-Timeout-Ms: 500\r\nContent-Length: %zu\r\n\r\n%s",
                       strlen(body), body);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)http_port(h)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(send(fd, req, (size_t)len, MSG_NOSIGNAL), len);
    assert_int_equal(read_answer(fd, out, sizeof out, &closed), 200);
    assert_null(strstr(out, "Connection: close"));   /* kept alive */

    atomic_store(&svc.draining, 1);
    char ready[4096];
    assert_int_equal(get("GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n", ready, sizeof ready, &closed),
                     503);
    assert_non_null(strstr(ready, "shutting down"));
    assert_int_equal(send(fd, req, (size_t)len, MSG_NOSIGNAL), len);
    assert_int_equal(read_answer(fd, out, sizeof out, &closed), 200);
    assert_non_null(strstr(out, "\"items\":[{\"item_id\":3,"));
    assert_non_null(strstr(out, "Connection: close"));
    assert_true(closed);
    close(fd);
    atomic_store(&svc.draining, 0);
    assert_int_equal(get("GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n", ready, sizeof ready, &closed),
                     200);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_rank),
        cmocka_unit_test(test_drain),
        cmocka_unit_test(test_framing),
        cmocka_unit_test(test_body_of),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
