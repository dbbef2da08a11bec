/*
 * diamond.c: runs a diamond workflow (validate -> reserve, charge -> ship) through the
 * C ABI with handlers written in C. `charge` fails once (retryable, retry_after_ms 1)
 * and succeeds on its retry. Checks the final task, every result, the attempts and
 * the events.
 *
 * Environment: TASKER_TEST_TMP names a directory for the database (default: a fresh
 * mkdtemp directory under /tmp). Exits 0 on success, 1 with a message on failure.
 */
#define _DEFAULT_SOURCE
#define PROG "diamond"
#include <stdbool.h>

#include "support.h"

static uint64_t H;

/* ---- handlers: results are computed from the context and from parent results ---- */

static cJSON *h_validate(const cJSON *step) {
    const cJSON *ctx = get(step, "context");
    double qty = num(ctx, "quantity"), price = num(ctx, "unit_price_cents");
    CHECK(qty > 0 && price > 0, "validate: bad context");
    cJSON *r = cJSON_CreateObject();
    cJSON_AddBoolToObject(r, "valid", 1);
    cJSON_AddNumberToObject(r, "total_cents", qty * price);
    return r;
}

static cJSON *h_reserve(const cJSON *step) {
    const cJSON *ctx = get(step, "context");
    const cJSON *v = get(get(step, "results"), "validate");
    CHECK(cJSON_IsTrue(get(v, "valid")), "reserve: parent validate not valid");
    cJSON *r = cJSON_CreateObject();
    cJSON_AddNumberToObject(r, "reserved", num(ctx, "quantity"));
    cJSON_AddStringToObject(r, "sku", str(ctx, "sku"));
    return r;
}

static cJSON *h_charge(const cJSON *step) {
    const cJSON *v = get(get(step, "results"), "validate");
    double total = num(v, "total_cents");
    cJSON *r = cJSON_CreateObject();
    cJSON_AddNumberToObject(r, "charged_cents", total + total / 10); /* 10% tax */
    cJSON_AddNumberToObject(r, "attempt", num(step, "attempt"));
    return r;
}

static cJSON *h_ship(const cJSON *step) {
    const cJSON *ctx = get(step, "context");
    const cJSON *results = get(step, "results");
    const cJSON *res = get(results, "reserve"), *ch = get(results, "charge");
    char label[128];
    snprintf(label, sizeof label, "order-%d-%s-x%d", (int)num(ctx, "order_id"), str(res, "sku"),
             (int)num(res, "reserved"));
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "label", label);
    cJSON_AddNumberToObject(r, "paid_cents", num(ch, "charged_cents"));
    return r;
}

static const char *HANDLERS[] = {"validate_order", "reserve_stock", "charge_card", "ship_order"};

int main(void) {
    char url[600];
    fresh_db_url(url, sizeof url);

    CHECK(tasker_abi_version() == 1, "abi version %u", tasker_abi_version());
    CHECK(tasker_version() && *tasker_version(), "empty version");

    H = open_handle(url);

    /* The template: a diamond. */
    cJSON *tpl = cJSON_Parse(
        "{\"namespace\":\"c_tests\",\"name\":\"diamond\",\"version\":\"1.0.0\","
        "\"defaults\":{\"retry\":{\"max_attempts\":3,\"base_ms\":1,\"max_ms\":5}},"
        "\"steps\":["
        "{\"name\":\"validate\",\"handler\":\"validate_order\"},"
        "{\"name\":\"reserve\",\"handler\":\"reserve_stock\",\"depends_on\":[\"validate\"]},"
        "{\"name\":\"charge\",\"handler\":\"charge_card\",\"depends_on\":[\"validate\"]},"
        "{\"name\":\"ship\",\"handler\":\"ship_order\",\"depends_on\":[\"reserve\",\"charge\"]}"
        "]}");
    CHECK(tpl, "template literal");
    cJSON *req = cJSON_CreateObject();
    cJSON_AddItemToObject(req, "template", tpl);
    cJSON *reg = call_json(H, "register_template", req);
    cJSON_Delete(reg);

    req = cJSON_Parse("{\"namespace\":\"c_tests\",\"name\":\"diamond\",\"version\":\"1.0.0\","
                      "\"context\":{\"order_id\":42,\"sku\":\"WIDGET-7\",\"quantity\":3,"
                      "\"unit_price_cents\":1250}}");
    cJSON *created = call_json(H, "create_task", req);
    double task_id = num(created, "task_id");
    CHECK(cJSON_IsTrue(get(created, "created")), "task not created");
    cJSON_Delete(created);

    int completed = 0, failed = 0, charge_calls = 0;
    double deadline = now_ms() + 20000;
    bool done = false;
    while (!done) {
        if (now_ms() > deadline) die("task did not finish within 20 s");
        req = cJSON_CreateObject();
        cJSON_AddItemToObject(req, "handlers", cJSON_CreateStringArray(HANDLERS, 4));
        cJSON_AddNumberToObject(req, "limit", 4);
        cJSON_AddNumberToObject(req, "wait_ms", 100);
        cJSON_AddStringToObject(req, "worker_id", "c-diamond");
        cJSON *batch = call_json(H, "claim", req);
        cJSON *steps = get(batch, "steps");
        CHECK(cJSON_IsArray(steps), "claim: steps is not an array");

        cJSON *items = cJSON_CreateArray();
        cJSON *step;
        cJSON_ArrayForEach(step, steps) {
            const char *handler = str(step, "handler");
            double step_id = num(step, "step_id");
            const char *token = str(step, "claim_token");
            CHECK(num(step, "task_id") == task_id, "claimed a step of another task");
            cJSON *result = NULL;
            if (strcmp(handler, "validate_order") == 0) {
                result = h_validate(step);
            } else if (strcmp(handler, "reserve_stock") == 0) {
                result = h_reserve(step);
            } else if (strcmp(handler, "charge_card") == 0) {
                charge_calls++;
                if (num(step, "attempt") == 1) {
                    cJSON *f = cJSON_CreateObject();
                    cJSON_AddNumberToObject(f, "step_id", step_id);
                    cJSON_AddStringToObject(f, "claim_token", token);
                    cJSON *e = cJSON_AddObjectToObject(f, "error");
                    cJSON_AddStringToObject(e, "message", "card declined (simulated)");
                    cJSON_AddBoolToObject(e, "retryable", 1);
                    cJSON_AddNumberToObject(e, "retry_after_ms", 1);
                    cJSON *out = call_json(H, "fail_step", f);
                    CHECK(strcmp(str(out, "state"), "ready") == 0, "fail_step: retry not scheduled");
                    cJSON_Delete(out);
                    failed++;
                    continue;
                }
                result = h_charge(step);
            } else if (strcmp(handler, "ship_order") == 0) {
                result = h_ship(step);
            } else {
                die("claimed unknown handler %s", handler);
            }
            cJSON *item = cJSON_CreateObject();
            cJSON_AddNumberToObject(item, "step_id", step_id);
            cJSON_AddStringToObject(item, "claim_token", token);
            cJSON_AddItemToObject(item, "result", result);
            cJSON_AddItemToArray(items, item);
        }
        cJSON_Delete(batch);

        int n = cJSON_GetArraySize(items);
        if (n == 1) {
            /* one completion: complete_step */
            cJSON *item = cJSON_DetachItemFromArray(items, 0);
            cJSON *out = call_json(H, "complete_step", item);
            CHECK(cJSON_IsTrue(get(out, "ok")), "complete_step not ok");
            cJSON_Delete(out);
            completed++;
        } else if (n > 1) {
            /* several: one complete_steps batch */
            cJSON *req2 = cJSON_CreateObject();
            cJSON_AddItemToObject(req2, "items", items);
            items = NULL;
            cJSON *out = call_json(H, "complete_steps", req2);
            cJSON *r;
            cJSON_ArrayForEach(r, get(out, "results")) {
                CHECK(cJSON_IsTrue(get(r, "ok")), "complete_steps item not ok");
                completed++;
            }
            cJSON_Delete(out);
        }
        cJSON_Delete(items);

        req = cJSON_CreateObject();
        cJSON_AddNumberToObject(req, "task_id", task_id);
        cJSON *view = call_json(H, "get_task", req);
        const char *state = str(get(view, "task"), "state");
        if (strcmp(state, "complete") == 0) {
            done = true;
        } else if (strcmp(state, "error") == 0 || strcmp(state, "cancelled") == 0) {
            die("task ended in state %s", state);
        }
        cJSON_Delete(view);
    }
    CHECK(completed == 4, "completed %d steps, want 4", completed);
    CHECK(failed == 1 && charge_calls == 2, "charge ran %d times, failed %d", charge_calls, failed);

    /* The final task: state, results, attempts. */
    req = cJSON_CreateObject();
    cJSON_AddNumberToObject(req, "task_id", task_id);
    cJSON *view = call_json(H, "get_task", req);
    cJSON *task = get(view, "task");
    CHECK(strcmp(str(task, "state"), "complete") == 0, "task state %s", str(task, "state"));
    struct {
        const char *name;
        const char *want;
        int attempts;
    } expect[] = {
        {"validate", "{\"valid\":true,\"total_cents\":3750}", 1},
        {"reserve", "{\"reserved\":3,\"sku\":\"WIDGET-7\"}", 1},
        {"charge", "{\"charged_cents\":4125,\"attempt\":2}", 2},
        {"ship", "{\"label\":\"order-42-WIDGET-7-x3\",\"paid_cents\":4125}", 1},
    };
    int seen = 0;
    cJSON *s;
    cJSON_ArrayForEach(s, get(task, "steps")) {
        const char *name = str(s, "name");
        for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
            if (strcmp(name, expect[i].name) != 0) continue;
            seen++;
            CHECK(strcmp(str(s, "state"), "complete") == 0, "step %s state %s", name,
                  str(s, "state"));
            cJSON *want = cJSON_Parse(expect[i].want);
            if (!cJSON_Compare(get(s, "result"), want, 1)) {
                char *got = cJSON_PrintUnformatted(get(s, "result"));
                die("step %s result %s, want %s", name, got, expect[i].want);
            }
            cJSON_Delete(want);
            CHECK((int)num(s, "attempts") == expect[i].attempts, "step %s attempts %d, want %d",
                  name, (int)num(s, "attempts"), expect[i].attempts);
        }
    }
    CHECK(seen == 4, "saw %d of 4 steps", seen);
    cJSON_Delete(view);

    /* Events: the retry and the completion were recorded. */
    req = cJSON_CreateObject();
    cJSON_AddNumberToObject(req, "task_id", task_id);
    cJSON_AddNumberToObject(req, "limit", 1000);
    cJSON *events = call_json(H, "events", req);
    bool retry = false, task_done = false;
    cJSON *ev;
    cJSON_ArrayForEach(ev, get(events, "events")) {
        const char *name = str(ev, "event");
        if (strcmp(name, "step.retry_scheduled") == 0) {
            retry = true;
            CHECK(strcmp(str(ev, "step_name"), "charge") == 0, "retry of %s", str(ev, "step_name"));
        }
        if (strcmp(name, "task.completed") == 0) task_done = true;
    }
    CHECK(retry, "no step.retry_scheduled event");
    CHECK(task_done, "no task.completed event");
    int n_events = cJSON_GetArraySize(get(events, "events"));
    cJSON_Delete(events);

    close_handle(H);
    printf("%s: ok (task %d complete, 4 steps, charge retried once, %d events)\n", PROG,
           (int)task_id, n_events);
    return 0;
}
