/*
 * fork.c: a handle survives fork(). The core remembers which process opened an engine;
 * in a forked child the first call on an inherited handle notices the pid changed and
 * opens a fresh engine (runtime + connections) for the child, leaking the parent's on
 * purpose (its runtime threads did not survive the fork).
 *
 *   1. The parent opens a handle on a fresh SQLite file, registers a one-step template
 *      and creates task A (nothing claimed yet).
 *   2. Child 1, on the SAME inherited handle: creates task B, claims (wait_ms 0) and
 *      completes whatever it gets until nothing is left (A's step and B's step), checks
 *      with get_task that A and B are complete, opens a SECOND handle on the same URL
 *      and pings it, closes both handles and exits 0. It sends B's task id to the
 *      parent through a pipe.
 *   3. The parent waits for child 1 (exit 0), then on its own handle checks that A and
 *      B are complete (the child did the work in the shared SQLite file), creates task
 *      C, claims and completes its step, and checks C is complete.
 *   4. Child 2 only pings the inherited handle and closes it; afterwards the parent's
 *      handle must still work (ping), and the parent closes it.
 *
 * Every wait is bounded: a child that hangs is killed after CHILD_TIMEOUT_MS and
 * reported as a failure.
 *
 * Environment: TASKER_TEST_TMP names a directory for the database (default: a fresh
 * mkdtemp directory under /tmp). Exits 0 on success, 1 with a message on failure.
 */
#define _DEFAULT_SOURCE
#define PROG "fork"
#define SUPPORT_OWN_DIE /* die() below names the process and leaves a child with _exit */
#include <signal.h>
#include <stdbool.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "support.h"

#define CHILD_TIMEOUT_MS 30000
#define HANDLER "fork_step"

static const char *WHO = "parent";
static bool IN_CHILD;

/*
 * Leaving a child: always _exit(), never exit() or a return from main. The child
 * inherited the parent's engine (tokio runtime, connection pool, handle table) and the
 * core leaks it on purpose: its worker threads do not exist in the child, so dropping
 * it could block or double-close the parent's SQLite connections. exit() would run
 * LeakSanitizer's atexit check, which would report those intentional leaks (and any
 * other atexit/destructor work inherited from the parent); _exit() skips all of that.
 */
static void leave(int code) {
    fflush(stdout);
    fflush(stderr);
    if (IN_CHILD) _exit(code);
    exit(code);
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s (%s, pid %d): FAIL: ", PROG, WHO, (int)getpid());
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    leave(IN_CHILD ? 2 : 1);
}

static void ping(uint64_t h) {
    cJSON *out = call(h, "ping", "{}");
    CHECK(cJSON_IsTrue(get(out, "ok")), "ping: ok is not true");
    CHECK(*str(out, "version") != '\0', "ping: empty version");
    cJSON_Delete(out);
}

static long create_task(uint64_t h, const char *label) {
    char req[256];
    snprintf(req, sizeof req,
             "{\"namespace\":\"c_tests\",\"name\":\"fork\",\"version\":\"1.0.0\","
             "\"context\":{\"label\":\"%s\"}}",
             label);
    cJSON *out = call(h, "create_task", req);
    CHECK(cJSON_IsTrue(get(out, "created")), "task %s not created", label);
    long id = (long)num(out, "task_id");
    cJSON_Delete(out);
    return id;
}

static char *task_state(uint64_t h, long id, char *buf, size_t len) {
    char req[64];
    snprintf(req, sizeof req, "{\"task_id\":%ld}", id);
    cJSON *view = call(h, "get_task", req);
    snprintf(buf, len, "%s", str(get(view, "task"), "state"));
    cJSON_Delete(view);
    return buf;
}

static bool is_complete(uint64_t h, long id) {
    char state[64];
    task_state(h, id, state, sizeof state);
    if (strcmp(state, "error") == 0 || strcmp(state, "cancelled") == 0) {
        die("task %ld ended in state %s", id, state);
    }
    return strcmp(state, "complete") == 0;
}

/* One claim (wait_ms 0); completes every claimed step. Returns how many it completed.
 * Each claimed task id is appended to ids (when not NULL, up to cap). */
static int claim_and_complete(uint64_t h, long *ids, int *n_ids, int cap) {
    char req[256];
    snprintf(req, sizeof req,
             "{\"handlers\":[\"" HANDLER "\"],\"limit\":10,\"wait_ms\":0,"
             "\"worker_id\":\"c-fork-%s-%d\"}",
             WHO, (int)getpid());
    cJSON *batch = call(h, "claim", req);
    cJSON *steps = get(batch, "steps");
    CHECK(cJSON_IsArray(steps), "claim: steps is not an array");
    int done = 0;
    cJSON *step;
    cJSON_ArrayForEach(step, steps) {
        CHECK(strcmp(str(step, "handler"), HANDLER) == 0, "claimed handler %s",
              str(step, "handler"));
        long task_id = (long)num(step, "task_id");
        const cJSON *ctx = get(step, "context");
        cJSON *item = cJSON_CreateObject();
        cJSON_AddNumberToObject(item, "step_id", num(step, "step_id"));
        cJSON_AddStringToObject(item, "claim_token", str(step, "claim_token"));
        cJSON *result = cJSON_AddObjectToObject(item, "result");
        cJSON_AddStringToObject(result, "label", str(ctx, "label"));
        cJSON_AddNumberToObject(result, "done_by_pid", (double)getpid());
        char *text = cJSON_PrintUnformatted(item);
        cJSON_Delete(item);
        cJSON *out = call(h, "complete_step", text);
        cJSON_free(text);
        CHECK(cJSON_IsTrue(get(out, "ok")), "complete_step not ok for task %ld", task_id);
        cJSON_Delete(out);
        if (ids && *n_ids < cap) ids[(*n_ids)++] = task_id;
        done++;
    }
    cJSON_Delete(batch);
    return done;
}

/* Claims and completes until nothing is left and every task in `want` is complete. */
static int drain(uint64_t h, const long *want, int n_want, long *ids, int *n_ids, int cap) {
    int completed = 0;
    double deadline = now_ms() + 20000;
    for (;;) {
        if (now_ms() > deadline) die("tasks did not finish within 20 s");
        int n = claim_and_complete(h, ids, n_ids, cap);
        completed += n;
        if (n > 0) continue;
        /* nothing claimable: done when every wanted task is complete */
        bool all = true;
        for (int i = 0; i < n_want && all; i++) all = is_complete(h, want[i]);
        if (all) return completed;
        sleep_ms(5);
    }
}

static const char *URL;

/* Child 1: works on the inherited handle, then opens a second one. Never returns. */
static void child_work(uint64_t h, long task_a, int out_fd) {
    IN_CHILD = true;
    WHO = "child 1";

    /* the inherited handle: first call in this process opens a fresh engine */
    ping(h);
    long task_b = create_task(h, "B");
    CHECK(task_b != task_a, "B got A's id %ld", task_a);

    long want[2] = {task_a, task_b};
    long ids[16];
    int n_ids = 0;
    int completed = drain(h, want, 2, ids, &n_ids, 16);
    CHECK(completed == 2, "child completed %d steps, want 2 (A's and B's)", completed);
    bool saw_a = false, saw_b = false;
    for (int i = 0; i < n_ids; i++) {
        saw_a |= ids[i] == task_a;
        saw_b |= ids[i] == task_b;
    }
    CHECK(saw_a && saw_b, "child claimed A: %d, B: %d", saw_a, saw_b);
    CHECK(is_complete(h, task_b), "task B not complete");
    CHECK(is_complete(h, task_a), "task A not complete");

    /* a second handle opened in the child, on the same database */
    uint64_t h2 = open_handle(URL);
    CHECK(h2 != h, "second handle equals the inherited one");
    ping(h2);
    CHECK(is_complete(h2, task_b), "task B not complete seen through the second handle");
    close_handle(h2);

    /* the inherited handle still works after the second one closed */
    ping(h);
    close_handle(h);

    /* and is closed now */
    char *resp = NULL, *err = NULL;
    int32_t st = tasker_call(h, "ping", "{}", &resp, &err);
    CHECK(st == TASKER_ERR_CLOSED, "ping after close -> %d, want CLOSED", st);
    tasker_free_string(err);

    if (write(out_fd, &task_b, sizeof task_b) != (ssize_t)sizeof task_b) {
        die("write to pipe: %s", strerror(errno));
    }
    close(out_fd);
    leave(0); /* _exit: see leave() */
}

/* Child 2: only pings the inherited handle and closes it. Never returns. */
static void child_ping(uint64_t h) {
    IN_CHILD = true;
    WHO = "child 2";
    ping(h);
    close_handle(h);
    leave(0); /* _exit: see leave() */
}

/* Waits (bounded) for a child; it must exit 0. */
static void wait_child(pid_t pid, const char *what) {
    double deadline = now_ms() + CHILD_TIMEOUT_MS;
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) break;
        if (r < 0 && errno != EINTR) die("waitpid(%s): %s", what, strerror(errno));
        if (now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            die("%s (pid %d) did not exit within %d ms: killed (hang after fork?)", what,
                (int)pid, CHILD_TIMEOUT_MS);
        }
        sleep_ms(10);
    }
    if (WIFSIGNALED(status)) die("%s killed by signal %d", what, WTERMSIG(status));
    CHECK(WIFEXITED(status), "%s: unexpected wait status %d", what, status);
    CHECK(WEXITSTATUS(status) == 0, "%s exited with %d", what, WEXITSTATUS(status));
}

static pid_t fork_flushed(void) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    return pid;
}

int main(void) {
    char url[600];
    fresh_db_url(url, sizeof url);
    URL = url;

    uint64_t h = open_handle(url);
    cJSON *out = call(h, "register_template",
                      "{\"template\":{\"namespace\":\"c_tests\",\"name\":\"fork\","
                      "\"version\":\"1.0.0\",\"steps\":[{\"name\":\"only\",\"handler\":\"" HANDLER
                      "\"}]}}");
    cJSON_Delete(out);
    long task_a = create_task(h, "A");

    /* ---- child 1: does all the work on the inherited handle ---- */
    int fds[2];
    if (pipe(fds) != 0) die("pipe: %s", strerror(errno));
    pid_t pid = fork_flushed();
    if (pid == 0) {
        close(fds[0]);
        child_work(h, task_a, fds[1]);
    }
    close(fds[1]);
    wait_child(pid, "child 1");
    long task_b = 0;
    ssize_t got = read(fds[0], &task_b, sizeof task_b);
    close(fds[0]);
    CHECK(got == (ssize_t)sizeof task_b, "read B's id from child 1: %zd bytes", got);

    /* ---- the parent's handle still works; it sees the child's work ---- */
    ping(h);
    CHECK(is_complete(h, task_a), "task A not complete in the parent");
    CHECK(is_complete(h, task_b), "task B not complete in the parent");
    long task_c = create_task(h, "C");
    long ids[16];
    int n_ids = 0;
    long want_c[1] = {task_c};
    int completed = drain(h, want_c, 1, ids, &n_ids, 16);
    CHECK(completed == 1 && n_ids == 1 && ids[0] == task_c,
          "parent completed %d steps (first of task %ld), want 1 of task C %ld", completed,
          n_ids ? ids[0] : -1L, task_c);
    CHECK(is_complete(h, task_c), "task C not complete");

    /* ---- child 2: ping + close on the inherited handle; parent unaffected ---- */
    pid = fork_flushed();
    if (pid == 0) child_ping(h);
    wait_child(pid, "child 2");
    ping(h);
    CHECK(is_complete(h, task_c), "task C not complete after child 2");

    close_handle(h);
    printf("%s: ok (child 1 completed A %ld and B %ld on the inherited handle, parent "
           "completed C %ld, child 2 ping+close left the parent's handle working)\n",
           PROG, task_a, task_b, task_c);
    return 0;
}
