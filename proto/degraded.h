/*
 * degraded.h - why a rank answer is less than complete: the labels of its
 * "degraded" array, one list for the whole project.  server/rank.c adds
 * them to an answer, server/metrics.c counts each under
 * ctr_degraded_responses_total{reason}, and proto/openapi.yaml publishes
 * them as the enum of RankAnswer.degraded (tests/proto/test_degraded.c
 * holds the two lists equal).  A label is a contract: clients and alert
 * rules branch on it, so rename with openapi.yaml and deploy/prometheus/.
 * Thread-safe (no state).
 */
#ifndef CTR_PROTO_DEGRADED_H
#define CTR_PROTO_DEGRADED_H

/*  X(name, label)       when
 *  HISTORY_UNAVAILABLE        history read failed (Redis down, breaker
 *                             open, malformed value): empty history used
 *  HISTORY_DEADLINE           no time left to read the history
 *  HISTORY_ITEM_INVALID       history items whose vectors overflow (or
 *                             that make scores non-finite) were dropped
 *  ITEM_FEATURES_UNAVAILABLE  the item read failed: uncached candidates
 *                             unscored
 *  ITEM_FEATURES_DEADLINE     no time left to read item features
 *  ITEM_FEATURES_MISSING      candidates without features: unscored
 *  ITEM_FEATURES_INVALID      candidates with malformed or overflowing
 *                             features: unscored
 *  NON_FINITE                 candidates whose score is not finite:
 *                             unscored
 *  SCORING_DEADLINE           candidates left unscored for lack of time
 *  FEATURE_SET_MISSING        the feature store has no (matching)
 *                             feature-set marker: Redis may have restarted
 *                             empty, so a missing user is not evidence of
 *                             a new user
 */
#define PROTO_DEGRADED_MAP(X)                                                 \
    X(HISTORY_UNAVAILABLE,       "history_unavailable")                       \
    X(HISTORY_DEADLINE,          "history_deadline")                          \
    X(HISTORY_ITEM_INVALID,      "history_item_invalid")                      \
    X(ITEM_FEATURES_UNAVAILABLE, "item_features_unavailable")                 \
    X(ITEM_FEATURES_DEADLINE,    "item_features_deadline")                    \
    X(ITEM_FEATURES_MISSING,     "item_features_missing")                     \
    X(ITEM_FEATURES_INVALID,     "item_features_invalid")                     \
    X(NON_FINITE,                "non_finite")                                \
    X(SCORING_DEADLINE,          "scoring_deadline")                          \
    X(FEATURE_SET_MISSING,       "feature_set_missing")

typedef enum proto_degraded {
#define PROTO_DEGRADED_ENUM(name, label) PROTO_DEGRADED_##name,
    PROTO_DEGRADED_MAP(PROTO_DEGRADED_ENUM)
#undef PROTO_DEGRADED_ENUM
    PROTO_DEGRADED_COUNT
} proto_degraded;

/* The label of d (static), or NULL for a value outside the enum. */
const char *proto_degraded_label(proto_degraded d);

#endif
