/* http_gate.c - the gate between clients and libmicrohttpd, see
 * http_gate.h. */
#include "http_gate.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/base/clock.h"
#include "core/base/log.h"
#include "core/base/status.h"
#include "proto/buf.h"
#include "proto/error.h"
#include "server/http.h"
#include "server/http_head.h"

#define JSON_TYPE "application/json"

/* The gate's copy buffer: what one read takes from a socket. */
#define GATE_BUF (64u << 10)
/* After its last answer, a closing connection's further input is read and
 * dropped (so the close does not reset the answer away) for this long. */
#define GATE_LINGER_NS 1000000000LL

struct http_gate {
    http_gate_hooks hooks;
    int lfd;                        /* listen socket; -1 once quiesced */
    int gfd;                        /* epoll set of the clients' sockets
                                       and the listen socket: what comes
                                       from outside */
    int pep;                        /* epoll set of the gate's ends of the
                                       pairs: what the library does, which
                                       only a turn of the loop makes
                                       happen, so nobody sleeps on it */
    int port;
    gate_conn *conns;               /* open connections */
    gate_conn *dead;                /* closed, freed after an event batch */
    int nclosing;                   /* connections lingering before their close */
    int64_t accept_pause_until;     /* out of descriptors: accept later */
    char *iobuf;                    /* GATE_BUF bytes */
};

/* One client connection: the client's socket, the gate's end of the pair
 * whose other end libmicrohttpd has, and what is in passage between them. */
typedef struct gate_tag {
    gate_conn *g;
    int side;                       /* 0: the client's socket, 1: the pair's */
} gate_tag;

struct gate_conn {
    gate_conn *prev, *next;
    http_gate *h;
    int cfd, mfd;                   /* client; the gate's end of the pair */
    gate_tag tag[2];
    uint32_t ev[2];                 /* epoll events registered, per side */
    gate_conn **ref;                /* the library's handle on it (link) */
    /* client -> library */
    char *head;                     /* a head not yet whole (HTTP_HEAD_MAX) */
    size_t head_len;
    uint64_t body_left;             /* body bytes still to pass through */
    char *tomhd;                    /* bytes the pair did not take yet */
    size_t tomhd_off, tomhd_len;
    /* library -> client */
    char *tocl;                     /* bytes the client did not take yet */
    size_t tocl_off, tocl_len;
    unsigned forwarded, completed;  /* heads passed on; answers given */
    int client_eof, mhd_eof;
    int mhd_gone;                   /* the pair refused a write: the library
                                       has closed; nothing more goes in */
    int refused;                    /* a head was refused: its answer waits */
    char refusal[512];              /* that answer (status line to body) */
    size_t refusal_len;
    int closing;                    /* last answer written: lingering */
    int shut;                       /* the client's side shut for writing */
    int dead;
    int64_t linger_until_ns;
};

static gate_tag listen_tag = {NULL, -1};

/* Registers side's socket for `want` events (0: not at all, so that a
 * hung-up socket cannot keep waking the loop). */
static void gate_arm_side(gate_conn *g, int side, uint32_t want) {
    int fd = side ? g->mfd : g->cfd, ep = side ? g->h->pep : g->h->gfd;
    if (fd < 0) want = 0;
    if (want == g->ev[side]) return;
    struct epoll_event ev = {.events = want, .data.ptr = &g->tag[side]};
    if (!want) epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    else epoll_ctl(ep, g->ev[side] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
    g->ev[side] = want;
}

static void gate_arm(gate_conn *g) {
    uint32_t c = 0, m = 0;
    if (g->closing || (!g->client_eof && !g->refused && !g->tomhd_len && !g->mhd_gone))
        c |= EPOLLIN;
    if (g->tocl_len) c |= EPOLLOUT;
    if (!g->mhd_eof && !g->tocl_len) m |= EPOLLIN;
    if (g->tomhd_len) m |= EPOLLOUT;
    gate_arm_side(g, 0, c);
    gate_arm_side(g, 1, m);
}

static void gate_update(gate_conn *g);

void http_gate_link(gate_conn *g, gate_conn **ref) {
    if (g) g->ref = ref;
}

void http_gate_unlink(gate_conn *g) {
    if (g) g->ref = NULL;
}

/* An answer of the library's has gone out (into the pair): a refusal
 * waiting for it may be due. */
void http_gate_answered(gate_conn *g) {
    if (!g) return;
    g->completed++;
    if (g->refused) gate_update(g);
}

/* Closes the gate's end of the pair: the library sees the end of the
 * stream and closes its connection. */
static void gate_close_pair(gate_conn *g) {
    if (g->mfd < 0) return;
    gate_arm_side(g, 1, 0);
    if (g->ref) *g->ref = NULL;
    g->ref = NULL;
    close(g->mfd);
    g->mfd = -1;
    g->tomhd_len = 0;
}

static void gate_kill(gate_conn *g) {
    if (g->dead) return;
    gate_close_pair(g);
    gate_arm_side(g, 0, 0);
    g->dead = 1;
    if (g->closing) g->h->nclosing--;
    if (g->prev) g->prev->next = g->next;
    else g->h->conns = g->next;
    if (g->next) g->next->prev = g->prev;
    g->next = g->h->dead;
    g->prev = NULL;
    g->h->dead = g;
}

static void gate_free(gate_conn *g) {
    if (g->cfd >= 0) close(g->cfd);
    if (g->mfd >= 0) close(g->mfd);
    free(g->head);
    free(g->tomhd);
    free(g->tocl);
    free(g);
}

/* Keeps n bytes in a gate buffer (allocated on first need, cap bytes). */
static int gate_keep(char **buf, size_t *off, size_t *len, size_t cap, const char *p,
                     size_t n) {
    if (!*buf && !(*buf = malloc(cap))) return -1;
    if (*off && *len) memmove(*buf, *buf + *off, *len);
    *off = 0;
    if (*len + n > cap) return -1;
    memcpy(*buf + *len, p, n);
    *len += n;
    return 0;
}

/* Writes to the client, keeping what it does not take. */
static void gate_to_client(gate_conn *g, const char *p, size_t n) {
    if (g->tocl_len) {
        if (gate_keep(&g->tocl, &g->tocl_off, &g->tocl_len, GATE_BUF + sizeof g->refusal, p,
                      n) < 0)
            gate_kill(g);
        return;
    }
    ssize_t w = send(g->cfd, p, n, MSG_NOSIGNAL);
    if (w < 0 && (errno == EAGAIN || errno == EINTR)) w = 0;
    if (w < 0) {            /* the client has gone */
        gate_kill(g);
        return;
    }
    if ((size_t)w < n &&
        gate_keep(&g->tocl, &g->tocl_off, &g->tocl_len, GATE_BUF + sizeof g->refusal, p + w,
                  n - (size_t)w) < 0)
        gate_kill(g);
}

/* Writes to the library, keeping what the pair does not take. */
static void gate_to_mhd(gate_conn *g, const char *p, size_t n) {
    if (g->mfd < 0) return;
    if (g->tomhd_len) {
        if (gate_keep(&g->tomhd, &g->tomhd_off, &g->tomhd_len, GATE_BUF + HTTP_HEAD_MAX, p,
                      n) < 0)
            gate_kill(g);
        return;
    }
    ssize_t w = send(g->mfd, p, n, MSG_NOSIGNAL);
    if (w < 0 && (errno == EAGAIN || errno == EINTR)) w = 0;
    if (w < 0) {            /* the library closed its side: what it answered still comes */
        g->mhd_gone = 1;
        return;
    }
    if ((size_t)w < n &&
        gate_keep(&g->tomhd, &g->tomhd_off, &g->tomhd_len, GATE_BUF + HTTP_HEAD_MAX, p + w,
                  n - (size_t)w) < 0)
        gate_kill(g);
}

static const char *reason_phrase(int status) {
    switch (status) {
    case 400: return "Bad Request";
    case 411: return "Length Required";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

/* Refuses the head at data[0..len): its answer is sent once the requests
 * before it are answered, then the connection closes.  Counted like any
 * answer. */
static void gate_refuse(gate_conn *g, proto_error e, const char *msg, const char *data,
                        size_t len) {
    static log_limit lim;
    http_gate *h = g->h;
    proto_buf b;
    proto_buf_init(&b);
    proto_error_encode(e, msg, &b);
    int status = proto_error_http(e);
    const char *body;
    size_t blen;
    http_body_of(&b, &body, &blen, &status);
    int n = snprintf(g->refusal, sizeof g->refusal,
                     "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Type: " JSON_TYPE
                     "\r\nContent-Length: %zu\r\n\r\n%.*s", status, reason_phrase(status), blen,
                     (int)blen, body);
    g->refusal_len = n > 0 && (size_t)n < sizeof g->refusal ? (size_t)n : 0;
    proto_buf_free(&b);
    g->refused = 1;
    free(g->head);
    g->head = NULL;
    g->head_len = 0;
    char path[64];
    http_head_path(data, len, path, sizeof path);
    h->hooks.refused(h->hooks.arg, path, status);
    log_limited(&lim, LOG_INFO, "refused request heads", "http: refused a request (%d): %s",
                status, msg);
}

/* Passes the client's bytes on: heads checked, bodies as they come. */
static void gate_feed(gate_conn *g, const char *p, size_t n) {
    while (n && !g->refused && !g->dead && !g->mhd_gone) {
        if (g->body_left) {
            size_t k = n < g->body_left ? n : (size_t)g->body_left;
            gate_to_mhd(g, p, k);
            g->body_left -= k;
            p += k;
            n -= k;
            continue;
        }
        const char *data = p;
        size_t len = n, had = g->head_len;
        if (had) {  /* the head so far, and what came now */
            size_t take = n < HTTP_HEAD_MAX - had ? n : HTTP_HEAD_MAX - had;
            memcpy(g->head + had, p, take);
            data = g->head;
            len = had + take;
        }
        http_head hd;
        proto_error e;
        char msg[200];
        http_head_result r = http_head_check(data, len, &hd, &e, msg, sizeof msg);
        if (r == HTTP_HEAD_MORE) {  /* len < HTTP_HEAD_MAX */
            if (!g->head && !(g->head = malloc(HTTP_HEAD_MAX))) {
                gate_kill(g);
                return;
            }
            if (data != g->head) memcpy(g->head, data, len);
            g->head_len = len;
            return;
        }
        if (r == HTTP_HEAD_REFUSED) {
            gate_refuse(g, e, msg, data, len);
            return;
        }
        gate_to_mhd(g, data, hd.len);
        g->forwarded++;
        g->body_left = hd.content_length;
        g->head_len = 0;
        p += hd.len - had;
        n -= hd.len - had;
    }
}

static void gate_read_client(gate_conn *g) {
    http_gate *h = g->h;
    ssize_t n = recv(g->cfd, h->iobuf, GATE_BUF, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0 && g->closing) {
        gate_kill(g);
        return;
    }
    if (n < 0) {
        gate_kill(g);
        return;
    }
    if (n == 0) {
        /* The client is done sending: so is the gate, once the library
         * has what it sent (as if the client's socket were the library's). */
        g->client_eof = 1;
        free(g->head);
        g->head = NULL;
        g->head_len = 0;
        if (g->mfd >= 0 && !g->tomhd_len) shutdown(g->mfd, SHUT_WR);
        return;
    }
    if (g->closing) return; /* dropped: the answer is out, the close follows */
    gate_feed(g, h->iobuf, (size_t)n);
}

static void gate_flush_mhd(gate_conn *g) {
    if (g->mfd < 0) return;
    ssize_t w = send(g->mfd, g->tomhd + g->tomhd_off, g->tomhd_len, MSG_NOSIGNAL);
    if (w < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (w < 0) {
        g->tomhd_len = 0;
        g->mhd_gone = 1;
        return;
    }
    g->tomhd_off += (size_t)w;
    g->tomhd_len -= (size_t)w;
    if (!g->tomhd_len && g->client_eof) shutdown(g->mfd, SHUT_WR);
}

static void gate_flush_client(gate_conn *g) {
    ssize_t w = send(g->cfd, g->tocl + g->tocl_off, g->tocl_len, MSG_NOSIGNAL);
    if (w < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (w < 0) {
        gate_kill(g);
        return;
    }
    g->tocl_off += (size_t)w;
    g->tocl_len -= (size_t)w;
}

/* 1 when it read something, 0 when there was nothing to read. */
static int gate_read_mhd(gate_conn *g) {
    http_gate *h = g->h;
    ssize_t n = recv(g->mfd, h->iobuf, GATE_BUF, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    if (n <= 0) {
        g->mhd_eof = 1;
        return 1;
    }
    gate_to_client(g, h->iobuf, (size_t)n);
    return 1;
}

/* What follows from the state: the refusal's turn, the close, the events
 * to wait for. */
static void gate_update(gate_conn *g) {
    if (g->dead) return;
    if (g->mhd_eof) gate_close_pair(g);
    if (g->refused && !g->closing && g->completed >= g->forwarded) {
        /* Every answer before it is given: relayed, the refusal's turn. */
        while (g->mfd >= 0 && !g->mhd_eof && !g->tocl_len && !g->dead && gate_read_mhd(g)) {}
        if (g->dead) return;
    }
    if (g->refused && !g->closing && !g->tocl_len &&
        (g->mfd < 0 || g->mhd_eof || g->completed >= g->forwarded)) {
        gate_close_pair(g);
        gate_to_client(g, g->refusal, g->refusal_len);
        if (g->dead) return;
    }
    if (g->mfd < 0 && !g->closing) {
        g->closing = 1;
        g->h->nclosing++;
        g->linger_until_ns = clock_now_ns() + GATE_LINGER_NS;
        if (g->client_eof && !g->tocl_len) {
            gate_kill(g);
            return;
        }
    }
    if (g->closing && !g->tocl_len && !g->shut) {
        shutdown(g->cfd, SHUT_WR);
        g->shut = 1;
    }
    gate_arm(g);
}

static void gate_event(gate_tag *t, uint32_t events) {
    gate_conn *g = t->g;
    if (g->dead) return;
    int err = (events & (EPOLLERR | EPOLLHUP)) != 0;
    if (t->side == 0) {
        if (g->tocl_len && ((events & EPOLLOUT) || err)) gate_flush_client(g);
        if (!g->dead && ((events & EPOLLIN) || err) && g->ev[0] & EPOLLIN) gate_read_client(g);
    } else {
        if (g->tomhd_len && ((events & EPOLLOUT) || err)) gate_flush_mhd(g);
        if (!g->dead && g->mfd >= 0 && ((events & EPOLLIN) || err)) gate_read_mhd(g);
    }
    gate_update(g);
}

/* New connections: each gets a socket pair whose other end goes to the
 * library (which applies the connection limits to the client's address,
 * and closes it when over them). */
static void gate_accept(http_gate *h) {
    static log_limit lim;
    for (int i = 0; i < 64 && h->lfd >= 0; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int cfd = accept4(h->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                log_limited(&lim, LOG_WARN, "accept failures",
                            "http: cannot accept connections: %s", strerror(errno));
                h->accept_pause_until = clock_now_ns() + 100000000;
                epoll_ctl(h->gfd, EPOLL_CTL_DEL, h->lfd, NULL);
            }
            return;
        }
        int one = 1;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int sv[2] = {-1, -1};
        gate_conn *g = calloc(1, sizeof *g);
        if (!g || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) {
            log_limited(&lim, LOG_WARN, "accept failures", "http: cannot take a connection: %s",
                        g ? strerror(errno) : "out of memory");
            free(g);
            close(cfd);
            continue;
        }
        g->h = h;
        g->cfd = cfd;
        g->mfd = sv[0];
        g->tag[0] = (gate_tag){g, 0};
        g->tag[1] = (gate_tag){g, 1};
        if (h->hooks.add(h->hooks.arg, sv[1], (struct sockaddr *)&ss, sl, g) < 0) {
            /* over a limit; the library closed its end */
            if (g->ref) *g->ref = NULL;
            close(sv[0]);
            close(cfd);
            free(g);
            continue;
        }
        g->next = h->conns;
        if (h->conns) h->conns->prev = g;
        h->conns = g;
        gate_arm(g);
    }
}

static void free_dead(http_gate *h) {
    while (h->dead) {
        gate_conn *g = h->dead;
        h->dead = g->next;
        gate_free(g);
    }
}

int http_gate_poll(http_gate *h) {
    struct epoll_event evs[256];
    int done = 0;
    for (int set = 0; set < 2; set++) {
        int n = epoll_wait(set ? h->pep : h->gfd, evs, 256, 0);
        for (int i = 0; i < n; i++) {
            gate_tag *t = evs[i].data.ptr;
            if (t == &listen_tag) gate_accept(h);
            else gate_event(t, evs[i].events);
        }
        if (n > 0) done += n;
    }
    free_dead(h);
    return done;
}

void http_gate_tick(http_gate *h) {
    int64_t now = clock_now_ns();
    if (h->accept_pause_until && now > h->accept_pause_until && h->lfd >= 0) {
        h->accept_pause_until = 0;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &listen_tag};
        epoll_ctl(h->gfd, EPOLL_CTL_ADD, h->lfd, &ev);
    }
    if (!h->nclosing) return;
    for (gate_conn *g = h->conns, *next; g; g = next) {
        next = g->next;
        if (g->closing && now > g->linger_until_ns) gate_kill(g);
    }
    free_dead(h);
}

void http_gate_quiesce(http_gate *h) {
    if (h->lfd < 0) return;
    epoll_ctl(h->gfd, EPOLL_CTL_DEL, h->lfd, NULL);
    close(h->lfd);
    h->lfd = -1;
}

int http_gate_fd(const http_gate *h) { return h->gfd; }

int http_gate_port(const http_gate *h) { return h->port; }

void http_gate_close(http_gate *h) {
    if (!h) return;
    free_dead(h);
    while (h->conns) {
        gate_conn *g = h->conns;
        h->conns = g->next;
        if (g->ref) *g->ref = NULL;
        gate_free(g);
    }
    if (h->lfd >= 0) close(h->lfd);
    if (h->gfd >= 0) close(h->gfd);
    if (h->pep >= 0) close(h->pep);
    free(h->iobuf);
    free(h);
}

int http_gate_open(const struct sockaddr_storage *ss, const http_gate_hooks *hooks,
                   http_gate **out, char *err, size_t errlen) {
    *out = NULL;
    http_gate *h = calloc(1, sizeof *h);
    if (!h) return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    h->hooks = *hooks;
    h->lfd = -1;
    h->gfd = epoll_create1(EPOLL_CLOEXEC);
    h->pep = epoll_create1(EPOLL_CLOEXEC);
    h->iobuf = malloc(GATE_BUF);
    if (h->gfd < 0 || h->pep < 0 || !h->iobuf) {
        http_gate_close(h);
        return ctr_fail(err, errlen, CTR_ENOMEM, "out of memory");
    }
    int one = 1;
    h->lfd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (h->lfd >= 0) setsockopt(h->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (h->lfd >= 0 && ss->ss_family == AF_INET6)
        setsockopt(h->lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    socklen_t sl = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                             : sizeof(struct sockaddr_in);
    if (h->lfd < 0 || bind(h->lfd, (const struct sockaddr *)ss, sl) != 0 ||
        listen(h->lfd, 1024) != 0) {
        int e = errno;
        http_gate_close(h);
        return ctr_fail(err, errlen, CTR_EIO, "%s", strerror(e));
    }
    struct sockaddr_storage bound;
    socklen_t bl = sizeof bound;
    if (getsockname(h->lfd, (struct sockaddr *)&bound, &bl) == 0)
        h->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                    : ((struct sockaddr_in *)&bound)->sin_port);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &listen_tag};
    epoll_ctl(h->gfd, EPOLL_CTL_ADD, h->lfd, &lev);
    *out = h;
    return CTR_OK;
}

