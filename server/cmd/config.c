/*
 * config.c - the settings table and the parsers, --help and dump that read
 * it.
 *
 * Workload: a few dozen settings read once at startup, so clarity beats
 * speed everywhere here: linear lookups, one pass per source.  What matters
 * is that a mistyped key or value stops the server with a message that
 * names the setting and the file line, variable or flag it came from,
 * instead of starting with a default the operator did not mean.
 */
#include "server/cmd/config.h"
#include "server/cmd/config_table.h"
#include "server/store/featstore.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <unistd.h>


static int per_model(const setting *s) { return (s->flags & SETTING_PER_MODEL) != 0; }

/* Settings whose value is never printed (config_dump). */
static int is_secret(const setting *s) { return (s->flags & SETTING_SECRET) != 0; }

/* Whether prog reads s from the environment: ctr-server every setting,
 * the others only those marked so. */
static int env_read(const setting *s, config_prog prog) {
    return prog == CONFIG_SERVER || (s->flags & SETTING_ENV);
}

/* --- Lookup and conversion --------------------------------------------- */

/* 1 when key[0..len) spells name, '-' read as '_'. */
static int key_is(const char *key, size_t len, const char *name) {
    if (!name || strlen(name) != len) return 0;
    size_t j = 0;
    while (j < len && (key[j] == '-' ? '_' : key[j]) == name[j]) j++;
    return j == len;
}

/* prog's setting named by key[0..len) (or by its alias), with '-' read as
 * '_'. */
static const setting *find_setting(config_prog prog, const char *key, size_t len) {
    for (size_t i = 0; i < config_nsettings; i++)
        if ((config_settings[i].progs & prog) &&
            (key_is(key, len, config_settings[i].key) || key_is(key, len, config_settings[i].alias)))
            return &config_settings[i];
    return NULL;
}

static void env_name(const setting *s, char *out, size_t outlen) {
    size_t n = (size_t)snprintf(out, outlen, "CTR_");
    for (const char *c = s->key; *c && n + 1 < outlen; c++)
        out[n++] = (char)toupper((unsigned char)*c);
    out[n < outlen ? n : outlen - 1] = '\0';
}

static const char *const bool_true[] = {"1", "true", "yes", "on"};
static const char *const bool_false[] = {"0", "false", "no", "off"};

/* 1 or 0 for a boolean word, -1 for anything else. */
static int parse_bool(const char *v) {
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, bool_true[i]) == 0) return 1;
        if (strcasecmp(v, bool_false[i]) == 0) return 0;
    }
    return -1;
}

static char *trim(char *s);

/* Message prefix: "where: key: " (where may be NULL). */
#define WHERE_FMT "%s%s%s: "
#define WHERE_ARGS(where, s) (where) ? (where) : "", (where) ? ": " : "", (s)->key

/* Checks v for setting s and stores it in field (the setting's type). */
static int set_field(const setting *s, void *fieldp, const char *v, const char *where,
                     char *err, size_t errlen) {
    char *field = fieldp;
    switch (s->type) {
    case SET_MODELS: break;
    case SET_INT:
    case SET_SIZE: {
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (end == v || *end || isspace((unsigned char)*v))
            return ctr_fail(err, errlen, CTR_EINVAL,
                            WHERE_FMT "\"%.64s\" is not a whole number",
                            WHERE_ARGS(where, s), v);
        if (errno == ERANGE || x < s->min || x > s->max)
            return ctr_fail(err, errlen, CTR_EINVAL,
                            WHERE_FMT "%.64s is out of range %lld..%lld",
                            WHERE_ARGS(where, s), v, s->min, s->max);
        if (s->type == SET_INT) *(int *)field = (int)x;
        else *(size_t *)field = (size_t)x;
        return CTR_OK;
    }
    case SET_BOOL: {
        int b = parse_bool(v);
        if (b < 0)
            return ctr_fail(err, errlen, CTR_EINVAL,
                            WHERE_FMT "\"%.64s\" is not a boolean "
                            "(true/false, yes/no, on/off, 1/0)",
                            WHERE_ARGS(where, s), v);
        *(int *)field = b;
        return CTR_OK;
    }
    case SET_FRACTION: {
        char *end;
        errno = 0;
        double x = strtod(v, &end);
        if (end == v || *end || isspace((unsigned char)*v) || errno == ERANGE || !(x >= 0.0) ||
            x > 1.0)
            return ctr_fail(err, errlen, CTR_EINVAL,
                            WHERE_FMT "\"%.64s\" is not a number in 0..1",
                            WHERE_ARGS(where, s), v);
        *(double *)field = x;
        return CTR_OK;
    }
    case SET_CHOICE: {
        size_t vl = strlen(v);
        for (const char *c = s->choices; *c;) {
            size_t n = strcspn(c, "|");
            if (n == vl && strncasecmp(c, v, n) == 0) {
                snprintf(field, s->cap, "%.*s", (int)n, c);   /* canonical case */
                return CTR_OK;
            }
            c += n + (c[n] == '|');
        }
        char list[128] = "";
        for (const char *c = s->choices; *c;) {
            size_t n = strcspn(c, "|");
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%.*s",
                     list[0] ? ", " : "", (int)n, c);
            c += n + (c[n] == '|');
        }
        return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "\"%.64s\" is not one of %s",
                        WHERE_ARGS(where, s), v, list);
    }
    case SET_STR: {
        if (strlen(v) >= s->cap)
            return ctr_fail(err, errlen, CTR_EINVAL,
                            WHERE_FMT "value longer than %zu bytes",
                            WHERE_ARGS(where, s), s->cap - 1);
        for (const char *c = v; *c; c++)
            if (iscntrl((unsigned char)*c))
                return ctr_fail(err, errlen, CTR_EINVAL,
                                WHERE_FMT "value contains a control character",
                                WHERE_ARGS(where, s));
        char why[128];
        if (s->check && s->check(v, why, sizeof why) < 0)
            return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "\"%.64s\": %s",
                            WHERE_ARGS(where, s), v, why);
        snprintf(field, s->cap, "%s", v);
        return CTR_OK;
    }
    }
    return ctr_fail(err, errlen, CTR_EINVAL, "config: bad setting type");
}

int config_model_name_ok(const char *s, size_t len) {
    if (len < 1 || len >= CONFIG_NAME_MAX || !isalnum((unsigned char)s[0])) return 0;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
            return 0;
    return 1;
}

/* Length of the NAME in "NAME=rest", or 0 when e does not start so. */
static size_t name_prefix(const char *e) {
    size_t n = strcspn(e, "=");
    return e[n] == '=' && config_model_name_ok(e, n) ? n : 0;
}

/* One `model` entry: PATH or NAME=PATH. */
static int add_model(config_params *p, const setting *s, const char *e, const char *where,
                     char *err, size_t errlen) {
    if (p->models_source != p->source) {   /* a higher source: its own list */
        p->num_models = 0;
        p->models_source = p->source;
    }
    if (p->num_models == CONFIG_MAX_MODELS)
        return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "more than %d models",
                        WHERE_ARGS(where, s), CONFIG_MAX_MODELS);
    size_t n = name_prefix(e);
    const char *path = n ? e + n + 1 : e;
    if (!*path)
        return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "\"%.64s\": empty file name",
                        WHERE_ARGS(where, s), e);
    if (strlen(path) >= CONFIG_STR_MAX)
        return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "path longer than %d bytes",
                        WHERE_ARGS(where, s), CONFIG_STR_MAX - 1);
    config_model *m = &p->models[p->num_models++];
    snprintf(m->name, sizeof m->name, "%.*s", (int)n, e);
    snprintf(m->path, sizeof m->path, "%s", path);
    return CTR_OK;
}

/* One NAME=VALUE entry of a per-model setting: checked as the setting's
 * value, then kept as text (replacing the model's earlier entry). */
static int add_override(config_params *p, const setting *s, const char *e, size_t n,
                        const char *where, char *err, size_t errlen) {
    union { int i; size_t z; char str[CONFIG_STR_MAX]; } tmp;
    int rc = set_field(s, &tmp, e + n + 1, where, err, errlen);
    if (rc < 0) return rc;
    config_override *o = NULL;
    for (int i = 0; i < p->num_overrides && !o; i++)
        if (strcmp(p->overrides[i].key, s->key) == 0 &&
            strlen(p->overrides[i].model) == n && memcmp(p->overrides[i].model, e, n) == 0)
            o = &p->overrides[i];
    if (!o) {
        if (p->num_overrides == CONFIG_MAX_OVERRIDES)
            return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "more than %d NAME=VALUE "
                            "entries in all", WHERE_ARGS(where, s), CONFIG_MAX_OVERRIDES);
        o = &p->overrides[p->num_overrides++];
    }
    o->key = s->key;
    snprintf(o->model, sizeof o->model, "%.*s", (int)n, e);
    snprintf(o->value, sizeof o->value, "%s", e + n + 1);
    snprintf(o->where, sizeof o->where, "%s", where ? where : "");
    return CTR_OK;
}

/* A value: one entry, or for list settings (model, per-model ones)
 * entries separated by commas, blanks around them ignored. */
static int set_value(config_params *p, const setting *s, const char *v, const char *where,
                     char *err, size_t errlen) {
    p->given[s - config_settings] = (unsigned char)p->source;
    if (s->type != SET_MODELS && !per_model(s))
        return set_field(s, (char *)p + s->off, v, where, err, errlen);
    if (strlen(v) >= CONFIG_STR_MAX)
        return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "value longer than %d bytes",
                        WHERE_ARGS(where, s), CONFIG_STR_MAX - 1);
    char buf[CONFIG_STR_MAX];
    snprintf(buf, sizeof buf, "%s", v);
    const int several = strchr(buf, ',') != NULL;
    for (char *e = buf, *next; e; e = next) {
        char *comma = strchr(e, ',');
        next = comma ? comma + 1 : NULL;
        if (comma) *comma = '\0';
        if (several) e = trim(e);
        if (several && !*e)
            return ctr_fail(err, errlen, CTR_EINVAL, WHERE_FMT "an empty entry in \"%.64s\"",
                            WHERE_ARGS(where, s), v);
        int rc;
        if (s->type == SET_MODELS) {
            rc = add_model(p, s, e, where, err, errlen);
        } else {
            size_t n = name_prefix(e);
            rc = n ? add_override(p, s, e, n, where, err, errlen)
                   : set_field(s, (char *)p + s->off, e, where, err, errlen);
        }
        if (rc < 0) return rc;
    }
    return CTR_OK;
}

const char *config_model_value(const config_params *p, const char *key, const char *model) {
    for (int i = 0; i < p->num_overrides; i++)
        if (strcmp(p->overrides[i].key, key) == 0 && strcmp(p->overrides[i].model, model) == 0)
            return p->overrides[i].value;
    return NULL;
}

int config_check_models(const config_params *p, const char *const *names, int n, char *err,
                        size_t errlen) {
    for (int i = 0; i < p->num_overrides; i++) {
        const config_override *o = &p->overrides[i];
        int k = 0;
        while (k < n && strcmp(names[k], o->model) != 0) k++;
        if (k < n) continue;
        char list[512] = "";
        for (int j = 0; j < n; j++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", j ? ", " : "",
                     names[j]);
        return ctr_fail(err, errlen, CTR_EINVAL, "%s%s%s: \"%s=%.64s\": no model named \"%s\" "
                        "(serving %s)", o->where, o->where[0] ? ": " : "", o->key, o->model,
                        o->value, o->model, list);
    }
    return CTR_OK;
}

int config_set(config_params *p, const char *key, const char *value,
               const char *where, char *err, size_t errlen) {
    const setting *s = find_setting(p->prog, key, strlen(key));
    if (!s)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "%s%sunknown setting \"%.64s\" (--help lists them)",
                        where ? where : "", where ? ": " : "", key);
    return set_value(p, s, value, where, err, errlen);
}

/* --- Sources ----------------------------------------------------------- */

static const char *env_get(char *const envp[], const char *name) {
    size_t n = strlen(name);
    for (char *const *e = envp; *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
    return NULL;
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = '\0';
    return s;
}

/* Splits one config line into key and value (in place).  Returns 0, 1 for
 * a blank or comment line, or -1 with a reason in *why. */
static int split_line(char *line, char **key, char **value, const char **why) {
    line[strcspn(line, "\r\n")] = '\0';
    char *l = trim(line);
    if (!*l || *l == '#') return 1;
    char *eq = strchr(l, '=');
    if (!eq) {
        *why = "expected `key = value`";
        return -1;
    }
    *eq = '\0';
    *key = trim(l);
    if (!**key) {
        *why = "missing key before '='";
        return -1;
    }
    char *v = eq + 1;
    while (*v == ' ' || *v == '\t') v++;
    if (*v == '"') {
        /* Quoted: up to the last quote, no escapes; then only a comment. */
        char *close = strrchr(v + 1, '"');
        if (!close) {
            *why = "unterminated quote";
            return -1;
        }
        char *rest = close + 1;
        while (*rest == ' ' || *rest == '\t') rest++;
        if (*rest && *rest != '#') {
            *why = "text after the closing quote";
            return -1;
        }
        *close = '\0';
        *value = v + 1;
        return 0;
    }
    /* Unquoted: a '#' at the start or after a blank begins a comment. */
    for (char *c = v; *c; c++)
        if (*c == '#' && (c == v || c[-1] == ' ' || c[-1] == '\t')) {
            *c = '\0';
            break;
        }
    *value = trim(v);
    return 0;
}

static int load_file(config_params *p, const char *path, const char *from,
                     char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (!f)
        return ctr_fail(err, errlen, CTR_EIO, "%s: cannot read config file \"%s\": %s",
                        from, path, strerror(errno));
    char line[4096], where[CONFIG_STR_MAX + 32];
    int rc = CTR_OK;
    for (int lineno = 1; fgets(line, sizeof line, f); lineno++) {
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        if (!strchr(line, '\n') && !feof(f)) {
            rc = ctr_fail(err, errlen, CTR_EINVAL, "%s: line longer than %zu bytes",
                          where, sizeof line - 2);
            break;
        }
        char *key, *value;
        const char *why = NULL;
        int r = split_line(line, &key, &value, &why);
        if (r == 1) continue;
        if (r < 0) {
            rc = ctr_fail(err, errlen, CTR_EINVAL, "%s: %s", where, why);
            break;
        }
        const setting *s = find_setting(p->prog, key, strlen(key));
        if (!s) {
            rc = ctr_fail(err, errlen, CTR_EINVAL,
                          "%s: unknown setting \"%.64s\" (--help lists them)", where, key);
            break;
        }
        if (strcmp(s->key, "config") == 0) {
            rc = ctr_fail(err, errlen, CTR_EINVAL,
                          "%s: config: a config file cannot name another", where);
            break;
        }
        if ((rc = set_value(p, s, value, where, err, errlen)) < 0) break;
    }
    if (rc == CTR_OK && ferror(f))
        rc = ctr_fail(err, errlen, CTR_EIO, "%s: read error", path);
    fclose(f);
    if (rc == CTR_OK) snprintf(p->config, sizeof p->config, "%s", path);
    return rc;
}

/* Reads the flag at argv[*i] (and its value) and advances *i.  Fills *s,
 * *value and `where` ("flag --key"). */
static int next_flag(config_prog prog, int argc, char *const argv[], int *i, const setting **s,
                     const char **value, char *where, size_t wlen, char *err,
                     size_t errlen) {
    const char *a = argv[(*i)++];
    if (strncmp(a, "--", 2) != 0 || a[2] == '\0')
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "unexpected argument \"%.64s\" (settings are --key value)", a);
    const char *key = a + 2;
    const char *eq = strchr(key, '=');
    size_t klen = eq ? (size_t)(eq - key) : strlen(key);
    snprintf(where, wlen, "flag --%.*s", (int)klen, key);
    *s = find_setting(prog, key, klen);
    if (!*s)
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "%s: unknown setting \"%.*s\" (--help lists them)", where,
                        (int)(klen > 64 ? 64 : klen), key);
    if (eq) {
        *value = eq + 1;
    } else if ((*s)->type == SET_BOOL) {
        /* "--skip_scoring" alone is true; a boolean word after it is its
         * value, anything else is the next flag. */
        if (*i < argc && parse_bool(argv[*i]) >= 0) *value = argv[(*i)++];
        else *value = "true";
    } else if (*i < argc) {
        *value = argv[(*i)++];
    } else {
        return ctr_fail(err, errlen, CTR_EINVAL, "%s: needs a value", where);
    }
    return CTR_OK;
}

int config_parse(config_params *p, int argc, char *const argv[],
                 char *const envp[], char *err, size_t errlen) {
    if (!envp) envp = environ;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return CONFIG_HELP;

    /* Pass 1: check the flags' syntax and find --config, which must be
     * read before the environment and the other flags. */
    const setting *s;
    const char *value, *cfg = NULL;
    char where[96], cfg_from[96] = "";
    int rc;
    for (int i = 1; i < argc;) {
        if ((rc = next_flag(p->prog, argc, argv, &i, &s, &value, where, sizeof where, err,
                            errlen)) < 0)
            return rc;
        if (strcmp(s->key, "config") == 0) {
            cfg = value;
            snprintf(cfg_from, sizeof cfg_from, "%s", where);
        }
    }
    if (!cfg && find_setting(p->prog, "config", 6)) {
        cfg = env_get(envp, "CTR_CONFIG");
        if (cfg && !*cfg) cfg = NULL;
        snprintf(cfg_from, sizeof cfg_from, "env CTR_CONFIG");
    }
    if (cfg) {
        if (!*cfg)
            return ctr_fail(err, errlen, CTR_EINVAL, "%s: config: empty file name",
                            cfg_from);
        p->source = 1;
        if ((rc = load_file(p, cfg, cfg_from, err, errlen)) < 0) return rc;
    }
    p->source = 2;

    for (size_t k = 0; k < config_nsettings; k++) {
        if (!(config_settings[k].progs & p->prog) || !env_read(&config_settings[k], p->prog)) continue;
        if (strcmp(config_settings[k].key, "config") == 0) continue;   /* done above */
        char name[64];
        env_name(&config_settings[k], name, sizeof name);
        const char *v = env_get(envp, name);
        if (!v || !*v) continue;
        snprintf(where, sizeof where, "env %s", name);
        if ((rc = set_value(p, &config_settings[k], v, where, err, errlen)) < 0) return rc;
    }

    p->source = 3;
    for (int i = 1; i < argc;) {
        next_flag(p->prog, argc, argv, &i, &s, &value, where, sizeof where, NULL, 0);
        if (strcmp(s->key, "config") == 0) continue;
        if ((rc = set_value(p, s, value, where, err, errlen)) < 0) return rc;
    }
    return CTR_OK;
}

/* --- Output ------------------------------------------------------------ */

/* A string as the file syntax reads it back: quoted when it would
 * otherwise be trimmed or cut. */
static void print_str(FILE *out, const char *field) {
    size_t n = strlen(field);
    int quote = n == 0 || field[0] == ' ' || field[0] == '\t' || field[0] == '"' ||
                field[n - 1] == ' ' || field[n - 1] == '\t' || strchr(field, '#');
    fprintf(out, quote ? "\"%s\"" : "%s", field);
}

static void print_model(FILE *out, const config_model *m) {
    char e[CONFIG_NAME_MAX + CONFIG_STR_MAX + 1];
    snprintf(e, sizeof e, "%s%s%s", m->name, m->name[0] ? "=" : "", m->path);
    print_str(out, e);
}

static void print_value(FILE *out, const setting *s, const config_params *p) {
    const char *field = (const char *)p + s->off;
    switch (s->type) {
    case SET_MODELS:
        for (int i = 0; i < p->num_models; i++) {
            if (i) fputc(',', out);
            print_model(out, &p->models[i]);
        }
        break;
    case SET_INT: fprintf(out, "%d", *(const int *)field); break;
    case SET_SIZE: fprintf(out, "%zu", *(const size_t *)field); break;
    case SET_BOOL: fputs(*(const int *)field ? "true" : "false", out); break;
    case SET_FRACTION: fprintf(out, "%g", *(const double *)field); break;
    case SET_CHOICE:
    case SET_STR: print_str(out, field); break;
    }
}

/* Prints text word-wrapped to 78 columns, each line indented by 6. */
static void print_wrapped(FILE *out, const char *text) {
    const int indent = 6, width = 78;
    int col = 0;
    for (const char *w = text; *w;) {
        while (*w == ' ') w++;
        int n = (int)strcspn(w, " ");
        if (!n) break;
        if (col > indent && col + 1 + n > width) {
            fputc('\n', out);
            col = 0;
        }
        if (col == 0) col = fprintf(out, "%*s", indent, "");
        else col += fprintf(out, " ");
        col += fprintf(out, "%.*s", n, w);
        w += n;
    }
    fputc('\n', out);
}

/* s's key as a flag: "--redis-prefix". */
static void print_flag(FILE *out, const char *key) {
    fputs("--", out);
    for (const char *c = key; *c; c++) fputc(*c == '_' ? '-' : *c, out);
}

/* One setting's --help entry: the flag, its argument, its variable (where
 * prog reads one), its default and older spelling, then the description
 * with its range or choices. */
static void print_setting(FILE *out, const setting *s, const config_params *d) {
    fputs("  ", out);
    print_flag(out, s->key);
    fprintf(out, " %s", s->arg);
    if (env_read(s, d->prog)) {
        char env[64];
        env_name(s, env, sizeof env);
        fprintf(out, "  [env %s]", env);
    }
    if (strcmp(s->key, "config") != 0) {
        fputs("  default: ", out);
        print_value(out, s, d);
        if (s->default_note) fprintf(out, " (%s)", s->default_note);
    }
    if (s->alias) {
        fputs("  (also ", out);
        print_flag(out, s->alias);
        fputc(')', out);
    }
    fputc('\n', out);
    char text[768];
    if (s->type == SET_INT || s->type == SET_SIZE)
        snprintf(text, sizeof text, "%s  Range %lld..%lld.", s->help, s->min, s->max);
    else if (s->type == SET_CHOICE)
        snprintf(text, sizeof text, "%s  One of %s.", s->help, s->choices);
    else if (s->type == SET_FRACTION)
        snprintf(text, sizeof text, "%s  Range 0..1.", s->help);
    else
        snprintf(text, sizeof text, "%s", s->help);
    print_wrapped(out, text);
}

void config_usage(FILE *out, config_prog prog, const char *name, const char *synopsis,
                  const char *about, const char *after) {
    config_params d = config_prog_params(prog);
    fprintf(out, "Usage: %s %s\n\n", name, synopsis);
    if (about) fputs(about, out);
    fputs("Settings:\n", out);
    for (size_t i = 0; i < config_nsettings; i++)
        if (config_settings[i].progs & prog) print_setting(out, &config_settings[i], &d);
    fputs("  --help\n      Print this and exit.\n", out);
    if (after) fputs(after, out);
}

void config_help(FILE *out, const char *prog) {
    config_usage(out, CONFIG_SERVER, prog ? prog : "ctr-server",
                 "[--config FILE] [--KEY VALUE | --KEY=VALUE]...",
                 "Each setting comes from, lowest precedence first: its default, the\n"
                 "config file (`key = value` lines, # comments), its environment\n"
                 "variable, a command-line flag.  In keys, - and _ are the same.\n"
                 "\n"
                 "Several models: repeat --model (or separate entries with commas, as\n"
                 "in CTR_MODEL=qin=/m/q.safetensors,din=/m/d.safetensors, or repeat the\n"
                 "`model =` line in the file); a source that sets models replaces a\n"
                 "lower one's.  Settings shown with [NAME=] take a VALUE for every model\n"
                 "and NAME=VALUE entries for one model, in the same list forms\n"
                 "(--redis-prefix ctr: --redis-prefix tin=ctr-tin:).  No entry may hold\n"
                 "a comma.\n"
                 "\n",
                 NULL);
}

void config_dump(const config_params *p, FILE *out) {
    if (p->config[0]) fprintf(out, "# settings in effect (config file: %s)\n", p->config);
    else fputs("# settings in effect (no config file)\n", out);
    for (size_t i = 0; i < config_nsettings; i++) {
        const setting *s = &config_settings[i];
        if (!(s->progs & p->prog)) continue;
        if (strcmp(s->key, "config") == 0) continue;   /* not valid in a file */
        if (is_secret(s) && *((const char *)p + s->off)) {
            fprintf(out, "# %s is set (not shown)\n", s->key);
            continue;
        }
        if (s->type == SET_MODELS) {   /* one line per entry: lines add up */
            for (int m = 0; m < p->num_models; m++) {
                fprintf(out, "%s = ", s->key);
                print_model(out, &p->models[m]);
                fputc('\n', out);
            }
            continue;
        }
        fprintf(out, "%s = ", s->key);
        print_value(out, s, p);
        if (strcmp(s->key, "skip_scoring") == 0 && p->skip_scoring)
            fputs("   # WARNING: benchmark mode, every score is 0", out);
        if (strcmp(s->key, "precision") == 0 && strcmp(p->precision, "fp32") != 0)
            fputs("   # NOT EXACT: scores differ slightly from the trained model's", out);
        fputc('\n', out);
        for (int o = 0; o < p->num_overrides; o++) {
            if (strcmp(p->overrides[o].key, s->key) != 0) continue;
            char e[CONFIG_NAME_MAX + CONFIG_STR_MAX + 1];
            snprintf(e, sizeof e, "%s=%s", p->overrides[o].model, p->overrides[o].value);
            fprintf(out, "%s = ", s->key);
            print_str(out, e);
            fputc('\n', out);
        }
    }
}

/* --- Shared by the programs -------------------------------------------- */

int config_given(const config_params *p, const char *key) {
    const setting *s = find_setting(p->prog, key, strlen(key));
    return s ? p->given[s - config_settings] : 0;
}

int config_redis_auth(config_params *p, char *err, size_t errlen) {
    int pw = config_given(p, "redis_password"), file = config_given(p, "redis_password_file");
    if (p->redis_password[0] && p->redis_password_file[0]) {
        if (pw == file)
            return ctr_fail(err, errlen, CTR_EINVAL,
                            "redis_password and redis_password_file are both set; give one");
        if (pw > file) p->redis_password_file[0] = '\0';   /* the higher source wins */
        else memset(p->redis_password, 0, sizeof p->redis_password);
    }
    if (p->redis_password_file[0]) {
        char why[1200];
        if (featstore_password_file(p->redis_password_file, p->redis_password,
                                    sizeof p->redis_password, why, sizeof why) < 0)
            return ctr_fail(err, errlen, CTR_EINVAL, "redis_password_file: %s", why);
    }
    if (p->redis_user[0] && !p->redis_password[0])
        return ctr_fail(err, errlen, CTR_EINVAL,
                        "redis_user needs a password (redis_password or redis_password_file)");
    return CTR_OK;
}

void config_scrub_argv(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) continue;
        size_t klen = strcspn(a + 2, "=");
        int secret = 0;
        for (size_t k = 0; k < config_nsettings && !secret; k++)
            secret = is_secret(&config_settings[k]) &&
                     key_is(a + 2, klen, config_settings[k].key);
        if (!secret) continue;
        char *v = a[2 + klen] == '=' ? argv[i] + 3 + klen : i + 1 < argc ? argv[++i] : NULL;
        if (v) memset(v, 0, strlen(v));
    }
}
