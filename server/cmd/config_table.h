/*
 * config_table.h - inside config.c: the settings table's row type and the
 * table itself (config_table.c).  Nothing outside server/cmd/config*.c
 * includes this; programs use config.h.
 */
#ifndef CTR_SERVER_CMD_CONFIG_TABLE_H
#define CTR_SERVER_CMD_CONFIG_TABLE_H

#include <stddef.h>

#include "server/cmd/config.h"

typedef enum setting_type {
    SET_STR,      /* char[cap] */
    SET_INT,      /* int, min..max */
    SET_SIZE,     /* size_t, min..max */
    SET_BOOL,     /* int 0/1 */
    SET_CHOICE,   /* char[cap], one of `choices` ("a|b|c") */
    SET_FRACTION, /* double, 0..1 */
    SET_MODELS,   /* config_params.models: PATH or NAME=PATH entries */
} setting_type;

/* Row flags. */
enum {
    SETTING_PER_MODEL = 1,      /* NAME=VALUE entries too (config.h) */
    SETTING_SECRET = 2,         /* never printed; blanked in argv */
    SETTING_ENV = 4,            /* read from the environment by every
                                   program (ctr-server reads every row) */
};

typedef struct setting {
    const char *key;
    setting_type type;
    size_t off;                 /* offsetof(config_params, field) */
    size_t cap;                 /* SET_STR, SET_CHOICE: field size */
    long long min, max;         /* SET_INT, SET_SIZE */
    const char *arg;            /* what --help shows after the flag */
    const char *choices;        /* SET_CHOICE */
    /* Extra check of a string; fills why and returns -1 when bad. */
    int (*check)(const char *v, char *why, size_t whylen);
    const char *default_note;   /* why the default is what it is, or NULL */
    const char *help;
    unsigned progs;             /* config_prog bits of the programs taking it */
    unsigned flags;             /* SETTING_* */
    const char *alias;          /* an older spelling still accepted, or NULL */
} setting;

/* Every setting of every program, in the order --help and config_dump show
 * them; a key appears once per program (rows of one key for different
 * programs differ in default, range or description, never in meaning). */
extern const setting config_settings[];
extern const size_t config_nsettings;

#endif
