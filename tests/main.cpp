#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include "helpers.hpp"

#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <system_error>

// Every test case ends the way libuv ends each of its tests: nothing of the runtime is
// left alive (task frames, runners, fd registrations, timers: the loop's accounting, see
// xiio/detail/accounting.hpp) and /proc/self/fd lists what it listed before. Catch has
// no assertions in listeners, so a leak ends the process with a message and exit code 3:
// CTest runs each test case in its own process, so the case that leaked fails.
namespace {

class LeakListener : public Catch::TestEventListenerBase {
public:
    using TestEventListenerBase::TestEventListenerBase;

    void testCaseStarting(const Catch::TestCaseInfo& info) override {
        TestEventListenerBase::testCaseStarting(info);
        fds_ = test::open_fds();
        live_ = xiio::detail::live_counts();
    }

    void testCaseEnded(const Catch::TestCaseStats& stats) override {
        TestEventListenerBase::testCaseEnded(stats);
        auto live = xiio::detail::live_counts();
        auto fds = test::open_fds();
        if (live == live_ && fds == fds_)
            return;
        std::fprintf(stderr,
                     "\nLEAK after test case \"%s\": frames %ld, runners %ld, registrations "
                     "%ld, timers %ld (before: %ld, %ld, %ld, %ld); open fds %zu (before: %zu)\n",
                     stats.testInfo.name.c_str(), live.frames, live.runners, live.registrations,
                     live.timers, live_.frames, live_.runners, live_.registrations, live_.timers,
                     fds.size(), fds_.size());
        for (const auto& [fd, target] : fds)
            if (!fds_.count(fd))
                std::fprintf(stderr, "  new fd %d -> %s\n", fd, target.c_str());
        for (const auto& [fd, target] : fds_)
            if (!fds.count(fd))
                std::fprintf(stderr, "  closed fd %d -> %s\n", fd, target.c_str());
            else if (fds.at(fd) != target)
                std::fprintf(stderr, "  fd %d -> %s, was %s\n", fd, fds.at(fd).c_str(),
                             target.c_str());
        std::fflush(stderr);
        std::_Exit(3);
    }

private:
    std::map<int, std::string> fds_;
    xiio::detail::LiveCounts live_;
};

} // namespace

CATCH_REGISTER_LISTENER(LeakListener)

namespace {

/// Under XIIO_BACKEND=io_uring (the second pass of CTest) where the kernel or a sandbox
/// refuses io_uring, every test would fail the same way: exit with 77 instead, which
/// CTest reports as skipped.
const bool io_uring_refused = [] {
    const char* b = std::getenv("XIIO_BACKEND");
    if (!b || std::string_view(b) != "io_uring")
        return false;
    try {
        xiio::detail::Loop loop(xiio::Backend::io_uring);
        return false;
    } catch (const std::system_error& e) {
        std::fprintf(stderr, "XIIO_BACKEND=io_uring, but %s: skipped\n", e.what());
        std::_Exit(77);
    }
}();

} // namespace
