/*
 * http.c - libmicrohttpd glue for ctr-server (see http.h).
 *
 * Threads: one event loop of our own drives libmicrohttpd (its epoll set,
 * MHD_run: never blocking inside the library) to read requests and write
 * answers; a fixed set of request workers runs the rank requests.
 *
 * Why not libmicrohttpd's internal epoll thread: in 0.9.75 its event loop
 * calls epoll_wait again, with the blocking timeout, whenever a call
 * returned exactly its 128-event maximum, so with a multiple of 128 ready
 * connections (256 clients waiting for answers) it sleeps until the next
 * connection timeout (seconds) with requests unread.  MHD_run never
 * blocks, and this loop sleeps in poll(2) on the epoll descriptor.  The access handler
 * is called several times per request: once with the headers (protocol
 * checks), once per body chunk (collected into a per-request buffer bounded
 * by max_body), and once at the end, where a rank request is admitted (its
 * connection suspended, the request queued for a worker) or refused 503.
 * The worker builds the answer and resumes the connection; the handler is
 * then called once more and queues it.  Every request, whatever its
 * outcome, is counted in /metrics when it completes.
 *
 * A turn of the loop (libmicrohttpd's run and the gate's) is made under
 * loop_mu, which the loop's thread holds except while it sleeps in
 * poll(2).  A worker that finds the lock free and no other rank request
 * pending makes the turn that sends its answer itself (answer_out) rather
 * than wake the loop's thread for it: on the VMs this runs on, a wake-up
 * of an idle vCPU costs tens of microseconds before the thread runs.
 *
 * libmicrohttpd never reads a client's socket: the gate (http_gate.h),
 * driven by the same loop, accepts connections, checks every request head
 * on the raw bytes and hands the library each connection through a socket
 * pair (MHD_add_connection).
 *
 * Connections are tracked from accept to close (MHD's connection
 * notifications) in one list that a watchdog thread scans every few tens
 * of milliseconds: a connection whose request has not arrived whole within
 * receive_timeout_ms of its first line (of the accept, or of the previous
 * answer plus the idle timeout) is shut down (shutdown(2): the event loop then sees
 * the end of the stream and closes it itself).  libmicrohttpd notifies the
 * close before it closes the socket, and both the notification and the
 * watchdog hold the list's lock, so the watchdog never touches a socket
 * number that has been reused.
 */
#include "http.h"

#include <arpa/inet.h>
#include <limits.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto/error.h"
#include "server/endpoints.h"
#include "server/rank.h"
#include "server/worker.h"
#include "core/base/clock.h"
#include "core/base/log.h"
#include "server/http_gate.h"

#define JSON_TYPE "application/json"

/* One accepted connection (MHD socket context). */
typedef struct http_conn {
    struct http_conn *prev, *next;
    int fd;                         /* libmicrohttpd's end of the pair */
    gate_conn *g;                   /* the gate's side (under loop_mu;
                                       NULL once the gate let go) */
    atomic_llong req_start_ns;      /* first line (or accept) of the request */
    atomic_int receiving;           /* 1 until the request is in whole */
} http_conn;

typedef struct http_req http_req;

struct http_server {
    service *svc;
    struct MHD_Daemon *d;
    http_params p;
    pthread_t loop;
    int loop_started;
    atomic_int loop_stop;
    atomic_int quiesce;             /* ask the loop to stop accepting */
    http_gate *gate;                /* accepts, checks heads (under loop_mu) */
    gate_conn *adding;              /* the one MHD_add_connection is adding */
    int wake_fd;                    /* eventfd: a worker resumed a
                                       connection (libmicrohttpd's own
                                       signal is not in its epoll set in
                                       this mode), the watchdog cut one */
    int mhd_fd;                     /* libmicrohttpd's epoll set */
    pthread_mutex_t loop_mu;        /* held by whoever runs a turn of the
                                       loop (libmicrohttpd and the gate):
                                       the loop's thread, except while it
                                       sleeps in poll(2), or a worker
                                       sending its own answer */
    int port;
    atomic_int inflight;

    /* The rank queue: a ring of max_pending slots (admission keeps it from
     * overflowing). */
    pthread_mutex_t qmu;
    pthread_cond_t qcv;
    http_req **ring;
    int head, count, stopping;
    atomic_int pending;             /* admitted, not yet answered */
    pthread_t *workers;
    int nworkers;

    /* Connections, for the receive deadline. */
    pthread_mutex_t cmu;
    http_conn *conns;
    pthread_t watchdog;
    int watchdog_started;
    atomic_int watchdog_stop;
};

enum { REQ_NEW, REQ_BODY, REQ_QUEUED, REQ_DONE };

struct http_req {
    int64_t t0_ns;                  /* arrival (request line) */
    metrics_endpoint ep;
    int state;
    int status;                     /* 0 until a response is queued */
    int too_large;                  /* body over max_body: being discarded */
    size_t discarded;
    int header_deadline_ms;
    struct MHD_Connection *conn;
    http_server *h;
    proto_buf body;
    /* Set by the worker, queued by the event loop after the resume. */
    struct MHD_Response *resp;
    int resp_status;
    int close_after;                /* admitted while draining: answer with
                                       Connection: close */
};

/* --- responses ----------------------------------------------------------- */

static enum MHD_Result queue(struct MHD_Connection *c, http_req *r, int status,
                             struct MHD_Response *resp) {
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    return ret;
}

static struct MHD_Response *make(int status, const char *ctype, const char *data, size_t len,
                                 const char *allow, int close) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (!resp) return NULL;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (allow) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    if (status == 503) MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (close) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    return resp;
}

static enum MHD_Result respond(struct MHD_Connection *c, http_req *r, int status,
                               const char *ctype, const char *data, size_t len,
                               const char *allow, int close) {
    struct MHD_Response *resp = make(status, ctype, data, len, allow, close);
    if (!resp) return MHD_NO;
    return queue(c, r, status, resp);
}

static const char oom_body[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";

void http_body_of(const proto_buf *b, const char **data, size_t *len, int *status) {
    if (!proto_buf_ok(b)) {
        /* Never the buffer's stale length with proto_buf_str's "". */
        *data = oom_body;
        *len = sizeof oom_body - 1;
        *status = 500;
        return;
    }
    *data = proto_buf_str(b);
    *len = b->len;
}

/* An error object from proto/error.h, built in a local buffer (these paths
 * run on the event loop, outside any worker). */
static enum MHD_Result respond_error_c(struct MHD_Connection *c, http_req *r, proto_error e,
                                       const char *msg, const char *allow, int close) {
    proto_buf b;
    proto_buf_init(&b);
    proto_error_encode(e, msg, &b);
    const char *data;
    size_t len;
    int status = proto_error_http(e);
    http_body_of(&b, &data, &len, &status);
    enum MHD_Result ret = respond(c, r, status, JSON_TYPE, data, len, allow, close);
    proto_buf_free(&b);
    return ret;
}

static enum MHD_Result respond_error(struct MHD_Connection *c, http_req *r, proto_error e,
                                     const char *msg, const char *allow) {
    return respond_error_c(c, r, e, msg, allow, 0);
}

static enum MHD_Result respond_buf(struct MHD_Connection *c, http_req *r, int status,
                                   const char *ctype, const proto_buf *b) {
    const char *data;
    size_t len;
    http_body_of(b, &data, &len, &status);
    return respond(c, r, status, status == 500 ? JSON_TYPE : ctype, data, len, NULL, 0);
}

/* --- request checks ------------------------------------------------------ */

/* application/json, with or without parameters (charset=utf-8).  A request
 * without a Content-Type is accepted: many load tools send none. */
static int json_content_type(struct MHD_Connection *c) {
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!ct) return 1;
    while (*ct == ' ') ct++;
    size_t n = strlen(JSON_TYPE);
    return strncasecmp(ct, JSON_TYPE, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* X-Request-Timeout-Ms: 0 when absent, -1 when malformed. */
static int header_deadline(struct MHD_Connection *c) {
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Timeout-Ms");
    if (!v) return 0;
    char *end;
    long long ms = strtoll(v, &end, 10);
    if (end == v || *end || ms < 1) return -1;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* --- the rank queue ------------------------------------------------------ */

/* Wakes the event loop (a resumed connection, a stop). */
static void wake(http_server *h) {
    uint64_t one = 1;
    if (write(h->wake_fd, &one, sizeof one) < 0) { /* full counter: awake anyway */ }
}

/* Builds the worker's answer into r->resp.  Runs on a worker thread. */
static void work(http_server *h, http_req *r) {
    service *svc = h->svc;
    worker *w = worker_self(svc);
    int status;
    const char *data;
    size_t len;
    if (!w) {
        static const char msg[] =
            "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        data = msg;
        len = sizeof msg - 1;
        status = 500;
    } else if (atomic_load(&svc->stopping)) {
        proto_buf_reset(&w->out);
        proto_error_encode(PROTO_ERROR_NOT_READY, "shutting down", &w->out);
        status = 503;
        http_body_of(&w->out, &data, &len, &status);
    } else {
        rank_input in = {r->body.data ? r->body.data : "", r->body.len, r->t0_ns,
                         r->header_deadline_ms};
        status = rank_handle(w, &in);
        http_body_of(&w->out, &data, &len, &status);
    }
    r->resp = make(status, JSON_TYPE, data, len, NULL, r->close_after);
    r->resp_status = status;
}

/* 1 when libmicrohttpd has work ready: a connection it knows is ready,
 * or events in its epoll set not yet taken. */
static int mhd_ready(http_server *h) {
    MHD_UNSIGNED_LONG_LONG to;
    if (MHD_get_timeout(h->d, &to) == MHD_YES && to == 0) return 1;
    struct pollfd p = {.fd = h->mhd_fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

/* A turn of the loop: the gate and libmicrohttpd in turn until neither
 * has anything left to do (bytes passed into a pair are the library's
 * work; what it writes is the gate's), at most a few rounds.  Nothing
 * sleeps on the pairs' events or on the library's epoll set: only the
 * clients' sockets, the wake-up descriptor and the library's timeouts
 * wake the loop, so a turn must leave nothing ready.  Returns 1 when work
 * is left (the loop then polls without sleeping).  Under loop_mu. */
static int loop_turn(http_server *h) {
    for (int round = 0; round < 8; round++) {
        int moved = http_gate_poll(h->gate);
        /* The first run is unconditional: a resumed connection, a timeout
         * or a close shows in neither of the library's signs of work. */
        if (!round || mhd_ready(h)) MHD_run(h->d);
        moved += http_gate_poll(h->gate);
        if (!moved && !mhd_ready(h)) return 0;
    }
    return 1;
}

/* A worker has resumed a connection with its answer.  When the loop's
 * thread is asleep in poll(2) (the lock is free) and no other rank request
 * is queued or in work, the worker sends the answer itself: libmicrohttpd
 * queues and writes it, the gate passes it to the client, all on this
 * thread, instead of waking the loop's thread and waiting for it to be
 * scheduled (at one connection: resumed -> answer read by the gate 20-49
 * -> 17 us median, one wake-up of the loop a request fewer;
 * bench/results/perf-2026-12-07b.md section 7).  Otherwise,
 * or when work is left over, the loop is woken as before.  The pending
 * check keeps a worker of lowered priority (worker_nice) from holding the
 * loop's lock while other workers compute: under load the loop's thread
 * makes every turn, as before. */
static void answer_out(http_server *h) {
    if (atomic_load(&h->pending) != 0 || pthread_mutex_trylock(&h->loop_mu) != 0) {
        wake(h);
        return;
    }
    int more = loop_turn(h);
    pthread_mutex_unlock(&h->loop_mu);
    if (more) wake(h);
}

static void *worker_main(void *arg) {
    http_server *h = arg;
    /* Computation yields to the event loop: SCHED_BATCH (no wakeup
     * preemption) and worker_nice more than the process's nice value, so
     * that on a saturated CPU the loop still reads requests, refuses the
     * excess and writes answers at once instead of queueing behind the
     * model.  Both are allowed without privileges; on an idle CPU they
     * change nothing.  (The scoring pool's helpers keep the process's
     * priority: a request being scored should finish.) */
    if (h->p.worker_nice > 0) {
        struct sched_param sp = {0};
        pthread_setschedparam(pthread_self(), SCHED_BATCH, &sp);
        if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid),
                        getpriority(PRIO_PROCESS, 0) + h->p.worker_nice) != 0) {
            /* not allowed here: run at the loop's priority */
        }
    }
    worker_prepare(h->svc);
    for (;;) {
        pthread_mutex_lock(&h->qmu);
        while (!h->count && !h->stopping) pthread_cond_wait(&h->qcv, &h->qmu);
        if (!h->count) { /* stopping and drained */
            pthread_mutex_unlock(&h->qmu);
            return NULL;
        }
        http_req *r = h->ring[h->head];
        h->head = (h->head + 1) % h->p.max_pending;
        h->count--;
        pthread_mutex_unlock(&h->qmu);
        work(h, r);
        r->state = REQ_DONE;
        atomic_fetch_sub(&h->pending, 1);
        metrics_pending_add(h->svc->metrics, -1);
        MHD_resume_connection(r->conn);
        answer_out(h);
    }
}

/* Admits r (0) or refuses it (-1: over max_pending). */
static int admit(http_server *h, http_req *r) {
    if (atomic_fetch_add(&h->pending, 1) >= h->p.max_pending) {
        atomic_fetch_sub(&h->pending, 1);
        return -1;
    }
    metrics_pending_add(h->svc->metrics, 1);
    r->state = REQ_QUEUED;
    MHD_suspend_connection(r->conn);
    pthread_mutex_lock(&h->qmu);
    h->ring[(h->head + h->count) % h->p.max_pending] = r;
    h->count++;
    pthread_cond_signal(&h->qcv);
    pthread_mutex_unlock(&h->qmu);
    return 0;
}

/* --- routing ------------------------------------------------------------- */

static const struct route {
    const char *path;
    const char *method;      /* the one method served ("GET" also takes HEAD) */
} routes[] = {
    {"/v1/rank", "POST"}, {"/healthz", "GET"}, {"/readyz", "GET"},
    {"/metrics", "GET"},  {"/v1/models", "GET"},
};

static enum MHD_Result serve(http_server *h, struct MHD_Connection *c, http_req *r,
                             const char *url, const char *method) {
    service *svc = h->svc;
    const struct route *rt = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(url, routes[i].path) == 0) rt = &routes[i];
    if (!rt) {
        char msg[160];
        snprintf(msg, sizeof msg, "no such endpoint: %.100s", url);
        return respond_error(c, r, PROTO_ERROR_NOT_FOUND, msg, NULL);
    }
    int get = strcmp(rt->method, "GET") == 0;
    if (strcmp(method, rt->method) != 0 && !(get && strcmp(method, "HEAD") == 0)) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s takes %s, not %.20s", rt->path, rt->method, method);
        return respond_error(c, r, PROTO_ERROR_METHOD_NOT_ALLOWED, msg,
                             get ? "GET, HEAD" : rt->method);
    }
    if (strcmp(rt->path, "/v1/rank") != 0) {
        /* GET endpoints: on the event loop, in a local buffer. */
        proto_buf b;
        proto_buf_init(&b);
        const char *ctype;
        int status = endpoint_get(svc, rt->path, &b, &ctype);
        enum MHD_Result ret = respond_buf(c, r, status, ctype, &b);
        proto_buf_free(&b);
        return ret;
    }
    /* POST /v1/rank */
    if (atomic_load(&svc->stopping))
        return respond_error(c, r, PROTO_ERROR_NOT_READY, "shutting down", NULL);
    /* Draining: no new connections are accepted, but a request on one
     * already open (keep-alive) is served, and its connection closed after
     * the answer, so the client reconnects elsewhere instead of getting a
     * 503 from a replica that is still able to answer. */
    r->close_after = atomic_load(&svc->draining);
    if (admit(h, r) < 0) {
        metrics_shed(svc->metrics, 0);
        char msg[128];
        snprintf(msg, sizeof msg, "over %d rank requests queued or in work; retry later",
                 h->p.max_pending);
        return respond_error(c, r, PROTO_ERROR_OVERLOADED, msg, NULL);
    }
    return MHD_YES;
}

static http_conn *conn_of(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* The first call of a request: headers are in. */
static enum MHD_Result on_headers(http_server *h, struct MHD_Connection *c, http_req *r,
                                  const char *url, const char *method) {
    /* The gate has checked the head: one Content-Length of plain digits
     * at most, no Transfer-Encoding, Host on HTTP/1.1 (http_head.h). */
    service *svc = h->svc;
    if (strcmp(method, "POST") != 0 || strcmp(url, "/v1/rank") != 0) return MHD_YES;
    if (!json_content_type(c))
        return respond_error(c, r, PROTO_ERROR_UNSUPPORTED_MEDIA_TYPE,
                             "Content-Type must be application/json", NULL);
    if ((r->header_deadline_ms = header_deadline(c)) < 0)
        return respond_error(c, r, PROTO_ERROR_BAD_REQUEST,
                             "X-Request-Timeout-Ms must be a whole number of milliseconds, "
                             "at least 1", NULL);
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > svc->max_body) {
        const char *expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                         MHD_HTTP_HEADER_EXPECT);
        /* A client waiting for 100-continue has not sent the body: answer
         * now.  So does one whose body is past what is worth discarding.
         * Others are sending it: read and discard it first, so they are
         * reading when the 413 comes (a close with unread data would reset
         * the connection under them). */
        if (expect || strtoull(cl, NULL, 10) > HTTP_DISCARD_MAX) {
            char msg[128];
            snprintf(msg, sizeof msg, "body of %.20s bytes; at most %zu", cl, svc->max_body);
            return respond_error_c(c, r, PROTO_ERROR_BODY_TOO_LARGE, msg, NULL, 1);
        }
        r->too_large = 1;
    }
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    (void)version;
    http_server *h = cls;
    service *svc = h->svc;
    http_req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        http_conn *hc = conn_of(c);
        r->t0_ns = hc && atomic_load(&hc->req_start_ns) ? atomic_load(&hc->req_start_ns)
                                                         : clock_now_ns();
        r->ep = metrics_endpoint_of(url);
        r->conn = c;
        r->h = h;
        proto_buf_init(&r->body);
        *con_cls = r;
        atomic_fetch_add(&h->inflight, 1);
        metrics_inflight_add(svc->metrics, 1);
        r->state = REQ_BODY;
        return on_headers(h, c, r, url, method);
    }
    if (r->state == REQ_DONE) {
        /* Resumed by a worker: send its answer. */
        struct MHD_Response *resp = r->resp;
        r->resp = NULL;
        if (!resp) return MHD_NO;
        return queue(c, r, r->resp_status, resp);
    }
    if (*upload_data_size) {
        /* Body chunk: keep it unless over the limit or already answered. */
        if (!r->status && !r->too_large) {
            if (r->body.len + *upload_data_size > svc->max_body) {
                r->too_large = 1;
                r->discarded = r->body.len;
                proto_buf_free(&r->body);
                proto_buf_init(&r->body);
            } else {
                proto_buf_append(&r->body, upload_data, *upload_data_size);
            }
        }
        if (r->too_large && !r->status) {
            r->discarded += *upload_data_size;
            if (r->discarded > HTTP_DISCARD_MAX) {
                char msg[96];
                snprintf(msg, sizeof msg, "body over %zu bytes", svc->max_body);
                *upload_data_size = 0;
                return respond_error_c(c, r, PROTO_ERROR_BODY_TOO_LARGE, msg, NULL, 1);
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    /* The request is in whole. */
    http_conn *hc = conn_of(c);
    if (hc) atomic_store(&hc->receiving, 0);
    if (r->status || r->state == REQ_QUEUED) return MHD_YES; /* answered already */
    if (r->too_large) {
        char msg[96];
        snprintf(msg, sizeof msg, "body over %zu bytes", svc->max_body);
        return respond_error(c, r, PROTO_ERROR_BODY_TOO_LARGE, msg, NULL);
    }
    if (!proto_buf_ok(&r->body))
        return respond_error(c, r, PROTO_ERROR_INTERNAL, "out of memory", NULL);
    return serve(h, c, r, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)toe;
    http_server *h = cls;
    /* The next request on this connection may idle for idle_timeout_s,
     * then has receive_timeout_ms to arrive whole: a client that trickles
     * the next request line (which resets the idle timer with every byte)
     * is cut too. */
    http_conn *hc = conn_of(c);
    if (hc) {
        atomic_store(&hc->req_start_ns, clock_now_ns() + (int64_t)h->p.idle_timeout_s * 1000000000);
        atomic_store(&hc->receiving, 1);
        http_gate_answered(hc->g);
    }
    http_req *r = *con_cls;
    if (!r) return;
    metrics_http(h->svc->metrics, r->ep, r->status ? r->status : 499,
                 (double)(clock_now_ns() - r->t0_ns) * 1e-9);
    metrics_inflight_add(h->svc->metrics, -1);
    atomic_fetch_sub(&h->inflight, 1);
    if (r->resp) MHD_destroy_response(r->resp);
    proto_buf_free(&r->body);
    free(r);
    *con_cls = NULL;
}

/* --- connections --------------------------------------------------------- */

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    http_server *h = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        http_conn *hc = calloc(1, sizeof *hc);
        if (!hc) return; /* untracked: only the idle timeout applies */
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        hc->fd = ci ? ci->connect_fd : -1;
        hc->g = h->adding;
        http_gate_link(hc->g, &hc->g);
        atomic_init(&hc->req_start_ns, clock_now_ns());
        atomic_init(&hc->receiving, 1);
        pthread_mutex_lock(&h->cmu);
        hc->next = h->conns;
        if (h->conns) h->conns->prev = hc;
        h->conns = hc;
        pthread_mutex_unlock(&h->cmu);
        *socket_context = hc;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        http_conn *hc = *socket_context;
        if (!hc) return;
        http_gate_unlink(hc->g);
        pthread_mutex_lock(&h->cmu);
        if (hc->prev) hc->prev->next = hc->next;
        else h->conns = hc->next;
        if (hc->next) hc->next->prev = hc->prev;
        pthread_mutex_unlock(&h->cmu);
        free(hc);
        *socket_context = NULL;
    }
}

/* The request line is in: a new request starts its receive clock. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c) {
    (void)cls;
    (void)uri;
    http_conn *hc = conn_of(c);
    if (hc) {
        atomic_store(&hc->req_start_ns, clock_now_ns());
        atomic_store(&hc->receiving, 1);
    }
    return NULL;
}

static void *watchdog_main(void *arg) {
    http_server *h = arg;
    const int64_t limit = (int64_t)h->p.receive_timeout_ms * 1000000;
    int step_ms = h->p.receive_timeout_ms / 10;
    if (step_ms < 5) step_ms = 5;
    if (step_ms > 100) step_ms = 100;
    while (!atomic_load(&h->watchdog_stop)) {
        usleep((useconds_t)step_ms * 1000);
        int64_t now = clock_now_ns();
        int cut = 0;
        pthread_mutex_lock(&h->cmu);
        for (http_conn *hc = h->conns; hc; hc = hc->next) {
            if (!atomic_load(&hc->receiving) || hc->fd < 0) continue;
            if (now - atomic_load(&hc->req_start_ns) <= limit) continue;
            atomic_store(&hc->receiving, 0);
            shutdown(hc->fd, SHUT_RDWR);
            cut++;
        }
        pthread_mutex_unlock(&h->cmu);
        for (int i = 0; i < cut; i++) metrics_connection_cut(h->svc->metrics);
        if (cut) {
            wake(h);   /* the library's side of the pair sees it on a turn */
            static log_limit lim;
            log_limited(&lim, LOG_INFO, "receive deadline cuts",
                        "closed %d connection(s) that did not send a whole request within "
                        "%d ms", cut, h->p.receive_timeout_ms);
        }
    }
    return NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    static log_limit lim;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    /* The library's sockets are the gate's socket pairs (Unix sockets):
     * its TCP options fail there, and are the gate's to set on the
     * client's socket. */
    if (strncmp(msg, "Setting TCP_", 12) == 0) return;
    log_limited(&lim, LOG_WARN, "http library messages", "http: %s", msg);
}

/* The gate's hooks: a new connection for the library; a refusal counted. */
static int gate_add(void *arg, int fd, const struct sockaddr *addr, socklen_t len,
                    gate_conn *c) {
    http_server *h = arg;
    h->adding = c;   /* for on_connection, which the library calls from here */
    enum MHD_Result ok = MHD_add_connection(h->d, fd, addr, len);
    h->adding = NULL;
    return ok == MHD_YES ? 0 : -1;
}

static void gate_refused(void *arg, const char *path, int status) {
    http_server *h = arg;
    metrics_http(h->svc->metrics, metrics_endpoint_of(path), status, 0);
}

/* --- the event loop ----------------------------------------------------- */

static void *loop_main(void *arg) {
    http_server *h = arg;
    int64_t next_tick = 0;
    int more = 0;
    pthread_mutex_lock(&h->loop_mu);
    while (!atomic_load(&h->loop_stop)) {
        if (atomic_exchange(&h->quiesce, 0)) http_gate_quiesce(h->gate);
        /* Sleep until a client's socket has events, a worker's resume or
         * the watchdog signals the eventfd, or the library's next timeout,
         * at most 50 ms so stop and quiesce requests are seen.  The loop's
         * lock is free meanwhile: a worker may make a turn (answer_out). */
        int ms = more ? 0 : 50;
        MHD_UNSIGNED_LONG_LONG to;
        if (MHD_get_timeout(h->d, &to) == MHD_YES && to < (MHD_UNSIGNED_LONG_LONG)ms)
            ms = (int)to;
        struct pollfd pfd[2] = {{.fd = h->wake_fd, .events = POLLIN},
                                {.fd = http_gate_fd(h->gate), .events = POLLIN}};
        pthread_mutex_unlock(&h->loop_mu);
        int pr = poll(pfd, 2, ms);
        pthread_mutex_lock(&h->loop_mu);
        if (pr > 0 && (pfd[0].revents & POLLIN)) {
            uint64_t n;
            if (read(h->wake_fd, &n, sizeof n) < 0) { /* drained by another read */ }
        }
        more = loop_turn(h);
        int64_t now = clock_now_ns();
        if (now > next_tick) {
            http_gate_tick(h->gate);
            next_tick = now + 100000000;
        }
    }
    pthread_mutex_unlock(&h->loop_mu);
    return NULL;
}

/* --- start / stop -------------------------------------------------------- */

static void stop_workers(http_server *h) {
    pthread_mutex_lock(&h->qmu);
    h->stopping = 1;
    pthread_cond_broadcast(&h->qcv);
    pthread_mutex_unlock(&h->qmu);
    for (int i = 0; i < h->nworkers; i++) pthread_join(h->workers[i], NULL);
    h->nworkers = 0;
    if (h->watchdog_started) {
        atomic_store(&h->watchdog_stop, 1);
        pthread_join(h->watchdog, NULL);
        h->watchdog_started = 0;
    }
}

static void server_free(http_server *h) {
    http_gate_close(h->gate);
    free(h->ring);
    free(h->workers);
    pthread_mutex_destroy(&h->qmu);
    pthread_cond_destroy(&h->qcv);
    pthread_mutex_destroy(&h->cmu);
    pthread_mutex_destroy(&h->loop_mu);
    if (h->wake_fd >= 0) close(h->wake_fd);
    free(h);
}

/* bind:port as a socket address (IPv4, or IPv6 with MHD_USE_IPv6 added to
 * *flags); -1 when bind is not a numeric address. */
static int listen_address(const char *bind, int port, struct sockaddr_storage *ss,
                          unsigned *flags) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, bind, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        return 0;
    }
    if (inet_pton(AF_INET6, bind, &v6->sin6_addr) != 1) return -1;
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    *flags |= MHD_USE_IPv6;
    return 0;
}

int http_start(service *svc, const http_params *p, http_server **out, char *err,
               size_t errlen) {
    *out = NULL;
    if (p->workers < 1 || p->max_pending < 1 || p->receive_timeout_ms < 1)
        return ctr_fail(err, errlen, CTR_EINVAL, "workers, max_pending and receive_timeout_ms "
                        "must be at least 1");
    http_server *h = calloc(1, sizeof *h);
    if (!h) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    h->svc = svc;
    h->p = *p;
    metrics_set_pending_limit(svc->metrics, p->max_pending);
    atomic_init(&h->inflight, 0);
    atomic_init(&h->pending, 0);
    pthread_mutex_init(&h->qmu, NULL);
    pthread_cond_init(&h->qcv, NULL);
    pthread_mutex_init(&h->cmu, NULL);
    pthread_mutex_init(&h->loop_mu, NULL);
    h->ring = calloc((size_t)p->max_pending, sizeof *h->ring);
    h->workers = calloc((size_t)p->workers, sizeof *h->workers);
    h->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!h->ring || !h->workers || h->wake_fd < 0) {
        server_free(h);
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    }

    struct sockaddr_storage ss;
    unsigned flags = MHD_USE_EPOLL | MHD_USE_ITC | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_NO_LISTEN_SOCKET;
    if (listen_address(p->bind, p->port, &ss, &flags) < 0) {
        server_free(h);
        return ctr_fail(err, errlen, CTR_EINVAL, "bind address \"%s\" is not a numeric IP address",
                        p->bind);
    }
    /* The listen socket is the gate's (libmicrohttpd gets each connection
     * from it, through a socket pair). */
    http_gate_hooks hooks = {gate_add, gate_refused, h};
    char inner[256];
    if (http_gate_open(&ss, &hooks, &h->gate, inner, sizeof inner) < 0) {
        server_free(h);
        return ctr_fail(err, errlen, CTR_EIO, "cannot listen on %s:%d: %s", p->bind, p->port,
                        inner);
    }
    for (int i = 0; i < p->workers; i++) {
        if (pthread_create(&h->workers[i], NULL, worker_main, h) != 0) {
            stop_workers(h);
            server_free(h);
            return ctr_fail(err, errlen, CTR_ENOMEM, "cannot start worker threads");
        }
        h->nworkers++;
    }
    if (pthread_create(&h->watchdog, NULL, watchdog_main, h) != 0) {
        stop_workers(h);
        server_free(h);
        return ctr_fail(err, errlen, CTR_ENOMEM, "cannot start the watchdog thread");
    }
    h->watchdog_started = 1;
    h->d = MHD_start_daemon(
        flags, (uint16_t)p->port, NULL, NULL, on_request, h,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL, /* first, to catch every message */
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)p->idle_timeout_s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(p->connection_limit > 0 ? p->connection_limit : 1024),
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)(p->per_ip_limit > 0 ? p->per_ip_limit : 0),
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h,
        MHD_OPTION_URI_LOG_CALLBACK, on_uri, h,
        MHD_OPTION_END);
    if (!h->d) {
        stop_workers(h);
        server_free(h);
        return ctr_fail(err, errlen, CTR_EIO, "cannot start the HTTP library");
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_EPOLL_FD);
    h->mhd_fd = di ? di->epoll_fd : -1;
    h->port = http_gate_port(h->gate);
    if (pthread_create(&h->loop, NULL, loop_main, h) != 0) {
        MHD_stop_daemon(h->d);
        stop_workers(h);
        server_free(h);
        return ctr_fail(err, errlen, CTR_ENOMEM, "cannot start the event loop thread");
    }
    h->loop_started = 1;
    *out = h;
    return CTR_OK;
}

int http_port(const http_server *h) { return h->port; }

int http_inflight(const http_server *h) { return atomic_load(&h->inflight); }

int http_pending(const http_server *h) { return atomic_load(&h->pending); }

void http_stop(http_server *h, int grace_ms) {
    if (!h) return;
    /* Stop accepting (on the loop's thread); requests already in flight
     * keep their connections. */
    atomic_store(&h->quiesce, 1);
    wake(h);
    for (int waited = 0; atomic_load(&h->quiesce) && waited < 1000; waited += 5) usleep(5000);
    for (int waited = 0; atomic_load(&h->inflight) > 0 && waited < grace_ms; waited += 10)
        usleep(10000);
    if (atomic_load(&h->inflight) > 0)
        log_warn("shutdown: %d request(s) still in flight after %d ms; closing",
                 atomic_load(&h->inflight), grace_ms);
    atomic_store(&h->svc->stopping, 1);
    /* Workers finish what is queued (answered "shutting down" once
     * svc->stopping is set) and resume those connections before the
     * daemon goes. */
    stop_workers(h);
    atomic_store(&h->loop_stop, 1);
    wake(h);
    pthread_join(h->loop, NULL);
    MHD_stop_daemon(h->d);
    server_free(h);
}
