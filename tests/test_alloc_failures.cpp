// Allocation failures: every allocation a scenario makes on the loop's thread fails in
// turn (test::FailAllocation, the test binary's operator new), n = 0, 1, 2, ... until the
// scenario no longer allocates that often. The contract: no noexcept path of xiio calls
// user code or allocates, so for every n the run either completes or ends with
// std::bad_alloc - never std::terminate (a noexcept function that threw), a crash, a hang,
// another exception type (a bad_alloc turned into something else), a leak (checked after
// every n: frames, runners, registrations, timers, fds, children), or a primitive left
// inconsistent (the scenarios that retry after a bad_alloc check that nothing was lost).
//
// [no-valgrind]: valgrind replaces operator new, so the failures would never happen.
// A scenario that begins "Guards against" names the defect it found (each fails on the
// code before its fix: a noexcept path that allocated).
#include "helpers.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cxxabi.h>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

using namespace std::chrono_literals;
using test::no_children;
using xiio::Task;

namespace {

// ---- the sweep -----------------------------------------------------------------------

/// A scenario's own check failed. Not a std::exception and holding no string: a CHECK or
/// a std::runtime_error would allocate inside the armed region (their allocation could be
/// the one that fails), while the exception object itself comes from
/// __cxa_allocate_exception (malloc, not the operator new the hook replaces).
struct Broken {
    const char* what;
};

#define XIIO_ALLOC_STR2(x) #x
#define XIIO_ALLOC_STR(x) XIIO_ALLOC_STR2(x)
/// CHECK for code that runs while an allocation is armed to fail.
#define EXPECT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond))                                                                               \
            throw Broken{"line " XIIO_ALLOC_STR(__LINE__) ": EXPECT(" #cond ") failed"};           \
    } while (false)

/// A member's deliberate failure (allocates nothing either).
struct Boom {};

/// The allocation that fails in one run of a scenario, and whether it did.
struct Probe {
    long n;
    bool fired = false;
};

/// Arms the failure of allocation p.n (counted from here) for its scope and records whether
/// it fired: for scenarios that arm it around the operation under test themselves.
class Armed {
public:
    explicit Armed(Probe& p) noexcept : p_(p), fail_(p.n) {}
    ~Armed() { p_.fired = p_.fired || test::FailAllocation::fired(); } // before fail_ ends
    Armed(const Armed&) = delete;
    Armed& operator=(const Armed&) = delete;

private:
    Probe& p_;
    test::FailAllocation fail_;
};

/// Where the sweep is, for the terminate handler and the watchdog.
std::atomic<const char*> current_scenario{""};
std::atomic<long> current_n{-1};

std::string demangle(const char* name) {
    int status = 0;
    char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
    std::string s = status == 0 && d ? d : name;
    std::free(d);
    return s;
}

/// std::terminate during a sweep: a noexcept function let an exception out. Says where.
[[noreturn]] void on_terminate() noexcept {
    std::fprintf(stderr, "\nstd::terminate in scenario \"%s\" at n = %ld", current_scenario.load(),
                 current_n.load());
    if (auto e = std::current_exception()) {
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& x) {
            std::fprintf(stderr, ": %s (%s)", typeid(x).name(), x.what());
        } catch (...) {
            std::fprintf(stderr, ": a non-std exception");
        }
    }
    std::fprintf(stderr, "\n");
    std::fflush(stderr);
    std::abort();
}

/// Ends the process, naming the scenario and n, if one run takes longer than its limit (a
/// lost wake-up with an fd or a timer still registered hangs instead of being reported as
/// a deadlock). A thread of its own: nothing in the hung loop can be trusted to report.
class Watchdog {
public:
    Watchdog() : thread_([this] { watch(); }) {}
    ~Watchdog() {
        {
            std::lock_guard lock(mutex_);
            stop_ = true;
        }
        cv_.notify_one();
        thread_.join();
    }
    Watchdog(const Watchdog&) = delete;
    Watchdog& operator=(const Watchdog&) = delete;

    void arm(std::chrono::steady_clock::duration limit) {
        {
            std::lock_guard lock(mutex_);
            deadline_ = std::chrono::steady_clock::now() + limit;
            armed_ = true;
        }
        cv_.notify_one();
    }
    void disarm() {
        std::lock_guard lock(mutex_);
        armed_ = false;
    }

private:
    void watch() {
        std::unique_lock lock(mutex_);
        while (!stop_) {
            if (!armed_) {
                cv_.wait(lock);
            } else if (cv_.wait_until(lock, deadline_) == std::cv_status::timeout && armed_ &&
                       std::chrono::steady_clock::now() >= deadline_) {
                std::fprintf(stderr, "\nHANG in scenario \"%s\" at n = %ld\n",
                             current_scenario.load(), current_n.load());
                std::fflush(stderr);
                std::_Exit(4);
            }
        }
    }

    std::mutex mutex_;
    std::condition_variable cv_;
    std::chrono::steady_clock::time_point deadline_{};
    bool armed_ = false;
    bool stop_ = false;
    std::thread thread_; // last: starts once the rest exists
};

/// Where the failure is armed.
enum class Arm {
    whole,  // around xiio::run: the scenario's frame, the loop's creation, everything
    inside, // the scenario arms it itself (Armed) around the operation under test
};

struct SweepOptions {
    Arm arm = Arm::whole;
    long max_n = 2000;
    /// An outcome other than completion or bad_alloc that the scenario may end with (the
    /// deadlock report); null: none.
    std::function<bool(std::exception_ptr)> also_accept = {};
    /// Checked after every run (outside the armed region); returns a problem or "".
    std::function<std::string()> after_each = {};
    /// Runs in which the failure must have fired (the scenario allocates at all).
    long min_failures = 1;
};

/// What a sweep saw.
struct SweepResult {
    long runs = 0;     // values of n tried, the last one included (where nothing failed)
    long threw = 0;    // runs that ended with bad_alloc
    long absorbed = 0; // runs in which the failure fired and the scenario still completed
};

std::string describe(std::exception_ptr e) {
    try {
        std::rethrow_exception(e);
    } catch (const Broken& b) {
        return b.what;
    } catch (const std::exception& x) {
        return demangle(typeid(x).name()) + ": " + x.what();
    } catch (const xiio::CancelledError&) {
        return "xiio::CancelledError";
    } catch (const Boom&) {
        return "Boom (a member's deliberate failure escaped)";
    } catch (...) {
        return "an unknown exception";
    }
}

/// Runs `scenario(probe)` (a coroutine returning Task<void>) in a new loop for n = 0, 1,
/// ... with allocation n failing, until three runs in a row in which it does not fail (a
/// scenario with threads or timers does not allocate exactly as often in every run). Every
/// run must complete or end with std::bad_alloc, and leave nothing behind.
/// XIIO_SWEEP_ONLY=n runs only that n (to reproduce one in a debugger); XIIO_SWEEP_VERBOSE
/// prints how each sweep went.
template <class Scenario>
SweepResult sweep(const char* name, Scenario scenario, SweepOptions opts = {}) {
    Watchdog dog;
    struct TerminateHandler {
        std::terminate_handler old = std::set_terminate(on_terminate);
        ~TerminateHandler() {
            std::set_terminate(old);
            current_scenario = "";
            current_n = -1;
        }
    } handler;
    const auto live = xiio::detail::live_counts();
    const auto fds = test::open_fds();
    const bool children_before = !no_children();
    const auto limit = std::chrono::seconds(10 * test::slack_scale());
    SweepResult result;
    const char* only = std::getenv("XIIO_SWEEP_ONLY");
    int quiet = 0; // runs in a row in which the failure did not fire
    for (long n = only ? std::atol(only) : 0;; ++n) {
        if (n == opts.max_n) {
            FAIL_CHECK(name << ": still failing allocations at n = " << n);
            break;
        }
        current_scenario = name;
        current_n = n;
        Probe p{n};
        std::exception_ptr error;
        dog.arm(limit);
        try {
            if (opts.arm == Arm::whole) {
                Armed armed(p);
                xiio::run(scenario(p));
            } else {
                xiio::run(scenario(p));
            }
        } catch (...) {
            error = std::current_exception();
        }
        dog.disarm();
        ++result.runs;

        bool bad_alloc = false;
        if (error) {
            try {
                std::rethrow_exception(error);
            } catch (const std::bad_alloc&) {
                bad_alloc = true;
            } catch (...) {
            }
        }
        if (error && !bad_alloc && !(opts.also_accept && opts.also_accept(error)))
            FAIL_CHECK(name << ", n = " << n << " (the failure "
                            << (p.fired ? "fired" : "did not fire") << "): ended with "
                            << describe(error));
        if (bad_alloc && !p.fired)
            FAIL_CHECK(name << ", n = " << n << ": bad_alloc although no allocation failed");
        auto now = xiio::detail::live_counts();
        if (now != live) {
            std::fprintf(stderr, "\n%s, n = %ld: leak\n", name, n);
            FAIL(name << ", n = " << n << ": leaked frames " << now.frames - live.frames
                      << ", runners " << now.runners - live.runners << ", registrations "
                      << now.registrations - live.registrations << ", timers "
                      << now.timers - live.timers);
        }
        if (test::open_fds() != fds)
            FAIL(name << ", n = " << n << ": leaked or closed an fd");
        if (!children_before && !no_children())
            FAIL(name << ", n = " << n << ": left a child process unreaped");
        if (opts.after_each)
            if (auto problem = opts.after_each(); !problem.empty())
                FAIL_CHECK(name << ", n = " << n << ": " << problem);
        if (only)
            break;
        if (!p.fired) {
            if (++quiet == 3)
                break;
            continue;
        }
        quiet = 0;
        if (bad_alloc)
            ++result.threw;
        else if (!error)
            ++result.absorbed;
    }
    INFO(name << ": " << result.runs << " runs, " << result.threw << " ended with bad_alloc, "
              << result.absorbed << " completed anyway");
    if (std::getenv("XIIO_SWEEP_VERBOSE"))
        std::fprintf(stderr, "%s: %ld runs, %ld ended with bad_alloc, %ld completed anyway\n", name,
                     result.runs, result.threw, result.absorbed);
    if (!only)
        CHECK(result.threw + result.absorbed >= opts.min_failures);
    return result;
}

// ---- helpers the scenarios use while an allocation may fail -------------------------

/// A non-blocking pipe owned by two Fds (test::Pipe REQUIREs, which allocates).
struct FdPipe {
    xiio::Fd r, w;
    FdPipe() {
        int p[2];
        if (::pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0)
            throw Broken{"pipe2 failed"};
        r = xiio::Fd(p[0]);
        w = xiio::Fd(p[1]);
    }
};

/// A pipe of plain ints (transient registrations), blocking or not; closed at the end.
struct IntPipe {
    int r = -1, w = -1;
    explicit IntPipe(int flags) {
        int p[2];
        if (::pipe2(p, O_CLOEXEC | flags) != 0)
            throw Broken{"pipe2 failed"};
        r = p[0];
        w = p[1];
    }
    ~IntPipe() {
        ::close(r);
        ::close(w);
    }
    IntPipe(const IntPipe&) = delete;
    IntPipe& operator=(const IntPipe&) = delete;
};

/// A thread that plays the other end of an fd (so that the loop's task really waits),
/// stopped and joined when the scope ends, whatever happened to the task. The function
/// gets the stop flag and must return soon after it is set.
class Peer {
public:
    template <class F>
    explicit Peer(F f) : thread_([this, f = std::move(f)]() mutable { f(stop_); }) {}
    ~Peer() {
        stop_ = true;
        thread_.join();
    }
    Peer(const Peer&) = delete;
    Peer& operator=(const Peer&) = delete;

private:
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

/// Waits for `events` on fd, up to 10 ms; false when `stop` is set.
bool peer_wait(int fd, short events, const std::atomic<bool>& stop) {
    while (!stop) {
        pollfd p{fd, events, 0};
        if (::poll(&p, 1, 10) > 0)
            return true;
    }
    return false;
}

void peer_sleep(std::chrono::milliseconds d, const std::atomic<bool>& stop) {
    auto until = std::chrono::steady_clock::now() + d;
    while (!stop && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(200us);
}

/// A peer that writes `data` to fd after `delay` (MSG_NOSIGNAL-free: pipes and sockets).
auto write_later(int fd, std::string data, std::chrono::milliseconds delay = 1ms) {
    return [fd, data = std::move(data), delay](const std::atomic<bool>& stop) {
        peer_sleep(delay, stop);
        std::size_t done = 0;
        while (done < data.size() && peer_wait(fd, POLLOUT, stop)) {
            ssize_t n = ::write(fd, data.data() + done, data.size() - done);
            if (n > 0)
                done += static_cast<std::size_t>(n);
        }
    };
}

/// A peer that reads and drops `size` bytes from fd. Once stopped it still takes what is
/// there: the task stops it as soon as its write completed, with the tail of the data
/// still in the pipe, which must not be left to the next step.
auto drain(int fd, std::size_t size) {
    return [fd, size](const std::atomic<bool>& stop) {
        std::vector<char> buf(64 * 1024);
        std::size_t done = 0;
        while (done < size) {
            bool stopping = stop;
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, stopping ? 0 : 10) > 0) {
                ssize_t n = ::read(fd, buf.data(), std::min(buf.size(), size - done));
                if (n > 0)
                    done += static_cast<std::size_t>(n);
                else if (n == 0)
                    return;
            } else if (stopping) {
                return;
            }
        }
    };
}

/// A value whose move allocates (a copy of a string too long for the small-string
/// buffer), so a move of it can throw std::bad_alloc like any user type's may.
struct Heavy {
    int id;
    std::string payload;
    explicit Heavy(int i) : id(i), payload(64, static_cast<char>('a' + i % 26)) {}
    Heavy(const Heavy&) = default;
    Heavy(Heavy&& o) : id(o.id), payload(o.payload) {} // copies: allocates, may throw
    Heavy& operator=(const Heavy&) = default;
    Heavy& operator=(Heavy&& o) {
        payload = o.payload;
        id = o.id;
        return *this;
    }
};

Task<int> quick(int v) {
    co_return v;
}

Task<int> sleeper(int ms) {
    co_await xiio::sleep(std::chrono::milliseconds(ms));
    co_return ms;
}

Task<void> thrower() {
    co_await xiio::sleep(1ms);
    throw Boom{};
}

/// Awaits a future that is destroyed meanwhile: std::logic_error.
Task<void> await_dead(xiio::Future<int>& f, bool& dead) {
    try {
        co_await f;
    } catch (const std::logic_error&) {
        dead = true;
    }
}

std::atomic<int> handled_signals{0};
void count_signal(int) {
    ++handled_signals;
}

/// A handler for the scope (so a signal that xiio failed to block is counted, not fatal).
struct Handler {
    int sig;
    struct sigaction old {};
    explicit Handler(int s) : sig(s) {
        struct sigaction sa {};
        sa.sa_handler = count_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(sig, &sa, &old);
    }
    ~Handler() { sigaction(sig, &old, nullptr); }
};

} // namespace

// ---- core: sleep, yield, Future, Condition -------------------------------------------

TEST_CASE("allocation failures: sleep, sleep_until and yield", "[no-valgrind]") {
    sweep("sleep", [](Probe&) -> Task<void> {
        co_await xiio::sleep(1ms);
        co_await xiio::yield();
        co_await xiio::sleep_until(xiio::Clock::now() - 1ms);
        co_await xiio::sleep(0ms);
        Task<void> as_task = xiio::sleep(1us); // a light awaitable converted to a Task
        co_await std::move(as_task);
    });
}

TEST_CASE("allocation failures: Future set before it is awaited", "[no-valgrind]") {
    sweep("future", [](Probe&) -> Task<void> {
        xiio::Future<std::string> f;
        f.set_result(std::string(100, 'v'));
        std::string v = co_await f; // a copy: allocates in await_resume
        EXPECT(v == std::string(100, 'v'));
        xiio::Future<int> g;
        g.set_exception(std::make_exception_ptr(Boom{}));
        bool boom = false;
        try {
            co_await g;
        } catch (const Boom&) {
            boom = true;
        }
        EXPECT(boom);
        xiio::Future<> h;
        h.set_result();
        co_await h;
    });
}

TEST_CASE("allocation failures: Condition with fds, futures and a deadline", "[no-valgrind]") {
    sweep("condition", [](Probe&) -> Task<void> {
        FdPipe p;
        IntPipe q(O_NONBLOCK);
        xiio::Future<> f;
        // The deadline fires: nothing is ready.
        xiio::Condition timed{.files = {{p.r.get(), xiio::READ}, {q.r, xiio::READ}},
                              .futures = {&f},
                              .time = xiio::Clock::now() + 1ms};
        xiio::Files none = co_await timed;
        EXPECT(none.empty());
        {
            // An fd becomes ready while the task waits (an owned one and a plain int).
            Peer writer(write_later(q.w, "x"));
            xiio::Condition c{.files = {{p.r.get(), xiio::READ}, {q.r, xiio::READ}},
                              .futures = {&f},
                              .time = xiio::Clock::now() + 5s};
            xiio::Files ready = co_await std::move(c);
            EXPECT(ready.size() == 1 && ready.count(q.r) == 1);
        }
        char c;
        EXPECT(::read(q.r, &c, 1) == 1);
        // A future that is done; two conditions combined; a Condition as a Task.
        f.set_result();
        xiio::Condition a{.files = {{q.r, xiio::READ}}};
        xiio::Condition b{.futures = {&f}, .time = xiio::Clock::now() + 5s};
        xiio::Condition both = xiio::Condition::combine({a, b});
        xiio::Files by_future = co_await both;
        EXPECT(by_future.empty());
        Task<xiio::Files> as_task = both;
        by_future = co_await std::move(as_task);
        EXPECT(by_future.empty());
    });
}

TEST_CASE("allocation failures: a Condition and a wait on a regular file", "[no-valgrind]") {
    // Guards against: Loop::attach (loop.hpp) links the node, then builds the EPERM
    // system_error; if that allocation fails, std::bad_alloc passes its
    // catch (const std::system_error&) and the node stays linked to an unregistered
    // entry; detach_fd then removes a registration that was never counted.
    sweep("regular file", [](Probe&) -> Task<void> {
        int fd = ::open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            throw Broken{"open /proc/self/exe failed"};
        xiio::Fd file(fd);
        xiio::Condition c{.files = {{fd, xiio::READ}}, .time = xiio::Clock::now() + 5s};
        xiio::Files ready = co_await c;
        EXPECT(ready.count(fd) == 1);
        co_await xiio::wait_readable(fd);
        co_await xiio::wait_readable(file);
    });
}

// ---- io: read, write, read_exactly, writeall -----------------------------------------

TEST_CASE("allocation failures: read, write, read_exactly and writeall on pipes", "[no-valgrind]") {
    sweep("pipe io", [](Probe&) -> Task<void> {
        FdPipe p;
        char buf[16];
        {
            Peer writer(write_later(p.w.get(), "hello"));
            std::size_t n = co_await xiio::read(p.r, buf); // waits for the peer
            EXPECT(n == 5 && std::string_view(buf, 5) == "hello");
        }
        std::size_t w = co_await xiio::write(p.w, "abc");
        EXPECT(w == 3);
        std::string s = co_await xiio::read(p.r, 100);
        EXPECT(s == "abc");
        {
            Peer writer(write_later(p.w.get(), "0123456789"));
            co_await xiio::read_exactly(p.r, std::span<char>(buf, 10));
            EXPECT(std::string_view(buf, 10) == "0123456789");
        }
        {
            std::string big(256 * 1024, 'x'); // more than the pipe holds: writeall waits
            Peer reader(drain(p.r.get(), big.size()));
            co_await xiio::writeall(p.w, big);
        }
        // Plain int fds: a transient registration, non-blocking and blocking.
        for (int flags : {O_NONBLOCK, 0}) {
            IntPipe q(flags);
            {
                Peer writer(write_later(q.w, "ping"));
                co_await xiio::read_exactly(q.r, std::span<char>(buf, 4));
                EXPECT(std::string_view(buf, 4) == "ping");
            }
            std::string big(128 * 1024, 'y');
            Peer reader(drain(q.r, big.size()));
            co_await xiio::writeall(q.w, big);
        }
        // End of file first: IncompleteReadError (its message allocates, so it may be a
        // bad_alloc instead; that one propagates).
        co_await xiio::writeall(p.w, "abc");
        p.w.close();
        bool incomplete = false;
        try {
            co_await xiio::read_exactly(p.r, std::span<char>(buf, 10));
        } catch (const xiio::IncompleteReadError& e) {
            incomplete = e.partial == 3;
        }
        EXPECT(incomplete);
    });
}

TEST_CASE("allocation failures: closing an Fd or a subscription a task waits on", "[no-valgrind]") {
    // Guards against: Loop::forget (loop.hpp, noexcept; reached from Fd::close, and from
    // SignalSubscription::reset) builds std::system_error(EBADF, ..., "close") for each
    // waiter; its what() string allocates: std::terminate.
    sweep("close while waited", [](Probe&) -> Task<void> {
        FdPipe p;
        bool ebadf = false;
        auto reader = [&]() -> Task<void> {
            char b[4];
            try {
                co_await xiio::read(p.r, b);
            } catch (const std::system_error& e) {
                ebadf = e.code().value() == EBADF;
            }
        };
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(reader());
            co_await xiio::yield(); // the reader waits
            p.r.close();
        };
        co_await xiio::task_group(body);
        EXPECT(ebadf);

        // The same through SignalSubscription::reset, which closes its signalfd.
        std::optional<xiio::SignalSubscription> sub;
        sub.emplace(xiio::subscribe_signals({SIGUSR1}));
        bool unsubscribed = false;
        auto listener = [&]() -> Task<void> {
            try {
                co_await sub->next();
            } catch (const std::system_error& e) {
                unsubscribed = e.code().value() == EBADF;
            }
        };
        auto resetter = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(listener());
            co_await xiio::yield(); // the listener waits
            sub->reset();
        };
        co_await xiio::task_group(resetter);
        EXPECT(unsubscribed);
    });
}

// ---- multiplex: task_group, gather, timeout, move_on_after ---------------------------

TEST_CASE("allocation failures: task_group with members that return, sleep and throw",
          "[no-valgrind]") {
    // Guards against: MemberBase::finished (multiplex.hpp, noexcept) calls Loop::bury (loop.hpp),
    // a vector push_back: a failed growth is std::terminate. Behind it (seen under ASan):
    // SleepAwaiter::await_suspend (core.hpp) leaves its Wait bound to the runner when
    // add_timer throws; `tg.add_task(sleep(..))` keeps the awaiter in the member's frame,
    // which the graveyard destroys after the member (the runner) was freed, and
    // drop_wait reads it: heap-use-after-free.
    sweep("task_group", [](Probe&) -> Task<void> {
        auto body = [](xiio::TaskGroup& tg) -> Task<int> {
            auto a = tg.add_task(quick(1));
            auto b = tg.add_task(sleeper(1));
            tg.add_task(xiio::sleep(1ms));
            tg.add_task(xiio::yield());
            int got = co_await a;
            got += co_await b;
            co_return got;
        };
        int sum = co_await xiio::task_group(body);
        EXPECT(sum == 2);

        // One member throws: the others (a sleeper, the body) are cancelled, Boom comes out.
        auto failing = [](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(sleeper(10000));
            tg.add_task(thrower());
            tg.add_task(quick(3));
            co_await xiio::sleep(10s);
        };
        bool boom = false;
        try {
            co_await xiio::task_group(failing);
        } catch (const Boom&) {
            boom = true;
        }
        EXPECT(boom);

        // cancel(): the group ends without error; a handle outlives the group.
        std::optional<xiio::TaskHandle<int>> kept;
        auto cancelled = [&](xiio::TaskGroup& tg) -> Task<void> {
            kept = tg.add_task(sleeper(10000));
            co_await xiio::sleep(1ms);
            tg.cancel();
        };
        co_await xiio::task_group(cancelled);
        bool was_cancelled = false;
        try {
            kept->result();
        } catch (const xiio::CancelledError&) {
            was_cancelled = true;
        }
        EXPECT(was_cancelled);
    });
}

TEST_CASE("allocation failures: gather, variadic and over a vector", "[no-valgrind]") {
    // Guards against: Loop::bury from the noexcept MemberBase::finished, and the use-after-free
    // of a failed sleep in a member, as for task_group.
    sweep("gather", [](Probe&) -> Task<void> {
        auto g = xiio::gather(quick(1), sleeper(2), xiio::sleep(1ms));
        auto [a, b, c] = co_await std::move(g);
        EXPECT(a == 1 && b == 2);
        (void)c;
        std::vector<Task<int>> tasks;
        for (int i = 0; i < 4; ++i)
            tasks.push_back(i % 2 ? quick(i) : sleeper(i));
        std::vector<int> values = co_await xiio::gather(std::move(tasks));
        EXPECT((values == std::vector<int>{0, 1, 2, 3}));
        std::vector<Task<void>> failing;
        failing.push_back(thrower());
        failing.push_back(xiio::sleep(10s));
        bool boom = false;
        try {
            co_await xiio::gather(std::move(failing));
        } catch (const Boom&) {
            boom = true;
        }
        EXPECT(boom);
    });
}

TEST_CASE("allocation failures: timeout and move_on_after, expiring and not", "[no-valgrind]") {
    // Guards against: Loop::bury from the noexcept MemberBase::finished, as for task_group.
    sweep("timeout", [](Probe&) -> Task<void> {
        int v = co_await xiio::timeout(5s, sleeper(1));
        EXPECT(v == 1);
        bool timed_out = false;
        try {
            co_await xiio::timeout(1ms, sleeper(10000));
        } catch (const xiio::TimeoutError&) {
            timed_out = true;
        }
        EXPECT(timed_out);
        auto make = [] { return sleeper(1); }; // a callable body
        v = co_await xiio::timeout(5s, make);
        EXPECT(v == 1);
        v = co_await xiio::timeout(std::nullopt, sleeper(1));
        EXPECT(v == 1);
        bool finished = co_await xiio::move_on_after(1ms, xiio::sleep(10s));
        EXPECT(!finished);
        std::optional<int> o = co_await xiio::move_on_after(5s, sleeper(1));
        EXPECT(o && *o == 1);
    });
}

// ---- sync: Event, Semaphore, Lock, Queue ---------------------------------------------

TEST_CASE("allocation failures: Event, Semaphore and Lock with waiters", "[no-valgrind]") {
    // Guards against: Loop::bury from the noexcept MemberBase::finished, as for task_group.
    sweep("event semaphore lock", [](Probe&) -> Task<void> {
        xiio::Event ev;
        int woken = 0;
        auto waiter = [&]() -> Task<void> {
            co_await ev.wait();
            ++woken;
        };
        auto setter = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(waiter());
            tg.add_task(waiter());
            co_await xiio::yield(); // both wait
            ev.set();
        };
        co_await xiio::task_group(setter);
        EXPECT(woken == 2);

        xiio::Semaphore sem(1);
        xiio::Lock lock;
        int inside = 0, most = 0, done = 0;
        auto worker = [&]() -> Task<void> {
            co_await sem.acquire();
            {
                auto guard = co_await lock.lock();
                most = std::max(most, ++inside);
                co_await xiio::yield(); // the others queue on the semaphore
                --inside;
            }
            sem.release();
            ++done;
        };
        auto workers = [&](xiio::TaskGroup& tg) -> Task<void> {
            for (int i = 0; i < 3; ++i)
                tg.add_task(worker());
            co_return;
        };
        co_await xiio::task_group(workers);
        EXPECT(done == 3 && most == 1 && sem.available() == 1 && !lock.locked());
    });
}

TEST_CASE("allocation failures: Queue put and get with waiters, values whose move throws",
          "[no-valgrind]") {
    // Guards against: Loop::bury, as for task_group. (The sweep also found what 7e74b5a fixed:
    // Queue moved a value after unlinking the waiter it handed it to, so a throwing move
    // stranded a getter or a putter - a deadlock report here - or lost a value.)
    // Producer and consumer retry an operation that threw bad_alloc: every value arrives
    // once and in order (a get whose move throws leaves its value queued), and nobody
    // hangs.
    sweep("queue", [](Probe&) -> Task<void> {
        xiio::Queue<Heavy> q(2);
        std::vector<int> got;
        auto producer = [&]() -> Task<void> {
            for (int i = 0; i < 6; ++i) {
                for (;;) {
                    try {
                        auto put = q.put(Heavy(i));
                        co_await put;
                        break;
                    } catch (const std::bad_alloc&) {
                    }
                }
            }
            q.close();
        };
        auto consumer = [&]() -> Task<void> {
            for (;;) {
                try {
                    auto get = q.get();
                    // Initialized by the get's result itself: an assignment would move the
                    // value once more, in this task, after it left the queue.
                    std::optional<Heavy> v = co_await get;
                    if (!v)
                        co_return;
                    got.push_back(v->id); // reserved: cannot fail
                } catch (const std::bad_alloc&) {
                }
            }
        };
        got.reserve(16);
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(consumer()); // waits first: the first put hands over directly
            co_await xiio::yield();
            tg.add_task(producer());
            co_return;
        };
        co_await xiio::task_group(body);
        EXPECT((got == std::vector<int>{0, 1, 2, 3, 4, 5}));
    });
}

TEST_CASE("allocation failures: a Future awaited by several tasks, then destroyed while "
          "awaited",
          "[no-valgrind]") {
    // Guards against: Loop::bury as for task_group; and ~FutureBase (core.hpp, a destructor,
    // so noexcept) builds a std::logic_error for each waiter: its message allocates.
    sweep("future waiters", [](Probe&) -> Task<void> {
        xiio::Future<std::string> f;
        int ok = 0;
        auto waiter = [&]() -> Task<void> {
            std::string v = co_await f;
            ok += v.size() == 64;
        };
        auto setter = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(waiter());
            tg.add_task(waiter());
            co_await xiio::yield();
            f.set_result(std::string(64, 'f'));
        };
        co_await xiio::task_group(setter);
        EXPECT(ok == 2);

        bool dead = false;
        auto orphan = [&](xiio::TaskGroup& tg) -> Task<void> {
            auto dies = std::make_unique<xiio::Future<int>>();
            tg.add_task(await_dead(*dies, dead));
            co_await xiio::yield();
            dies.reset();
        };
        co_await xiio::task_group(orphan);
        EXPECT(dead);
    });
}

TEST_CASE("allocation failures: a deadlock is reported", "[no-valgrind]") {
    // Guards against: Loop::next_deadline (loop.hpp, noexcept) builds the deadlock's
    // std::logic_error; its message allocates: std::terminate.
    SweepOptions opts;
    opts.also_accept = [](std::exception_ptr e) {
        try {
            std::rethrow_exception(e);
        } catch (const std::logic_error& x) {
            return std::string(x.what()).find("deadlock") != std::string::npos;
        } catch (...) {
            return false;
        }
    };
    sweep(
        "deadlock",
        [](Probe&) -> Task<void> {
            xiio::Future<int> never;
            co_await never;
        },
        opts);
}

// ---- threads ----------------------------------------------------------------------------

TEST_CASE("allocation failures: in_thread and ThreadPool::run", "[no-valgrind]") {
    // Only the loop's thread fails (the hook is thread-local): submission, the completion's
    // hand-over to the task, the values' moves on this side.
    sweep("threads", [](Probe&) -> Task<void> {
        auto multiply = [](int a, int b) { return a * b; };
        int r = co_await xiio::in_thread(multiply, 6, 7);
        EXPECT(r == 42);
        xiio::ThreadPool pool(2);
        auto twice = [](const std::string& s) { return s + s; };
        std::string s = co_await pool.run(twice, std::string(40, 'a'));
        EXPECT(s == std::string(80, 'a'));
        auto fails = [] { throw Boom{}; };
        bool boom = false;
        try {
            co_await pool.run(fails);
        } catch (const Boom&) {
            boom = true;
        }
        EXPECT(boom);
        auto nothing = [] {};
        co_await pool.run(nothing);
        Task<int> as_task = pool.run(multiply, 2, 3);
        r = co_await std::move(as_task);
        EXPECT(r == 6);
    });
}

namespace {
/// The allocation failure armed on a worker thread by a job (the hook is thread-local).
thread_local std::optional<test::FailAllocation> worker_failure;
} // namespace

/// A scenario for sweep(Arm::inside): a job arms the failure of the worker's n-th
/// allocation after it, i.e. in the worker's part of the hand-over (Job::execute, post:
/// noexcept), then a second job disarms it and says whether it fired. `warm` jobs first
/// grow the loop's remote queue: the queue's vector and the loop's batch swap on each
/// take, and a completion usually costs one take (then the next post lands in the other
/// vector) but sometimes two, so after k jobs one of them still has no room with a
/// probability that shrinks like q^(k-1).
auto worker_hand_over(xiio::ThreadPool& pool, int warm) {
    return [&pool, warm](Probe& p) -> Task<void> {
        auto nothing = [] {};
        for (int i = 0; i < warm; ++i)
            co_await pool.run(nothing);
        auto arm = [n = p.n] {
            worker_failure.emplace(n);
            return 5;
        };
        int r = co_await pool.run(arm);
        EXPECT(r == 5);
        auto disarm = [] {
            bool fired = test::FailAllocation::fired();
            worker_failure.reset();
            return fired;
        };
        p.fired = co_await pool.run(disarm);
    };
}

TEST_CASE("allocation failures: a worker hands a job's completion over without allocating",
          "[no-valgrind]") {
    // The completion callback is made on the loop's thread when the job is submitted
    // (JobState::prepare): once the queue has room, the worker allocates nothing after the
    // job, so the failure armed there never fires. It used to make the std::function in
    // the noexcept JobState::post: std::terminate at n = 0. (Without room, the queue's
    // growth still fails there: see the pending case below.)
    xiio::ThreadPool pool(1); // one worker: the disarming job runs where the arming one did
    auto r = sweep("worker completion, warm queue", worker_hand_over(pool, 16),
                   SweepOptions{.arm = Arm::inside, .min_failures = 0});
    CHECK(r.threw + r.absorbed == 0);
}

TEST_CASE("allocation failures: a worker posting a job's completion to a new queue",
          "[no-valgrind]") {
    // Guards against: RemoteQueue::post (detail/remote_queue.hpp) push_back()s the callback into
    // a vector: its first growth (or any later one) fails in the noexcept JobState::post:
    // std::terminate.
    xiio::ThreadPool pool(1);
    sweep("worker completion", worker_hand_over(pool, 0),
          SweepOptions{.arm = Arm::inside, .min_failures = 0});
}

TEST_CASE("allocation failures: a cancelled in_thread job", "[no-valgrind]") {
    // Guards against: Loop::bury from the noexcept MemberBase::finished (move_on_after is a group).
    sweep("cancelled job", [](Probe&) -> Task<void> {
        auto slow = [] { std::this_thread::sleep_for(50ms); }; // outlives the deadline
        auto job = xiio::in_thread(slow);
        bool finished = co_await xiio::move_on_after(1ms, std::move(job));
        EXPECT(!finished);
    });
}

// ---- process --------------------------------------------------------------------------

TEST_CASE("allocation failures: run_process", "[no-valgrind]") {
    // Guards against: run_process waits in a task_group: Loop::bury from the noexcept
    // MemberBase::finished.
    sweep("run_process", [](Probe&) -> Task<void> {
        // Input written, output captured: every member of run_process's group.
        std::vector<std::string> cat{"cat"};
        xiio::ProcessOptions feed;
        feed.capture_output = true;
        feed.input = std::string(100, 'c');
        xiio::CompletedProcess r = co_await xiio::run_process(cat, feed);
        EXPECT(r.out == std::string(100, 'c') && r.err.empty() && r.returncode == 0);
        std::vector<std::string> f{"false"};
        xiio::ProcessOptions check;
        check.check = true;
        bool failed = false;
        try {
            co_await xiio::run_process(f, check);
        } catch (const xiio::CalledProcessError& e) {
            failed = e.returncode == 1;
        }
        EXPECT(failed);
    });
}

TEST_CASE("allocation failures: run_process cancelled while the child runs", "[no-valgrind]") {
    // Guards against: Loop::bury, as for run_process. The child must always be stopped and
    // reaped, whatever fails: the sweep checks that no child is left.
    sweep("run_process cancelled", [](Probe&) -> Task<void> {
        std::vector<std::string> cmd{"sleep", "5"};
        auto proc = xiio::run_process(cmd);
        std::optional<xiio::CompletedProcess> r =
            co_await xiio::move_on_after(5ms, std::move(proc));
        EXPECT(!r);
    });
}

// ---- signals --------------------------------------------------------------------------

TEST_CASE("allocation failures: subscribe_signals and next", "[no-valgrind]") {
    Handler handler(SIGUSR2);
    const sigset_t mask = test::current_mask();
    handled_signals = 0;
    SweepOptions opts;
    opts.after_each = [&] {
        if (!test::same_mask(test::current_mask(), mask))
            return std::string("the signal mask was not restored");
        sigset_t pending;
        sigpending(&pending);
        if (sigismember(&pending, SIGUSR2))
            return std::string("SIGUSR2 left pending");
        if (handled_signals != 0)
            return std::string("SIGUSR2 reached its handler: it was not blocked");
        return std::string();
    };
    sweep(
        "signals",
        [](Probe&) -> Task<void> {
            auto sub = xiio::subscribe_signals({SIGUSR2});
            pthread_kill(pthread_self(), SIGUSR2);
            int sig = co_await sub.next();
            EXPECT(sig == SIGUSR2);
            pthread_t self = pthread_self();
            Peer sender([self](const std::atomic<bool>& stop) {
                peer_sleep(1ms, stop);
                if (!stop)
                    pthread_kill(self, SIGUSR2);
            });
            sig = co_await sub.next(); // waits for the peer
            EXPECT(sig == SIGUSR2);
        },
        opts);
    // Every subscription ended: the signal is free to subscribe again.
    auto again = xiio::subscribe_signals({SIGUSR2});
    CHECK(again);
}

// ---- net --------------------------------------------------------------------------------

TEST_CASE("allocation failures: TCP listen, connect, accept, send_all and recv", "[no-valgrind]") {
    sweep("tcp", [](Probe&) -> Task<void> {
        xiio::Listener l = xiio::Listener::tcp("127.0.0.1", 0);
        auto connecting = xiio::connect_tcp("127.0.0.1", l.port());
        xiio::Socket c = co_await std::move(connecting);
        xiio::Socket s = co_await l.accept();
        co_await c.send_all("ping");
        char buf[16];
        std::size_t got = 0;
        while (got < 4) {
            std::size_t n = co_await s.recv(std::span<char>(buf + got, sizeof buf - got));
            EXPECT(n > 0);
            got += n;
        }
        EXPECT(std::string_view(buf, 4) == "ping");
        {
            Peer writer(write_later(c.fd(), "pong")); // recv waits
            std::size_t n = co_await s.recv(buf);
            EXPECT(n > 0 && n <= 4);
        }
        {
            std::string big(1024 * 1024, 'z'); // more than the socket buffers: send_all waits
            Peer reader(drain(c.fd(), big.size()));
            co_await s.send_all(big);
        }
        {
            // accept waits for a connection that a peer makes later.
            std::uint16_t port = l.port();
            Peer connector([port](const std::atomic<bool>& stop) {
                peer_sleep(1ms, stop);
                int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                sockaddr_in a{};
                a.sin_family = AF_INET;
                a.sin_port = htons(port);
                a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
                ::close(fd);
            });
            xiio::Socket accepted = co_await l.accept();
            EXPECT(accepted);
        }
    });
}
