/*
 * worker.c: a C worker on the engine's worker session operations (docs/workers.md).
 * One thread runs the whole loop: worker_next claims a batch, the C handlers run inline,
 * worker_report records every outcome and claims the next batch in the same round trip.
 * Leases, retries and timeouts are the engine's: there is no heartbeat here.
 *
 * With no arguments it is a test (run by scripts/c-tests): a chain with a retried step
 * runs to completion; a cancel and a timeout reach a held step through the `stop` list;
 * a late result for a stopped step is refused as lost; closing hands back unreported
 * steps without spending an attempt.
 *
 * `worker URL TASKS` is the benchmark (scripts/bench): TASKS single-step tasks with
 * no-op handlers drained in batches of 256; prints `steps_per_s_c_worker_sqlite N`.
 */
#define _DEFAULT_SOURCE
#define PROG "worker"
#include <stdbool.h>

#include "support.h"

#define BATCH 256

static uint64_t H;

/* Opens a session for `handlers` (a JSON array text); returns its worker_id (caller frees). */
static char *open_session(const char *handlers, const char *extra) {
    char req[512];
    snprintf(req, sizeof req, "{\"handlers\": %s, \"name\": \"c-worker\"%s%s}", handlers,
             extra ? ", " : "", extra ? extra : "");
    cJSON *r = call(H, "worker_open", req);
    char *id = strdup(str(r, "worker_id"));
    cJSON_Delete(r);
    return id;
}

static cJSON *next(const char *w, int max, int wait_ms) {
    char req[256];
    snprintf(req, sizeof req, "{\"worker_id\": \"%s\", \"max\": %d, \"wait_ms\": %d}", w, max,
             wait_ms);
    return call(H, "worker_next", req);
}

/* ---- handlers: each returns a cJSON result, or NULL with *error set to a document ---- */

static cJSON *run_handler(const cJSON *step, cJSON **error) {
    const char *handler = str(step, "handler");
    *error = NULL;
    if (strcmp(handler, "first") == 0) {
        cJSON *r = cJSON_CreateObject();
        cJSON_AddNumberToObject(r, "n", 1);
        return r;
    }
    if (strcmp(handler, "flaky") == 0 && num(step, "attempt") < 2) {
        *error = cJSON_CreateObject();
        cJSON_AddStringToObject(*error, "message", "upstream busy");
        cJSON_AddStringToObject(*error, "kind", "EBUSY");
        cJSON_AddNumberToObject(*error, "retry_after_ms", 1);
        return NULL;
    }
    if (strcmp(handler, "flaky") == 0 || strcmp(handler, "last") == 0) {
        double n = 0;
        const cJSON *parent = NULL;
        cJSON_ArrayForEach(parent, get(step, "results")) { n += num(parent, "n"); }
        cJSON *r = cJSON_CreateObject();
        cJSON_AddNumberToObject(r, "n", n + 1);
        return r;
    }
    return cJSON_CreateNull(); /* noop */
}

/*
 * Runs the session until worker_next says it is idle. Each report carries every outcome
 * of the batch and asks for the next batch. Returns the number of steps run.
 */
static long drain(const char *w) {
    long ran = 0;
    cJSON *page = next(w, BATCH, 100);
    for (;;) {
        cJSON *steps = get(page, "steps");
        int n = cJSON_GetArraySize(steps);
        if (n == 0) {
            bool idle = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(page, "idle"));
            cJSON_Delete(page);
            if (idle) return ran;
            page = next(w, BATCH, 100);
            continue;
        }
        cJSON *req = cJSON_CreateObject();
        cJSON_AddStringToObject(req, "worker_id", w);
        cJSON *outcomes = cJSON_AddArrayToObject(req, "outcomes");
        const cJSON *step = NULL;
        cJSON_ArrayForEach(step, steps) {
            cJSON *error = NULL;
            cJSON *result = run_handler(step, &error);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddNumberToObject(o, "step_id", num(step, "step_id"));
            if (error) cJSON_AddItemToObject(o, "error", error);
            else cJSON_AddItemToObject(o, "result", result);
            cJSON_AddItemToArray(outcomes, o);
            ran++;
        }
        cJSON *nx = cJSON_AddObjectToObject(req, "next");
        cJSON_AddNumberToObject(nx, "max", BATCH);
        cJSON_Delete(page);
        page = call_json(H, "worker_report", req);
    }
}

static void register_template(const char *json) {
    char req[2048];
    snprintf(req, sizeof req, "{\"template\": %s}", json);
    cJSON_Delete(call(H, "register_template", req));
}

static long create(const char *name) {
    char req[256];
    snprintf(req, sizeof req, "{\"namespace\": \"c\", \"name\": \"%s\", \"context\": {}}", name);
    cJSON *r = call(H, "create_task", req);
    long id = (long)num(r, "task_id");
    cJSON_Delete(r);
    return id;
}

static cJSON *task(long id) {
    char req[64];
    snprintf(req, sizeof req, "{\"task_id\": %ld}", id);
    cJSON *r = call(H, "get_task", req);
    cJSON *t = cJSON_DetachItemFromObjectCaseSensitive(r, "task");
    cJSON_Delete(r);
    return t;
}

/* Waits in worker_next (max 0: stop signals only) for the first stop; returns it. */
static cJSON *wait_for_stop(const char *w, double *elapsed_ms) {
    double start = now_ms();
    while (now_ms() - start < 10000) {
        cJSON *page = next(w, 0, 500);
        cJSON *stop = get(page, "stop");
        if (cJSON_GetArraySize(stop) > 0) {
            cJSON *first = cJSON_Duplicate(cJSON_GetArrayItem(stop, 0), 1);
            cJSON_Delete(page);
            *elapsed_ms = now_ms() - start;
            return first;
        }
        cJSON_Delete(page);
    }
    die("no stop signal within 10 s");
    return NULL;
}

static const char *report_one(const char *w, long step_id, char *outcome, size_t len) {
    char req[256];
    snprintf(req, sizeof req, "{\"worker_id\": \"%s\", \"outcomes\": [{\"step_id\": %ld, \"result\": 1}]}",
             w, step_id);
    cJSON *r = call(H, "worker_report", req);
    snprintf(outcome, len, "%s", str(cJSON_GetArrayItem(get(r, "results"), 0), "outcome"));
    cJSON_Delete(r);
    return outcome;
}

static void test_chain(void) {
    register_template("{\"namespace\": \"c\", \"name\": \"chain\", \"version\": \"1\","
                      " \"defaults\": {\"retry\": {\"max_attempts\": 3, \"backoff\": \"fixed\","
                      " \"base_ms\": 1, \"max_ms\": 1, \"jitter\": 0}},"
                      " \"steps\": [{\"name\": \"a\", \"handler\": \"first\"},"
                      " {\"name\": \"b\", \"handler\": \"flaky\", \"depends_on\": [\"a\"]},"
                      " {\"name\": \"c\", \"handler\": \"last\", \"depends_on\": [\"b\"]}]}");
    long ids[3];
    for (int i = 0; i < 3; i++) ids[i] = create("chain");
    char *w = open_session("[\"first\", \"flaky\", \"last\"]", "\"concurrency\": 1, \"batch\": 256");
    long ran = drain(w);
    CHECK(ran == 12, "chain: ran %ld handlers, expected 12 (3 tasks x 3 steps + 3 retries)", ran);
    for (int i = 0; i < 3; i++) {
        cJSON *t = task(ids[i]);
        CHECK(strcmp(str(t, "state"), "complete") == 0, "chain: task %ld is %s", ids[i],
              str(t, "state"));
        cJSON *last = cJSON_GetArrayItem(get(t, "steps"), 2);
        CHECK(num(get(last, "result"), "n") == 3, "chain: last result");
        CHECK(num(cJSON_GetArrayItem(get(t, "steps"), 1), "attempts") == 2, "chain: b retried once");
        cJSON_Delete(t);
    }
    char req[128];
    snprintf(req, sizeof req, "{\"worker_id\": \"%s\"}", w);
    cJSON *c = call(H, "worker_close", req);
    CHECK(num(c, "completed") == 9 && num(c, "failed") == 3, "chain: close counts");
    cJSON_Delete(c);
    free(w);
}

static void test_cancel_and_timeout(void) {
    register_template("{\"namespace\": \"c\", \"name\": \"held\", \"version\": \"1\","
                      " \"steps\": [{\"name\": \"s\", \"handler\": \"hold\", \"timeout_s\": 1}]}");
    char *w = open_session("[\"hold\"]", "\"batch\": 2, \"lease_ms\": 300");
    long cancelled = create("held");
    long timed = create("held");
    cJSON *page = next(w, 2, 1000);
    CHECK(cJSON_GetArraySize(get(page, "steps")) == 2, "held: two steps claimed");
    long step_of[2] = {0, 0};
    const cJSON *s = NULL;
    cJSON_ArrayForEach(s, get(page, "steps")) {
        long task_id = (long)num(s, "task_id");
        step_of[task_id == cancelled ? 0 : 1] = (long)num(s, "step_id");
    }
    cJSON_Delete(page);

    char req[128];
    snprintf(req, sizeof req, "{\"task_id\": %ld}", cancelled);
    cJSON_Delete(call(H, "cancel_task", req));
    double ms = 0;
    cJSON *stop = wait_for_stop(w, &ms);
    CHECK((long)num(stop, "step_id") == step_of[0] && strcmp(str(stop, "reason"), "cancelled") == 0,
          "cancel: stop signal for the cancelled step");
    cJSON_Delete(stop);
    printf("cancel reached the held step after %.0f ms\n", ms);

    stop = wait_for_stop(w, &ms);
    CHECK((long)num(stop, "step_id") == step_of[1] && strcmp(str(stop, "reason"), "timeout") == 0,
          "timeout: stop signal for the timed-out step");
    cJSON_Delete(stop);
    printf("timeout reached the held step %.0f ms later\n", ms);
    cJSON *t = task(timed);
    cJSON *step = cJSON_GetArrayItem(get(t, "steps"), 0);
    CHECK(strcmp(str(get(step, "error"), "kind"), "timeout") == 0, "timeout: recorded as kind timeout");
    cJSON_Delete(t);

    char outcome[32];
    CHECK(strcmp(report_one(w, step_of[0], outcome, sizeof outcome), "lost") == 0,
          "cancel: a late result is refused");
    CHECK(strcmp(report_one(w, step_of[1], outcome, sizeof outcome), "lost") == 0,
          "timeout: a late result is refused");

    /* Closing hands back what is held and unreported, without spending an attempt. */
    long spare = create("held");
    page = next(w, 1, 5000);
    const cJSON *claimed = cJSON_GetArrayItem(get(page, "steps"), 0);
    CHECK(claimed != NULL, "close: a step of the retried or spare task claimed");
    cJSON_Delete(page);
    snprintf(req, sizeof req, "{\"worker_id\": \"%s\", \"grace_ms\": 0}", w);
    cJSON *c = call(H, "worker_close", req);
    CHECK(num(c, "released") == 1, "close: one step released");
    cJSON_Delete(c);
    (void)spare;
    free(w);
}

static int bench(const char *url, long tasks) {
    H = open_handle(url);
    register_template("{\"namespace\": \"c\", \"name\": \"single\", \"version\": \"1\","
                      " \"steps\": [{\"name\": \"only\", \"handler\": \"noop\"}]}");
    for (long i = 0; i < tasks; i++) create("single");
    char *w = open_session("[\"noop\"]", "\"batch\": 256");
    double start = now_ms();
    long ran = drain(w);
    double secs = (now_ms() - start) / 1000.0;
    CHECK(ran == tasks, "bench: ran %ld of %ld", ran, tasks);
    printf("steps_per_s_c_worker_sqlite %.1f\n", tasks / secs);
    free(w);
    close_handle(H);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3) return bench(argv[1], atol(argv[2]));
    char url[600];
    fresh_db_url(url, sizeof url);
    H = open_handle(url);
    test_chain();
    test_cancel_and_timeout();
    close_handle(H);
    printf("worker: %d checks passed\n", CHECKS);
    return 0;
}
