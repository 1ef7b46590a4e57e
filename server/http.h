/*
 * http.h - ctr-server's HTTP front: libmicrohttpd with its own thread pool
 * (epoll), routing to the endpoints, body limits, and the metrics of every
 * request.  See proto/openapi.yaml for the API.
 */
#ifndef CTR_HTTP_H
#define CTR_HTTP_H

#include "server/service.h"

typedef struct http_server http_server;

typedef struct http_params {
    const char *bind;            /* numeric IPv4/IPv6 address */
    int port;                    /* 0: any free port (see http_port) */
    int threads;                 /* libmicrohttpd pool threads */
    int connection_timeout_s;    /* idle connections closed after this */
    int connection_limit;        /* concurrent connections */
} http_params;

/* Starts listening and serving.  CTR_OK, or CTR_EIO with a message. */
int http_start(service *svc, const http_params *p, http_server **out, char *err,
               size_t errlen);

/* The port actually bound (useful with port 0). */
int http_port(const http_server *h);

/* Requests being handled now. */
int http_inflight(const http_server *h);

/* Graceful stop: stop accepting, let requests in flight finish (up to
 * grace_ms), then close every connection and join the threads. */
void http_stop(http_server *h, int grace_ms);

#endif
