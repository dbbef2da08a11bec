// header.cpp: include/tasker.h compiled as C++ (-std=c++17 -Wall -Wextra -Werror) and
// used from C++: open a handle on an in-memory database, ping, read an error, close.
// scripts/c-tests builds it against the libtasker that scripts/install put under a
// prefix, with the flags `pkg-config --cflags --libs libtasker` gives.
#include <tasker.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

namespace {

struct Freed {
    void operator()(char *s) const { tasker_free_string(s); }
};
using Text = std::unique_ptr<char, Freed>;

int fail(const std::string &what) {
    std::fprintf(stderr, "header.cpp: %s\n", what.c_str());
    return 1;
}

}  // namespace

int main() {
    uint64_t handle = 0;
    char *raw_error = nullptr;
    if (tasker_open(R"({"database_url": "sqlite::memory:"})", &handle, &raw_error) != TASKER_OK) {
        Text error(raw_error);
        return fail(std::string("tasker_open: ") + error.get());
    }
    char *raw = nullptr;
    if (tasker_call(handle, "ping", "{}", &raw, &raw_error) != TASKER_OK) {
        Text error(raw_error);
        return fail(std::string("ping: ") + error.get());
    }
    Text pong(raw);
    if (std::strstr(pong.get(), "\"ok\":true") == nullptr) return fail(std::string("ping said ") + pong.get());

    int32_t rc = tasker_call(handle, "get_task", R"({"task_id": 99})", &raw, &raw_error);
    if (rc != TASKER_ERR_NOT_FOUND) return fail("get_task 99: expected TASKER_ERR_NOT_FOUND");
    Text error(raw_error);
    if (std::strstr(error.get(), "\"code\":\"not_found\"") == nullptr) return fail(std::string("error: ") + error.get());

    if (tasker_close(handle, nullptr) != TASKER_OK) return fail("tasker_close");
    std::printf("header.cpp: C++ use of tasker.h ok (engine %s)\n", tasker_version());
    return 0;
}
