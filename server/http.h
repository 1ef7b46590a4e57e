/*
 * http.h - ctr-server's HTTP front: libmicrohttpd driven by one event-loop
 * thread (epoll) behind a gate that checks each request head, routing,
 * admission control, a pool of request workers, connection limits and
 * receive deadlines, and the metrics of every request.  See
 * proto/openapi.yaml for the API.
 *
 * The event loop only does I/O and cheap endpoints (/healthz,
 * /readyz from the health check's state, /metrics, /v1/models); a rank
 * request, once its body is in, is admitted or refused at once, and if
 * admitted its connection is suspended and the request queued for one of
 * `workers` threads, which run rank_handle and resume the connection with
 * the answer.  So a slow request never stalls the reading of others, and
 * an overload shows as fast 503s instead of every answer slowing together:
 *
 *   - admission: at most max_pending rank requests are queued or being
 *     worked on; beyond that the answer is 503 `overloaded` with
 *     Retry-After, without parsing the body.  A queued request whose
 *     deadline has passed when a worker takes it is answered the same way;
 *   - connections: at most connection_limit at once (more are accepted and
 *     closed at once), at most per_ip_limit from one address (0: no limit);
 *     a request must arrive whole (request line, headers, body) within
 *     receive_timeout_ms of its first line (of the connect, for the first
 *     request; of the previous answer plus idle_timeout_s, for the next
 *     ones), else its connection is closed: trickling clients cannot hold
 *     connections.  Idle keep-alive connections close after
 *     idle_timeout_s;
 *   - protocol: every request head is checked on the raw bytes before
 *     libmicrohttpd parses them (http_head.h: header spellings, framing,
 *     paths, Host, versions, sizes); what could be read two ways (request
 *     smuggling) is refused with the API's JSON error (400, 411, 414, 431,
 *     505) and the connection closed; a body over
 *     max_body is answered 413 after it has been read and discarded (up to
 *     HTTP_DISCARD_MAX bytes, within the receive deadline), so clients that
 *     send the whole body before reading see the answer, and at once when
 *     the client asked for 100-continue.
 */
#ifndef CTR_HTTP_H
#define CTR_HTTP_H

#include "server/service.h"

/* Open files a connection takes: the client's socket and the gate's
 * socket pair (http.c). */
#define HTTP_FDS_PER_CONNECTION 3

/* A body over max_body is read and discarded up to this many bytes before
 * the 413 (then the connection is closed). */
#define HTTP_DISCARD_MAX (16u << 20)

typedef struct http_server http_server;

typedef struct http_params {
    const char *bind;            /* numeric IPv4/IPv6 address */
    int port;                    /* 0: any free port (see http_port) */
    int workers;                 /* request worker threads */
    int max_pending;             /* rank requests queued + in work */
    int idle_timeout_s;          /* idle keep-alive connections closed */
    int receive_timeout_ms;      /* a whole request must arrive in this */
    int connection_limit;        /* concurrent connections */
    int per_ip_limit;            /* per client address; 0: none */
    int worker_nice;             /* added to the workers' nice value (and
                                    SCHED_BATCH); 0: as the process */
} http_params;

/* Starts listening and serving.  CTR_OK, or CTR_EIO / CTR_ENOMEM with a
 * message. */
int http_start(service *svc, const http_params *p, http_server **out, char *err,
               size_t errlen);

/* The port actually bound (useful with port 0). */
int http_port(const http_server *h);

/* Requests being handled now (any endpoint). */
int http_inflight(const http_server *h);

/* Rank requests admitted and not yet answered (queued + in work). */
int http_pending(const http_server *h);

/* Graceful stop: stop accepting, let requests in flight finish (up to
 * grace_ms), then close every connection and join the threads. */
void http_stop(http_server *h, int grace_ms);

/* For tests: the text and length respond_buf would send for b (a fixed
 * JSON error when b ran out of memory, never b's stale length). */
void http_body_of(const proto_buf *b, const char **data, size_t *len, int *status);

#endif
