// Tests of xiio/loop.hpp through its seam: the waiting step (Poller) replaced by doubles
// that count, fail or get interrupted.
#include "helpers.hpp"

#include <algorithm>
#include <atomic>
#include <csignal>
#include <thread>

#include <pthread.h>

using namespace test;
using xiio::Task;

namespace {

/// Wraps epoll; counts waits and fails the n-th one (0 = never) with `err`.
class TestPoller : public xiio::detail::Poller {
public:
    int fail_at = 0;
    int err = EIO;
    int waits = 0;
    std::vector<int> added;

    int add(int fd, unsigned events, bool oneshot) override {
        added.push_back(fd);
        return real_.add(fd, events, oneshot);
    }
    int modify(int fd, unsigned events, bool oneshot) override {
        ++modified;
        return real_.modify(fd, events, oneshot);
    }
    int modified = 0;
    void remove(int fd) noexcept override { real_.remove(fd); }
    void wait(xiio::Clock::time_point deadline,
              std::vector<xiio::detail::PollEvent>& ready) override {
        if (++waits == fail_at)
            throw std::system_error(err, std::system_category(), "epoll_pwait2");
        real_.wait(deadline, ready);
    }

private:
    xiio::detail::EpollPoller real_;
};

/// Installs a TestPoller for the loops this thread creates while it lives.
struct UsePoller {
    TestPoller* poller = nullptr;
    UsePoller(int fail_at = 0) {
        xiio::detail::poller_factory() = [this, fail_at] {
            auto p = std::make_unique<TestPoller>();
            p->fail_at = fail_at;
            poller = p.get();
            return p;
        };
    }
    ~UsePoller() { xiio::detail::poller_factory() = nullptr; }
};

} // namespace

TEST_CASE("cleanup runs when the loop's wait fails while tasks are paused") {
    UsePoller use(1);
    bool cleaned = false;
    auto body = [&]() -> Task<void> {
        try {
            co_await xiio::sleep(1s);
        } catch (const std::system_error&) {
            cleaned = true;
            throw;
        }
    };
    try {
        run(body);
        FAIL("no exception");
    } catch (const std::system_error& e) {
        CHECK(e.code().value() == EIO);
    }
    CHECK(cleaned);
}

TEST_CASE("the loop's failure is thrown into every suspended task, and out of run even if caught") {
    UsePoller use(1); // no fd is watched: the first wait is the one with all members asleep
    int caught = 0;
    auto sleeper = [&]() -> Task<void> {
        try {
            co_await xiio::sleep(1s);
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == EIO);
            ++caught; // and swallowed
        }
    };
    auto body = [&]() -> Task<void> { co_await xiio::gather(sleeper(), sleeper(), sleeper()); };
    CHECK_THROWS_AS(run(body), std::system_error);
    CHECK(caught == 3);
}

TEST_CASE("cleanup may await after the loop's wait failed, and a later run works") {
    UsePoller use(1);
    bool cleaned = false;
    auto body = [&]() -> Task<void> {
        std::exception_ptr error;
        try {
            co_await xiio::sleep(1s);
        } catch (...) {
            error = std::current_exception(); // no co_await in a catch block: store it
        }
        co_await xiio::sleep(10ms); // the next wait works again
        cleaned = true;
        if (error)
            std::rethrow_exception(error);
    };
    CHECK_THROWS_AS(run(body), std::system_error);
    CHECK(cleaned);
    xiio::detail::poller_factory() = nullptr;
    CHECK(xiio::run([]() -> Task<int> {
              co_await xiio::sleep(1ms);
              co_return 5;
          }()) == 5);
}

TEST_CASE("a deadlock is reported as logic_error instead of hanging") {
    CHECK_THROWS_AS(run([]() -> Task<void> {
                        xiio::Future<int> never;
                        co_await never;
                    }),
                    std::logic_error);
}

TEST_CASE("an owned Fd costs no epoll_ctl per wait") {
    UsePoller use;
    run([&]() -> Task<void> {
        Pipe p;
        for (int i = 0; i < 50; ++i) {
            auto writer = [&]() -> Task<void> {
                co_await xiio::yield();
                co_await xiio::write(p.w, "x");
            };
            co_await xiio::gather(xiio::read(p.r, 1), writer());
        }
        // The reader's registration, added once (the other one: the loop's wake-up
        // eventfd, which a loop owning Fds has, see Fd::close).
        CHECK(std::count(use.poller->added.begin(), use.poller->added.end(), p.r.get()) == 1);
        CHECK(use.poller->added.size() == 2);
        CHECK(use.poller->modified == 0); // and never changed
    });
}

TEST_CASE("ready tasks and no fd waiter: the loop does not ask epoll") {
    UsePoller use;
    int waits_while_yielding = -1, waits_with_reader = -1;
    run([&]() -> Task<void> {
        for (int i = 0; i < 100; ++i)
            co_await xiio::yield();
        waits_while_yielding = use.poller->waits;
        Pipe p; // with a reader waiting, ready work still polls (without blocking)
        auto reader = [&]() -> Task<void> { co_await xiio::read(p.r, 1); };
        auto writer = [&]() -> Task<void> {
            for (int i = 0; i < 10; ++i)
                co_await xiio::yield();
            co_await xiio::write(p.w, "x");
        };
        co_await xiio::gather(reader(), writer());
        waits_with_reader = use.poller->waits; // the poller dies with the loop
    });
    CHECK(waits_while_yielding == 0);
    CHECK(waits_with_reader >= 10);
}

TEST_CASE("an int fd keeps no registration after its wait ended") {
    UsePoller use;
    run([&]() -> Task<void> {
        int fds[2];
        REQUIRE(::pipe2(fds, O_NONBLOCK) == 0);
        REQUIRE(::write(fds[1], "x", 1) == 1);
        co_await xiio::wait_readable(fds[0]);
        // If fds[0] stayed in the epoll set, closing it while a dup keeps the (readable)
        // file open would leave a stale registration and make every poll return at once.
        int keep = ::dup(fds[0]);
        ::close(fds[0]);
        int before = use.poller->waits;
        co_await xiio::sleep(30ms);
        CHECK(use.poller->waits - before <= 3);
        ::close(keep);
        ::close(fds[1]);
    });
}

namespace {
void on_usr1(int) {}
} // namespace

TEST_CASE("EINTR from signals during the wait is retried") {
    struct sigaction sa {};
    sa.sa_handler = on_usr1; // no SA_RESTART: epoll_pwait2 fails with EINTR
    struct sigaction old {};
    sigaction(SIGUSR1, &sa, &old);
    pthread_t self = pthread_self();
    std::atomic<bool> stop{false};
    std::thread storm([&] {
        while (!stop) {
            pthread_kill(self, SIGUSR1);
            std::this_thread::sleep_for(1ms);
        }
    });
    assert_duration(100ms, [] { run([]() -> Task<void> { co_await xiio::sleep(100ms); }); });
    stop = true;
    storm.join();
    sigaction(SIGUSR1, &old, nullptr);
}

namespace {

/// Reports one fake READ event for `fd` at the first wait after arming.
class SpuriousPoller : public xiio::detail::EpollPoller {
public:
    int fd = -1;
    void wait(xiio::Clock::time_point deadline,
              std::vector<xiio::detail::PollEvent>& ready) override {
        if (fd >= 0) {
            ready.push_back({std::exchange(fd, -1), xiio::READ});
            return;
        }
        EpollPoller::wait(deadline, ready);
    }
};

} // namespace

TEST_CASE("spurious readiness keeps a read waiting instead of failing or returning") {
    SpuriousPoller* poller = nullptr;
    xiio::detail::poller_factory() = [&] {
        auto p = std::make_unique<SpuriousPoller>();
        poller = p.get();
        return p;
    };
    run([&]() -> Task<void> {
        Pipe p;
        poller->fd = p.r.get();
        auto writer = [&]() -> Task<void> {
            co_await xiio::sleep(20ms);
            co_await xiio::writeall(p.w, "real");
        };
        auto start = xiio::Clock::now();
        auto [s, _] = co_await xiio::gather(xiio::read(p.r, 10), writer());
        CHECK(s == "real");
        CHECK(elapsed_ms(start) >= 20);
        CHECK(poller->fd == -1); // the fake event was delivered
    });
    xiio::detail::poller_factory() = nullptr;
}

// ---- no allocation per co_await --------------------------------------------------------

// This file replaces the global operator new/delete with a counting pair on malloc/free;
// g++ sees free() of a pointer from `new` after inlining and warns, wrongly.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

namespace {
thread_local long allocations = 0;
thread_local long failing_after = -1; // see test::FailAllocation
} // namespace

test::FailAllocation::FailAllocation(long n) noexcept : saved_(failing_after) {
    failing_after = n;
}
test::FailAllocation::~FailAllocation() {
    failing_after = saved_;
}
long test::allocation_count() noexcept {
    return allocations;
}
bool test::FailAllocation::fired() noexcept {
    return failing_after == -2;
}

// Every non-aligned form is replaced, so that no allocation of one family is freed by the
// other (ASan checks that).
namespace {
/// One allocation: counted, and the one that fails if it is its turn.
void allocation() {
    ++allocations;
    if (failing_after >= 0 && failing_after-- == 0) {
        failing_after = -2; // fired: later allocations succeed
        throw std::bad_alloc();
    }
}
// Task frames come from xiio's frame pool, which asks operator new once per chunk: its
// test hook makes each frame an allocation as before.
[[maybe_unused]] const bool frames_count = [] {
    xiio::detail::frame_allocation_probe() = allocation;
    return true;
}();
} // namespace

void* operator new(std::size_t n) {
    allocation();
    if (void* p = std::malloc(n ? n : 1))
        return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
    return ::operator new(n);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    ++allocations;
    return std::malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
    return ::operator new(n, std::nothrow);
}
void operator delete(void* p) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}
void operator delete[](void* p) noexcept {
    std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
    std::free(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
    std::free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
    std::free(p);
}

// [no-valgrind]: valgrind replaces operator new, so the counting one below is not called.
TEST_CASE("awaiting a leaf allocates nothing: read, write, sleep, yield, future", "[no-valgrind]") {
    run([]() -> Task<void> {
        Pipe p;
        xiio::Future<int> f;
        f.set_result(1);
        char buf[16];
        auto rounds = [&](int n) -> Task<void> {
            for (int i = 0; i < n; ++i) {
                co_await xiio::write(p.w, "ping");
                co_await xiio::read(p.r, buf);
                co_await xiio::sleep(-1ms);
                co_await xiio::sleep(1us);
                co_await xiio::yield();
                co_await f;
            }
        };
        co_await rounds(10);      // warm up: the timer heap and the fd table grow once
        auto task = rounds(1000); // clang -O2 may even elide this frame's allocation (HALO)
        long before = allocations;
        ::operator delete(::operator new(16)); // a direct call is never elided
        CHECK(allocations == before + 1);      // so: the counter works
        before = allocations;
        co_await task;
        CHECK(allocations - before == 0);
    });
}

// ---- leak accounting (xiio/detail/accounting.hpp; every test case ends by checking it) --

TEST_CASE("leak accounting counts frames, runners, registrations and timers while they live") {
    using xiio::detail::live_counts;
    auto before = live_counts();
    test::Pipe p;
    xiio::detail::LiveCounts sleeping, reading;
    // Named: the members' frames refer to these closures until they finish.
    auto reader = [&]() -> xiio::Task<void> {
        char c;
        co_await xiio::read(p.r, std::span<char>(&c, 1));
    };
    auto writer = [&]() -> xiio::Task<void> {
        co_await xiio::sleep(10ms);
        reading = live_counts(); // the reader waits, this one runs
        co_await xiio::write(p.w, std::string_view("x"));
    };
    test::run([&]() -> xiio::Task<void> {
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
            tg.add_task(reader());
            tg.add_task(writer());
            co_await xiio::yield();
            sleeping = live_counts();
        });
    });
    INFO("runners " << sleeping.runners - before.runners << ", frames "
                    << sleeping.frames - before.frames);
    CHECK(sleeping.runners - before.runners == 4); // run()'s root, the body, two members
    CHECK(sleeping.frames - before.frames == 5);   // those + task_group's frame
    CHECK(sleeping.timers - before.timers == 1);
    // The reader's Fd, and the wake-up eventfd of a loop that owns Fds (see Fd::close).
    CHECK(sleeping.registrations - before.registrations == 2);
    CHECK(reading.timers - before.timers == 0);
    CHECK(reading.registrations - before.registrations == 2);
    CHECK(live_counts() == before);
}

TEST_CASE("a leaking test case is reported", "[.][leak-demo]") {
    // Run only by the CTest test "leak check: ..." (tests/CMakeLists.txt), which expects
    // the listener in main.cpp to report it and fail.
    static xiio::Task<void> kept;
    kept = []() -> xiio::Task<void> { co_return; }();
    static int fd = ::dup(0);
    (void)fd;
}

// ---- per-event cost does not grow with unrelated waiters ---------------------------------

namespace {

/// Microseconds per wake-up in a ring of 8 tasks, each waiting for a Condition on its own
/// pipe and on one shared "stop" pipe (int fds, as a Condition registers them); a woken
/// task passes a token to the next one's pipe and waits again. `idle` more tasks wait on
/// the stop pipe alone.
double us_per_wakeup(int idle, int rounds) {
    constexpr int ring = 8;
    std::vector<test::Pipe> pipes(ring);
    test::Pipe stop;
    double result = 0;
    xiio::run([&]() -> Task<void> {
        int passes = 0;
        auto start = xiio::Clock::now();
        auto member = [&](int i) -> Task<void> {
            int own = pipes[static_cast<std::size_t>(i)].r.get();
            int next = pipes[static_cast<std::size_t>((i + 1) % ring)].w.get();
            for (char b;;) {
                xiio::Condition c{.files = {{own, xiio::READ}, {stop.r.get(), xiio::READ}}};
                if ((co_await std::move(c)).count(stop.r.get()))
                    co_return;
                if (::read(own, &b, 1) != 1)
                    throw std::runtime_error("read");
                if (++passes == rounds) {
                    result = std::chrono::duration<double, std::micro>(xiio::Clock::now() - start)
                                 .count() /
                             rounds;
                    next = stop.w.get();
                }
                if (::write(next, "t", 1) != 1)
                    throw std::runtime_error("write");
            }
        };
        auto idler = [&]() -> Task<void> { co_await xiio::wait_readable(stop.r.get()); };
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            for (int i = 0; i < ring; ++i)
                tg.add_task(member(i));
            for (int i = 0; i < idle; ++i)
                tg.add_task(idler());
            co_await xiio::yield(); // every member waits now
            start = xiio::Clock::now();
            if (::write(pipes[0].w.get(), "t", 1) != 1)
                throw std::runtime_error("write");
        };
        co_await xiio::task_group(body);
    }());
    return result;
}

} // namespace

// The ratio of two costs measured in the same process, not a timing: before per-entry
// counts, each wake-up walked every waiter of the shared pipe three times (with 20,000
// idle waiters, over 50x slower per wake-up than with 10).
TEST_CASE("waking one task does not cost more when many tasks share another fd") {
    us_per_wakeup(10, 500); // warm up
    double few = us_per_wakeup(10, 4000);
    double many = us_per_wakeup(20000, 4000);
    INFO("per wake-up: " << few << " us with 10 idle waiters, " << many << " us with 20000");
    CHECK(many < 3 * few);
}
