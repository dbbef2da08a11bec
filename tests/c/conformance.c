/*
 * conformance.c: runs every conformance vector (the *.json files of tests/conformance, format in
 * tests/conformance/README.md) against libtasker through the C ABI of tasker.h, with the
 * same semantics as core/tests/conformance.rs.
 *
 * Environment: TASKER_CONFORMANCE_DIR names the vector directory (default
 * tests/conformance); TASKER_TEST_TMP names a directory for the databases (default: a
 * fresh mkdtemp directory, removed at the end); TASKER_TEST_DATABASE_URL, when set, runs
 * every vector on PostgreSQL too, each in a schema named TASKER_C_SCHEMA_PREFIX (default
 * `c_conf_`) + pid + index, which the caller drops (scripts/c-tests does);
 * TASKER_CONFORMANCE_LEDGER names a file that gets one line per vector run.
 *
 * Prints one line per vector and `conformance(c): N passed, M failed`. Exits 0 only if
 * every vector passed and at least MIN_VECTORS were found.
 */
#define _DEFAULT_SOURCE
#define PROG "conformance(c)"
#include <ctype.h>
#include <dirent.h>
#include <sys/stat.h>

#include "support.h"

#define MIN_VECTORS 20
#define MAX_LOOPS 2000

/* ------------------------------------------------------------------------------------
 * Failure messages: every problem of the current vector, joined with "; ". */

static char g_msg[32768];
static size_t g_len;

static void msg_reset(void) {
    g_msg[0] = '\0';
    g_len = 0;
}

static int failf(const char *fmt, ...) {
    if (g_len > 0 && g_len + 3 < sizeof g_msg) {
        memcpy(g_msg + g_len, "; ", 3);
        g_len += 2;
    }
    if (g_len + 1 < sizeof g_msg) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(g_msg + g_len, sizeof g_msg - g_len, fmt, ap);
        va_end(ap);
        if (n > 0) {
            g_len += (size_t)n;
            if (g_len >= sizeof g_msg) g_len = sizeof g_msg - 1;
        }
    }
    return -1;
}

/* JSON text of j for messages, in one of 8 rotating static buffers. */
static const char *js(const cJSON *j) {
    static char bufs[8][2048];
    static unsigned k;
    char *b = bufs[k++ & 7u];
    if (j == NULL) {
        snprintf(b, sizeof bufs[0], "(missing)");
        return b;
    }
    char *p = cJSON_PrintUnformatted(j);
    snprintf(b, sizeof bufs[0], "%s", p ? p : "(unprintable)");
    cJSON_free(p);
    return b;
}

/* ------------------------------------------------------------------------------------
 * JSON helpers */

/* Lenient lookups: a missing key (or a NULL object) gives NULL; failures are collected
 * with failf, not fatal as with support.h's get(). */
static const cJSON *field(const cJSON *o, const char *key) {
    return o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
}

static const char *field_str(const cJSON *o, const char *key) {
    const cJSON *v = field(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Equality with numbers by value; a missing actual value equals null. */
static int json_eq(const cJSON *expected, const cJSON *actual) {
    if (actual == NULL) return expected == NULL || cJSON_IsNull(expected);
    if (expected == NULL) return cJSON_IsNull(actual);
    return cJSON_Compare(expected, actual, 1) ? 1 : 0;
}

/* expected is a subset of actual: objects key by key, recursively; else equality. */
static int json_subset(const cJSON *expected, const cJSON *actual) {
    if (cJSON_IsObject(expected) && cJSON_IsObject(actual)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, expected) {
            const cJSON *a = field(actual, e->string);
            if (a == NULL || !json_subset(e, a)) return 0;
        }
        return 1;
    }
    return json_eq(expected, actual);
}

static int all_digits(const char *s) {
    if (*s == '\0') return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s)) return 0;
    return 1;
}

/* ------------------------------------------------------------------------------------
 * Expressions */

typedef struct {
    const cJSON *context, *results, *config, *attempt;
} Scope;

static const cJSON *lookup(const cJSON *base, const char *path, const char *full) {
    const cJSON *cur = base;
    const char *p = path;
    char seg[256];
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n >= sizeof seg) {
            failf("expression `%s`: path segment too long", full);
            return NULL;
        }
        memcpy(seg, p, n);
        seg[n] = '\0';
        const cJSON *next = NULL;
        if (cJSON_IsObject(cur))
            next = field(cur, seg);
        else if (cJSON_IsArray(cur) && all_digits(seg))
            next = cJSON_GetArrayItem(cur, atoi(seg));
        if (next == NULL) {
            failf("expression `%s`: no `%s` in %s", full, seg, js(cur));
            return NULL;
        }
        cur = next;
        p += n;
        if (*p == '.') p++;
    }
    return cur;
}

static cJSON *eval(const cJSON *e, const Scope *s);

static cJSON *eval_members(const cJSON *obj, const Scope *s) {
    cJSON *out = cJSON_CreateObject();
    const cJSON *m;
    cJSON_ArrayForEach(m, obj) {
        cJSON *v = eval(m, s);
        if (v == NULL) {
            cJSON_Delete(out);
            return NULL;
        }
        cJSON_AddItemToObject(out, m->string, v);
    }
    return out;
}

/* The value of expression e (owned by the caller), or NULL after failf. */
static cJSON *eval(const cJSON *e, const Scope *s) {
    if (cJSON_IsString(e) && e->valuestring[0] == '$') {
        const char *text = e->valuestring;
        if (text[1] == '$') return cJSON_CreateString(text + 1);
        const char *dot = strchr(text + 1, '.');
        size_t rn = dot ? (size_t)(dot - (text + 1)) : strlen(text + 1);
        const char *rest = dot ? dot + 1 : "";
        const cJSON *base = NULL;
        if (rn == 7 && strncmp(text + 1, "context", 7) == 0)
            base = s->context;
        else if (rn == 7 && strncmp(text + 1, "results", 7) == 0)
            base = s->results;
        else if (rn == 6 && strncmp(text + 1, "config", 6) == 0)
            base = s->config;
        else if (rn == 7 && strncmp(text + 1, "attempt", 7) == 0)
            base = s->attempt;
        else {
            failf("expression `%s`: unknown reference", text);
            return NULL;
        }
        if (base == NULL) {
            failf("expression `%s`: not available here", text);
            return NULL;
        }
        const cJSON *v = lookup(base, rest, text);
        return v ? cJSON_Duplicate(v, 1) : NULL;
    }
    if (cJSON_IsArray(e)) {
        cJSON *out = cJSON_CreateArray();
        const cJSON *item;
        cJSON_ArrayForEach(item, e) {
            cJSON *v = eval(item, s);
            if (v == NULL) {
                cJSON_Delete(out);
                return NULL;
            }
            cJSON_AddItemToArray(out, v);
        }
        return out;
    }
    if (cJSON_IsObject(e)) {
        const cJSON *only = e->child;
        if (only != NULL && only->next == NULL) {
            if (strcmp(only->string, "sum") == 0) {
                if (!cJSON_IsArray(only)) {
                    failf("`sum` needs an array, got %s", js(only));
                    return NULL;
                }
                double total = 0;
                const cJSON *item;
                cJSON_ArrayForEach(item, only) {
                    cJSON *v = eval(item, s);
                    if (v == NULL) return NULL;
                    if (!cJSON_IsNumber(v)) {
                        failf("`sum` of a non-number %s", js(v));
                        cJSON_Delete(v);
                        return NULL;
                    }
                    total += v->valuedouble;
                    cJSON_Delete(v);
                }
                return cJSON_CreateNumber(total);
            }
            if (strcmp(only->string, "literal") == 0) return cJSON_Duplicate(only, 1);
            if (strcmp(only->string, "object") == 0) {
                if (!cJSON_IsObject(only)) {
                    failf("`object` needs an object, got %s", js(only));
                    return NULL;
                }
                return eval_members(only, s);
            }
        }
        return eval_members(e, s);
    }
    return cJSON_Duplicate(e, 1);
}

/* ------------------------------------------------------------------------------------
 * Calls */

/* Runs op. On success returns 0 and *out (owned). On failure returns nonzero and, when
 * err is not NULL, *err (owned): the error JSON {code, message, details}. */
static int api(uint64_t h, const char *op, const cJSON *req, cJSON **out, cJSON **err) {
    *out = NULL;
    if (err) *err = NULL;
    char *text = cJSON_PrintUnformatted(req);
    char *resp = NULL, *etext = NULL;
    int32_t st = tasker_call(h, op, text ? text : "{}", &resp, &etext);
    cJSON_free(text);
    if (st == TASKER_OK) {
        *out = cJSON_Parse(resp);
        tasker_free_string(resp);
        if (*out != NULL) return 0;
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "code", "runner");
        cJSON_AddStringToObject(e, "message", "the response is not valid JSON");
        if (err)
            *err = e;
        else
            cJSON_Delete(e);
        return -1;
    }
    cJSON *e = etext ? cJSON_Parse(etext) : NULL;
    if (e == NULL) {
        e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "code", "runner");
        cJSON_AddStringToObject(e, "message", etext ? etext : "no error text");
    }
    tasker_free_string(etext);
    if (err)
        *err = e;
    else
        cJSON_Delete(e);
    return st;
}

/* The call must succeed: 0 and *out (owned), or -1 after failf. */
static int api_ok(uint64_t h, const char *op, const cJSON *req, cJSON **out) {
    cJSON *err = NULL;
    if (api(h, op, req, out, &err) == 0) return 0;
    failf("%s %s failed: %s", op, js(req), js(err));
    cJSON_Delete(err);
    return -1;
}

/* Checks an error against an expected error spec (a code string or an object). */
static int check_error(const cJSON *expected, const cJSON *err, const char *what) {
    const char *code = field_str(err, "code");
    const char *want = NULL;
    const cJSON *details = NULL, *contains = NULL;
    if (cJSON_IsString(expected)) {
        want = expected->valuestring;
    } else if (cJSON_IsObject(expected)) {
        want = field_str(expected, "code");
        details = field(expected, "details");
        contains = field(expected, "message_contains");
    }
    if (want == NULL) return failf("%s: bad expected error %s", what, js(expected));
    if (code == NULL || strcmp(code, want) != 0)
        return failf("%s: expected error `%s`, got `%s`: %s", what, want, code ? code : "?", js(err));
    if (details != NULL && !json_subset(details, field(err, "details")))
        return failf("%s: error details %s do not contain %s", what, js(field(err, "details")),
                     js(details));
    const char *message = field_str(err, "message");
    const cJSON *c;
    cJSON_ArrayForEach(c, contains) {
        if (cJSON_IsString(c) && (message == NULL || strstr(message, c->valuestring) == NULL))
            return failf("%s: error message `%s` does not contain `%s`", what,
                         message ? message : "", c->valuestring);
    }
    return 0;
}

/* The call must fail with `expected`. */
static int api_err(uint64_t h, const char *op, const cJSON *req, const cJSON *expected) {
    cJSON *out = NULL, *err = NULL;
    if (api(h, op, req, &out, &err) == 0) {
        failf("%s succeeded (%s) but was expected to fail with %s", op, js(out), js(expected));
        cJSON_Delete(out);
        return -1;
    }
    int rc = check_error(expected, err, op);
    cJSON_Delete(err);
    return rc;
}

/* Succeeds (then *out is owned), or fails with expect_error when given (then *out is
 * NULL). */
static int api_checked(uint64_t h, const char *op, const cJSON *req, const cJSON *expect_error,
                       cJSON **out) {
    *out = NULL;
    if (expect_error != NULL) return api_err(h, op, req, expect_error);
    return api_ok(h, op, req, out);
}

/* ------------------------------------------------------------------------------------
 * One vector */

typedef struct {
    const cJSON *v;
    uint64_t h;
    double task_id;
    double lease_ms;
    cJSON *handlers;   /* array of handler names */
    cJSON *claims;     /* step name -> claims so far */
    cJSON *tokens;     /* "step#n" -> [step_id, claim_token] */
    cJSON *not_before; /* step name -> [fail started (ms), retry_after_ms] */
    cJSON *null_value;
    int nheld;
    double held_until;
    int nactions;
    int *fired;
    char session[64]; /* with "via": "worker_session": the session's worker_id, else "" */
} Run;

static const cJSON *actions(const Run *r) { return field(r->v, "actions"); }

static const cJSON *expect(const Run *r) { return field(r->v, "expect"); }

/* send_signal {task_id, name: signal, payload?: EXPR} (only $context in scope). */
static int signal_request(Run *r, const cJSON *a, cJSON *req) {
    cJSON_AddNumberToObject(req, "task_id", r->task_id);
    cJSON_AddItemToObject(req, "name", field(a, "signal") ? cJSON_Duplicate(field(a, "signal"), 1) : cJSON_CreateNull());
    if (field(a, "payload")) {
        const cJSON *ctx = field(r->v, "context");
        cJSON *empty = cJSON_CreateObject();
        Scope s = {ctx ? ctx : empty, NULL, NULL, NULL};
        cJSON *payload = eval(field(a, "payload"), &s);
        cJSON_Delete(empty);
        if (payload == NULL) return -1;
        cJSON_AddItemToObject(req, "payload", payload);
    }
    return 0;
}

/* `explain_task`: each step named in `expect_steps` must have these fields in the
 * explanation (a step missing from it is a failure). */
static int explain_action(Run *r, const cJSON *a) {
    cJSON *req = cJSON_CreateObject();
    cJSON_AddNumberToObject(req, "task_id", r->task_id);
    cJSON *resp = NULL;
    int rc = api_ok(r->h, "explain_task", req, &resp);
    cJSON_Delete(req);
    if (rc != 0) return failf("(in action %s)", js(a));
    const cJSON *want;
    cJSON_ArrayForEach(want, field(a, "expect_steps")) {
        const cJSON *got = NULL, *s;
        cJSON_ArrayForEach(s, field(resp, "steps")) {
            const char *n = field_str(s, "name");
            if (n && strcmp(n, want->string) == 0) got = s;
        }
        if (got == NULL) {
            rc = failf("action %s: step %s is not in the explanation %s", js(a), want->string, js(resp));
            break;
        }
        const cJSON *w;
        cJSON_ArrayForEach(w, want) {
            if (!json_eq(w, field(got, w->string))) {
                rc = failf("action %s: step %s: expected %s = %s, got %s", js(a), want->string,
                           w->string, js(w), js(field(got, w->string)));
                break;
            }
        }
        if (rc != 0) break;
    }
    cJSON_Delete(resp);
    return rc;
}

static int act(Run *r, const cJSON *a) {
    const char *what = field_str(a, "do");
    if (what != NULL && strcmp(what, "explain_task") == 0) return explain_action(r, a);
    const cJSON *step = field(a, "step");
    const char *op = NULL;
    cJSON *req = cJSON_CreateObject();
    int rc = 0;
    if (what == NULL) what = "";
    if (strcmp(what, "cancel_task") == 0) {
        op = "cancel_task";
        cJSON_AddNumberToObject(req, "task_id", r->task_id);
        if (field(a, "reason")) cJSON_AddItemToObject(req, "reason", cJSON_Duplicate(field(a, "reason"), 1));
    } else if (strcmp(what, "retry_step") == 0 || strcmp(what, "resolve_step") == 0) {
        op = what;
        cJSON_AddNumberToObject(req, "task_id", r->task_id);
        cJSON_AddItemToObject(req, "step_name", step ? cJSON_Duplicate(step, 1) : cJSON_CreateNull());
        if (strcmp(what, "resolve_step") == 0) {
            if (field(a, "result")) {
                const cJSON *ctx = field(r->v, "context");
                cJSON *empty = cJSON_CreateObject();
                Scope s = {ctx ? ctx : empty, NULL, NULL, NULL};
                cJSON *result = eval(field(a, "result"), &s);
                cJSON_Delete(empty);
                if (result == NULL) rc = -1;
                else cJSON_AddItemToObject(req, "result", result);
            }
            if (field(a, "reason")) cJSON_AddItemToObject(req, "reason", cJSON_Duplicate(field(a, "reason"), 1));
        }
    } else if (strcmp(what, "report_stale") == 0) {
        const char *sname = cJSON_IsString(step) ? step->valuestring : "";
        const cJSON *att = field(a, "attempt");
        char key[300];
        snprintf(key, sizeof key, "%s#%d", sname, cJSON_IsNumber(att) ? att->valueint : 0);
        const cJSON *tok = field(r->tokens, key);
        const char *report = field_str(a, "report");
        if (tok == NULL) {
            rc = failf("report_stale: no claim number %d of step %s", cJSON_IsNumber(att) ? att->valueint : 0, sname);
        } else {
            cJSON_AddItemToObject(req, "step_id", cJSON_Duplicate(cJSON_GetArrayItem(tok, 0), 1));
            cJSON_AddItemToObject(req, "claim_token", cJSON_Duplicate(cJSON_GetArrayItem(tok, 1), 1));
            if (report && strcmp(report, "complete") == 0) {
                op = "complete_step";
                cJSON_AddNullToObject(req, "result");
            } else if (report && strcmp(report, "fail") == 0) {
                op = "fail_step";
                cJSON *e = cJSON_AddObjectToObject(req, "error");
                cJSON_AddStringToObject(e, "message", "stale");
            } else if (report && strcmp(report, "heartbeat") == 0) {
                op = "heartbeat";
            } else {
                rc = failf("report_stale: unknown report `%s`", report ? report : "");
            }
        }
    } else if (strcmp(what, "advance_clock") == 0) {
        /* Scheduling vectors: move the manual clock (config.clock: manual). */
        op = "advance_clock";
        const cJSON *ms = field(a, "ms");
        cJSON_AddItemToObject(req, "ms", ms ? cJSON_Duplicate(ms, 1) : cJSON_CreateNull());
    } else if (strcmp(what, "send_signal") == 0) {
        op = "send_signal";
        rc = signal_request(r, a, req);
    } else {
        rc = failf("unknown action `%s`", what);
    }
    if (rc == 0) {
        cJSON *resp = NULL;
        rc = api_checked(r->h, op, req, field(a, "expect_error"), &resp);
        if (rc != 0) {
            failf("(in action %s)", js(a));
        } else if (resp != NULL && cJSON_IsObject(field(a, "expect"))) {
            const cJSON *w;
            cJSON_ArrayForEach(w, field(a, "expect")) {
                if (!json_eq(w, field(resp, w->string))) {
                    rc = failf("action %s: expected %s = %s, got %s", js(a), w->string, js(w),
                               js(field(resp, w->string)));
                    break;
                }
            }
        }
        cJSON_Delete(resp);
    }
    cJSON_Delete(req);
    return rc;
}

static int fire_when(Run *r, const char *when) {
    for (int i = 0; i < r->nactions; i++) {
        const cJSON *a = cJSON_GetArrayItem(actions(r), i);
        const char *w = field_str(a, "when");
        if (!r->fired[i] && w && strcmp(w, when) == 0) {
            r->fired[i] = 1;
            if (act(r, a) != 0) return -1;
        }
    }
    return 0;
}

static int fire_after(Run *r, const char *step, int n, const char *phase) {
    for (int i = 0; i < r->nactions; i++) {
        const cJSON *a = cJSON_GetArrayItem(actions(r), i);
        const cJSON *at = field(a, "after");
        if (r->fired[i] || !cJSON_IsObject(at)) continue;
        const char *s = field_str(at, "step");
        const cJSON *att = field(at, "attempt");
        const char *ph = field_str(at, "phase");
        if (!ph) ph = "reported";
        if (s && strcmp(s, step) == 0 && cJSON_IsNumber(att) && att->valueint == n &&
            strcmp(ph, phase) == 0) {
            r->fired[i] = 1;
            if (act(r, a) != 0) return -1;
        }
    }
    return 0;
}

static int claim(Run *r, int wait_ms, cJSON **out) {
    if (r->session[0]) {
        cJSON *req = cJSON_CreateObject();
        cJSON_AddStringToObject(req, "worker_id", r->session);
        cJSON_AddNumberToObject(req, "max", 1);
        cJSON_AddNumberToObject(req, "wait_ms", wait_ms);
        int rc = api_ok(r->h, "worker_next", req, out);
        cJSON_Delete(req);
        /* A session that is not idle but got nothing has a retry scheduled. */
        if (rc == 0 && cJSON_GetArraySize(field(*out, "steps")) == 0 && cJSON_IsFalse(field(*out, "idle")))
            cJSON_AddStringToObject(*out, "next_ready_at", "scheduled");
        return rc;
    }
    cJSON *req = cJSON_CreateObject();
    cJSON_AddItemToObject(req, "handlers", cJSON_Duplicate(r->handlers, 1));
    cJSON_AddNumberToObject(req, "limit", 1);
    cJSON_AddNumberToObject(req, "wait_ms", wait_ms);
    cJSON_AddStringToObject(req, "worker_id", "conformance");
    int rc = api_ok(r->h, "claim", req, out);
    cJSON_Delete(req);
    return rc;
}

static int claimed_nothing(const cJSON *resp) {
    return cJSON_GetArraySize(field(resp, "steps")) == 0;
}

/* worker_report with one outcome (consumed); its result must match the outcome's
 * expect_report (a subset), else have the outcome `dflt`. */
static int report(Run *r, const char *name, int n, const cJSON *outcome, cJSON *item,
                  const char *dflt) {
    cJSON *req = cJSON_CreateObject();
    cJSON_AddStringToObject(req, "worker_id", r->session);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(req, "outcomes"), item);
    cJSON *resp = NULL;
    int rc = api_ok(r->h, "worker_report", req, &resp);
    cJSON_Delete(req);
    if (rc != 0) return failf("(step %s claim %d)", name, n);
    const cJSON *got = cJSON_GetArrayItem(field(resp, "results"), 0);
    cJSON *want = cJSON_Duplicate(field(outcome, "expect_report"), 1);
    if (want == NULL) {
        want = cJSON_CreateObject();
        cJSON_AddStringToObject(want, "outcome", dflt);
    }
    if (got == NULL || !json_subset(want, got)) {
        rc = failf("step %s claim %d: worker_report gave %s, expected %s", name, n, js(got), js(want));
    }
    cJSON_Delete(want);
    cJSON_Delete(resp);
    return rc;
}

static int handle(Run *r, const cJSON *step) {
    const char *name = field_str(step, "step_name");
    const cJSON *step_id = field(step, "step_id");
    const cJSON *token = field(step, "claim_token");
    if (name == NULL || step_id == NULL || token == NULL) return failf("bad claimed step %s", js(step));
    const cJSON *tid = field(step, "task_id");
    if (!cJSON_IsNumber(tid) || tid->valuedouble != r->task_id)
        return failf("claimed a step of another task: %s", js(step));

    cJSON *count = cJSON_GetObjectItemCaseSensitive(r->claims, name);
    if (count == NULL) count = cJSON_AddNumberToObject(r->claims, name, 0);
    cJSON_SetNumberValue(count, count->valuedouble + 1);
    int n = count->valueint;

    char key[300];
    snprintf(key, sizeof key, "%s#%d", name, n);
    cJSON *tok = cJSON_CreateArray();
    cJSON_AddItemToArray(tok, cJSON_Duplicate(step_id, 1));
    cJSON_AddItemToArray(tok, cJSON_Duplicate(token, 1));
    cJSON_DeleteItemFromObjectCaseSensitive(r->tokens, key);
    cJSON_AddItemToObject(r->tokens, key, tok);

    const cJSON *nb = field(r->not_before, name);
    if (nb != NULL) {
        double started = cJSON_GetArrayItem(nb, 0)->valuedouble;
        double ms = cJSON_GetArrayItem(nb, 1)->valuedouble;
        double waited = now_ms() - started;
        cJSON_DeleteItemFromObjectCaseSensitive(r->not_before, name);
        if (waited + 2.0 < ms)
            return failf("step %s was claimed again %.0f ms after a failure with retry_after_ms %.0f",
                         name, waited, ms);
    }

    const cJSON *scripted = field(field(r->v, "outcomes"), name);
    cJSON *synthetic = NULL;
    const cJSON *outcome = NULL;
    if (scripted == NULL && n == 1) {
        synthetic = cJSON_CreateObject();
        cJSON_AddNullToObject(synthetic, "complete");
        outcome = synthetic;
    } else if (scripted != NULL) {
        outcome = cJSON_GetArrayItem(scripted, n - 1);
    }
    if (outcome == NULL) return failf("unscripted attempt: claim %d of step %s", n, name);

    int rc = 0;
    const cJSON *want_attempt = field(outcome, "claim_attempt");
    if (want_attempt != NULL && !json_eq(want_attempt, field(step, "attempt")))
        rc = failf("claim %d of step %s: expected attempt %s, the claim says %s", n, name,
                   js(want_attempt), js(field(step, "attempt")));
    if (rc == 0) rc = fire_after(r, name, n, "claimed");
    const cJSON *expect_error = field(outcome, "expect_error");
    if (rc == 0 && field(outcome, "complete") != NULL) {
        const cJSON *cfg = field(step, "config");
        Scope s = {field(step, "context"), field(step, "results"), cfg ? cfg : r->null_value,
                   field(step, "attempt")};
        cJSON *result = eval(field(outcome, "complete"), &s);
        if (result == NULL) {
            rc = failf("(step %s claim %d)", name, n);
        } else if (r->session[0]) {
            cJSON *item = cJSON_CreateObject();
            cJSON_AddItemToObject(item, "step_id", cJSON_Duplicate(step_id, 1));
            cJSON_AddItemToObject(item, "result", result);
            rc = report(r, name, n, outcome, item, "completed");
        } else {
            cJSON *req = cJSON_CreateObject();
            cJSON_AddItemToObject(req, "step_id", cJSON_Duplicate(step_id, 1));
            cJSON_AddItemToObject(req, "claim_token", cJSON_Duplicate(token, 1));
            cJSON_AddItemToObject(req, "result", result);
            cJSON *resp = NULL;
            rc = api_checked(r->h, "complete_step", req, expect_error, &resp);
            if (rc != 0) failf("(step %s claim %d)", name, n);
            cJSON_Delete(resp);
            cJSON_Delete(req);
        }
    } else if (rc == 0 && field(outcome, "fail") != NULL) {
        cJSON *doc = cJSON_Duplicate(field(outcome, "fail"), 1);
        if (!cJSON_IsObject(doc)) {
            cJSON_Delete(doc);
            doc = cJSON_CreateObject();
        }
        if (field(doc, "message") == NULL) cJSON_AddStringToObject(doc, "message", "scripted failure");
        const cJSON *after = field(doc, "retry_after_ms");
        double after_ms = cJSON_IsNumber(after) ? after->valuedouble : -1;
        double started = now_ms();
        if (r->session[0]) {
            cJSON *item = cJSON_CreateObject();
            cJSON_AddItemToObject(item, "step_id", cJSON_Duplicate(step_id, 1));
            cJSON_AddItemToObject(item, "error", doc);
            rc = report(r, name, n, outcome, item, "failed");
        } else {
            cJSON *req = cJSON_CreateObject();
            cJSON_AddItemToObject(req, "step_id", cJSON_Duplicate(step_id, 1));
            cJSON_AddItemToObject(req, "claim_token", cJSON_Duplicate(token, 1));
            cJSON_AddItemToObject(req, "error", doc);
            cJSON *resp = NULL;
            rc = api_checked(r->h, "fail_step", req, expect_error, &resp);
            if (rc != 0) failf("(step %s claim %d)", name, n);
            cJSON_Delete(resp);
            cJSON_Delete(req);
        }
        if (rc == 0 && after_ms >= 0) {
            cJSON *pair = cJSON_CreateArray();
            cJSON_AddItemToArray(pair, cJSON_CreateNumber(started));
            cJSON_AddItemToArray(pair, cJSON_CreateNumber(after_ms));
            cJSON_DeleteItemFromObjectCaseSensitive(r->not_before, name);
            cJSON_AddItemToObject(r->not_before, name, pair);
        }
    } else if (rc == 0 && r->session[0] && field(outcome, "invalid_result") != NULL) {
        cJSON *item = cJSON_CreateObject();
        cJSON_AddItemToObject(item, "step_id", cJSON_Duplicate(step_id, 1));
        cJSON_AddItemToObject(item, "invalid_result", cJSON_Duplicate(field(outcome, "invalid_result"), 1));
        rc = report(r, name, n, outcome, item, "failed");
    } else if (rc == 0 && r->session[0] && field(outcome, "release") != NULL) {
        cJSON *item = cJSON_CreateObject();
        cJSON_AddItemToObject(item, "step_id", cJSON_Duplicate(step_id, 1));
        cJSON_AddBoolToObject(item, "release", 1);
        rc = report(r, name, n, outcome, item, "released");
    } else if (rc == 0 && !r->session[0] && field(outcome, "hold") != NULL) {
        double until = now_ms() + r->lease_ms + 30.0;
        r->nheld++;
        if (until > r->held_until) r->held_until = until;
    } else if (rc == 0) {
        rc = failf("step %s claim %d: bad outcome %s", name, n, js(outcome));
    }
    if (rc == 0) rc = fire_after(r, name, n, "reported");
    cJSON_Delete(synthetic);
    return rc;
}

static int drive(Run *r) {
    for (int loop = 0; loop < MAX_LOOPS; loop++) {
        /* A scheduled retry is waited for (5 s at most); otherwise the run is idle. */
        cJSON *resp = NULL;
        if (claim(r, 0, &resp) != 0) return -1;
        const cJSON *next = field(resp, "next_ready_at");
        if (claimed_nothing(resp) && next != NULL && !cJSON_IsNull(next)) {
            cJSON_Delete(resp);
            if (claim(r, 5000, &resp) != 0) return -1;
        }
        if (!claimed_nothing(resp)) {
            int rc = handle(r, cJSON_GetArrayItem(field(resp, "steps"), 0));
            cJSON_Delete(resp);
            if (rc != 0) return -1;
            continue;
        }
        cJSON_Delete(resp);
        if (r->nheld > 0) {
            sleep_ms(r->held_until - now_ms());
            cJSON *req = cJSON_CreateObject();
            cJSON *out = NULL;
            int rc = api_ok(r->h, "sweep", req, &out);
            cJSON_Delete(req);
            cJSON_Delete(out);
            if (rc != 0) return -1;
            r->nheld = 0;
            r->held_until = 0;
            continue;
        }
        int fired = 0;
        for (int i = 0; i < r->nactions && !fired; i++) {
            const cJSON *a = cJSON_GetArrayItem(actions(r), i);
            const char *w = field_str(a, "when");
            if (!r->fired[i] && w && strcmp(w, "idle") == 0) {
                r->fired[i] = 1;
                fired = 1;
                if (act(r, a) != 0) return -1;
            }
        }
        if (fired) continue;
        return 0;
    }
    return failf("the run did not settle within %d loops", MAX_LOOPS);
}

/* The task's events as "event" / "event:step", read to the end (owned array). */
static cJSON *read_events(Run *r) {
    cJSON *names = cJSON_CreateArray();
    double since = 0;
    for (;;) {
        cJSON *req = cJSON_CreateObject();
        cJSON_AddNumberToObject(req, "task_id", r->task_id);
        cJSON_AddNumberToObject(req, "since", since);
        cJSON_AddNumberToObject(req, "limit", 1000);
        cJSON *page = NULL;
        int rc = api_ok(r->h, "events", req, &page);
        cJSON_Delete(req);
        if (rc != 0) {
            cJSON_Delete(names);
            return NULL;
        }
        const cJSON *events = field(page, "events");
        if (cJSON_GetArraySize(events) == 0) {
            cJSON_Delete(page);
            return names;
        }
        const cJSON *e;
        cJSON_ArrayForEach(e, events) {
            const char *ev = field_str(e, "event");
            const char *step = field_str(e, "step_name");
            char buf[400];
            if (step)
                snprintf(buf, sizeof buf, "%s:%s", ev ? ev : "?", step);
            else
                snprintf(buf, sizeof buf, "%s", ev ? ev : "?");
            cJSON_AddItemToArray(names, cJSON_CreateString(buf));
        }
        const cJSON *cursor = field(page, "next_cursor");
        if (!cJSON_IsNumber(cursor)) {
            failf("events returned no next_cursor: %s", js(page));
            cJSON_Delete(page);
            cJSON_Delete(names);
            return NULL;
        }
        since = cursor->valuedouble;
        cJSON_Delete(page);
    }
}

static void check_events(const cJSON *want, const cJSON *got) {
    if (json_eq(want, got)) return;
    int nw = cJSON_GetArraySize(want), ng = cJSON_GetArraySize(got);
    int at = 0;
    while (at < nw && at < ng &&
           json_eq(cJSON_GetArrayItem(want, at), cJSON_GetArrayItem(got, at)))
        at++;
    char *full = cJSON_PrintUnformatted(got);
    failf("events differ at index %d: expected %s, got %s (full log: %s)", at,
          at < nw ? js(cJSON_GetArrayItem(want, at)) : "nothing",
          at < ng ? js(cJSON_GetArrayItem(got, at)) : "nothing", full ? full : "?");
    cJSON_free(full);
}

/* Checks expect.task, expect.steps and expect.events against the stored task. */
static int check_expectations(Run *r, const cJSON *task) {
    size_t before = g_len;
    const cJSON *w;
    cJSON_ArrayForEach(w, field(expect(r), "task")) {
        if (!json_eq(w, field(task, w->string)))
            failf("task.%s: expected %s, got %s", w->string, js(w), js(field(task, w->string)));
    }
    const cJSON *want_step;
    cJSON_ArrayForEach(want_step, field(expect(r), "steps")) {
        const cJSON *step = NULL, *s;
        cJSON_ArrayForEach(s, field(task, "steps")) {
            const char *nm = field_str(s, "name");
            if (nm && strcmp(nm, want_step->string) == 0) step = s;
        }
        if (step == NULL) {
            failf("step %s is not in the task", want_step->string);
            continue;
        }
        cJSON_ArrayForEach(w, want_step) {
            const cJSON *actual = field(step, w->string);
            int ok = strcmp(w->string, "error") == 0 ? (actual != NULL && json_subset(w, actual))
                                                     : json_eq(w, actual);
            if (!ok)
                failf("step %s.%s: expected %s, got %s", want_step->string, w->string, js(w),
                      js(actual));
        }
    }
    const cJSON *want_events = field(expect(r), "events");
    if (want_events != NULL) {
        cJSON *got = read_events(r);
        if (got == NULL) return -1;
        check_events(want_events, got);
        cJSON_Delete(got);
    }
    return g_len == before ? 0 : -1;
}

static cJSON *create_request(const Run *r) {
    const cJSON *tpl = field(r->v, "template");
    cJSON *req = cJSON_CreateObject();
    cJSON_AddItemToObject(req, "namespace", cJSON_Duplicate(field(tpl, "namespace"), 1));
    cJSON_AddItemToObject(req, "name", cJSON_Duplicate(field(tpl, "name"), 1));
    cJSON_AddItemToObject(req, "version", cJSON_Duplicate(field(tpl, "version"), 1));
    const cJSON *ctx = field(r->v, "context");
    cJSON_AddItemToObject(req, "context", ctx ? cJSON_Duplicate(ctx, 1) : cJSON_CreateObject());
    if (field(r->v, "priority")) cJSON_AddItemToObject(req, "priority", cJSON_Duplicate(field(r->v, "priority"), 1));
    const cJSON *idem = field(r->v, "idempotency");
    if (idem) cJSON_AddItemToObject(req, "idempotency_key", cJSON_Duplicate(field(idem, "key"), 1));
    /* Scheduling vectors: more create_task fields (run_at, delay_ms, timeout_s). */
    const cJSON *extra = field(r->v, "create");
    if (cJSON_IsObject(extra)) {
        const cJSON *x;
        cJSON_ArrayForEach(x, extra) {
            cJSON_DeleteItemFromObject(req, x->string);
            cJSON_AddItemToObject(req, x->string, cJSON_Duplicate(x, 1));
        }
    }
    return req;
}

static cJSON *name_filter(const Run *r) {
    const cJSON *tpl = field(r->v, "template");
    cJSON *req = cJSON_CreateObject();
    cJSON_AddItemToObject(req, "namespace", cJSON_Duplicate(field(tpl, "namespace"), 1));
    cJSON_AddItemToObject(req, "name", cJSON_Duplicate(field(tpl, "name"), 1));
    return req;
}

/* Must return the existing task: same id, created false, and `state` when given. */
static int check_repeat(const cJSON *resp, double task_id, const cJSON *state, const char *when) {
    const cJSON *id = field(resp, "task_id");
    if (!cJSON_IsNumber(id) || id->valuedouble != task_id || !cJSON_IsFalse(field(resp, "created")) ||
        (state != NULL && !json_eq(state, field(resp, "state"))))
        return failf("create_task with the idempotency key %s returned %s, expected task_id %.0f created:false%s%s",
                     when, js(resp), task_id, state ? " state " : "", state ? js(state) : "");
    return 0;
}

static int run_body(Run *r) {
    const cJSON *tpl = field(r->v, "template");
    if (!cJSON_IsObject(tpl)) return failf("the vector has no template");
    const cJSON *s;
    cJSON_ArrayForEach(s, field(tpl, "steps")) {
        const char *h = field_str(s, "handler");
        if (h == NULL) continue;
        int seen = 0;
        const cJSON *x;
        cJSON_ArrayForEach(x, r->handlers) seen |= strcmp(x->valuestring, h) == 0;
        if (!seen) cJSON_AddItemToArray(r->handlers, cJSON_CreateString(h));
    }

    /* Template. */
    cJSON *reg = cJSON_CreateObject();
    cJSON_AddItemToObject(reg, "template", cJSON_Duplicate(tpl, 1));
    const cJSON *reg_error = field(expect(r), "register_error");
    if (reg_error != NULL) {
        int rc = api_err(r->h, "register_template", reg, reg_error);
        if (rc == 0) rc = api_err(r->h, "validate_template", reg, reg_error);
        cJSON_Delete(reg);
        if (rc != 0) return -1;
        cJSON *q = name_filter(r);
        cJSON *nf = cJSON_CreateString("not_found");
        rc = api_err(r->h, "get_template", q, nf);
        cJSON_Delete(nf);
        cJSON_Delete(q);
        return rc;
    }
    cJSON *out = NULL;
    int rc = api_ok(r->h, "register_template", reg, &out);
    cJSON_Delete(reg);
    cJSON_Delete(out);
    if (rc != 0) return -1;
    const char *via = field_str(r->v, "via");
    if (via != NULL && strcmp(via, "worker_session") == 0) {
        cJSON *open = cJSON_CreateObject();
        cJSON_AddItemToObject(open, "handlers", cJSON_Duplicate(r->handlers, 1));
        cJSON_AddNumberToObject(open, "batch", 1);
        cJSON_AddStringToObject(open, "name", "conformance");
        rc = api_ok(r->h, "worker_open", open, &out);
        cJSON_Delete(open);
        if (rc != 0) return -1;
        snprintf(r->session, sizeof r->session, "%s", field_str(out, "worker_id"));
        cJSON_Delete(out);
    }

    /* Task. */
    cJSON *create = create_request(r);
    const cJSON *create_error = field(expect(r), "create_error");
    if (create_error != NULL) {
        rc = api_err(r->h, "create_task", create, create_error);
        cJSON_Delete(create);
        if (rc != 0) return -1;
        cJSON *q = name_filter(r);
        rc = api_ok(r->h, "list_tasks", q, &out);
        cJSON_Delete(q);
        if (rc != 0) return -1;
        if (!cJSON_IsArray(field(out, "tasks")) || cJSON_GetArraySize(field(out, "tasks")) != 0)
            rc = failf("a rejected create_task left tasks behind: %s", js(out));
        cJSON_Delete(out);
        if (rc != 0) return -1;
        q = cJSON_CreateObject();
        cJSON_AddNumberToObject(q, "limit", 1000);
        rc = api_ok(r->h, "events", q, &out);
        cJSON_Delete(q);
        if (rc != 0) return -1;
        if (!cJSON_IsArray(field(out, "events")) || cJSON_GetArraySize(field(out, "events")) != 0)
            rc = failf("a rejected create_task left events behind: %s", js(out));
        cJSON_Delete(out);
        return rc;
    }
    rc = api_ok(r->h, "create_task", create, &out);
    if (rc == 0) {
        const cJSON *id = field(out, "task_id");
        if (!cJSON_IsTrue(field(out, "created")) || !cJSON_IsNumber(id))
            rc = failf("create_task did not create a task: %s", js(out));
        else
            r->task_id = id->valuedouble;
    }
    cJSON_Delete(out);
    const cJSON *idem = field(r->v, "idempotency");
    if (rc == 0 && idem != NULL) {
        cJSON *again = cJSON_Duplicate(create, 1);
        if (field(idem, "context"))
            cJSON_ReplaceItemInObjectCaseSensitive(again, "context", cJSON_Duplicate(field(idem, "context"), 1));
        rc = api_ok(r->h, "create_task", again, &out);
        cJSON_Delete(again);
        if (rc == 0) rc = check_repeat(out, r->task_id, NULL, "repeated right away");
        cJSON_Delete(out);
    }
    if (rc != 0) {
        cJSON_Delete(create);
        return -1;
    }

    /* Drive it. */
    if (fire_when(r, "created") != 0 || drive(r) != 0) {
        cJSON_Delete(create);
        return -1;
    }
    for (int i = 0; i < r->nactions; i++)
        if (!r->fired[i]) rc = failf("action never fired: %s", js(cJSON_GetArrayItem(actions(r), i)));
    if (rc != 0) {
        cJSON_Delete(create);
        return -1;
    }

    /* Check. */
    cJSON *q = cJSON_CreateObject();
    cJSON_AddNumberToObject(q, "task_id", r->task_id);
    cJSON *view = NULL;
    rc = api_ok(r->h, "get_task", q, &view);
    cJSON_Delete(q);
    if (rc != 0) {
        cJSON_Delete(create);
        return -1;
    }
    const cJSON *task = field(view, "task");
    if (idem != NULL) {
        rc = api_ok(r->h, "create_task", create, &out);
        if (rc == 0) rc = check_repeat(out, r->task_id, field(task, "state"), "after the run");
        cJSON_Delete(out);
        if (rc == 0) {
            q = name_filter(r);
            rc = api_ok(r->h, "list_tasks", q, &out);
            cJSON_Delete(q);
            if (rc == 0 && cJSON_GetArraySize(field(out, "tasks")) != 1)
                rc = failf("expected exactly one task for the idempotency key, list_tasks shows %d",
                           cJSON_GetArraySize(field(out, "tasks")));
            cJSON_Delete(out);
        }
    }
    if (rc == 0) rc = check_expectations(r, task);
    cJSON_Delete(view);
    cJSON_Delete(create);
    return rc;
}

static void remove_dir(const char *path) {
    DIR *d = opendir(path);
    if (d != NULL) {
        struct dirent *e;
        char p[4096];
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(path);
}

/* Runs one vector on a fresh database: SQLite under `dbdir` when `pg_url` is NULL, else
 * the PostgreSQL schema `schema` of that server. */
static int run_vector(const cJSON *v, const char *dbdir, const char *pg_url, const char *schema) {
    if (mkdir(dbdir, 0700) != 0) return failf("cannot create %s", dbdir);
    cJSON *config = cJSON_CreateObject();
    char buf[4600];
    if (pg_url == NULL) {
        snprintf(buf, sizeof buf, "sqlite://%s/tasker.db", dbdir);
        cJSON_AddStringToObject(config, "database_url", buf);
    } else {
        cJSON_AddStringToObject(config, "database_url", pg_url);
        cJSON_AddStringToObject(config, "postgres_schema", schema);
        cJSON_AddNumberToObject(config, "postgres_pool_size", 4);
    }
    snprintf(buf, sizeof buf, "%s/templates", dbdir);
    cJSON_AddStringToObject(config, "templates_dir", buf);
    cJSON_AddStringToObject(config, "env", "conformance");
    cJSON_AddNumberToObject(config, "lease_ms", 30000);
    cJSON_AddNumberToObject(config, "sweep_interval_ms", 3600000);
    cJSON_AddNumberToObject(config, "claim_poll_ms", 20);
    const cJSON *extra;
    cJSON_ArrayForEach(extra, field(v, "config")) {
        cJSON_DeleteItemFromObjectCaseSensitive(config, extra->string);
        cJSON_AddItemToObject(config, extra->string, cJSON_Duplicate(extra, 1));
    }
    const cJSON *lease = field(config, "lease_ms");
    Run r;
    memset(&r, 0, sizeof r);
    r.v = v;
    r.lease_ms = cJSON_IsNumber(lease) ? lease->valuedouble : 30000;
    char *text = cJSON_PrintUnformatted(config);
    cJSON_Delete(config);
    char *err = NULL;
    int32_t st = tasker_open(text, &r.h, &err);
    cJSON_free(text);
    if (st != TASKER_OK) {
        failf("tasker_open failed (%d): %s", (int)st, err ? err : "?");
        tasker_free_string(err);
        remove_dir(dbdir);
        return -1;
    }
    r.handlers = cJSON_CreateArray();
    r.claims = cJSON_CreateObject();
    r.tokens = cJSON_CreateObject();
    r.not_before = cJSON_CreateObject();
    r.null_value = cJSON_CreateNull();
    r.nactions = cJSON_GetArraySize(field(v, "actions"));
    r.fired = calloc((size_t)r.nactions + 1, sizeof *r.fired);
    int rc = r.fired ? run_body(&r) : failf("out of memory");
    free(r.fired);
    cJSON_Delete(r.handlers);
    cJSON_Delete(r.claims);
    cJSON_Delete(r.tokens);
    cJSON_Delete(r.not_before);
    cJSON_Delete(r.null_value);
    err = NULL;
    if (tasker_close(r.h, &err) != TASKER_OK) {
        rc = failf("tasker_close failed: %s", err ? err : "?");
        tasker_free_string(err);
    }
    remove_dir(dbdir);
    return rc;
}

/* ------------------------------------------------------------------------------------
 * main */

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap);
            if (nb == NULL) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0) break;
    }
    fclose(f);
    buf[len] = '\0';
    return buf;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(void) {
    const char *dir = getenv("TASKER_CONFORMANCE_DIR");
    if (dir == NULL || *dir == '\0') dir = "tests/conformance";
    const char *tmp = getenv("TASKER_TEST_TMP");
    char own[512] = "";
    if (tmp == NULL || *tmp == '\0') {
        const char *base = getenv("TMPDIR");
        snprintf(own, sizeof own, "%s/tasker-conformance-XXXXXX", base && *base ? base : "/tmp");
        if (mkdtemp(own) == NULL) {
            fprintf(stderr, "conformance(c): cannot create a temporary directory\n");
            return 2;
        }
        tmp = own;
    }

    DIR *d = opendir(dir);
    if (d == NULL) {
        fprintf(stderr, "conformance(c): cannot read %s\n", dir);
        if (own[0]) rmdir(own);
        return 2;
    }
    char **names = NULL;
    size_t count = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (n <= 5 || strcmp(e->d_name + n - 5, ".json") != 0) continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof *names);
            if (nn == NULL) break;
            names = nn;
        }
        names[count] = strdup(e->d_name);
        if (names[count] != NULL) count++;
    }
    closedir(d);
    if (count > 0) qsort(names, count, sizeof *names, cmp_names);

    /* SQLite always; PostgreSQL too when TASKER_TEST_DATABASE_URL names a server. */
    const char *pg_url = getenv("TASKER_TEST_DATABASE_URL");
    if (pg_url != NULL && *pg_url == '\0') pg_url = NULL;
    const char *prefix = getenv("TASKER_C_SCHEMA_PREFIX");
    if (prefix == NULL || *prefix == '\0') prefix = "c_conf_";
    const char *ledger = getenv("TASKER_CONFORMANCE_LEDGER");
    int passed = 0, failed = 0;
    for (int on_pg = 0; on_pg < (pg_url ? 2 : 1); on_pg++) {
        const char *store = on_pg ? "postgres" : "sqlite";
        for (size_t i = 0; i < count; i++) {
            char stem[256];
            snprintf(stem, sizeof stem, "%.*s", (int)(strlen(names[i]) - 5), names[i]);
            char path[4096], dbdir[4096], schema[128];
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            snprintf(dbdir, sizeof dbdir, "%s/conf-%s-%03zu-%s", tmp, store, i, stem);
            snprintf(schema, sizeof schema, "%s%ld_%zu", prefix, (long)getpid(), i);
            msg_reset();
            char *text = read_file(path);
            cJSON *v = text ? cJSON_Parse(text) : NULL;
            free(text);
            int rc;
            if (v == NULL) {
                rc = failf("cannot read or parse %s", path);
            } else {
                rc = run_vector(v, dbdir, on_pg ? pg_url : NULL, schema);
            }
            if (rc == 0) {
                passed++;
                printf("ok   %s %s\n", store, stem);
            } else {
                failed++;
                const char *name = field_str(v, "name");
                printf("FAIL %s %s: %s: %s\n", store, stem, name ? name : stem, g_msg);
            }
            /* One line per vector run for scripts/conformance-coverage. */
            FILE *lf = ledger && *ledger ? fopen(ledger, "a") : NULL;
            if (lf != NULL) {
                fprintf(lf, "c\t%s\t%s\t%s\n", store, stem, rc == 0 ? "ok" : "FAIL");
                fclose(lf);
            }
            fflush(stdout);
            cJSON_Delete(v);
        }
    }
    for (size_t i = 0; i < count; i++) free(names[i]);
    free(names);
    if (own[0]) remove_dir(own);
    printf("conformance(c): %d passed, %d failed\n", passed, failed);
    if (count < MIN_VECTORS) {
        printf("conformance(c): only %zu vectors found in %s (expected at least %d)\n", count, dir,
               MIN_VECTORS);
        return 1;
    }
    return failed == 0 ? 0 : 1;
}
