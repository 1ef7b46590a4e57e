/* degraded.c - the labels of degraded answers, see degraded.h. */
#include "proto/degraded.h"

#include <stddef.h>

const char *proto_degraded_label(proto_degraded d) {
    switch (d) {
#define PROTO_DEGRADED_LABEL(name, label) case PROTO_DEGRADED_##name: return (label);
        PROTO_DEGRADED_MAP(PROTO_DEGRADED_LABEL)
#undef PROTO_DEGRADED_LABEL
    case PROTO_DEGRADED_COUNT: break;
    }
    return NULL;
}
