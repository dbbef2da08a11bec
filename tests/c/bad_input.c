/*
 * bad_input.c: the bad requests of issue 13, as a C caller sent them. Each must fail with
 * TASKER_ERR_INVALID_ARGUMENT (or INVALID_TEMPLATE), a message naming the field, and no
 * change in the database; a claim of a handler whose template was refused keeps working;
 * a wait in flight on another thread ends with TASKER_ERR_CLOSED when its handle closes.
 *
 * Environment: TASKER_TEST_TMP names a directory for the database (default: a fresh
 * mkdtemp directory under /tmp). Exits 0 on success, 1 with a message on failure.
 */
#define _DEFAULT_SOURCE
#define PROG "bad_input"
#include <pthread.h>

#include "support.h"

static uint64_t H;

/* The call must fail with `want_st`; its message must start with `prefix` when given. */
static void refused(const char *op, const char *req, int32_t want_st, const char *prefix) {
    char *resp = NULL, *err = NULL;
    int32_t st = tasker_call(H, op, req, &resp, &err);
    CHECK(st == want_st, "%s %s: status %d, want %d (%s)", op, req, st, want_st,
          err ? err : (resp ? resp : "?"));
    CHECK(resp == NULL, "%s: a response was written on failure", op);
    cJSON *e = cJSON_Parse(err);
    CHECK(e != NULL, "%s: error is not JSON", op);
    const char *code = str(e, "code");
    CHECK(strcmp(code, "database") != 0 && strcmp(code, "internal") != 0, "%s: code %s", op,
          code);
    if (prefix) {
        CHECK(strncmp(str(e, "message"), prefix, strlen(prefix)) == 0,
              "%s %s: message `%s` does not start with `%s`", op, req, str(e, "message"),
              prefix);
    }
    cJSON_Delete(e);
    tasker_free_string(err);
}

static char *snapshot(void) {
    cJSON *stats = call(H, "stats", NULL);
    cJSON *task = call(H, "get_task", "{\"task_id\":1}");
    cJSON *snap = cJSON_CreateObject();
    cJSON_AddItemToObject(snap, "last_event_id", cJSON_DetachItemFromObject(stats, "last_event_id"));
    cJSON_AddItemToObject(snap, "task", cJSON_DetachItemFromObject(task, "task"));
    char *text = cJSON_PrintUnformatted(snap);
    cJSON_Delete(stats);
    cJSON_Delete(task);
    cJSON_Delete(snap);
    return text;
}

struct waiter {
    uint64_t h;
    const char *op, *req;
    int32_t status;
};

static void *wait_call(void *arg) {
    struct waiter *w = arg;
    char *resp = NULL, *err = NULL;
    w->status = tasker_call(w->h, w->op, w->req, &resp, &err);
    tasker_free_string(resp);
    tasker_free_string(err);
    return NULL;
}

int main(void) {
    char url[600];
    fresh_db_url(url, sizeof url);
    H = open_handle(url);
    cJSON_Delete(call(H, "register_template",
                      "{\"template\":{\"namespace\":\"t\",\"name\":\"p\",\"version\":\"1\","
                      "\"steps\":[{\"name\":\"a\",\"handler\":\"h\"}]}}"));
    cJSON_Delete(call(H, "create_task", "{\"namespace\":\"t\",\"name\":\"p\"}"));
    char *before = snapshot();

    /* a huge timeout is refused, and claims of its handler (with others) keep working */
    refused("register_template",
            "{\"template\":{\"namespace\":\"t\",\"name\":\"slow\",\"version\":\"1\","
            "\"steps\":[{\"name\":\"a\",\"handler\":\"h\",\"timeout_s\":10000000000000000}]}}",
            TASKER_ERR_INVALID_TEMPLATE, "step `a` timeout_s must be between 1 and 2592000");
    /* arrays are never read positionally */
    refused("cancel_task", "[1]", TASKER_ERR_INVALID_ARGUMENT, "request: expected a JSON object");
    refused("list_tasks", "[]", TASKER_ERR_INVALID_ARGUMENT, "request: expected a JSON object");
    refused("events", "[]", TASKER_ERR_INVALID_ARGUMENT, "request: expected a JSON object");
    /* NUL characters, the same answer as on PostgreSQL */
    refused("create_task", "{\"namespace\":\"t\",\"name\":\"p\",\"idempotency_key\":\"k\\u0000\"}",
            TASKER_ERR_INVALID_ARGUMENT, "idempotency_key: ");
    refused("claim", "{\"handlers\":[\"h\"],\"worker_id\":\"w\\u0000\"}",
            TASKER_ERR_INVALID_ARGUMENT, "worker_id: ");
    refused("list_tasks", "{\"namespace\":\"t\\u0000\"}", TASKER_ERR_INVALID_ARGUMENT,
            "namespace: ");
    /* wrong types and ranges name the field */
    refused("get_task", "{\"task_id\":\"one\"}", TASKER_ERR_INVALID_ARGUMENT,
            "task_id: expected an integer between 1 and 9007199254740991, got \"one\"");
    refused("list_tasks", "{\"limit\":\"x\"}", TASKER_ERR_INVALID_ARGUMENT, "limit: expected");
    refused("complete_steps", "{\"items\":5}", TASKER_ERR_INVALID_ARGUMENT, "items: expected");
    refused("events", "{\"since\":-1}", TASKER_ERR_INVALID_ARGUMENT, "since: expected");
    refused("claim", "{\"handlers\":[\"h\"],\"lease_ms\":0}", TASKER_ERR_INVALID_ARGUMENT,
            "lease_ms: expected");
    /* a lone surrogate, a deep value */
    refused("create_task", "{\"namespace\":\"t\",\"name\":\"p\",\"context\":\"\\ud800\"}",
            TASKER_ERR_INVALID_ARGUMENT, "context: holds an escaped lone surrogate");
    {
        char deep[400];
        int n = 0;
        n += snprintf(deep + n, sizeof deep - n, "{\"namespace\":\"t\",\"name\":\"p\",\"context\":");
        for (int i = 0; i < 100; i++) deep[n++] = '[';
        for (int i = 0; i < 100; i++) deep[n++] = ']';
        deep[n++] = '}';
        deep[n] = 0;
        refused("create_task", deep, TASKER_ERR_INVALID_ARGUMENT, "context: nested 100 levels deep");
    }
    char *after = snapshot();
    CHECK(strcmp(before, after) == 0, "a refused request changed the database:\n%s\n%s", before,
          after);
    free(before);
    free(after);
    cJSON *claimed = call(H, "claim", "{\"handlers\":[\"h\",\"other\"],\"limit\":5}");
    CHECK(cJSON_GetArraySize(get(claimed, "steps")) == 1, "the step of `h` was not claimed");
    cJSON_Delete(claimed);

    /* a wait in flight ends with closed when its handle is closed on another thread */
    const char *waits[][2] = {{"claim", "{\"handlers\":[\"nothing\"],\"wait_ms\":20000}"},
                              {"events", "{\"since\":1000000,\"wait_ms\":20000}"}};
    for (int i = 0; i < 2; i++) {
        uint64_t h = open_handle(url);
        struct waiter w = {h, waits[i][0], waits[i][1], -1};
        pthread_t th;
        double started = now_ms();
        if (pthread_create(&th, NULL, wait_call, &w) != 0) die("pthread_create");
        sleep_ms(300);
        close_handle(h);
        pthread_join(th, NULL);
        CHECK(w.status == TASKER_ERR_CLOSED, "%s: status %d after close, want closed", w.op,
              w.status);
        CHECK(now_ms() - started < 15000, "%s waited out its wait_ms", w.op);
    }
    close_handle(H);
    printf("bad_input: ok (%d checks)\n", CHECKS);
    return 0;
}
