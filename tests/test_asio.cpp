// Tests of xiio/asio.hpp (the original's test_compat, ported) and of hosting xiio on another
// loop through the same seam (a poll(2) host written here).
#include "helpers.hpp"

#include <xiio/asio.hpp>

#include <asio/experimental/awaitable_operators.hpp>

#include <array>
#include <atomic>
#include <limits>
#include <thread>

#include <poll.h>
#include <sys/wait.h>

using namespace test;
using xiio::Task;
using namespace asio::experimental::awaitable_operators;

namespace {

/// Runs `body` (returning an asio::awaitable) to completion on a fresh io_context; rethrows
/// what it threw; checks no fd leaked.
template <class F>
void asio_run(F body) {
    LeakCheck leaks;
    std::exception_ptr error;
    {
        asio::io_context ctx(1); // its epoll, eventfd and timerfd are closed with it
        asio::co_spawn(ctx, body(), [&](std::exception_ptr e) { error = e; });
        ctx.run();
    }
    leaks.check();
    if (error)
        std::rethrow_exception(error);
}

asio::awaitable<void> asio_sleep(Ms d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(asio::use_awaitable);
}

Task<int> xiio_sleep(Ms d, int v) {
    co_await xiio::sleep(d);
    co_return v;
}

} // namespace

TEST_CASE("on_asio: sleep takes its duration and returns the value") {
    assert_duration(100ms, [] {
        asio_run([]() -> asio::awaitable<void> {
            int v = co_await xiio::on_asio(xiio_sleep(100ms, 7));
            CHECK(v == 7);
        });
    });
}

TEST_CASE("on_asio: Asio and xiio sleeping together take the longer, not the sum") {
    assert_duration(100ms, [] {
        asio_run([]() -> asio::awaitable<void> {
            auto [a, b] = co_await (xiio::on_asio(xiio_sleep(100ms, 1)) &&
                                    xiio::on_asio(xiio_sleep(100ms, 2)));
            CHECK(a + b == 3);
            co_await (asio_sleep(0ms) && xiio::on_asio(xiio::sleep(0ms)));
        });
    });
    assert_duration(100ms, [] {
        asio_run([]() -> asio::awaitable<void> {
            co_await (asio_sleep(100ms) && xiio::on_asio(xiio::sleep(100ms)));
        });
    });
}

TEST_CASE("on_asio: cancelled by || with a timer, the xiio task cleans up first") {
    bool cleaned = false;
    assert_duration(100ms, [&] {
        asio_run([&]() -> asio::awaitable<void> {
            auto body = [&]() -> Task<int> {
                std::exception_ptr error;
                try {
                    co_await xiio::sleep(500ms);
                } catch (...) {
                    error = std::current_exception();
                }
                co_await xiio::sleep(1ms); // cleanup may await
                cleaned = true;
                if (error)
                    std::rethrow_exception(error);
                co_return 1;
            };
            auto result = co_await (xiio::on_asio(body()) || asio_sleep(100ms));
            CHECK(result.index() == 1); // the timer won
        });
    });
    CHECK(cleaned);
}

TEST_CASE("on_asio: a cancelled task fails the Asio operation with operation_aborted") {
    asio_run([]() -> asio::awaitable<void> {
        asio::cancellation_signal signal;
        auto ex = co_await asio::this_coro::executor;
        std::exception_ptr error;
        bool done = false;
        asio::co_spawn(ex, xiio::on_asio(xiio::sleep(1s)),
                       asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr e) {
                           error = e;
                           done = true;
                       }));
        co_await asio_sleep(20ms);
        signal.emit(asio::cancellation_type::terminal);
        while (!done)
            co_await asio_sleep(1ms);
        REQUIRE(error);
        try {
            std::rethrow_exception(error);
        } catch (const std::system_error& e) {
            CHECK(e.code() == asio::error::operation_aborted);
        }
    });
}

TEST_CASE("on_asio: exceptions of the xiio task reach the Asio coroutine") {
    CHECK_THROWS_WITH(asio_run([]() -> asio::awaitable<void> {
                          co_await xiio::on_asio([]() -> Task<void> {
                              co_await xiio::sleep(1ms);
                              throw std::runtime_error("from xiio");
                          }());
                      }),
                      "from xiio");
}

TEST_CASE("on_asio: read on a pipe written by an Asio handler") {
    asio_run([]() -> asio::awaitable<void> {
        Pipe p;
        asio::posix::stream_descriptor w(co_await asio::this_coro::executor, ::dup(p.w.get()));
        auto writer = [&]() -> asio::awaitable<void> {
            co_await asio_sleep(20ms);
            co_await asio::async_write(w, asio::buffer("from asio", 9), asio::use_awaitable);
        };
        auto data = co_await (xiio::on_asio(xiio::read(p.r, 100)) && writer()); // void drops out
        CHECK(data == "from asio");
    });
}

TEST_CASE("on_asio: write on a pipe read by an Asio handler") {
    asio_run([]() -> asio::awaitable<void> {
        Pipe p;
        asio::posix::stream_descriptor r(co_await asio::this_coro::executor, ::dup(p.r.get()));
        std::string big(1 << 20, 'x'); // more than a pipe holds: xiio must wait for Asio
        std::string got(big.size(), '\0');
        auto reader = [&]() -> asio::awaitable<void> {
            co_await asio::async_read(r, asio::buffer(got), asio::use_awaitable);
        };
        co_await (xiio::on_asio(xiio::writeall(p.w, big)) && reader());
        CHECK(got == big);
    });
}

TEST_CASE("on_asio: an fd that Asio already watches keeps working") {
    asio_run([]() -> asio::awaitable<void> {
        Pipe p;
        asio::posix::stream_descriptor r(co_await asio::this_coro::executor, ::dup(p.r.get()));
        auto asio_waiter = [&]() -> asio::awaitable<void> {
            co_await r.async_wait(asio::posix::stream_descriptor::wait_read, asio::use_awaitable);
        };
        auto writer = [&]() -> asio::awaitable<void> {
            co_await asio_sleep(10ms);
            REQUIRE(::write(p.w.get(), "x", 1) == 1);
        };
        co_await (xiio::on_asio(xiio::wait_readable(p.r.get())) && asio_waiter() && writer());
    });
}

TEST_CASE("on_asio: a task group of 1000 sleepers") {
    assert_duration(50ms, [] {
        asio_run([]() -> asio::awaitable<void> {
            auto many = []() -> Task<int> {
                std::vector<Task<int>> ts;
                for (int i = 0; i < 1000; ++i)
                    ts.push_back(xiio_sleep(Ms(1 + i % 50), 1)); // the longest: 50 ms
                auto values = co_await xiio::gather(std::move(ts));
                co_return static_cast<int>(values.size());
            };
            int n = co_await xiio::on_asio(many());
            CHECK(n == 1000);
        });
    });
}

TEST_CASE("on_asio: run() inside a hosted task throws logic_error") {
    asio_run([]() -> asio::awaitable<void> {
        co_await xiio::on_asio([]() -> Task<void> {
            CHECK_THROWS_AS(xiio::run(xiio::sleep(1ms)), std::logic_error);
            co_return;
        }());
    });
}

// ---- the seam is general: a host loop on poll(2) -----------------------------------------

namespace {

/// The interest the loop asks for, kept for a poll(2) call; what a host adapter does.
class PollHost : public xiio::detail::Poller {
public:
    int add(int fd, unsigned events, bool oneshot) override {
        if (::fcntl(fd, F_GETFD) < 0)
            return errno;
        interest_[fd] = {events, oneshot};
        return 0;
    }
    int modify(int fd, unsigned events, bool oneshot) override { return add(fd, events, oneshot); }
    void remove(int fd) noexcept override { interest_.erase(fd); }
    void wait(xiio::Clock::time_point, std::vector<xiio::detail::PollEvent>&) override {
        throw std::logic_error("hosted: the host waits");
    }

    /// The host's own waiting step, once per iteration as under run(): with a zero timeout
    /// while tasks are ready (deadline min()), so that a task that keeps yielding starves
    /// no fd (nor the eventfd of in_thread completions); skipped when it could neither
    /// block nor report anything (nothing to watch), so plain yields cost no syscall.
    void poll_once(xiio::Clock::time_point deadline, std::vector<xiio::detail::PollEvent>& out) {
        std::vector<pollfd> fds;
        for (auto& [fd, i] : interest_)
            if (i.events)
                fds.push_back({fd,
                               static_cast<short>(((i.events & xiio::READ) ? POLLIN : 0) |
                                                  ((i.events & xiio::WRITE) ? POLLOUT : 0)),
                               0});
        int timeout = -1;
        auto now = xiio::Clock::now();
        if (deadline <= now) // compare first: min() - now overflows
            timeout = 0;
        else if (deadline != xiio::Clock::time_point::max())
            timeout = static_cast<int>(std::chrono::ceil<Ms>(deadline - now).count());
        if (fds.empty() && timeout == 0)
            return;
        int n = ::poll(fds.data(), fds.size(), timeout);
        if (n < 0)
            throw std::system_error(errno, std::system_category(), "poll");
        ++polls;
        for (auto& p : fds) {
            unsigned ev = ((p.revents & (POLLIN | POLLHUP | POLLERR)) ? xiio::READ : 0u) |
                          ((p.revents & (POLLOUT | POLLHUP | POLLERR)) ? xiio::WRITE : 0u);
            if (!ev)
                continue;
            out.push_back({p.fd, ev});
            if (interest_[p.fd].oneshot)
                interest_[p.fd].events = 0;
        }
    }
    int polls = 0;

private:
    struct Interest {
        unsigned events;
        bool oneshot;
    };
    std::map<int, Interest> interest_;
};

/// A host loop: drives xiio's phases around its own poll(2).
template <class T>
T host_run(Task<T> task, int& polls) {
    auto poller = std::make_unique<PollHost>();
    PollHost* host = poller.get();
    xiio::detail::Loop loop(std::move(poller));
    xiio::detail::CurrentLoop current(loop);
    xiio::detail::RootRunner<T> root(loop, std::move(task), "host_run");
    std::vector<xiio::detail::PollEvent> events;
    for (;;) {
        loop.run_ready();
        if (root.done_)
            break;
        events.clear();
        host->poll_once(loop.next_deadline(), events);
        loop.deliver(events);
    }
    polls = host->polls;
    return root.result();
}

} // namespace

TEST_CASE("the loop's seam is general: a poll(2) host loop runs xiio tasks") {
    LeakCheck leaks;
    int polls = 0;
    assert_duration(50ms, [&] {
        auto body = []() -> Task<std::string> {
            Pipe p;
            auto writer = [&]() -> Task<void> {
                co_await xiio::sleep(50ms);
                co_await xiio::writeall(p.w, "hosted");
            };
            auto [s, _] = co_await xiio::gather(xiio::read(p.r, 100), writer());
            co_return s;
        };
        CHECK(host_run(body(), polls) == "hosted");
    });
    CHECK(polls >= 1);
    leaks.check();
}

// ---- fairness: a task that keeps yielding starves no other wake-up, under any host -------

namespace {

/// What a sibling that only yields costs a task waiting for `what`: how many times it
/// yielded between the event and the waiter's resumption.
enum class Wakeup { pipe, job, timer };
struct Starvation {
    long yields = -1;
    bool starved = false; // the busy task gave up (after 2 s) before the waiter resumed
};

/// The events: a pipe made readable by another thread (counted once the write returned), an
/// in_thread job's completion (counted at the job's end; the best of three, so that a worker
/// preempted before it posts does not count), a due timer (counted from the busy task's
/// first yield after the deadline).
Task<Starvation> starvation(Wakeup what) {
    std::atomic<long> yields{0}; // other threads read it
    bool done = false, gave_up = false;
    auto due = xiio::Clock::time_point::max();
    long at_due = -1;
    auto busy = [&]() -> Task<void> {
        // 2 s, scaled under valgrind: it runs one thread at a time, and three job round
        // trips beside a task that never sleeps took longer than 2 s there (0 yields each).
        auto limit = xiio::Clock::now() + 2s * slack_scale();
        while (!done) {
            auto now = xiio::Clock::now();
            if (now >= due && at_due < 0)
                at_due = yields.load();
            if (now >= limit) {
                gave_up = true;
                co_return;
            }
            co_await xiio::yield();
            yields.fetch_add(1);
        }
    };
    auto waiter = [&]() -> Task<Starvation> {
        co_await xiio::yield(); // the busy task runs from now on
        long best = std::numeric_limits<long>::max();
        if (what == Wakeup::pipe) {
            Pipe p;
            std::atomic<long> at{0};
            std::jthread writer([&] {
                std::this_thread::sleep_for(10ms);
                if (::write(p.w.get(), "x", 1) == 1)
                    at = yields.load();
            });
            co_await xiio::read(p.r, 1);
            long resumed = yields.load();
            writer.join();
            best = resumed - at.load();
        } else if (what == Wakeup::job) {
            for (int i = 0; i < 3 && !gave_up; ++i) {
                std::atomic<long> at{0};
                auto job = [&] { at = yields.load(); };
                co_await xiio::in_thread(job);
                best = std::min(best, yields.load() - at.load());
            }
        } else {
            due = xiio::Clock::now() + 20ms;
            co_await xiio::sleep_until(due);
            best = at_due < 0 ? 0 : yields.load() - at_due; // fired before busy saw it due
        }
        done = true;
        co_return Starvation{best, gave_up};
    };
    auto [_, s] = co_await xiio::gather(busy(), waiter());
    co_return s;
}

/// Checks that `probe` (a host running starvation()) sees every wake-up within few yields.
template <class Probe>
void check_fairness(Probe probe) {
    constexpr long bound = 1000; // a starved waiter waits ~10^5 yields (the busy task's 2 s)
    for (auto [what, name] : {std::pair{Wakeup::pipe, "a pipe written by another thread"},
                              std::pair{Wakeup::job, "an in_thread job's completion"},
                              std::pair{Wakeup::timer, "a due timer"}}) {
        Starvation s = probe(what);
        INFO(name << ": resumed after " << s.yields << " yields of the busy task");
        CHECK_FALSE(s.starved);
        CHECK(s.yields < bound);
    }
}

} // namespace

TEST_CASE("run(), the reference: a task that keeps yielding starves no fd, job or timer") {
    check_fairness([](Wakeup what) { return run([&] { return starvation(what); }); });
}

TEST_CASE("on_asio: a task that keeps yielding starves no fd, job or timer") {
    check_fairness([](Wakeup what) {
        Starvation s;
        asio_run([&]() -> asio::awaitable<void> { s = co_await xiio::on_asio(starvation(what)); });
        return s;
    });
}

TEST_CASE("the poll(2) host: a task that keeps yielding starves no fd, job or timer") {
    check_fairness([](Wakeup what) {
        int polls = 0;
        return host_run(starvation(what), polls);
    });
}

TEST_CASE("the poll(2) host: ready tasks and no fd to watch cost no poll(2)") {
    int polls = -1;
    host_run(
        []() -> Task<void> {
            for (int i = 0; i < 100; ++i)
                co_await xiio::yield();
        }(),
        polls);
    CHECK(polls == 0);
}

TEST_CASE("on_asio: sync waits and socket operations can be run on Asio") {
    asio_run([]() -> asio::awaitable<void> {
        xiio::Event e;
        e.set();
        co_await xiio::on_asio(e.wait());
        xiio::Semaphore sem(1);
        co_await xiio::on_asio(sem.acquire());
        CHECK(sem.available() == 0);
        xiio::Lock lock;
        auto guard = co_await xiio::on_asio(lock.lock());
        CHECK(guard.owns_lock());
        xiio::Queue<int> q(1);
        co_await xiio::on_asio(q.put(3));
        auto v = co_await xiio::on_asio(q.get());
        CHECK(v == 3);
        auto l = xiio::Listener::tcp("127.0.0.1", 0);
        auto c = co_await xiio::on_asio(xiio::connect_tcp("127.0.0.1", l.port()));
        auto s = co_await xiio::on_asio(l.accept());
        co_await xiio::on_asio(c.send_all("hi"));
        std::array<char, 4> buf{};
        auto n = co_await xiio::on_asio(s.recv(buf));
        CHECK(std::string_view(buf.data(), n) == "hi");
    });
}

// ---- teardown: a host destroyed while tasks are suspended ----------------------------------

namespace {

/// What the torn-down tasks run: a group whose members sleep, read a pipe, wait in a
/// nested group, wait for a child process, and one added but not started yet.
Task<void> busy_tree(Pipe& p, bool& all_started) {
    auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
        tg.add_task(xiio::sleep(10s));
        tg.add_task(xiio::read(p.r, 10));
        auto nested = [](xiio::TaskGroup& inner) -> Task<void> {
            inner.add_task(xiio::sleep(20s));
            co_await xiio::sleep(30s);
        };
        tg.add_task(xiio::task_group(nested));
        std::vector<std::string> cmd{"sleep", "10"};
        tg.add_task(xiio::run_process(cmd));
        co_await xiio::sleep(20ms); // all of them are suspended now, the child runs
        all_started = true;
        tg.add_task(xiio::sleep(1ms)); // queued, never started
        co_await xiio::sleep(10s);
    };
    co_await xiio::task_group(body);
}

} // namespace

// The group's destructor asserted that it had no members (debug) and leaked them and their
// frames (NDEBUG), leaving the child of run_process a zombie.
// [no-valgrind], both: the tree runs a process, and valgrind 3.19 does not know pidfd_open.
TEST_CASE("on_asio: destroying the io_context with tasks suspended in groups leaks nothing",
          "[no-valgrind]") {
    LeakCheck leaks;
    bool all_started = false;
    {
        Pipe p;
        asio::io_context ctx;
        asio::co_spawn(ctx, xiio::on_asio(busy_tree(p, all_started)), asio::detached);
        for (auto end = xiio::Clock::now() + 2s; !all_started && xiio::Clock::now() < end;)
            ctx.run_for(5ms);
        CHECK(all_started);
    } // stopped and destroyed here, with every task suspended
    CHECK(no_children());
    leaks.check();
}

TEST_CASE("a poll(2) host stopped with tasks suspended in groups leaks nothing", "[no-valgrind]") {
    LeakCheck leaks;
    bool all_started = false;
    {
        Pipe p;
        auto poller = std::make_unique<PollHost>();
        PollHost* host = poller.get();
        xiio::detail::Loop loop(std::move(poller));
        xiio::detail::CurrentLoop current(loop);
        xiio::detail::RootRunner<void> root(loop, busy_tree(p, all_started), "host");
        std::vector<xiio::detail::PollEvent> events;
        for (auto end = xiio::Clock::now() + 2s; !all_started && xiio::Clock::now() < end;) {
            loop.run_ready();
            events.clear();
            // Bounded by the test's end: if the tree failed (no process could be started)
            // nothing might ever wake this poll.
            host->poll_once(std::min(loop.next_deadline(), end), events);
            loop.deliver(events);
        }
        CHECK(all_started);
        loop.run_ready(); // the last member starts after all; the body waits again
    } // the host stops: root, then the loop, are destroyed with every task suspended
    CHECK(no_children());
    leaks.check();
}
