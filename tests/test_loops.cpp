// Tests of xiio/loops.hpp: LoopHandle, this_loop, LoopThread, on_loop; and reuse_port
// listeners on several loops. Every cross-thread path here also runs under TSan.
#include <xiio/loops.hpp>

#include "helpers.hpp"

#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/socket.h>

using namespace test;
using xiio::Task;

namespace {

/// What a task on the other loop did, shared with the test's thread (atomics: TSan).
struct Probe {
    std::atomic<bool> started{false};
    std::atomic<bool> cancelled{false};
    std::atomic<bool> cleaned_up{false};
};

Task<std::thread::id> thread_of_task() {
    co_await xiio::yield();
    co_return std::this_thread::get_id();
}

Task<int> add_later(int a, int b) {
    co_await xiio::sleep(1ms);
    co_return a + b;
}

/// Sleeps `d`; if cancelled, records it and cleans up for 20 ms (awaiting in cleanup),
/// then rethrows.
Task<void> sleep_and_clean_up(Probe& p, Ms d) {
    p.started = true;
    std::exception_ptr cancelled;
    try {
        co_await xiio::sleep(d);
    } catch (const xiio::CancelledError&) {
        p.cancelled = true;
        cancelled = std::current_exception();
    }
    if (cancelled) {
        co_await xiio::shield(xiio::sleep(20ms));
        p.cleaned_up = true;
        std::rethrow_exception(cancelled);
    }
}

Task<bool> handle_is_running() {
    co_return xiio::this_loop().running();
}

Task<xiio::LoopHandle> handle_of_this_loop() {
    co_return xiio::this_loop();
}

Task<int> call_back(xiio::LoopHandle back) {
    co_return co_await xiio::on_loop(back, add_later(1, 1));
}

} // namespace

TEST_CASE("on_loop runs the task on the LoopThread's thread and returns its value", "[loops]") {
    xiio::LoopThread other;
    test::run([&]() -> Task<void> {
        auto id = co_await xiio::on_loop(other.handle(), thread_of_task());
        CHECK(id != std::this_thread::get_id());
        int sum = co_await xiio::on_loop(other.handle(), add_later(2, 3));
        CHECK(sum == 5);
        co_await xiio::on_loop(other.handle(), xiio::sleep(1ms)); // void, a light awaitable
    });
}

TEST_CASE("on_loop rethrows the exception of the task over there", "[loops]") {
    xiio::LoopThread other;
    test::run([&]() -> Task<void> {
        try {
            co_await xiio::on_loop(other.handle(), fail_after(1ms, "over there"));
            FAIL("no exception");
        } catch (const std::runtime_error& e) {
            CHECK(std::string(e.what()) == "over there");
        }
    });
}

TEST_CASE("on_loop forwards a cancellation and returns once the task over there cleaned up",
          "[loops]") {
    xiio::LoopThread other;
    Probe p;
    test::run([&]() -> Task<void> {
        auto start = xiio::Clock::now();
        CHECK_THROWS_AS(
            co_await xiio::timeout(50ms, xiio::on_loop(other.handle(), sleep_and_clean_up(p, 10s))),
            xiio::TimeoutError);
        CHECK(p.cancelled);
        CHECK(p.cleaned_up); // before on_loop returned
        CHECK(elapsed_ms(start) >= 70);
        CHECK(elapsed_ms(start) < 2000 * slack_scale());
    });
}

TEST_CASE("a group of on_loop calls: the first error cancels the others on their loops",
          "[loops]") {
    xiio::LoopThread a, b;
    Probe p;
    test::run([&]() -> Task<void> {
        try {
            co_await xiio::gather(xiio::on_loop(a.handle(), fail_after(20ms, "first")),
                                  xiio::on_loop(b.handle(), sleep_and_clean_up(p, 10s)));
            FAIL("no exception");
        } catch (const std::runtime_error& e) {
            CHECK(std::string(e.what()) == "first");
        }
        CHECK(p.cancelled);
        CHECK(p.cleaned_up);
    });
}

TEST_CASE("destroying a LoopThread ends an on_loop awaiting it with logic_error, not a hang",
          "[loops]") {
    auto other = std::make_unique<xiio::LoopThread>();
    xiio::LoopHandle h = other->handle();
    Probe p;
    // xiio::run, not test::run: the LoopThread's fds close during the run (the test's
    // leak listener still checks that every fd is gone at the end).
    auto body = [&]() -> Task<void> {
        auto waiter = [&]() -> Task<void> {
            CHECK_THROWS_AS(co_await xiio::on_loop(h, sleep_and_clean_up(p, 10s)),
                            std::logic_error);
        };
        auto destroyer = [&]() -> Task<void> {
            co_await xiio::sleep(30ms);
            other.reset(); // blocks this loop until the task there cleaned up
        };
        auto start = xiio::Clock::now();
        co_await xiio::gather(waiter(), destroyer());
        CHECK(elapsed_ms(start) < 2000 * slack_scale());
    };
    xiio::run(body());
    CHECK(p.started);
    CHECK(p.cancelled);
    CHECK(p.cleaned_up);
    CHECK_FALSE(h.running());
}

TEST_CASE("calls from several loops to one LoopThread, and back, all complete", "[loops]") {
    xiio::LoopThread a, b;
    test::run([&]() -> Task<void> {
        int sum = 0;
        for (int i = 0; i < 200; ++i)
            sum += co_await xiio::on_loop(a.handle(), add_later(i, 0));
        CHECK(sum == 199 * 200 / 2);
        std::vector<Task<int>> calls;
        for (int i = 0; i < 50; ++i)
            calls.push_back(xiio::on_loop(i % 2 ? a.handle() : b.handle(), add_later(i, 1)));
        auto values = co_await xiio::gather(std::move(calls));
        for (int i = 0; i < 50; ++i)
            CHECK(values[static_cast<std::size_t>(i)] == i + 1);
        // A task on a calls the loop of b: LoopThreads take calls from each other.
        int two = co_await xiio::on_loop(a.handle(), call_back(b.handle()));
        CHECK(two == 2);
    });
}

TEST_CASE("on_loop to the current loop just awaits the task", "[loops]") {
    test::run([]() -> Task<void> {
        auto id = co_await xiio::on_loop(xiio::this_loop(), thread_of_task());
        CHECK(id == std::this_thread::get_id());
    });
    xiio::LoopThread other;
    test::run([&]() -> Task<void> {
        // On the LoopThread, this_loop() names it: a call to itself from there.
        auto self = co_await xiio::on_loop(other.handle(), handle_of_this_loop());
        CHECK(self.running());
        int v = co_await xiio::on_loop(other.handle(), call_back(self));
        CHECK(v == 2);
        bool running = co_await xiio::on_loop(other.handle(), handle_is_running());
        CHECK(running);
    });
}

TEST_CASE("on_loop to a loop that is not a LoopThread's is a logic_error", "[loops]") {
    xiio::LoopThread other;
    test::run([&]() -> Task<void> {
        auto here = xiio::this_loop();
        CHECK(here.running());
        CHECK_THROWS_AS(co_await xiio::on_loop(other.handle(), call_back(here)), std::logic_error);
    });
}

TEST_CASE("this_loop outside a task is a logic_error", "[loops]") {
    CHECK_THROWS_AS(xiio::this_loop(), std::logic_error);
    xiio::LoopHandle none;
    CHECK_FALSE(none.running());
    CHECK_THROWS_AS(xiio::run(xiio::on_loop(none, add_later(1, 2))), std::logic_error);
}

TEST_CASE("the LoopHandle of a finished loop: running() is false, on_loop a logic_error",
          "[loops]") {
    auto other = std::make_unique<xiio::LoopThread>();
    xiio::LoopHandle h = other->handle();
    CHECK(h.running());
    other.reset();
    CHECK_FALSE(h.running());
    CHECK_THROWS_AS(
        test::run([&]() -> Task<int> { co_return co_await xiio::on_loop(h, add_later(1, 2)); }),
        std::logic_error);
    auto old = test::run([]() -> Task<xiio::LoopHandle> { co_return xiio::this_loop(); });
    CHECK_FALSE(old.running());
}

TEST_CASE("an on_loop cancelled before it starts never runs the task", "[loops]") {
    xiio::LoopThread other;
    Probe p;
    test::run([&]() -> Task<void> {
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(xiio::on_loop(other.handle(), sleep_and_clean_up(p, 10s)));
            tg.cancel();
            co_return;
        };
        co_await xiio::task_group(std::ref(body));
    });
    CHECK_FALSE(p.started);
}

TEST_CASE("Listener::tcp with reuse_port: listeners on two loops share a port and both accept",
          "[loops][net]") {
    xiio::LoopThread a, b;
    auto first = xiio::Listener::tcp("127.0.0.1", 0, SOMAXCONN, true);
    const std::uint16_t port = first.port();
    auto second = xiio::Listener::tcp("127.0.0.1", port, SOMAXCONN, true);
    try {
        xiio::Listener::tcp("127.0.0.1", port);
        FAIL("bound twice");
    } catch (const std::system_error& e) {
        CHECK(e.code().value() == EADDRINUSE);
    }
    std::atomic<int> accepted_a{0}, accepted_b{0};
    auto accept_all = [](xiio::Listener& l, std::atomic<int>& n) -> Task<void> {
        for (;;) {
            auto s = co_await l.accept();
            ++n;
        }
    };
    constexpr int clients = 64;
    test::run([&]() -> Task<void> {
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(xiio::on_loop(a.handle(), accept_all(first, accepted_a)));
            tg.add_task(xiio::on_loop(b.handle(), accept_all(second, accepted_b)));
            std::vector<xiio::Socket> sockets; // the kernel spreads them by the client's port
            for (int i = 0; i < clients; ++i)
                sockets.push_back(co_await xiio::connect_tcp("127.0.0.1", port));
            auto deadline = xiio::Clock::now() + 5s * slack_scale();
            while (accepted_a + accepted_b < clients && xiio::Clock::now() < deadline)
                co_await xiio::sleep(1ms);
            tg.cancel();
        };
        co_await xiio::task_group(std::ref(body));
    });
    CHECK(accepted_a + accepted_b == clients);
    CHECK(accepted_a > 0);
    CHECK(accepted_b > 0);
}
