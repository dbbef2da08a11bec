/*
 * The C program of the polyglot tests (tests/polyglot/README.md), on the C ABI alone.
 *
 *   worker                 serves the handler POLY_HANDLER (default "c") through a worker
 *                          session and does what each step's config "do" says (emit,
 *                          echo, sleep, flaky, permanent), logging to POLY_LOG; works
 *                          until SIGTERM
 *   worker call OP JSON    runs one operation and prints its response (exit 0) or its
 *                          error document (exit 1)
 *
 * Both open the database described by the settings JSON in POLY_SETTINGS.
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tasker.h"

static volatile sig_atomic_t g_stop = 0;
static void on_term(int sig) {
    (void)sig;
    g_stop = 1;
}

static uint64_t g_h;

static cJSON *call(const char *op, cJSON *req) {
    char *text = cJSON_PrintUnformatted(req);
    char *out = NULL, *err = NULL;
    int32_t rc = tasker_call(g_h, op, text, &out, &err);
    free(text);
    if (rc != TASKER_OK) {
        fprintf(stderr, "c worker: %s: %s\n", op, err ? err : "?");
        tasker_free_string(err);
        return NULL;
    }
    cJSON *r = cJSON_Parse(out);
    tasker_free_string(out);
    return r;
}

static const cJSON *get(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

static void log_event(const cJSON *step, const char *event) {
    FILE *f = fopen(getenv("POLY_LOG"), "a");
    if (f == NULL) return;
    fprintf(f, "{\"lang\": \"c\", \"pid\": %ld, \"task_id\": %.0f, \"step\": \"%s\", \"attempt\": %.0f, \"event\": \"%s\"}\n",
            (long)getpid(), cJSON_GetNumberValue(get(step, "task_id")),
            cJSON_GetStringValue(get(step, "step_name")), cJSON_GetNumberValue(get(step, "attempt")), event);
    fclose(f);
}

/* One step's outcome object ({step_id, result} or {step_id, error}). */
static cJSON *run_step(const cJSON *step) {
    const cJSON *cfg = get(step, "config");
    const char *action = cJSON_GetStringValue(get(cfg, "do"));
    if (action == NULL) action = "emit";
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToObject(o, "step_id", cJSON_Duplicate(get(step, "step_id"), 1));
    log_event(step, "start");
    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "language", "c");
    const char *failure = NULL;
    int retryable = 1;
    if (strcmp(action, "emit") == 0) {
        const cJSON *v = get(cfg, "value");
        cJSON_AddItemToObject(result, "value", v ? cJSON_Duplicate(v, 1) : cJSON_CreateNull());
    } else if (strcmp(action, "echo") == 0) {
        cJSON_AddItemToObject(result, "parents", cJSON_Duplicate(get(step, "results"), 1));
    } else if (strcmp(action, "sleep") == 0) {
        double ms = cJSON_GetNumberValue(get(cfg, "ms"));
        struct timespec ts = {(time_t)(ms / 1000), (long)((long long)ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        cJSON_AddNumberToObject(result, "pid", (double)getpid());
    } else if (strcmp(action, "flaky") == 0) {
        if (cJSON_GetNumberValue(get(step, "attempt")) < cJSON_GetNumberValue(get(cfg, "succeed_on")))
            failure = "flaky attempt fails";
        else
            cJSON_AddItemToObject(result, "attempt", cJSON_Duplicate(get(step, "attempt"), 1));
    } else if (strcmp(action, "permanent") == 0) {
        failure = cJSON_GetStringValue(get(cfg, "message"));
        retryable = 0;
    } else {
        failure = "unknown action";
        retryable = 0;
    }
    if (failure != NULL) {
        log_event(step, "fail");
        cJSON_Delete(result);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "message", failure);
        cJSON_AddStringToObject(e, "kind", retryable ? "EAGAIN" : "PermanentError");
        cJSON_AddBoolToObject(e, "retryable", retryable);
        cJSON_AddNumberToObject(e, "retry_after_ms", 10);
        cJSON_AddItemToObject(o, "error", e);
    } else {
        log_event(step, "end");
        cJSON_AddItemToObject(o, "result", result);
    }
    return o;
}

static int call_mode(const char *op, const char *request) {
    char *out = NULL, *err = NULL;
    int32_t rc = tasker_call(g_h, op, request, &out, &err);
    printf("%s\n", rc == TASKER_OK ? out : err);
    tasker_free_string(out);
    tasker_free_string(err);
    return rc == TASKER_OK ? 0 : 1;
}

static int worker_mode(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    const char *handler = getenv("POLY_HANDLER");
    char name[64];
    snprintf(name, sizeof name, "c-%ld", (long)getpid());
    cJSON *req = cJSON_CreateObject();
    cJSON_AddItemToObject(req, "handlers", cJSON_CreateStringArray((const char *[]){handler ? handler : "c"}, 1));
    cJSON_AddStringToObject(req, "name", name);
    const char *lease = getenv("POLY_LEASE_MS");
    if (lease != NULL && *lease) cJSON_AddNumberToObject(req, "lease_ms", atof(lease));
    cJSON *opened = call("worker_open", req);
    cJSON_Delete(req);
    if (opened == NULL) return 1;
    char *id = strdup(cJSON_GetStringValue(get(opened, "worker_id")));
    cJSON_Delete(opened);
    int status = 0;
    while (!g_stop) {
        req = cJSON_CreateObject();
        cJSON_AddStringToObject(req, "worker_id", id);
        cJSON_AddNumberToObject(req, "max", 1);
        cJSON_AddNumberToObject(req, "wait_ms", 200);
        cJSON *page = call("worker_next", req);
        cJSON_Delete(req);
        if (page == NULL) {
            status = 1;
            break;
        }
        cJSON *outcomes = cJSON_CreateArray();
        const cJSON *step;
        cJSON_ArrayForEach(step, get(page, "steps")) cJSON_AddItemToArray(outcomes, run_step(step));
        cJSON_Delete(page);
        if (cJSON_GetArraySize(outcomes) == 0) {
            cJSON_Delete(outcomes);
            continue;
        }
        req = cJSON_CreateObject();
        cJSON_AddStringToObject(req, "worker_id", id);
        cJSON_AddItemToObject(req, "outcomes", outcomes);
        cJSON *reported = call("worker_report", req);
        cJSON_Delete(req);
        if (reported == NULL) {
            status = 1;
            break;
        }
        cJSON_Delete(reported);
    }
    req = cJSON_CreateObject();
    cJSON_AddStringToObject(req, "worker_id", id);
    cJSON_Delete(call("worker_close", req));
    cJSON_Delete(req);
    free(id);
    return status;
}

int main(int argc, char **argv) {
    const char *settings = getenv("POLY_SETTINGS");
    char *err = NULL;
    if (settings == NULL || tasker_open(settings, &g_h, &err) != TASKER_OK) {
        fprintf(stderr, "c worker: cannot open POLY_SETTINGS: %s\n", err ? err : "unset");
        tasker_free_string(err);
        return 2;
    }
    int rc;
    if (argc == 4 && strcmp(argv[1], "call") == 0)
        rc = call_mode(argv[2], argv[3]);
    else
        rc = worker_mode();
    tasker_close(g_h, NULL);
    return rc;
}
