/* test_http.c - the HTTP front on a real socket: routing, /readyz from the
 * health state, framing refusals (two Content-Length, Transfer-Encoding;
 * header spellings, paths, versions, sizes: the gate's JSON refusals),
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
#include "server/http_head.h"
#include "server/worker.h"

static service svc;
static http_server *h;

/* How long a client here waits for an answer: only a bound on a hang (the
 * waits end as soon as the answer is complete), never a latency check. */
#define ANSWER_WAIT_S 10

static int setup(void **state) {
    (void)state;
    if (svc_init(&svc) < 0 || svc_workers_init() < 0) return -1;
    /* A receive deadline of seconds: a sanitizer build on a loaded
     * machine may take a while over the 2 MB body of test_framing. */
    http_params p = {"127.0.0.1", 0, 2, 4, 10, 10000, 64, 0, 5};
    char err[256];
    if (http_start(&svc, &p, &h, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

/* Also after a failed setup (cmocka runs the group teardown then too). */
static int teardown(void **state) {
    (void)state;
    atomic_store(&svc.stopping, 1);
    http_stop(h, 1000);
    h = NULL;
    svc_workers_free();
    svc_free(&svc);
    return 0;
}

/* A new connection to the server (reads time out after ANSWER_WAIT_S),
 * req[0..len) sent on it. */
static int connect_send(const char *req, size_t len) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)http_port(h)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    struct timeval tv = {ANSWER_WAIT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(send(fd, req, len, MSG_NOSIGNAL), (ssize_t)len);
    return fd;
}

/* Sends req on a new connection; reads until the server closes, the answer
 * is complete, or ANSWER_WAIT_S. */
static int exchange(const char *req, size_t len, char *out, size_t cap, int *closed) {
    int fd = connect_send(req, len);
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
             "application/json\r\nX-Request-Timeout-Ms: 5000\r\nContent-Length: %zu\r\n\r\n%s",
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

/* A refusal: status, the API's JSON error naming `what`, connection
 * closed, and nothing else answered (a body smuggled as a next request
 * is never run). */
static void refused(const char *req, size_t len, int status, const char *what) {
    static char out[1 << 16];
    int closed;
    int got = exchange(req, len, out, sizeof out, &closed);
    if (got != status || !closed || !strstr(out, "Content-Type: application/json") ||
        !strstr(out, "\r\n\r\n{\"error\":{\"code\":") || !strstr(out, what) ||
        strstr(out + 12, "\nHTTP/") || strstr(out, "}HTTP/") || strstr(out, "<html"))
        fail_msg("%.60s...: expected %d naming \"%s\", closed; got %d, closed %d:\n%s", req,
                 status, what, got, closed, out);
}
#define REFUSED(req, status, what) refused(req, sizeof(req) - 1, status, what)

/* Spellings a lenient parser reads differently from a strict front end
 * (request smuggling), and what libmicrohttpd answered in HTML or let
 * through: every one refused by the gate in JSON, the connection closed. */
static void test_spellings(void **state) {
    (void)state;
    /* Whitespace before the colon: the library took "Content-Length " for
     * another header, framed no body, and ran the body as a request. */
    REFUSED("POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length : 36\r\n\r\n"
            "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", 400, "whitespace between a header name");
    REFUSED("POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length\t: 36\r\n\r\n"
            "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", 400, "whitespace between");
    /* obs-fold: a Content-Length folded into the previous header. */
    REFUSED("POST /v1/rank HTTP/1.1\r\nHost: t\r\nX-A: b\r\n Content-Length: 36\r\n\r\n"
            "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n", 400, "obs-fold");
    REFUSED("GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: b\r\n\tc\r\n\r\n", 400, "obs-fold");
    /* Transfer-Encoding in any spelling, with Content-Length. */
    REFUSED("POST /v1/rank HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n"
            "Content-Length: 2\r\n\r\n{}", 400, "whitespace between");
    REFUSED("POST /v1/rank HTTP/1.1\r\nHost: t\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n"
            "Content-Length: 2\r\n\r\n{}", 400, "obs-fold");
    REFUSED("POST /v1/rank HTTP/1.1\r\nHost: t\r\ntransfer-encoding: CHUNKED\r\n"
            "Content-Length: 2\r\n\r\n{}", 400, "both Transfer-Encoding and Content-Length");
    /* Content-Length other than plain digits. */
    REFUSED("POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400,
            "plain digits");
    REFUSED("POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length: +2\r\n\r\n{}", 400,
            "plain digits");
    REFUSED("POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length: 2, 2\r\n\r\n{}", 400,
            "plain digits");
    REFUSED("POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length: 0x2\r\n\r\n{}", 400,
            "plain digits");
    REFUSED("POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length:\r\n\r\n", 400,
            "plain digits");
    REFUSED("POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999\r\n"
            "\r\n", 400, "plain digits");
    /* Bytes that cannot be in a path; %00 cut the path short. */
    REFUSED("GET /healthz%00junk HTTP/1.1\r\nHost: t\r\n\r\n", 400, "escaped control byte");
    REFUSED("POST /v1/rank%00junk HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}", 400,
            "escaped control byte");
    REFUSED("GET /healthz%0d%0aX: y HTTP/1.1\r\nHost: t\r\n\r\n", 400, "escaped control byte");
    REFUSED("GET /healthz%0a HTTP/1.1\r\nHost: t\r\n\r\n", 400, "escaped control byte");
    REFUSED("GET /healthz%zz HTTP/1.1\r\nHost: t\r\n\r\n", 400, "malformed %-escape");
    REFUSED("GET /healthz% HTTP/1.1\r\nHost: t\r\n\r\n", 400, "malformed %-escape");
    REFUSED("GET /he\x01lthz HTTP/1.1\r\nHost: t\r\n\r\n", 400, "a byte a path cannot hold");
    REFUSED("GET /h\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n", 400, "a byte a path cannot hold");
    REFUSED("GET healthz HTTP/1.1\r\nHost: t\r\n\r\n", 400, "must be a path");
    /* Host on HTTP/1.1; versions. */
    REFUSED("GET /healthz HTTP/1.1\r\n\r\n", 400, "HTTP/1.1 needs a Host header");
    REFUSED("GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host");
    REFUSED("GET /healthz HTTP/1.9\r\nHost: t\r\n\r\n", 505, "HTTP/1.9 not supported");
    REFUSED("GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n", 505, "not supported");
    REFUSED("GET /healthz HTTP/1.10\r\nHost: t\r\n\r\n", 400, "malformed HTTP version");
    REFUSED("GET /healthz\r\n\r\n", 400, "malformed request line");
    /* Line ends other than CRLF; control bytes in a value. */
    REFUSED("GET /healthz HTTP/1.1\nHost: t\n\n", 400, "bare CR or LF");
    REFUSED("GET /healthz HTTP/1.1\r\nHost: t\rX: y\r\n\r\n", 400, "bare CR or LF");
    REFUSED("GET /healthz HTTP/1.1\r\nHost: t\x01\r\n\r\n", 400, "control byte");
    REFUSED("GET /healthz HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n", 400,
            "whitespace between");
    REFUSED("GET /healthz HTTP/1.1\r\nHost: t\r\nNocolon\r\n\r\n", 400,
            "malformed header line");
    /* Sizes: answered in JSON, not in the library's HTML. */
    static char big[HTTP_HEAD_MAX + 4096];
    int n = snprintf(big, sizeof big, "GET /");
    memset(big + n, 'a', HTTP_TARGET_MAX + 10);
    n += HTTP_TARGET_MAX + 10;
    n += snprintf(big + n, sizeof big - (size_t)n, " HTTP/1.1\r\nHost: t\r\n\r\n");
    refused(big, (size_t)n, 414, "request target over 2048 bytes");
    n = snprintf(big, sizeof big, "GET /healthz HTTP/1.1\r\nHost: t\r\n");
    while (n < HTTP_HEAD_MAX + 100)
        n += snprintf(big + n, sizeof big - (size_t)n, "X-Pad: %0100d\r\n", 0);
    n += snprintf(big + n, sizeof big - (size_t)n, "\r\n");
    refused(big, (size_t)n, 431, "request line and headers over 8192 bytes");
    /* Still fine: HTTP/1.0 without Host; empty lines before a request; a
     * query; escapes of printable bytes. */
    static char out[8192];
    int closed;
    assert_int_equal(get("GET /healthz HTTP/1.0\r\n\r\n", out, sizeof out, &closed), 200);
    assert_int_equal(get("\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n", out, sizeof out,
                         &closed), 200);
    assert_int_equal(get("GET /healthz?x=1&y=%41 HTTP/1.1\r\nHost: t\r\n\r\n", out, sizeof out,
                         &closed), 200);
    assert_int_equal(get("GET /%68ealthz HTTP/1.1\r\nHost: t\r\nX-E:\r\n\r\n", out,
                         sizeof out, &closed), 200);
}

/* A refused request after good ones on the same connection: the good
 * ones are answered first, in order, then the refusal, then the close. */
static void test_refusal_after_pipeline(void **state) {
    (void)state;
    static char out[1 << 16];
    int closed;
    const char *body = "{\"user_id\": \"u1\", \"candidates\": [{\"item_id\": 3}]}";
    char req[2048];
    int n = snprintf(req, sizeof req,
                     "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
                     "POST /v1/rank HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n%s"
                     "GET /readyz HTTP/1.1\r\nHost : t\r\n\r\n"
                     "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n",
                     strlen(body), body);
    int fd = connect_send(req, (size_t)n);
    size_t got = 0;
    closed = 0;
    for (;;) {
        ssize_t r = recv(fd, out + got, sizeof out - 1 - got, 0);
        if (r == 0) closed = 1;
        if (r <= 0) break;
        got += (size_t)r;
    }
    out[got] = '\0';
    close(fd);
    if (!closed) fail_msg("not closed:\n%s", out);
    char *a = strstr(out, "HTTP/1.1 200"), *b = a ? strstr(a + 1, "HTTP/1.1 200") : NULL,
         *c = b ? strstr(b + 1, "HTTP/1.1 400") : NULL;
    if (!a || !b || !c || strstr(c + 1, "HTTP/1.1") || !strstr(b, "\"items\":[{\"item_id\":3"))
        fail_msg("expected 200, 200 (rank), 400, close:\n%s", out);
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
                       "application/json\r\nX-Request-Timeout-Ms: 5000\r\nContent-Length: %zu\r\n\r\n%s",
                       strlen(body), body);
    int fd = connect_send(req, (size_t)len);
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
        cmocka_unit_test(test_spellings),
        cmocka_unit_test(test_refusal_after_pipeline),
        cmocka_unit_test(test_body_of),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
