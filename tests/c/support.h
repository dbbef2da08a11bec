/*
 * support.h: helpers shared by the C test programs of tests/c/. Each program is compiled on
 * its own (scripts/c-tests); `#include "support.h"` finds this file next to the source.
 *
 * Before including it a program defines _DEFAULT_SOURCE (for mkdtemp) and PROG, its name:
 * the prefix of its failure messages and of its database file. A program that must leave
 * differently on failure (fork.c: a forked child must _exit) defines SUPPORT_OWN_DIE and
 * its own die().
 *
 * Everything is static inline, so a program may use only part of it under -Werror.
 */
#ifndef TASKER_C_TEST_SUPPORT_H
#define TASKER_C_TEST_SUPPORT_H

#ifndef PROG
#error "define PROG (the program's name) before including support.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tasker.h"

/* ---- failing ---- */

/* Prints `PROG: FAIL: <message>` to stderr and exits 1. Never returns. */
static inline void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#ifndef SUPPORT_OWN_DIE
static inline void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: FAIL: ", PROG);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}
#endif

/* How many CHECKs ran (misuse.c reports it). Atomic: threads may CHECK concurrently. */
static _Atomic int CHECKS __attribute__((unused));

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        CHECKS++;                                                                          \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);      \
            die(__VA_ARGS__);                                                              \
        }                                                                                  \
    } while (0)

/* ---- time ---- */

static inline double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* Sleeps ms milliseconds (nothing when ms <= 0), resuming after signals. */
static inline void sleep_ms(double ms) {
    if (ms <= 0) return;
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000.0);
    ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1000.0) * 1e6);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- JSON: a missing key or a wrong type is fatal ---- */

static inline cJSON *get(const cJSON *obj, const char *key) {
    cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) {
        char *s = cJSON_PrintUnformatted(obj);
        fprintf(stderr, "missing key `%s` in %s\n", key, s ? s : "?");
        cJSON_free(s);
        die("missing key `%s`", key);
    }
    return v;
}

static inline double num(const cJSON *obj, const char *key) {
    cJSON *v = get(obj, key);
    if (!cJSON_IsNumber(v)) die("`%s` is not a number", key);
    return v->valuedouble;
}

static inline const char *str(const cJSON *obj, const char *key) {
    cJSON *v = get(obj, key);
    if (!cJSON_IsString(v)) die("`%s` is not a string", key);
    return v->valuestring;
}

/* ---- the database ---- */

/*
 * Writes into url the sqlite:// URL of a fresh database <dir>/<PROG>-<pid>.db (an old file
 * of that name is removed) and returns dir: TASKER_TEST_TMP, or else a new mkdtemp
 * directory under /tmp.
 */
static inline const char *fresh_db_url(char *url, size_t len) {
    static char dirbuf[256];
    const char *dir = getenv("TASKER_TEST_TMP");
    if (!dir || !*dir) {
        snprintf(dirbuf, sizeof dirbuf, "/tmp/tasker-c-%s-XXXXXX", PROG);
        if (!mkdtemp(dirbuf)) die("mkdtemp: %s", strerror(errno));
        dir = dirbuf;
    }
    char path[512];
    snprintf(path, sizeof path, "%s/%s-%d.db", dir, PROG, (int)getpid());
    unlink(path);
    snprintf(url, len, "sqlite://%s", path);
    return dir;
}

/* ---- the C ABI: any error is fatal ---- */

/* Opens a handle with {"database_url": url}. */
static inline uint64_t open_handle(const char *url) {
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "database_url", url);
    char *text = cJSON_PrintUnformatted(cfg);
    cJSON_Delete(cfg);
    uint64_t h = 0;
    char *err = NULL;
    int32_t st = tasker_open(text, &h, &err);
    if (st != TASKER_OK) die("tasker_open %s -> %d: %s", text, st, err ? err : "?");
    cJSON_free(text);
    CHECK(h != 0, "handle 0");
    return h;
}

static inline void close_handle(uint64_t h) {
    char *err = NULL;
    int32_t st = tasker_close(h, &err);
    if (st != TASKER_OK) {
        die("tasker_close(%llu) -> %d: %s", (unsigned long long)h, st, err ? err : "?");
    }
}

/* Runs `op` on handle h with request text `req` (NULL means {}); returns the parsed
 * response, which the caller deletes. */
static inline cJSON *call(uint64_t h, const char *op, const char *req) {
    char *resp = NULL, *err = NULL;
    int32_t st = tasker_call(h, op, req, &resp, &err);
    if (st != TASKER_OK) {
        die("%s %s on handle %llu -> status %d: %s", op, req ? req : "(null)",
            (unsigned long long)h, st, err ? err : "(no error)");
    }
    CHECK(err == NULL, "%s: out_error written on success", op);
    CHECK(resp != NULL, "%s: no response", op);
    cJSON *out = cJSON_Parse(resp);
    if (!out) die("%s: response is not JSON: %s", op, resp);
    tasker_free_string(resp);
    return out;
}

/* Same, with a cJSON request (consumed; NULL means {}). */
static inline cJSON *call_json(uint64_t h, const char *op, cJSON *req) {
    char *text = req ? cJSON_PrintUnformatted(req) : NULL;
    cJSON_Delete(req);
    cJSON *out = call(h, op, text);
    cJSON_free(text);
    return out;
}

#endif
