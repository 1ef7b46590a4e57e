/*
 * rconn.h - one connection to one Redis server, driven under a deadline:
 * connect (and AUTH), send commands, read their replies.  The feature
 * store's two backends (featstore_single.c, featstore_cluster.c) and the
 * cluster router (rcluster.h) all talk to Redis through it.
 *
 * Workload: a rank request sends a pipeline of a few to a few hundred
 * commands (GETRANGE, STRLEN) and waits for every reply, within a few
 * milliseconds; ctr-load sends batches of a few hundred SETs.  Redis may
 * hang, close the connection or be unreachable at any time, so every call
 * takes an absolute deadline (clock.h, CLOCK_MONOTONIC) covering the whole
 * exchange, not each read: the socket is non-blocking and polled (ppoll),
 * because hiredis's own blocking mode applies its timeout to each read, and
 * a reply of a few hundred kilobytes takes many reads.  hiredis 0.14 is
 * used for what it is good at: connecting, formatting commands, parsing
 * replies.
 *
 * Knowing where each reply belongs.  Redis answers a connection's commands
 * in order, one reply each, so the client must read exactly one reply per
 * command: a reply that no command asked for (a misbehaving proxy or
 * server) would otherwise answer the next command, and every later one,
 * silently.  So each command says which reply types answer it (`expect`;
 * an error reply always may), and a connection is RCONN_DESYNC, failed
 * like any other, when
 *
 *   - a reply is of a type its command does not answer;
 *   - bytes are left over once a pipeline's last reply is read, in the
 *     reply parser or already arrived on the socket (rconn_finish: one
 *     FIONREAD);
 *   - bytes arrive while nothing was asked (rconn_check_idle, before a
 *     connection that sat idle is used again).
 *
 * None of the replies of a pipeline that ends out of step is handed out.
 * What this cannot see: a stray reply whose last displaced byte arrives
 * after the pipeline's replies were read and before the connection is
 * next used; the next use sees it (rconn_check_idle), but the call before
 * had read a shifted answer.
 *
 * Two ways to use a connection:
 *
 *   - blocking, under a deadline: rconn_exchange (a pipeline: send every
 *     command, read every reply), rconn_command (one), or rconn_append +
 *     rconn_send + rconn_recv + rconn_finish for a caller that reads its
 *     replies one by one (ctr-load's SETs);
 *   - non-blocking pieces, for a caller that multiplexes several
 *     connections with one ppoll of its own (rcluster_exec): rconn_fd,
 *     rconn_append, rconn_write, rconn_read, rconn_take, rconn_finish.
 *
 * Failures.  Every failure leaves the connection unusable: replies may
 * still be on their way (a timeout) or the stream is broken, so the next
 * command would read an answer that is not its own.  Close it
 * (rconn_close) and open another.  rconn_error_of says what kind of
 * failure it was (RCONN_ERROR_MAP below) and rconn_why the detail; functions
 * return CTR_ETIMEOUT for RCONN_TIMEOUT and CTR_EBACKEND for the others
 * (CTR_ENOMEM is not used: out of memory in hiredis fails the connection
 * like any other broken stream).
 *
 * SIGPIPE: hiredis writes with write(2), so a write to a connection the
 * server has closed raises SIGPIPE; the process must ignore it
 * (signal(SIGPIPE, SIG_IGN), as servers do), and the write then fails as
 * RCONN_CLOSED.
 *
 * Memory: an rconn is malloc'd by rconn_open and freed by rconn_close;
 * hiredis allocates its output buffer and reply objects with malloc
 * (replies handed out are the caller's: freeReplyObject).  Passwords are
 * sent, never copied or written into a message.
 *
 * Thread-safety: a connection belongs to one thread at a time; different
 * connections may be used from different threads at once.
 */
#ifndef CTR_SERVER_RCONN_H
#define CTR_SERVER_RCONN_H

#include <stddef.h>
#include <stdint.h>

#include "core/base/status.h"

struct redisReply;

/* Kinds of failure of an open connection.  X(name, text): RCONN_<name>,
 * and its text for messages (rconn_error_name).  (A connect that fails
 * makes no connection: rconn_open says why in its message.) */
#define RCONN_ERROR_MAP(X)                                                  \
    X(NONE,     "no error")                                                 \
    X(TIMEOUT,  "timed out")            /* the deadline passed mid-call */  \
    X(CLOSED,   "connection closed")    /* by the other end: end of file,   \
                                           reset, broken pipe, I/O error */ \
    X(IO,       "socket error")         /* waiting on the socket failed */  \
    X(PROTOCOL, "protocol error")       /* bytes that are not RESP */       \
    X(DESYNC,   "reply out of step")    /* a reply no command asked for: of \
                                           the wrong type, left over after  \
                                           a pipeline, or while idle */     \
    X(NOMEM,    "out of memory")        /* in hiredis */

typedef enum rconn_error {
#define RCONN_ERROR_ENUM(name, text) RCONN_##name,
    RCONN_ERROR_MAP(RCONN_ERROR_ENUM)
#undef RCONN_ERROR_ENUM
    RCONN_ERROR_COUNT
} rconn_error;

typedef struct rconn rconn;

/* How to connect. */
typedef struct rconn_params {
    int connect_timeout_ms;     /* connect and AUTH take at most this long */
    const char *user;           /* AUTH user (ACL); NULL or "": the default */
    const char *password;       /* NULL or "": no AUTH */
} rconn_params;

/* Reply types, for rconn_cmd.expect (an error reply answers any command). */
enum {
    RCONN_STRING = 1 << 0,      /* bulk string: GET, GETRANGE, ECHO */
    RCONN_INTEGER = 1 << 1,     /* STRLEN, DEL */
    RCONN_STATUS = 1 << 2,      /* +OK, +PONG: SET, PING, AUTH, READONLY */
    RCONN_ARRAY = 1 << 3,       /* CLUSTER SLOTS, MGET */
    RCONN_NIL = 1 << 4,         /* GET of a missing key */
    RCONN_ANY = 0               /* no check (tools and tests) */
};

/* One command: argv[0] its name, argvlen[i] the byte length of argv[i]
 * (binary-safe).  The strings are copied into the connection's output
 * buffer when the command is appended.  Commands of the feature store
 * have a key: argv[1] (rcluster routes by it; argv[3] in FCALL fn 1 key
 * ..., rcluster_key). */
typedef struct rconn_cmd {
    int argc;
    const char *const *argv;
    const size_t *argvlen;
    int expect;                 /* RCONN_STRING | ...: the reply types that
                                   answer it; a reply of another type (an
                                   error excepted) is RCONN_DESYNC */
} rconn_cmd;

/* The text of a kind ("unknown" for anything else).  Thread-safe. */
const char *rconn_error_name(rconn_error e);

/* Connects to host:port (TCP; numeric addresses avoid a name lookup on
 * every connect), or with port 0 to the unix socket at path `host`, and
 * when p->password is set authenticates (AUTH [user] password), all by
 * min(deadline_ns, now + p->connect_timeout_ms) (deadline_ns 0: none).
 * On CTR_OK *out is the connection (rconn_close).  CTR_EBACKEND with *out
 * NULL when it cannot connect (err says why: refused, "connect timed out
 * after N ms", "authentication refused: WRONGPASS ...": never the
 * password).  Thread-safe. */
int rconn_open(const rconn_params *p, const char *host, int port, int64_t deadline_ns,
               rconn **out, char *err, size_t errlen);

/* Splits a Redis address for rconn_open: "host:port" and "[v6]:port"
 * into *host (malloc'd, without brackets) and *port; a path starting with
 * '/' (a unix socket) gives *host NULL and *port 0.  CTR_OK; CTR_EINVAL
 * with a message naming the address; CTR_ENOMEM. */
int rconn_split_addr(const char *addr, char **host, int *port, char *err, size_t errlen);

/* Closes and frees c (NULL is fine). */
void rconn_close(rconn *c);

/* The kind of c's failure (RCONN_NONE while it is usable) and its detail
 * ("" when none). */
rconn_error rconn_error_of(const rconn *c);
const char *rconn_why(const rconn *c);

/* --- Blocking, under a deadline ------------------------------------------ */

/* Sends cmds[0..n) in one pipeline and reads their n replies, by
 * deadline_ns (absolute), checking each reply's type (cmds[i].expect) and
 * that nothing is left over after the last (RCONN_DESYNC otherwise).  On
 * CTR_OK replies[i] answers cmds[i] (the caller frees each; error replies
 * included).  On failure every replies[i] is NULL, c is failed, and err
 * says why (without "Redis host:port", which the caller knows):
 * CTR_ETIMEOUT, CTR_EBACKEND. */
int rconn_exchange(rconn *c, int n, const rconn_cmd *cmds, int64_t deadline_ns,
                   struct redisReply **replies, char *err, size_t errlen);

/* One command: rconn_exchange of one. */
int rconn_command(rconn *c, int argc, const char *const *argv, const size_t *argvlen,
                  int expect, int64_t deadline_ns, struct redisReply **reply, char *err,
                  size_t errlen);

/* Appends a command to c's output buffer (nothing is sent yet).  CTR_OK,
 * or CTR_EBACKEND (out of memory: c is failed). */
int rconn_append(rconn *c, const rconn_cmd *cmd);

/* Writes everything appended, by deadline_ns.  CTR_OK, CTR_ETIMEOUT,
 * CTR_EBACKEND (c failed). */
int rconn_send(rconn *c, int64_t deadline_ns, char *err, size_t errlen);

/* Reads the next reply, by deadline_ns (the caller frees it), of a type
 * in `expect` or an error.  CTR_OK, CTR_ETIMEOUT, CTR_EBACKEND (c failed;
 * a reply of another type: RCONN_DESYNC). */
int rconn_recv(rconn *c, int64_t deadline_ns, int expect, struct redisReply **reply,
               char *err, size_t errlen);

/* After the last reply the caller expects: fails c (RCONN_DESYNC,
 * CTR_EBACKEND) when bytes are left over, counting what has arrived on the
 * socket by now.  CTR_OK: c is idle and in step. */
int rconn_finish(rconn *c, char *err, size_t errlen);

/* Before using again a connection that sat idle: fails c (RCONN_DESYNC,
 * CTR_EBACKEND) when bytes have arrived that no command asked for.  A
 * connection the other end closed is not reported here (its next use
 * fails as RCONN_CLOSED).  One FIONREAD, no read. */
int rconn_check_idle(rconn *c, char *err, size_t errlen);

/* --- Non-blocking pieces, for a caller's own ppoll ----------------------- */

/* The socket, for poll. */
int rconn_fd(const rconn *c);

/* Writes what the socket takes now; *done = 1 when the output buffer is
 * empty.  CTR_OK or CTR_EBACKEND (c failed). */
int rconn_write(rconn *c, int *done);

/* Reads what the socket holds now into the reply parser.  CTR_OK or
 * CTR_EBACKEND (c failed; closed by the other end: RCONN_CLOSED). */
int rconn_read(rconn *c);

/* The next complete reply already read, or *reply NULL when there is none
 * yet; it must be of a type in `expect` or an error.  CTR_OK or
 * CTR_EBACKEND (c failed: bytes that are not RESP, RCONN_PROTOCOL; a
 * reply of another type, RCONN_DESYNC). */
int rconn_take(rconn *c, int expect, struct redisReply **reply);

/* Bytes read from the socket and not yet taken as replies (a reply not
 * yet whole). */
size_t rconn_buffered(const rconn *c);

/* --- Replies ------------------------------------------------------------- */

/* 1 when r is an error reply starting with `code` ("WRONGTYPE",
 * "LOADING"...). */
int rconn_reply_is(const struct redisReply *r, const char *code);

/* The RCONN_* type of a hiredis reply (0 for an error reply). */
int rconn_reply_type(const struct redisReply *r);

#endif
