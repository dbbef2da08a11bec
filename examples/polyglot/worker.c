/*
 * The C worker of the polyglot invoice workflow (docs/polyglot.md): signs each priced
 * invoice with a 64-bit FNV-1a hash. It drives the engine's worker session directly
 * (docs/workers.md): worker_next claims steps, the handler runs inline, worker_report
 * records the results and claims the next batch in one round trip. Leases, retries and
 * timeouts are the engine's.
 *
 * Build: cc -std=c11 -Wall -Wextra -Werror worker.c $(pkg-config --cflags --libs ...)
 * or, from a checkout: cc -I include worker.c -L target/debug -ltasker -lcjson.
 * Run: TASKER_DATABASE_URL=sqlite://... ./worker (stops on SIGTERM or SIGINT).
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tasker.h"

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

static uint64_t g_handle;

/* Runs one operation; returns its parsed response, or NULL after printing the error. */
static cJSON *call(const char *op, cJSON *request) {
    char *text = cJSON_PrintUnformatted(request);
    char *out = NULL, *err = NULL;
    int32_t rc = tasker_call(g_handle, op, text, &out, &err);
    free(text);
    if (rc != TASKER_OK) {
        fprintf(stderr, "c worker: %s failed: %s\n", op, err ? err : "(no message)");
        tasker_free_string(err);
        return NULL;
    }
    cJSON *response = cJSON_Parse(out);
    tasker_free_string(out);
    return response;
}

static uint64_t fnv1a(uint64_t h, const char *s) {
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

/* The handler: the signature of the priced invoice, as a JSON integer (all 64 bits). */
static cJSON *sign_invoice(const cJSON *step) {
    const cJSON *price = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(step, "results"), "price");
    uint64_t h = 14695981039346656037ULL;
    char buf[128];
    snprintf(buf, sizeof buf, "%.0f|%.0f",
             cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(price, "order_id")),
             cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(price, "total_cents")));
    h = fnv1a(h, buf);
    const cJSON *line;
    cJSON_ArrayForEach(line, cJSON_GetObjectItemCaseSensitive(price, "lines")) {
        const char *sku = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(line, "sku"));
        snprintf(buf, sizeof buf, "|%s:%.0f", sku ? sku : "",
                 cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(line, "cents")));
        h = fnv1a(h, buf);
    }
    cJSON *result = cJSON_CreateObject();
    cJSON_AddStringToObject(result, "language", "c");
    /* cJSON keeps numbers as doubles; a raw item keeps every digit of the integer. */
    snprintf(buf, sizeof buf, "%" PRIu64, h);
    cJSON_AddItemToObject(result, "signature", cJSON_CreateRaw(buf));
    return result;
}

int main(void) {
    const char *url = getenv("TASKER_DATABASE_URL");
    if (url == NULL || *url == '\0') {
        fprintf(stderr, "c worker: set TASKER_DATABASE_URL\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    cJSON *config = cJSON_CreateObject();
    cJSON_AddStringToObject(config, "database_url", url);
    char *config_text = cJSON_PrintUnformatted(config);
    cJSON_Delete(config);
    char *err = NULL;
    int32_t rc = tasker_open(config_text, &g_handle, &err);
    free(config_text);
    if (rc != TASKER_OK) {
        fprintf(stderr, "c worker: cannot open %s: %s\n", url, err ? err : "");
        tasker_free_string(err);
        return 1;
    }

    char name[64];
    snprintf(name, sizeof name, "c-%ld", (long)getpid());
    cJSON *req = cJSON_CreateObject();
    cJSON_AddItemToObject(req, "handlers", cJSON_CreateStringArray((const char *[]){"c_sign_invoice"}, 1));
    cJSON_AddStringToObject(req, "name", name);
    cJSON_AddNumberToObject(req, "concurrency", 16);
    cJSON *opened = call("worker_open", req);
    cJSON_Delete(req);
    if (opened == NULL) return 1;
    char *worker_id = strdup(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(opened, "worker_id")));
    cJSON_Delete(opened);

    int status = 0;
    cJSON *page = NULL;
    while (!g_stop) {
        if (page == NULL) { /* nothing in hand: wait for work (a signal ends it within 500 ms) */
            req = cJSON_CreateObject();
            cJSON_AddStringToObject(req, "worker_id", worker_id);
            cJSON_AddNumberToObject(req, "wait_ms", 500);
            page = call("worker_next", req);
            cJSON_Delete(req);
            if (page == NULL) { status = 1; break; }
        }
        const cJSON *steps = cJSON_GetObjectItemCaseSensitive(page, "steps");
        if (cJSON_GetArraySize(steps) == 0) {
            cJSON_Delete(page);
            page = NULL;
            continue;
        }
        cJSON *outcomes = cJSON_CreateArray();
        const cJSON *step;
        cJSON_ArrayForEach(step, steps) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddItemToObject(o, "step_id", cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(step, "step_id"), 1));
            cJSON_AddItemToObject(o, "result", sign_invoice(step));
            cJSON_AddItemToArray(outcomes, o);
        }
        cJSON_Delete(page);
        req = cJSON_CreateObject();
        cJSON_AddStringToObject(req, "worker_id", worker_id);
        cJSON_AddItemToObject(req, "outcomes", outcomes);
        cJSON_AddItemToObject(req, "next", cJSON_CreateObject());
        page = call("worker_report", req); /* the results, and the next batch if any is ready */
        cJSON_Delete(req);
        if (page == NULL) { status = 1; break; }
    }
    /* Stopping: steps claimed but not started go back unrun (their attempt not counted). */
    const cJSON *unstarted;
    const cJSON *held = cJSON_GetObjectItemCaseSensitive(page, "steps"); /* NULL when page is */
    cJSON *releases = cJSON_CreateArray();
    cJSON_ArrayForEach(unstarted, held) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "step_id", cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(unstarted, "step_id"), 1));
        cJSON_AddBoolToObject(o, "release", 1);
        cJSON_AddItemToArray(releases, o);
    }
    cJSON_Delete(page);
    if (cJSON_GetArraySize(releases) > 0) {
        req = cJSON_CreateObject();
        cJSON_AddStringToObject(req, "worker_id", worker_id);
        cJSON_AddItemToObject(req, "outcomes", releases);
        cJSON_Delete(call("worker_report", req));
        cJSON_Delete(req);
    } else {
        cJSON_Delete(releases);
    }

    req = cJSON_CreateObject();
    cJSON_AddStringToObject(req, "worker_id", worker_id);
    cJSON_AddNumberToObject(req, "grace_ms", 5000);
    cJSON_Delete(call("worker_close", req));
    cJSON_Delete(req);
    free(worker_id);
    tasker_close(g_handle, NULL);
    return status;
}
