/*
 * http_gate.h - what stands between the clients' sockets and
 * libmicrohttpd (used by http.c only).
 *
 * libmicrohttpd never reads a client's socket.  The gate owns the listen
 * socket, accepts connections and hands the library one end of a socket
 * pair per connection; it reads what the client sends, checks every
 * request head on the raw bytes (http_head.h) and passes heads and
 * Content-Length bodies through, and copies the library's answers back.  A
 * head it refuses is answered by the gate itself, in the API's JSON, once
 * the answers to the requests before it on the connection have gone out;
 * then the connection is closed (its further input read and dropped for a
 * second, so that the close does not reset the answer away).
 *
 * Cost: three descriptors a connection (HTTP_FDS_PER_CONNECTION), and per
 * request a copy and two system calls more each way.
 *
 * Threads: everything here runs under the HTTP event loop's lock: on the
 * loop's thread, or on a request worker sending its own answer (http.c);
 * and on the thread that stops the server, once the loop has ended.
 */
#ifndef CTR_HTTP_GATE_H
#define CTR_HTTP_GATE_H

#include <sys/socket.h>

typedef struct http_gate http_gate;
typedef struct gate_conn gate_conn;

typedef struct http_gate_hooks {
    /* Hands the library fd, its end of connection c's pair, with the
     * client's address (the library applies its connection limits to it).
     * 0, or -1 when the library refused it (it has closed fd). */
    int (*add)(void *arg, int fd, const struct sockaddr *addr, socklen_t len, gate_conn *c);
    /* A request the gate refused: its path ("" when it had none) and the
     * status it got. */
    void (*refused)(void *arg, const char *path, int status);
    void *arg;
} http_gate_hooks;

/* Listens on ss (backlog 1024).  CTR_OK, or CTR_EIO / CTR_ENOMEM with a
 * message. */
int http_gate_open(const struct sockaddr_storage *ss, const http_gate_hooks *hooks,
                   http_gate **out, char *err, size_t errlen);

/* The port listened on. */
int http_gate_port(const http_gate *g);

/* An epoll descriptor that turns readable when something comes from
 * outside: a connection, a client's bytes, a client ready for more of its
 * answer.  What the library writes into a pair does not make it readable
 * (nothing but a turn of the loop makes the library write): the loop
 * calls http_gate_poll after each run of the library instead. */
int http_gate_fd(const http_gate *g);

/* Does what is ready, without waiting: accepts, passes requests in and
 * answers out.  Call after the library's run too, for what it wrote.
 * Returns how many sockets had events (0: nothing moved). */
int http_gate_poll(http_gate *g);

/* Closes connections whose linger has run out; a few times a second. */
void http_gate_tick(http_gate *g);

/* Stops accepting: the listen socket closes (connects are refused); open
 * connections are served on. */
void http_gate_quiesce(http_gate *g);

/* Closes every connection and the listen socket, frees the gate. */
void http_gate_close(http_gate *g);

/* The library's side of connection c: *ref holds c while the gate has the
 * connection and is set to NULL when the gate lets go of it (a client
 * gone, a refusal sent), so the library's callbacks never reach a freed
 * connection. */
void http_gate_link(gate_conn *c, gate_conn **ref);

/* The library has closed its side of c (NULL: nothing). */
void http_gate_unlink(gate_conn *c);

/* The library has given an answer on c (NULL: nothing): a refusal waiting
 * for the answers before it may be due. */
void http_gate_answered(gate_conn *c);

#endif
