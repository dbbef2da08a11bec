/*
 * misuse.c: every way a C caller can misuse libtasker must give a status code and an
 * error JSON, never a crash, never a write to an output on failure, and never a change
 * in the database.
 *
 * Covers: NULL for every pointer argument of every function; malformed JSON; invalid
 * UTF-8 in the op and in the request; an unknown operation; a request of the wrong
 * shape; calls and closes on a closed handle and on never-issued handles; a stale claim
 * token after a lease expired and the step was claimed again.
 *
 * Environment: TASKER_TEST_TMP names a directory for the database (default: a fresh
 * mkdtemp directory under /tmp). Exits 0 on success, 1 with a message on failure.
 */
#define _DEFAULT_SOURCE
#define PROG "misuse"
#include <stdbool.h>

#include "support.h"

static uint64_t H;

/* Written into out-pointers before a call that must fail; must survive the call. */
static char SENTINEL_BYTE;
#define SENTINEL (&SENTINEL_BYTE)
static const uint64_t HANDLE_SENTINEL = 0xDEADBEEFCAFEull;

/* Runs `op` with raw request text; any error is fatal. Returns the parsed response. */
static cJSON *ok_raw(uint64_t h, const char *op, const char *req) {
    char *resp = NULL, *err = SENTINEL;
    int32_t st = tasker_call(h, op, req, &resp, &err);
    if (st != TASKER_OK) die("%s %s -> status %d: %s", op, req ? req : "(null)", st, err);
    CHECK(err == SENTINEL, "%s: out_error was written on success", op);
    cJSON *out = cJSON_Parse(resp);
    if (!out) die("%s: response is not JSON: %s", op, resp);
    tasker_free_string(resp);
    return out;
}

/* Same, with a cJSON request (consumed). */
static cJSON *ok(const char *op, cJSON *req) {
    char *text = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    cJSON *out = ok_raw(H, op, text);
    cJSON_free(text);
    return out;
}

/*
 * Checks a failed call: the status, the error JSON's code, a non-empty message, and
 * (when `needle` is given) that the message mentions it. Frees the error string.
 */
static void check_error(const char *what, int32_t st, int32_t want_st, char *err,
                        const char *want_code, const char *needle) {
    CHECK(st == want_st, "%s: status %d, want %d (%s)", what, st, want_st,
          err && err != SENTINEL ? err : "no error");
    CHECK(err != NULL && err != SENTINEL, "%s: out_error was not written", what);
    cJSON *e = cJSON_Parse(err);
    CHECK(e != NULL, "%s: error is not JSON: %s", what, err);
    CHECK(cJSON_IsObject(e), "%s: error is not an object: %s", what, err);
    CHECK(strcmp(str(e, "code"), want_code) == 0, "%s: code %s, want %s", what, str(e, "code"),
          want_code);
    const char *msg = str(e, "message");
    CHECK(*msg != '\0', "%s: empty message", what);
    if (needle) CHECK(strstr(msg, needle) != NULL, "%s: message `%s` lacks `%s`", what, msg, needle);
    cJSON_Delete(e);
    tasker_free_string(err);
}

/* A call that must fail: out_response must stay untouched. */
static void expect_fail(uint64_t h, const char *what, const char *op, const char *req,
                        int32_t want_st, const char *want_code, const char *needle) {
    char *resp = SENTINEL, *err = SENTINEL;
    int32_t st = tasker_call(h, op, req, &resp, &err);
    CHECK(resp == SENTINEL, "%s: out_response was written on failure", what);
    check_error(what, st, want_st, err, want_code, needle);
    /* the same failure with out_error NULL: status only, nothing written, no crash */
    resp = SENTINEL;
    st = tasker_call(h, op, req, &resp, NULL);
    CHECK(st == want_st, "%s (out_error NULL): status %d, want %d", what, st, want_st);
    CHECK(resp == SENTINEL, "%s (out_error NULL): out_response was written", what);
}

/* The database's observable state: task and step counts by state and the last event. */
static char *snapshot(void) {
    cJSON *stats = ok_raw(H, "stats", NULL);
    cJSON *list = ok_raw(H, "list_tasks", "{\"limit\":1000}");
    cJSON *snap = cJSON_CreateObject();
    cJSON_AddItemToObject(snap, "tasks", cJSON_DetachItemFromObject(stats, "tasks"));
    cJSON_AddItemToObject(snap, "steps", cJSON_DetachItemFromObject(stats, "steps"));
    cJSON_AddItemToObject(snap, "last_event_id", cJSON_DetachItemFromObject(stats, "last_event_id"));
    cJSON_AddNumberToObject(snap, "listed", cJSON_GetArraySize(get(list, "tasks")));
    char *text = cJSON_PrintUnformatted(snap);
    cJSON_Delete(stats);
    cJSON_Delete(list);
    cJSON_Delete(snap);
    return text;
}

static cJSON *step_named(cJSON *view, const char *name) {
    cJSON *s;
    cJSON_ArrayForEach(s, get(get(view, "task"), "steps")) {
        if (strcmp(str(s, "name"), name) == 0) return s;
    }
    die("no step named %s", name);
    return NULL;
}

static cJSON *get_task(double task_id) {
    cJSON *req = cJSON_CreateObject();
    cJSON_AddNumberToObject(req, "task_id", task_id);
    return ok("get_task", req);
}

int main(void) {
    char url[600];
    const char *dir = fresh_db_url(url, sizeof url);
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "database_url", url);
    /* no background sweeper during the test: sweeps happen when we call `sweep` */
    cJSON_AddNumberToObject(cfg, "sweep_interval_ms", 3600000);
    char *cfg_text = cJSON_PrintUnformatted(cfg);
    cJSON_Delete(cfg);

    /* ---------------- tasker_open ---------------- */
    char *err = SENTINEL;
    uint64_t h = HANDLE_SENTINEL;
    int32_t st = tasker_open(cfg_text, NULL, &err);
    check_error("open(out_handle NULL)", st, TASKER_ERR_INVALID_ARGUMENT, err,
                "invalid_argument", "out_handle");
    st = tasker_open(cfg_text, NULL, NULL);
    CHECK(st == TASKER_ERR_INVALID_ARGUMENT, "open(out_handle NULL, out_error NULL): %d", st);
    st = tasker_open(NULL, NULL, NULL);
    CHECK(st == TASKER_ERR_INVALID_ARGUMENT, "open(all NULL): %d", st);

    err = SENTINEL;
    st = tasker_open("{\"database_url\": ", &h, &err);
    CHECK(h == HANDLE_SENTINEL, "open(bad JSON) wrote out_handle");
    check_error("open(bad JSON)", st, TASKER_ERR_INVALID_JSON, err, "invalid_json", NULL);

    err = SENTINEL;
    st = tasker_open("{\"database_url\": \"sqlite://\xff\xfe.db\"}", &h, &err);
    CHECK(h == HANDLE_SENTINEL, "open(bad UTF-8) wrote out_handle");
    check_error("open(bad UTF-8)", st, TASKER_ERR_INVALID_UTF8, err, "invalid_utf8", "config_json");

    err = SENTINEL;
    st = tasker_open("[1,2]", &h, &err);
    CHECK(h == HANDLE_SENTINEL, "open(array) wrote out_handle");
    check_error("open(config not an object)", st, TASKER_ERR_INVALID_ARGUMENT, err,
                "invalid_argument", NULL);

    err = SENTINEL;
    st = tasker_open(cfg_text, &H, &err);
    if (st != TASKER_OK) die("tasker_open -> %d: %s", st, err);
    CHECK(err == SENTINEL, "open wrote out_error on success");
    CHECK(H != 0 && H != HANDLE_SENTINEL, "bad handle %llu", (unsigned long long)H);

    /* NULL config_json means the defaults: run it in the test directory so the default
     * database (sqlite://tasker.db, relative) lands there. */
    {
        char cwd[1024];
        CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd");
        CHECK(chdir(dir) == 0, "chdir %s", dir);
        uint64_t hd = HANDLE_SENTINEL;
        st = tasker_open(NULL, &hd, NULL);
        CHECK(st == TASKER_OK, "open(NULL config): %d", st);
        cJSON *pong = ok_raw(hd, "ping", NULL);
        CHECK(cJSON_IsTrue(get(pong, "ok")), "ping on default handle");
        cJSON_Delete(pong);
        CHECK(tasker_close(hd, NULL) == TASKER_OK, "close default handle");
        CHECK(chdir(cwd) == 0, "chdir back");
    }

    /* ---------------- tasker_call: NULL pointers ---------------- */
    cJSON *pong = ok_raw(H, "ping", NULL); /* request_json NULL means {} */
    CHECK(strcmp(str(pong, "version"), tasker_version()) == 0, "ping version %s vs %s",
          str(pong, "version"), tasker_version());
    cJSON_Delete(pong);
    CHECK(tasker_abi_version() == 1, "abi version");

    char *before = snapshot();

    expect_fail(H, "call(op NULL)", NULL, "{}", TASKER_ERR_INVALID_ARGUMENT, "invalid_argument", "op");
    expect_fail(H, "call(op NULL, request NULL)", NULL, NULL, TASKER_ERR_INVALID_ARGUMENT,
                "invalid_argument", "op");
    err = SENTINEL;
    st = tasker_call(H, "ping", "{}", NULL, &err);
    check_error("call(out_response NULL)", st, TASKER_ERR_INVALID_ARGUMENT, err, "invalid_argument",
                "out_response");
    err = SENTINEL;
    st = tasker_call(H, "create_task", "{\"namespace\":\"x\",\"name\":\"y\"}", NULL, &err);
    check_error("call(create_task, out_response NULL)", st, TASKER_ERR_INVALID_ARGUMENT, err,
                "invalid_argument", "out_response");
    st = tasker_call(H, NULL, NULL, NULL, NULL);
    CHECK(st == TASKER_ERR_INVALID_ARGUMENT, "call(all NULL): %d", st);
    {
        /* success with out_error NULL is fine */
        char *resp = SENTINEL;
        st = tasker_call(H, "ping", NULL, &resp, NULL);
        CHECK(st == TASKER_OK && resp != SENTINEL && resp != NULL, "ping with out_error NULL");
        tasker_free_string(resp);
    }

    /* ---------------- tasker_free_string / tasker_close: NULL ---------------- */
    tasker_free_string(NULL);
    CHECKS++;

    /* ---------------- malformed input ---------------- */
    expect_fail(H, "malformed JSON", "get_task", "{\"task_id\": ", TASKER_ERR_INVALID_JSON,
                "invalid_json", NULL);
    expect_fail(H, "trailing garbage", "stats", "{} x", TASKER_ERR_INVALID_JSON, "invalid_json", NULL);
    expect_fail(H, "invalid UTF-8 in op", "get_\xff\xfetask", "{}", TASKER_ERR_INVALID_UTF8,
                "invalid_utf8", "op");
    expect_fail(H, "invalid UTF-8 in request", "list_tasks", "{\"state\":\"\xc3\x28\"}",
                TASKER_ERR_INVALID_UTF8, "invalid_utf8", "request_json");
    expect_fail(H, "unknown operation", "frobnicate", "{}", TASKER_ERR_UNKNOWN_OPERATION,
                "unknown_operation", "frobnicate");
    {
        /* unknown_operation lists the known operations in details */
        char *resp = SENTINEL, *e = NULL;
        st = tasker_call(H, "frobnicate", NULL, &resp, &e);
        cJSON *ej = cJSON_Parse(e);
        cJSON *ops = get(get(ej, "details"), "operations");
        CHECK(cJSON_IsArray(ops) && cJSON_GetArraySize(ops) > 5, "details.operations");
        cJSON_Delete(ej);
        tasker_free_string(e);
    }
    expect_fail(H, "wrong type", "get_task", "{\"task_id\":\"seven\"}", TASKER_ERR_INVALID_ARGUMENT,
                "invalid_argument", NULL);
    expect_fail(H, "missing field", "claim", "{\"limit\":1}", TASKER_ERR_INVALID_ARGUMENT,
                "invalid_argument", NULL);
    expect_fail(H, "unknown field", "stats", "{\"bogus\":1}", TASKER_ERR_INVALID_ARGUMENT,
                "invalid_argument", NULL);
    expect_fail(H, "request not an object", "create_task", "[1,2,3]", TASKER_ERR_INVALID_ARGUMENT,
                "invalid_argument", NULL);
    expect_fail(H, "unknown template", "create_task",
                "{\"namespace\":\"nope\",\"name\":\"nope\",\"version\":\"1.0.0\"}",
                TASKER_ERR_NOT_FOUND, "not_found", NULL);
    expect_fail(H, "missing task", "get_task", "{\"task_id\":999999}", TASKER_ERR_NOT_FOUND,
                "not_found", NULL);
    expect_fail(H, "invalid template", "register_template",
                "{\"template\":{\"namespace\":\"c\",\"name\":\"t\",\"version\":\"1\","
                "\"steps\":[{\"name\":\"a\",\"handler\":\"h\",\"depends_on\":[\"zzz\"]}]}}",
                TASKER_ERR_INVALID_TEMPLATE, "invalid_template", NULL);

    char *after = snapshot();
    CHECK(strcmp(before, after) == 0, "failed calls changed the database:\n before %s\n after  %s",
          before, after);
    cJSON_free(before);
    cJSON_free(after);

    /* ---------------- closed and never-issued handles ---------------- */
    uint64_t h2 = HANDLE_SENTINEL;
    st = tasker_open(cfg_text, &h2, NULL);
    CHECK(st == TASKER_OK && h2 != H, "open second handle: %d", st);
    err = SENTINEL;
    st = tasker_close(h2, &err);
    CHECK(st == TASKER_OK && err == SENTINEL, "close second handle: %d", st);
    expect_fail(h2, "call on closed handle", "ping", "{}", TASKER_ERR_CLOSED, "closed", NULL);
    err = SENTINEL;
    st = tasker_close(h2, &err);
    check_error("close of closed handle", st, TASKER_ERR_CLOSED, err, "closed", NULL);
    CHECK(tasker_close(h2, NULL) == TASKER_ERR_CLOSED, "close(closed, out_error NULL)");
    /* the first handle on the same database is unaffected */
    pong = ok_raw(H, "ping", "{}");
    cJSON_Delete(pong);

    const uint64_t bogus[] = {0, UINT64_MAX, 0x7777777777ull};
    for (size_t i = 0; i < sizeof bogus / sizeof bogus[0]; i++) {
        char what[96];
        snprintf(what, sizeof what, "call on never-issued handle %llu", (unsigned long long)bogus[i]);
        expect_fail(bogus[i], what, "ping", "{}", TASKER_ERR_NOT_FOUND, "not_found", NULL);
        err = SENTINEL;
        st = tasker_close(bogus[i], &err);
        check_error("close of never-issued handle", st, TASKER_ERR_NOT_FOUND, err, "not_found", NULL);
        CHECK(tasker_close(bogus[i], NULL) == TASKER_ERR_NOT_FOUND, "close(bogus, out_error NULL)");
    }

    /* ---------------- stale claim token ---------------- */
    cJSON_Delete(ok_raw(H, "register_template",
                        "{\"template\":{\"namespace\":\"c_tests\",\"name\":\"lease\","
                        "\"version\":\"1.0.0\",\"defaults\":{\"retry\":{\"max_attempts\":5,"
                        "\"base_ms\":1,\"max_ms\":2,\"jitter\":0}},"
                        "\"steps\":[{\"name\":\"only\",\"handler\":\"slow_handler\"}]}}"));
    cJSON *created = ok_raw(H, "create_task",
                            "{\"namespace\":\"c_tests\",\"name\":\"lease\",\"version\":\"1.0.0\","
                            "\"context\":{\"n\":1}}");
    double task_id = num(created, "task_id");
    cJSON_Delete(created);

    cJSON *first = ok_raw(H, "claim",
                          "{\"handlers\":[\"slow_handler\"],\"limit\":1,\"lease_ms\":1,"
                          "\"worker_id\":\"w-old\"}");
    CHECK(cJSON_GetArraySize(get(first, "steps")) == 1, "first claim got no step");
    cJSON *s1 = cJSON_GetArrayItem(get(first, "steps"), 0);
    double step_id = num(s1, "step_id");
    char *old_token = strdup(str(s1, "claim_token"));
    cJSON_Delete(first);

    sleep_ms(20);
    cJSON *swept = ok_raw(H, "sweep", NULL);
    CHECK(num(swept, "expired") == 1, "sweep expired %g leases, want 1", num(swept, "expired"));
    cJSON_Delete(swept);

    cJSON *second = ok_raw(H, "claim",
                           "{\"handlers\":[\"slow_handler\"],\"limit\":1,\"wait_ms\":5000,"
                           "\"lease_ms\":60000,\"worker_id\":\"w-new\"}");
    CHECK(cJSON_GetArraySize(get(second, "steps")) == 1, "second claim got no step");
    cJSON *s2 = cJSON_GetArrayItem(get(second, "steps"), 0);
    CHECK(num(s2, "step_id") == step_id, "second claim got another step");
    CHECK((int)num(s2, "attempt") == 2, "second claim attempt %d", (int)num(s2, "attempt"));
    char *new_token = strdup(str(s2, "claim_token"));
    CHECK(strcmp(old_token, new_token) != 0, "claim token was reused: %s", new_token);
    cJSON_Delete(second);

    cJSON *view_before = get_task(task_id);
    char *snap_before = snapshot();

    char req[256];
    snprintf(req, sizeof req, "{\"step_id\":%.0f,\"claim_token\":\"%s\",\"result\":{\"stale\":true}}",
             step_id, old_token);
    expect_fail(H, "complete_step with a stale token", "complete_step", req, TASKER_ERR_LEASE_LOST,
                "lease_lost", NULL);
    snprintf(req, sizeof req,
             "{\"step_id\":%.0f,\"claim_token\":\"%s\",\"error\":{\"message\":\"stale\"}}", step_id,
             old_token);
    expect_fail(H, "fail_step with a stale token", "fail_step", req, TASKER_ERR_LEASE_LOST,
                "lease_lost", NULL);
    snprintf(req, sizeof req, "{\"step_id\":%.0f,\"claim_token\":\"%s\"}", step_id, old_token);
    expect_fail(H, "heartbeat with a stale token", "heartbeat", req, TASKER_ERR_LEASE_LOST,
                "lease_lost", NULL);

    /* nothing changed: the step is still running under the new claim, without a result */
    cJSON *view_after = get_task(task_id);
    cJSON *step = step_named(view_after, "only");
    CHECK(strcmp(str(step, "state"), "running") == 0, "step state %s, want running",
          str(step, "state"));
    CHECK(cJSON_IsNull(get(step, "result")), "a result was stored for the stale completion");
    CHECK(strcmp(str(step, "worker"), "w-new") == 0, "step worker %s", str(step, "worker"));
    CHECK((int)num(step, "attempts") == 2, "attempts %d", (int)num(step, "attempts"));
    CHECK(strcmp(str(get(view_after, "task"), "state"), "running") == 0, "task state %s",
          str(get(view_after, "task"), "state"));
    CHECK(cJSON_Compare(step_named(view_before, "only"), step, 1), "the step view changed");
    char *snap_after = snapshot();
    CHECK(strcmp(snap_before, snap_after) == 0, "stale calls changed the database:\n %s\n %s",
          snap_before, snap_after);
    cJSON_free(snap_before);
    cJSON_free(snap_after);
    cJSON_Delete(view_before);
    cJSON_Delete(view_after);

    /* the new claim still works */
    snprintf(req, sizeof req, "{\"step_id\":%.0f,\"claim_token\":\"%s\",\"result\":{\"n\":2}}",
             step_id, new_token);
    cJSON_Delete(ok_raw(H, "complete_step", req));
    cJSON *done = get_task(task_id);
    CHECK(strcmp(str(get(done, "task"), "state"), "complete") == 0, "task did not complete");
    CHECK(num(get(step_named(done, "only"), "result"), "n") == 2, "wrong result stored");
    cJSON_Delete(done);
    /* and its token is spent now */
    expect_fail(H, "complete_step twice", "complete_step", req, TASKER_ERR_LEASE_LOST, "lease_lost",
                NULL);
    free(old_token);
    free(new_token);

    /* ---------------- close ---------------- */
    err = SENTINEL;
    st = tasker_close(H, &err);
    CHECK(st == TASKER_OK && err == SENTINEL, "close: %d", st);
    expect_fail(H, "call after close", "ping", NULL, TASKER_ERR_CLOSED, "closed", NULL);
    cJSON_free(cfg_text);

    printf("%s: ok (%d checks)\n", PROG, CHECKS);
    return 0;
}
