#pragma once
// What every test uses: run an async body (the original's XiioTestCase), check timings with a
// tolerance, and check that nothing leaked (fds, children).

#include <catch2/catch.hpp>
#include <xiio.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>

#include <csignal>

#include <fcntl.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

// Never write co_await inside CHECK/REQUIRE: the macros repeat their expression in an
// unevaluated `false && (...)`, and g++ 12 still runs a co_await there (twice in all).
// Await into a local first; CHECK_THROWS_AS(co_await ...) is fine.

namespace test {

using namespace std::chrono_literals;
using Ms = std::chrono::milliseconds;

/// For the tests of the epoll backend itself (its syscalls, its faults): they run on it
/// whatever XIIO_BACKEND says.
inline constexpr xiio::RunOptions on_epoll{.backend = xiio::Backend::epoll};

/// The open fds of this process, with what they point to.
inline std::map<int, std::string> open_fds() {
    std::map<int, std::string> fds;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
        std::error_code ec;
        auto target = std::filesystem::read_symlink(e.path(), ec);
        fds[std::stoi(e.path().filename().string())] = target.string();
    }
    return fds;
}

/// Checks that the fds open when it was created are exactly those open when check() runs
/// (the directory iterator's own fd is open during both listings, so it cancels out).
class LeakCheck {
public:
    LeakCheck() : before_(open_fds()) {}
    void check() const { CHECK(open_fds() == before_); }

private:
    std::map<int, std::string> before_;
};

/// Runs `body()` (a coroutine returning xiio::Task) on a fresh loop, then checks that no
/// fd leaked, also when it throws.
template <class F>
auto run(F body, xiio::RunOptions options = {}) {
    LeakCheck leaks;
    try {
        if constexpr (std::is_void_v<decltype(xiio::run(body()))>) {
            xiio::run(body(), options);
            leaks.check();
        } else {
            auto r = xiio::run(body(), options);
            leaks.check();
            return r;
        }
    } catch (...) {
        leaks.check();
        throw;
    }
}

/// How much slower than normal this run is allowed to be: XIIO_TEST_SLACK_SCALE (the
/// memcheck stage runs under valgrind, ~20x slower, with 10); 1 by default.
inline long slack_scale() {
    static long scale = [] {
        const char* s = std::getenv("XIIO_TEST_SLACK_SCALE");
        return s ? std::max(1L, std::atol(s)) : 1L;
    }();
    return scale;
}

/// Runs `f` and checks it took at least `expected` and less than `expected + slack`
/// (slack multiplied by slack_scale()).
template <class F>
void assert_duration(Ms expected, F f, Ms slack = 100ms) {
    slack *= slack_scale();
    auto start = xiio::Clock::now();
    f();
    auto took = std::chrono::duration_cast<Ms>(xiio::Clock::now() - start);
    INFO("took " << took.count() << " ms, expected " << expected.count() << " ms");
    CHECK(took >= expected);
    CHECK(took < expected + slack);
}

/// Milliseconds since `start`.
inline long elapsed_ms(xiio::Clock::time_point start) {
    return static_cast<long>(std::chrono::duration_cast<Ms>(xiio::Clock::now() - start).count());
}

/// Installs `rule` as the syscall seam's injector (xiio/detail/sys.hpp) for its lifetime.
/// The rule runs on whichever thread makes the call (workers post through an eventfd), so
/// its state is atomic.
class SeamInjector : public xiio::detail::sys::Injector {
public:
    using Call = xiio::detail::sys::Call;
    using Rule = std::function<int(Call, int fd, std::size_t& size)>;
    explicit SeamInjector(Rule rule) : rule_(std::move(rule)) {
        xiio::detail::sys::injector().store(this, std::memory_order_release);
    }
    ~SeamInjector() override { xiio::detail::sys::injector().store(nullptr); }
    SeamInjector(const SeamInjector&) = delete;
    SeamInjector& operator=(const SeamInjector&) = delete;

    int before(Call c, int fd, std::size_t& size) noexcept override {
        std::size_t asked = size;
        int e = rule_(c, fd, size);
        if (e || size != asked)
            ++hits_;
        return e;
    }
    /// Calls the rule failed or shortened.
    long hits() const { return hits_.load(); }

private:
    Rule rule_;
    std::atomic<long> hits_{0};
};

/// A non-blocking, close-on-exec pipe owned by two Fds.
struct Pipe {
    xiio::Fd r, w;
    explicit Pipe(int flags = O_NONBLOCK) {
        int p[2];
        REQUIRE(::pipe2(p, O_CLOEXEC | flags) == 0);
        r = xiio::Fd(p[0]);
        w = xiio::Fd(p[1]);
    }
};

/// While it lives, orphaned descendants become children of this process (not of PID 1,
/// which may never reap them in a container), so a test can reap them and then see
/// whether a process group is empty.
struct Subreaper {
    Subreaper() { REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0); }
    ~Subreaper() { ::prctl(PR_SET_CHILD_SUBREAPER, 0); }
    Subreaper(const Subreaper&) = delete;
    Subreaper& operator=(const Subreaper&) = delete;
};

/// True if this process has no child left to reap, zombie or running.
inline bool no_children() {
    errno = 0;
    return ::waitpid(-1, nullptr, WNOHANG) == -1 && errno == ECHILD;
}

/// `v` after sleeping `d`; the tasks the group, race and shield tests compose.
inline xiio::Task<int> delayed(int v, Ms d) {
    co_await xiio::sleep(d);
    co_return v;
}
/// Throws std::runtime_error(what) after sleeping `d`.
inline xiio::Task<void> fail_after(Ms d, const char* what = "boom") {
    co_await xiio::sleep(d);
    throw std::runtime_error(what);
}

/// Reaps the orphans that came to us (see Subreaper) until no process of group `pgid` is
/// left (kill(-pgid, 0) fails with ESRCH); false if a member is still there after `limit`.
inline bool group_gone(pid_t pgid, Ms limit) {
    auto end = xiio::Clock::now() + limit * slack_scale();
    for (;;) {
        while (::waitpid(-1, nullptr, WNOHANG) > 0) {
        }
        if (::kill(-pgid, 0) != 0 && errno == ESRCH)
            return true;
        if (xiio::Clock::now() > end)
            return false;
        std::this_thread::sleep_for(5ms);
    }
}

/// This thread's signal mask.
inline sigset_t current_mask() {
    sigset_t m;
    pthread_sigmask(SIG_SETMASK, nullptr, &m);
    return m;
}

/// Whether two signal masks block the same signals.
inline bool same_mask(const sigset_t& a, const sigset_t& b) {
    for (int s = 1; s < NSIG; ++s)
        if (sigismember(&a, s) != sigismember(&b, s))
            return false;
    return true;
}

/// While it lives, the n-th allocation of this thread through operator new from now on
/// (0: the next one) throws std::bad_alloc; later ones succeed. Only where the test binary
/// replaces operator new (not under valgrind, which replaces it itself: tag such tests
/// [no-valgrind]). Nests: the previous setting is restored.
class FailAllocation {
public:
    explicit FailAllocation(long n) noexcept;
    ~FailAllocation();
    FailAllocation(const FailAllocation&) = delete;
    FailAllocation& operator=(const FailAllocation&) = delete;
    /// Whether the failure happened (a sweep over n stops once it no longer does).
    static bool fired() noexcept;

private:
    long saved_;
};

/// How many allocations this thread made so far through the test binary's operator new,
/// frames from xiio's frame pool included (not under valgrind: see FailAllocation).
long allocation_count() noexcept;

} // namespace test
