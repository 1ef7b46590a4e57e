/*
 * jsonl.h - the JSON Lines input of the offline programs (ctr-score,
 * ctr-load): files read line by line with line numbers for messages, bad
 * lines reported and counted, and the keys already given, to refuse a second
 * line for the same item or user.
 *
 * Workload: one thread reading each file once, front to back: ~92k item
 * lines of ~1.5 kB, up to a few million user lines, or a stream of requests
 * on stdin.  A source reuses one line buffer, as long as the longest line.
 *
 * Usage:
 *
 *     jsonl_source *src;
 *     if (jsonl_source_open(path, "ctr-load", &src, err, sizeof err) < 0)
 *         ... print err, give up ...
 *     const char *line;
 *     size_t len;
 *     int rc;
 *     while ((rc = jsonl_next_line(src, &line, &len)) > 0)
 *         if (decode(line, len, ...) < 0) jsonl_error(src, "%s", why);
 *     ... rc < 0: a read error or out of memory (errno says which) ...
 *     // or: rc = jsonl_each_line(src, one_line, ctx);
 *     jsonl_source_close(src);
 *
 * The rules the programs share (and their --help states):
 *   - line numbers count every line, blank ones included, from 1;
 *   - blank lines (only spaces, tabs and CRs) are skipped;
 *   - a line ends at '\n' (not part of it); the last line may lack one.  A
 *     CRLF line keeps its '\r', which JSON decoders take as whitespace, so
 *     the columns in their messages match the file's bytes;
 *   - a bad line is reported on stderr as "PROG: FILE:LINE: message"; after
 *     JSONL_ERRORS_SHOWN in one file, one note says further errors are only
 *     counted, and the count goes on.
 *
 * Thread-safety: none needed or given; one source or set belongs to one
 * thread at a time.
 */
#ifndef CTR_SERVER_JSONL_H
#define CTR_SERVER_JSONL_H

#include <stddef.h>

#include "core/base/arena.h"
#include "core/base/status.h"

#define JSONL_ERRORS_SHOWN 50    /* per file; the rest are only counted */

/* --- Sources ------------------------------------------------------------ */

typedef struct jsonl_source jsonl_source;

/* Opens path for reading; NULL reads standard input, named "<stdin>" in
 * messages (and not closed by jsonl_source_close).  prog starts every
 * message ("ctr-score").  path and prog are kept, not copied: they must
 * outlive the source.  Returns CTR_OK and the source in *out (the caller
 * closes it); CTR_EIO when the file cannot be opened, with "PATH: reason"
 * in err; CTR_ENOMEM. */
int jsonl_source_open(const char *path, const char *prog, jsonl_source **out,
                      char *err, size_t errlen);

/* Closes the file and frees the source; NULL is fine. */
void jsonl_source_close(jsonl_source *s);

/* The next non-blank line into *line and *len (len excludes the '\n'; the
 * text is NUL-terminated, and may hold NULs of its own).  *line belongs to
 * the source and is valid until the next call.  Returns 1 for a line, 0 at
 * the end of the file, CTR_EIO on a read error and CTR_ENOMEM when the
 * line does not fit in memory, with errno set either way. */
int jsonl_next_line(jsonl_source *s, const char **line, size_t *len);

/* Reports the current line as bad: counts it and, within the first
 * JSONL_ERRORS_SHOWN of this source, prints "PROG: FILE:LINE: " and the
 * printf-formatted message on stderr. */
void jsonl_error(jsonl_source *s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* One line's work for jsonl_each_line: ctx is the caller's, scratch an
 * arena reset before each line.  A bad line is the function's to report
 * (jsonl_error); it returns CTR_OK to go on, or a negative status to stop
 * the reading. */
typedef int (*jsonl_line_fn)(void *ctx, jsonl_source *s, const char *line, size_t len,
                             arena *scratch);

/* Calls fn for every line of s.  Returns CTR_OK at the end of the input,
 * fn's status when it stopped, or the source's failure (CTR_EIO, CTR_ENOMEM,
 * errno set). */
int jsonl_each_line(jsonl_source *s, jsonl_line_fn fn, void *ctx);

const char *jsonl_source_name(const jsonl_source *s);  /* as given */
long jsonl_source_line(const jsonl_source *s);  /* the current one; 0 first */
long jsonl_source_bad(const jsonl_source *s);   /* lines reported bad */

/* --- Keys already given -------------------------------------------------- */

/* A set of keys (NUL-terminated strings, compared byte for byte), each with
 * the line that gave it first and a value of the caller's.  Memory: an
 * entry of 24 bytes in a table kept at most 70% full, and a copy of the key:
 * about 60 bytes for a key of 8 bytes. */
typedef struct jsonl_seen jsonl_seen;

/* An empty set into *out (the caller frees it).  CTR_OK or CTR_ENOMEM. */
int jsonl_seen_init(jsonl_seen **out);

/* Frees the set and its copies of the keys, not the values; NULL is fine. */
void jsonl_seen_free(jsonl_seen *s);

/* Records key (copied) as given first on line (>= 1), with value (may be
 * NULL).  Returns 0 when the key is new; the line it was given on when it
 * was given before (nothing changes then); CTR_ENOMEM. */
long jsonl_seen_add(jsonl_seen *s, const char *key, long line,
                    const void *value);

/* The line key was given on, and its value into *value when value is not
 * NULL; 0 (and *value untouched) when it was never given. */
long jsonl_seen_find(const jsonl_seen *s, const char *key,
                     const void **value);

#endif
