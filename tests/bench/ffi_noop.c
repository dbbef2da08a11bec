/* ffi_noop: per-call cost of the C ABI with a trivial operation.
 *
 * usage: ffi_noop DB_PATH [CALLS [BATCH]]
 *
 * Opens a handle on a fresh SQLite file, warms up, then times CALLS calls of
 * tasker_call(handle, "ping", "{}") in batches of BATCH, freeing every response.
 * Prints `key value` lines; ffi_noop_call_ns_c is the median of the batch means.
 * Built and run by scripts/bench.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tasker.h"

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int fail(const char *what, char *err) {
    fprintf(stderr, "ffi_noop: %s failed: %s\n", what, err ? err : "(no message)");
    if (err) tasker_free_string(err);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: ffi_noop DB_PATH [CALLS [BATCH]]\n");
        return 2;
    }
    long calls = argc > 2 ? atol(argv[2]) : 200000;
    long batch = argc > 3 ? atol(argv[3]) : 10000;
    if (calls <= 0 || batch <= 0 || batch > calls) {
        fprintf(stderr, "ffi_noop: need 0 < BATCH <= CALLS\n");
        return 2;
    }

    /* The path is put into JSON; refuse characters that would need escaping. */
    if (strpbrk(argv[1], "\"\\") != NULL) {
        fprintf(stderr, "ffi_noop: DB_PATH must not contain quotes or backslashes\n");
        return 2;
    }
    size_t len = strlen(argv[1]) + 64;
    char *config = malloc(len);
    if (!config) return 1;
    snprintf(config, len, "{\"database_url\":\"sqlite://%s\"}", argv[1]);

    uint64_t handle = 0;
    char *err = NULL;
    if (tasker_open(config, &handle, &err) != 0) return fail("tasker_open", err);
    free(config);

    char *resp = NULL;
    err = NULL;
    if (tasker_call(handle, "ping", "{}", &resp, &err) != 0) return fail("ping", err);
    if (!resp || strstr(resp, "\"ok\":true") == NULL) {
        fprintf(stderr, "ffi_noop: unexpected ping response: %s\n", resp ? resp : "(null)");
        return 1;
    }
    tasker_free_string(resp);

    for (long i = 0; i < 2000; i++) {
        resp = NULL;
        if (tasker_call(handle, "ping", "{}", &resp, &err) != 0) return fail("ping", err);
        tasker_free_string(resp);
    }

    long batches = calls / batch;
    double *means = malloc(sizeof(double) * (size_t)batches);
    if (!means) return 1;
    for (long b = 0; b < batches; b++) {
        double start = now_ns();
        for (long i = 0; i < batch; i++) {
            resp = NULL;
            if (tasker_call(handle, "ping", "{}", &resp, &err) != 0) return fail("ping", err);
            tasker_free_string(resp);
        }
        means[b] = (now_ns() - start) / (double)batch;
    }
    qsort(means, (size_t)batches, sizeof(double), cmp_double);

    printf("ffi_noop_call_ns_c %.1f\n", means[(batches - 1) / 2]);
    printf("ffi_noop_call_ns_c_min_batch %.1f\n", means[0]);
    printf("ffi_noop_call_ns_c_max_batch %.1f\n", means[batches - 1]);
    printf("ffi_noop_calls %ld\n", batches * batch);
    free(means);

    err = NULL;
    if (tasker_close(handle, &err) != 0) return fail("tasker_close", err);
    return 0;
}
