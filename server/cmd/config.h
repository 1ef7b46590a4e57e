/*
 * config.h - the server's settings: defaults, config file, environment,
 * command line, --help and the startup dump.
 *
 * Each setting comes from, in increasing precedence:
 *   1. its built-in default (config_default_params);
 *   2. the config file named by --config FILE or CTR_CONFIG: lines
 *      `key = value`, blank lines and `#` comments (a `#` after blanks ends
 *      a line too); a value may be put in double quotes to keep a `#` or
 *      surrounding blanks;
 *   3. the environment: CTR_<KEY in upper case>, e.g. CTR_PORT, CTR_REDIS.
 *      An empty variable counts as unset (compose files and shells produce
 *      `CTR_X=` placeholders).  Other CTR_* variables are ignored, since
 *      tools share the prefix;
 *   4. flags: `--key value` or `--key=value`; `-` and `_` are the same in
 *      keys (--redis-prefix).  A boolean flag alone (--skip_scoring) means
 *      true.
 *
 * Several models: `model` takes a list.  Each entry is PATH (the model is
 * named from its file's metadata) or NAME=PATH; entries are separated by
 * commas, and repeating the setting within one source (flags, or lines of
 * the file) adds entries.  A source that sets `model` replaces the list of
 * a lower one (a flag's models replace the file's).  Per-model settings
 * (redis_prefix, cache_mb; more may join) take a plain VALUE for every
 * model, or NAME=VALUE for one model, in the same list form:
 * `--redis-prefix ctr: --redis-prefix tin=ctr-tin:`, or
 * `CTR_REDIS_PREFIX=ctr:,tin=ctr-tin:`; for one model and setting, the
 * highest source (and, within it, the last entry) wins.  A NAME=VALUE
 * entry must name a model being served (config_check_models).  Lists
 * cannot hold a comma inside an entry; blanks around commas are ignored.
 *
 * One table in config.c lists every setting with its type, range, default
 * and description; parsing, --help and config_dump all read it, so they
 * cannot disagree.  Bad input (unknown key, a number that is not one, a
 * value out of range) is an error naming the setting and where it came from
 * ("cfg.conf:3", "env CTR_PORT", "flag --port"); the caller prints it and
 * exits non-zero.
 *
 * Workload: called once at startup, single-threaded.  Not thread-safe while
 * a params struct is being filled; the filled struct is plain data.
 */
#ifndef CTR_SERVER_CONFIG_H
#define CTR_SERVER_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "core/base/status.h"

/* Capacity of each string setting, NUL included; longer values are an
 * error, never silently cut. */
#define CONFIG_STR_MAX 1024

/* config_parse's answer when --help (or -h) is on the command line. */
#define CONFIG_HELP 1

#define CONFIG_MAX_MODELS 8         /* entries of `model` */
#define CONFIG_NAME_MAX 64          /* a model name, NUL included */
#define CONFIG_MAX_OVERRIDES 32     /* NAME=VALUE entries, all settings */

/* One `model` entry. */
typedef struct config_model {
    char name[CONFIG_NAME_MAX];     /* "" for a bare PATH: the file's
                                       metadata names it */
    char path[CONFIG_STR_MAX];
} config_model;

/* One NAME=VALUE entry of a per-model setting, checked when read. */
typedef struct config_override {
    const char *key;                /* the setting ("redis_prefix") */
    char model[CONFIG_NAME_MAX];
    char value[CONFIG_STR_MAX];
    char where[96];                 /* its source, for messages */
} config_override;

typedef struct config_params {
    config_model models[CONFIG_MAX_MODELS];  /* model files (safetensors),
                                                served in this order; the
                                                first is the default */
    int num_models;
    char redis[CONFIG_STR_MAX];     /* "host:port", or a unix socket path
                                       (starts with '/') */
    char redis_cluster[CONFIG_STR_MAX]; /* Redis Cluster seeds "host:port,..."
                                       ("": one node, `redis`) */
    int redis_read_replicas;        /* cluster: reads from replicas */
    int redis_cluster_refresh_ms;   /* cluster: least time between slot-map
                                       refreshes of one connection set */
    char redis_user[256];           /* AUTH user ("": default user) */
    char redis_password[CONFIG_STR_MAX];  /* AUTH password: never printed */
    char redis_password_file[CONFIG_STR_MAX];  /* or read from this file */
    char redis_prefix[CONFIG_STR_MAX];  /* key prefix of every feature
                                           (per model) */
    int redis_connect_timeout_ms;
    int redis_timeout_ms;           /* per command */
    int redis_breaker_base_ms;      /* first open period of a breaker */
    int redis_breaker_max_ms;       /* longest open period */
    int deadline_ms;                /* a request's budget by default */
    int max_deadline_ms;            /* the most a request may ask for */
    char bind[CONFIG_STR_MAX];      /* address to listen on */
    int port;
    int threads;                    /* request worker threads */
    int max_pending;                /* rank requests queued + in work;
                                       0: 4 x threads */
    int worker_nice;                /* nice value of the request workers */
    int max_connections;            /* concurrent connections */
    int max_connections_per_ip;     /* 0: no per-address limit */
    int receive_timeout_ms;         /* a whole request must arrive in this */
    int health_interval_ms;         /* Redis + feature-set check period */
    int score_threads;              /* threads one request's scoring may use */
    int split_min;                  /* fewest candidates worth splitting */
    int split_min_mflops;           /* least work per part of a split */
    int max_candidates;             /* per request; sizes the scratch */
    size_t max_body_bytes;
    int max_seq;                    /* history entries read per user */
    int cache_mb;                   /* item cache budget, shared by the
                                       models without their own (per
                                       model); 0 disables it */
    int warmup;                     /* score dummy requests at load */
    int cache_ttl_s;                /* item cache TTL; 0 never expires */
    int request_timeout_s;          /* idle keep-alive connection timeout */
    int skip_scoring;               /* BENCHMARK ONLY: scores are all 0 */
    char precision[8];              /* "fp32", "bf16", "int8" */
    char log_level[16];             /* "debug", "info", "warn", "error" */
    char config[CONFIG_STR_MAX];    /* the config file read, "" if none */
    config_override overrides[CONFIG_MAX_OVERRIDES];  /* NAME=VALUE */
    int num_overrides;
    int source;                     /* internal: the source being read */
    int models_source;              /* internal: the source of models[] */
} config_params;

/* Built-in defaults.  threads and score_threads are the number of online
 * CPUs at the time of the call. */
config_params config_default_params(void);

/* Fills *p (which should hold defaults) from the config file, the
 * environment and the command line, in that order of precedence.
 * argv[0] is the program name and is skipped.  envp is a NULL-terminated
 * "NAME=value" array like main's third argument; NULL means the process
 * environment.  Returns CTR_OK; CONFIG_HELP when --help/-h was given
 * (nothing else is parsed; print config_help and exit 0); CTR_EINVAL for
 * bad input or CTR_EIO for an unreadable config file, with a message in err
 * naming the setting and its source.  On error *p is partly filled. */
int config_parse(config_params *p, int argc, char *const argv[],
                 char *const envp[], char *err, size_t errlen);

/* Sets one setting from text, checking it as config_parse does.  `key`
 * accepts '-' for '_'; `where` names the source for messages (e.g. "flag
 * --port"), NULL for none.  CTR_OK or CTR_EINVAL with a message.  The
 * "config" key is accepted here and only records the path. */
int config_set(config_params *p, const char *key, const char *value,
               const char *where, char *err, size_t errlen);

/* A per-model setting's NAME=VALUE text for model (the last entry of the
 * highest source), or NULL when the model has none: the global field then
 * applies.  The text was checked when set (an int setting's is a valid
 * number in range). */
const char *config_model_value(const config_params *p, const char *key, const char *model);

/* CTR_OK when every NAME=VALUE entry names one of the n models; otherwise
 * CTR_EINVAL naming the entry, its source and the models served. */
int config_check_models(const config_params *p, const char *const *names, int n, char *err,
                        size_t errlen);

/* 1 when s[0..len) is a valid model name: 1..63 of [A-Za-z0-9_.-],
 * starting with a letter or digit. */
int config_model_name_ok(const char *s, size_t len);

/* Usage: every setting with its argument, environment variable, default
 * and a description.  prog is the program name for the usage line. */
void config_help(FILE *out, const char *prog);

/* The effective settings as `key = value` lines (valid config file
 * syntax), for the startup log.  A secret (redis_password) is never
 * printed: a set one shows as a comment line saying so. */
void config_dump(const config_params *p, FILE *out);

#endif
