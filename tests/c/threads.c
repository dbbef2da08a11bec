/*
 * threads.c: handles are thread-safe. Four threads share one handle, each creating
 * tasks and claiming/completing steps concurrently; every step must be completed
 * exactly once. Meanwhile a second handle on the same database is closed while
 * another thread keeps calling it: every call must return TASKER_OK or
 * TASKER_ERR_CLOSED, never crash.
 *
 * Environment: TASKER_TEST_TMP names a directory for the database (default: a fresh
 * mkdtemp directory under /tmp). Exits 0 on success, 1 with a message on failure.
 */
#define _DEFAULT_SOURCE
#define PROG "threads"
#include <pthread.h>
#include <stdatomic.h>

#include "support.h"

#define THREADS 4
#define TASKS_PER_THREAD 10
#define TOTAL (THREADS * TASKS_PER_THREAD)

static uint64_t H, H2;
static atomic_int COMPLETED, CLAIMED, H2_OK, H2_CLOSED;
static atomic_bool H2_STOP;

static void *worker(void *arg) {
    int id = (int)(intptr_t)arg;
    char req[256];
    for (int i = 0; i < TASKS_PER_THREAD; i++) {
        snprintf(req, sizeof req,
                 "{\"namespace\":\"c_tests\",\"name\":\"threads\",\"version\":\"1.0.0\","
                 "\"context\":{\"thread\":%d,\"i\":%d},\"idempotency_key\":\"t%d-%d\"}",
                 id, i, id, i);
        cJSON_Delete(call(H, "create_task", req));
    }
    snprintf(req, sizeof req,
             "{\"handlers\":[\"square\"],\"limit\":3,\"wait_ms\":50,\"worker_id\":\"thread-%d\"}", id);
    double deadline = now_ms() + 30000;
    while (atomic_load(&COMPLETED) < TOTAL) {
        if (now_ms() > deadline) die("thread %d: steps not done within 30 s", id);
        cJSON *batch = call(H, "claim", req);
        cJSON *step;
        cJSON_ArrayForEach(step, cJSON_GetObjectItemCaseSensitive(batch, "steps")) {
            atomic_fetch_add(&CLAIMED, 1);
            cJSON *ctx = cJSON_GetObjectItemCaseSensitive(step, "context");
            int t = cJSON_GetObjectItemCaseSensitive(ctx, "thread")->valueint;
            int n = cJSON_GetObjectItemCaseSensitive(ctx, "i")->valueint;
            char done[256];
            snprintf(done, sizeof done,
                     "{\"step_id\":%.0f,\"claim_token\":\"%s\",\"result\":{\"v\":%d}}",
                     cJSON_GetObjectItemCaseSensitive(step, "step_id")->valuedouble,
                     cJSON_GetObjectItemCaseSensitive(step, "claim_token")->valuestring,
                     t * 100 + n * n);
            cJSON_Delete(call(H, "complete_step", done));
            atomic_fetch_add(&COMPLETED, 1);
        }
        cJSON_Delete(batch);
    }
    return NULL;
}

/* Calls the second handle until told to stop; it gets closed underneath. */
static void *pinger(void *arg) {
    (void)arg;
    while (!atomic_load(&H2_STOP)) {
        char *resp = NULL, *err = NULL;
        int32_t st = tasker_call(H2, "stats", NULL, &resp, &err);
        if (st == TASKER_OK) {
            if (err) die("out_error written on success");
            tasker_free_string(resp);
            atomic_fetch_add(&H2_OK, 1);
        } else if (st == TASKER_ERR_CLOSED) {
            if (resp) die("out_response written on failure");
            if (!err || !strstr(err, "\"closed\"")) die("closed: bad error %s", err ? err : "?");
            tasker_free_string(err);
            atomic_fetch_add(&H2_CLOSED, 1);
        } else {
            die("call on a closing handle -> %d: %s", st, err ? err : "?");
        }
    }
    return NULL;
}

int main(void) {
    char url[600];
    fresh_db_url(url, sizeof url);
    H = open_handle(url);
    H2 = open_handle(url);

    cJSON_Delete(call(H, "register_template",
                      "{\"template\":{\"namespace\":\"c_tests\",\"name\":\"threads\","
                      "\"version\":\"1.0.0\",\"steps\":[{\"name\":\"sq\",\"handler\":\"square\"}]}}"));

    pthread_t workers[THREADS], ping;
    if (pthread_create(&ping, NULL, pinger, NULL) != 0) die("pthread_create");
    for (int i = 0; i < THREADS; i++) {
        if (pthread_create(&workers[i], NULL, worker, (void *)(intptr_t)i) != 0) die("pthread_create");
    }
    /* close the second handle while the pinger is using it */
    sleep_ms(30);
    close_handle(H2);
    sleep_ms(30);
    atomic_store(&H2_STOP, 1);
    pthread_join(ping, NULL);
    for (int i = 0; i < THREADS; i++) pthread_join(workers[i], NULL);

    if (atomic_load(&COMPLETED) != TOTAL || atomic_load(&CLAIMED) != TOTAL) {
        die("completed %d, claimed %d, want %d each", atomic_load(&COMPLETED), atomic_load(&CLAIMED),
            TOTAL);
    }
    if (atomic_load(&H2_CLOSED) == 0) die("the second handle never reported closed");

    cJSON *stats = call(H, "stats", NULL);
    cJSON *tasks = cJSON_GetObjectItemCaseSensitive(stats, "tasks");
    cJSON *complete = cJSON_GetObjectItemCaseSensitive(tasks, "complete");
    if (!cJSON_IsNumber(complete) || complete->valueint != TOTAL) {
        char *s = cJSON_PrintUnformatted(stats);
        die("stats: %s, want %d complete tasks", s, TOTAL);
    }
    cJSON_Delete(stats);

    /* every result is the value computed for its own task */
    cJSON *list = call(H, "list_tasks", "{\"limit\":1000}");
    int checked = 0;
    cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(list, "tasks")) {
        char req[64];
        snprintf(req, sizeof req, "{\"task_id\":%.0f}",
                 cJSON_GetObjectItemCaseSensitive(t, "id")->valuedouble);
        cJSON *view = call(H, "get_task", req);
        cJSON *task = cJSON_GetObjectItemCaseSensitive(view, "task");
        cJSON *ctx = cJSON_GetObjectItemCaseSensitive(task, "context");
        int th = cJSON_GetObjectItemCaseSensitive(ctx, "thread")->valueint;
        int n = cJSON_GetObjectItemCaseSensitive(ctx, "i")->valueint;
        cJSON *step = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(task, "steps"), 0);
        cJSON *v = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(step, "result"), "v");
        if (!cJSON_IsNumber(v) || v->valueint != th * 100 + n * n) die("task %d/%d: wrong result", th, n);
        if (cJSON_GetObjectItemCaseSensitive(step, "attempts")->valueint != 1) die("step ran twice");
        cJSON_Delete(view);
        checked++;
    }
    cJSON_Delete(list);
    if (checked != TOTAL) die("listed %d tasks, want %d", checked, TOTAL);

    close_handle(H);
    printf("%s: ok (%d threads, %d steps completed once each; closed handle: %d ok then %d closed)\n",
           PROG, THREADS, TOTAL, atomic_load(&H2_OK), atomic_load(&H2_CLOSED));
    return 0;
}
