/*
 * http.c - libmicrohttpd glue for ctr-server (see http.h).
 *
 * libmicrohttpd runs its own pool of threads, each with its own epoll set
 * and its own share of connections; a request is handled start to end on
 * one of them, which is why per-thread state (service.h's worker) needs no
 * locks.  The access handler is called several times per request: once
 * with the headers, once per body chunk, and once at the end; the body is
 * collected into a per-request buffer bounded by max_body.  Every request,
 * whatever its outcome, is counted in /metrics when it completes.
 */
#include "http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "proto/error.h"
#include "proto/info.h"
#include "server/log.h"

#define JSON_TYPE "application/json"

struct http_server {
    service *svc;
    struct MHD_Daemon *d;
    int port;
    atomic_int inflight;
};

typedef struct http_req {
    double t0;
    metrics_endpoint ep;
    int status;          /* 0 until a response is queued */
    int too_large;
    proto_buf body;
} http_req;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static enum MHD_Result respond(struct MHD_Connection *c, http_req *r, int status,
                               const char *ctype, const char *data, size_t len,
                               const char *allow) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (allow) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    return ret;
}

/* An error object from proto/error.h, built in a local buffer (these paths
 * may run before the worker exists). */
static enum MHD_Result respond_error(struct MHD_Connection *c, http_req *r, proto_error e,
                                     const char *msg, const char *allow) {
    proto_buf b;
    proto_buf_init(&b);
    proto_error_encode(e, msg, &b);
    enum MHD_Result ret = respond(c, r, proto_error_http(e), JSON_TYPE, proto_buf_str(&b),
                                  b.len, allow);
    proto_buf_free(&b);
    return ret;
}

static enum MHD_Result respond_buf(struct MHD_Connection *c, http_req *r, int status,
                                   const char *ctype, const proto_buf *b) {
    return respond(c, r, status, ctype, proto_buf_str(b), b->len, NULL);
}

/* application/json, with or without parameters (charset=utf-8).  A request
 * without a Content-Type is accepted: many load tools send none. */
static int json_content_type(struct MHD_Connection *c) {
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!ct) return 1;
    while (*ct == ' ') ct++;
    size_t n = strlen(JSON_TYPE);
    return strncasecmp(ct, JSON_TYPE, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

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
    if (strcmp(rt->path, "/healthz") == 0) {
        static const char ok[] = "{\"status\":\"ok\"}";
        return respond(c, r, 200, JSON_TYPE, ok, sizeof ok - 1, NULL);
    }
    worker *w = worker_self(svc);
    if (!w) return respond_error(c, r, PROTO_ERROR_INTERNAL, "out of memory", NULL);
    proto_buf_reset(&w->out);

    if (strcmp(rt->path, "/readyz") == 0) {
        char err[256] = "";
        if (atomic_load(&svc->stopping))
            return respond_error(c, r, PROTO_ERROR_NOT_READY, "shutting down", NULL);
        double t0 = now_s();
        int rc = featstore_ping(w->fs, err, sizeof err);
        metrics_redis(svc->metrics, METRICS_REDIS_PING, now_s() - t0,
                      rc == CTR_OK ? METRICS_REDIS_OK
                                   : rc == CTR_ETIMEOUT ? METRICS_REDIS_TIMEOUT : METRICS_REDIS_ERROR);
        if (rc < 0) {
            char msg[320];
            snprintf(msg, sizeof msg, "feature store not reachable: %s", err);
            return respond_error(c, r, PROTO_ERROR_NOT_READY, msg, NULL);
        }
        proto_status_encode("ready", NULL, &w->out);
        return respond_buf(c, r, 200, JSON_TYPE, &w->out);
    }
    if (strcmp(rt->path, "/v1/models") == 0) {
        model_slot *s = model_holder_acquire(svc->models);
        proto_models_encode(s->cfg, s->path, s->generation, &w->out);
        model_slot_release(s);
        return respond_buf(c, r, 200, JSON_TYPE, &w->out);
    }
    if (strcmp(rt->path, "/metrics") == 0) {
        model_slot *s = model_holder_acquire(svc->models);
        item_cache_stats st;
        item_cache_stats_get(s->cache, &st);
        model_slot_release(s);
        metrics_render(svc->metrics, &st, &w->out);
        return respond_buf(c, r, 200, METRICS_CONTENT_TYPE, &w->out);
    }
    /* POST /v1/rank */
    if (atomic_load(&svc->stopping))
        return respond_error(c, r, PROTO_ERROR_NOT_READY, "shutting down", NULL);
    int status = rank_handle(w, r->body.data ? r->body.data : "", r->body.len);
    return respond_buf(c, r, status, JSON_TYPE, &w->out);
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
        r->t0 = now_s();
        r->ep = metrics_endpoint_of(url);
        proto_buf_init(&r->body);
        *con_cls = r;
        atomic_fetch_add(&h->inflight, 1);
        metrics_inflight_add(svc->metrics, 1);
        if (strcmp(method, "POST") == 0 && strcmp(url, "/v1/rank") == 0) {
            if (!json_content_type(c))
                return respond_error(c, r, PROTO_ERROR_UNSUPPORTED_MEDIA_TYPE,
                                     "Content-Type must be application/json", NULL);
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                         MHD_HTTP_HEADER_CONTENT_LENGTH);
            if (cl && strtoull(cl, NULL, 10) > svc->max_body) {
                char msg[128];
                snprintf(msg, sizeof msg, "body of %.20s bytes; at most %zu", cl, svc->max_body);
                return respond_error(c, r, PROTO_ERROR_BODY_TOO_LARGE, msg, NULL);
            }
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        /* Body chunk: keep it unless over the limit or already answered. */
        if (!r->status && !r->too_large) {
            if (r->body.len + *upload_data_size > svc->max_body) {
                r->too_large = 1;
                proto_buf_free(&r->body);
                proto_buf_init(&r->body);
            } else {
                proto_buf_append(&r->body, upload_data, *upload_data_size);
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (r->status) return MHD_YES; /* answered at the headers already */
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
    (void)c;
    (void)toe;
    http_server *h = cls;
    http_req *r = *con_cls;
    if (!r) return;
    metrics_http(h->svc->metrics, r->ep, r->status ? r->status : 499, now_s() - r->t0);
    metrics_inflight_add(h->svc->metrics, -1);
    atomic_fetch_sub(&h->inflight, 1);
    proto_buf_free(&r->body);
    free(r);
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    log_warn("http: %s", msg);
}

int http_start(service *svc, const http_params *p, http_server **out, char *err,
               size_t errlen) {
    *out = NULL;
    http_server *h = calloc(1, sizeof *h);
    if (!h) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    h->svc = svc;
    atomic_init(&h->inflight, 0);

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, p->bind, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)p->port);
    } else if (inet_pton(AF_INET6, p->bind, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)p->port);
        flags |= MHD_USE_IPv6;
    } else {
        free(h);
        return ctr_fail(err, errlen, CTR_EINVAL, "bind address \"%s\" is not a numeric IP address",
                        p->bind);
    }
    h->d = MHD_start_daemon(
        flags, (uint16_t)p->port, NULL, NULL, on_request, h,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL, /* first, to catch every message */
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)(p->threads > 0 ? p->threads : 1),
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)p->connection_timeout_s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)(p->connection_limit > 0 ? p->connection_limit : 1024),
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
        MHD_OPTION_END);
    if (!h->d) {
        free(h);
        return ctr_fail(err, errlen, CTR_EIO, "cannot listen on %s:%d (in use, or not allowed?)",
                        p->bind, p->port);
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : p->port;
    *out = h;
    return CTR_OK;
}

int http_port(const http_server *h) { return h->port; }

int http_inflight(const http_server *h) { return atomic_load(&h->inflight); }

void http_stop(http_server *h, int grace_ms) {
    if (!h) return;
    /* Stop accepting; requests already in flight keep their connections. */
    MHD_socket ls = MHD_quiesce_daemon(h->d);
    if (ls != MHD_INVALID_SOCKET) close(ls);
    for (int waited = 0; atomic_load(&h->inflight) > 0 && waited < grace_ms; waited += 10)
        usleep(10000);
    if (atomic_load(&h->inflight) > 0)
        log_warn("shutdown: %d request(s) still in flight after %d ms; closing",
                 atomic_load(&h->inflight), grace_ms);
    MHD_stop_daemon(h->d);
    free(h);
}
