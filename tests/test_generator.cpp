// Tests of xiio/generator.hpp: Generator<T>, an async generator consumed with next().
#include <xiio/generator.hpp> // first: the header is self-contained

#include "helpers.hpp"

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <sys/socket.h>

using namespace test;
using xiio::Generator;
using xiio::Task;

static_assert(!std::is_copy_constructible_v<Generator<int>> &&
              !std::is_copy_assignable_v<Generator<int>>);
static_assert(std::is_nothrow_move_constructible_v<Generator<int>> &&
              std::is_nothrow_move_assignable_v<Generator<int>>);

namespace {

Generator<int> count_to(int n) {
    for (int i = 1; i <= n; ++i)
        co_yield i;
}

/// Sets its flag when destroyed: shows that a generator's locals were unwound.
struct Raii {
    bool& destroyed;
    ~Raii() { destroyed = true; }
};

Generator<int> sleeping_forever(bool& destroyed) {
    Raii r{destroyed};
    co_yield 1;
    co_await xiio::sleep(1h);
    co_yield 2;
}

Generator<int> fails_after(int n) {
    for (int i = 1; i <= n; ++i)
        co_yield i;
    throw std::runtime_error("boom");
}

/// The stack depth of the calling coroutine's current resumption.
[[gnu::noinline]] std::uintptr_t stack_here() {
    return reinterpret_cast<std::uintptr_t>(__builtin_frame_address(0));
}

} // namespace

TEST_CASE("a generator yields its values in order, then nullopt at every call") {
    run([]() -> Task<void> {
        auto g = count_to(3);
        std::vector<int> got;
        while (auto v = co_await g.next())
            got.push_back(*v);
        CHECK(got == std::vector<int>{1, 2, 3});
        for (int i = 0; i < 3; ++i) {
            auto v = co_await g.next();
            CHECK(!v);
        }
    });
}

TEST_CASE("a generator is lazy: its body runs only inside next()") {
    run([]() -> Task<void> {
        int steps = 0;
        auto body = [](int& s) -> Generator<int> {
            ++s;
            co_yield 1;
            ++s;
            co_yield 2;
            ++s;
        };
        auto g = body(steps);
        CHECK(steps == 0);
        co_await xiio::yield();
        CHECK(steps == 0);
        auto a = co_await g.next();
        CHECK(steps == 1);
        auto b = co_await g.next();
        CHECK(steps == 2);
        auto c = co_await g.next();
        CHECK(steps == 3);
        CHECK(a == 1);
        CHECK(b == 2);
        CHECK(!c);
    });
}

TEST_CASE("co_yield copies an lvalue and moves an rvalue") {
    run([]() -> Task<void> {
        auto body = []() -> Generator<std::string> {
            std::string s = "a";
            co_yield s; // a copy: s stays usable in the body
            s += "b";
            co_yield s;
            co_yield std::move(s);
            co_yield "literal";           // anything T is constructible from
            co_yield std::string(3, 'x'); // (g++ 12 rejects a braced list after co_yield)
        };
        auto g = body();
        std::vector<std::string> got;
        while (auto v = co_await g.next())
            got.push_back(std::move(*v));
        CHECK(got == std::vector<std::string>{"a", "ab", "ab", "literal", "xxx"});
    });
}

TEST_CASE("a generator of a move-only type yields it, by rvalue") {
    run([]() -> Task<void> {
        auto body = []() -> Generator<std::unique_ptr<int>> {
            co_yield std::make_unique<int>(1);
            auto p = std::make_unique<int>(2);
            co_yield std::move(p);
        };
        auto g = body();
        auto a = co_await g.next();
        auto moved = std::move(g); // the generator itself moves, mid-way
        auto b = co_await moved.next();
        auto c = co_await moved.next();
        REQUIRE(a);
        REQUIRE(*a);
        CHECK(**a == 1);
        REQUIRE(b);
        REQUIRE(*b);
        CHECK(**b == 2);
        CHECK(!c);
        CHECK(!g);
        CHECK(moved);
        CHECK_THROWS_AS(co_await g.next(), std::logic_error); // empty: moved from
    });
}

TEST_CASE("a generator may await sleeps and fd reads between its values") {
    run([]() -> Task<void> {
        int sv[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
        xiio::Fd a(sv[0]), b(sv[1]);
        auto chunks = [](xiio::Fd& fd) -> Generator<std::string> {
            co_await xiio::sleep(20ms);
            co_yield "slept";
            char buf[64];
            for (;;) {
                std::size_t n = co_await xiio::read(fd, buf);
                if (n == 0)
                    co_return;
                co_yield std::string(buf, n);
            }
        };
        auto writer = [](xiio::Fd& fd) -> Task<void> {
            co_await xiio::sleep(40ms);
            co_await xiio::writeall(fd, "one");
            co_await xiio::sleep(20ms);
            co_await xiio::writeall(fd, "two");
            fd.close();
        };
        auto consume = [&]() -> Task<std::vector<std::string>> {
            auto g = chunks(a);
            std::vector<std::string> got;
            while (auto v = co_await g.next())
                got.push_back(*v);
            co_return got;
        };
        auto start = xiio::Clock::now();
        auto [got, unit] = co_await xiio::gather(consume(), writer(b));
        CHECK(got == std::vector<std::string>{"slept", "one", "two"});
        CHECK(elapsed_ms(start) >= 60);
    });
}

TEST_CASE("a generator's body may await tasks, groups and other generators") {
    run([]() -> Task<void> {
        auto twice = [](int v) -> Task<int> {
            co_await xiio::yield();
            co_return 2 * v;
        };
        auto inner = count_to(3);
        auto outer = [&]() -> Generator<int> {
            while (auto v = co_await inner.next())
                co_yield co_await twice(*v);
            auto [x, y] = co_await xiio::gather(twice(10), twice(20));
            co_yield x + y;
        };
        auto g = outer();
        std::vector<int> got;
        while (auto v = co_await g.next())
            got.push_back(*v);
        CHECK(got == std::vector<int>{2, 4, 6, 60});
    });
}

TEST_CASE("a timeout around the consumer cancels the generator at its await") {
    run([]() -> Task<void> {
        bool destroyed = false;
        auto g = sleeping_forever(destroyed);
        std::vector<int> got;
        auto consume = [&]() -> Task<void> {
            while (auto v = co_await g.next())
                got.push_back(*v);
        };
        auto start = xiio::Clock::now();
        CHECK_THROWS_AS(co_await xiio::timeout(50ms, consume), xiio::TimeoutError);
        CHECK(elapsed_ms(start) >= 50);
        CHECK(elapsed_ms(start) < 50 + 500 * slack_scale());
        CHECK(got == std::vector<int>{1});
        CHECK(destroyed); // the CancelledError unwound the body before the timeout returned
        auto after = co_await g.next();
        CHECK(!after); // the body ended (by the cancellation): finished
    });
}

TEST_CASE("cancelling the consumer's group reaches the generator and comes out of next()") {
    run([]() -> Task<void> {
        bool destroyed = false;
        bool cancelled = false;
        auto g = sleeping_forever(destroyed);
        auto consume = [&]() -> Task<void> {
            try {
                while (co_await g.next()) {
                }
            } catch (const xiio::CancelledError&) {
                cancelled = true;
                throw;
            }
        };
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(consume());
            co_await xiio::sleep(20ms);
            tg.cancel();
        };
        co_await xiio::task_group(body);
        CHECK(cancelled);
        CHECK(destroyed);
    });
}

TEST_CASE("next() works as a timeout's body and inside a group member") {
    run([]() -> Task<void> {
        auto g = count_to(3);
        auto a = co_await xiio::timeout(1s, g.next()); // converted to a Task
        CHECK(a == 1);
        std::optional<int> b, c;
        // Outside the body: a member outlives the body's frame, and with it the closure.
        auto member = [&]() -> Task<void> {
            b = co_await g.next();
            c = co_await g.next();
        };
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(member());
            co_return;
        };
        co_await xiio::task_group(body);
        CHECK(b == 2);
        CHECK(c == 3);
        auto ticker = [](int& t) -> Generator<int> {
            for (;;) {
                co_await xiio::sleep(10ms);
                ++t; // (clang warns of `co_yield ++t` as unsequenced)
                co_yield t;
            }
        };
        int ticks = 0;
        auto slow = ticker(ticks);
        auto d = co_await xiio::move_on_after(1s, slow.next());
        CHECK(d == std::optional<std::optional<int>>(1));
        bool destroyed = false;
        auto stuck = sleeping_forever(destroyed);
        auto first = co_await stuck.next();
        CHECK(first == 1);
        // Cancelled in its sleep (of an hour: a shorter one could be due in the same loop
        // iteration as the deadline on a busy machine, and then its value would stand).
        auto e = co_await xiio::move_on_after(1ms, stuck.next());
        CHECK(!e);
        CHECK(destroyed);
    });
}

TEST_CASE("destroying an unfinished generator runs its destructors and frees its frame") {
    const auto before = xiio::detail::live_counts();
    run([&]() -> Task<void> {
        bool destroyed = false;
        {
            auto g = sleeping_forever(destroyed);
            auto v = co_await g.next();
            CHECK(v == 1);
            CHECK(!destroyed);
        }
        CHECK(destroyed);
        bool never = false;
        {
            auto g = sleeping_forever(never); // never started: nothing of the body ran
        }
        CHECK(!never);
        if constexpr (xiio::detail::leak_accounting) {
            auto live = xiio::detail::live_counts();
            CHECK(live.frames == before.frames + 1); // this task's frame only
            CHECK(live.timers == before.timers);
        }
    });
}

TEST_CASE("an exception in the body is rethrown by next(), then the generator is finished") {
    run([]() -> Task<void> {
        auto g = fails_after(2);
        auto a = co_await g.next();
        auto b = co_await g.next();
        CHECK(a == 1);
        CHECK(b == 2);
        CHECK_THROWS_WITH(co_await g.next(), "boom");
        auto c = co_await g.next();
        auto d = co_await g.next();
        CHECK(!c);
        CHECK(!d);
    });
}

TEST_CASE("an exception thrown by the yielded value's construction is thrown in the body") {
    struct Fussy {
        int v;
        explicit Fussy(int x) : v(x) {
            if (x < 0)
                throw std::invalid_argument("negative");
        }
    };
    run([]() -> Task<void> {
        bool caught = false;
        auto body = [](bool& c) -> Generator<Fussy> {
            try {
                co_yield -1;
            } catch (const std::invalid_argument&) {
                c = true;
            }
            co_yield 7;
        };
        auto g = body(caught);
        auto v = co_await g.next();
        REQUIRE(v);
        CHECK(v->v == 7);
        CHECK(caught);
    });
}

TEST_CASE("a second next() while one is pending throws logic_error") {
    run([]() -> Task<void> {
        bool destroyed = false;
        auto g = sleeping_forever(destroyed);
        auto first = co_await g.next();
        CHECK(first == 1);
        bool second_failed = false;
        auto waiter = [&]() -> Task<void> { co_await g.next(); }; // sleeps inside
        auto intruder = [&]() -> Task<void> {
            try {
                co_await g.next();
            } catch (const std::logic_error& e) {
                second_failed = std::string(e.what()).find("still pending") != std::string::npos;
            }
        };
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(waiter());
            co_await xiio::yield(); // the waiter is now asleep inside the body
            co_await intruder();
            tg.cancel();
        };
        co_await xiio::task_group(body);
        CHECK(second_failed);
        CHECK(destroyed);
    });
}

TEST_CASE("a generator may be consumed by different tasks one after the other") {
    run([]() -> Task<void> {
        auto ticker = []() -> Generator<int> {
            for (int i = 1;; ++i) {
                co_await xiio::sleep(5ms); // in whichever task asked
                co_yield i;
            }
        };
        auto g = ticker();
        std::vector<int> got;
        auto take = [&](int n) -> Task<void> {
            for (int i = 0; i < n; ++i)
                got.push_back(*co_await g.next());
        };
        co_await take(2);
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(take(2)); // another runner
            co_return;
        };
        co_await xiio::task_group(body);
        co_await xiio::timeout(1s, take(1));
        CHECK(got == std::vector<int>{1, 2, 3, 4, 5});
    });
}

TEST_CASE("a generator destroyed while another task waits in its next() fails that next()") {
    run([]() -> Task<void> {
        bool destroyed = false;
        std::optional<Generator<int>> g(sleeping_forever(destroyed));
        auto first = co_await g->next();
        CHECK(first == 1);
        bool failed = false;
        auto waiter = [&]() -> Task<void> {
            try {
                co_await g->next();
            } catch (const std::logic_error& e) {
                failed = std::string(e.what()).find("destroyed") != std::string::npos;
            }
        };
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(waiter());
            co_await xiio::sleep(10ms);
            g.reset(); // the waiter sleeps inside the body
            co_return;
        };
        co_await xiio::task_group(body);
        CHECK(failed);
        CHECK(destroyed);
    });
}

TEST_CASE("100,000 synchronous yields run on constant stack") {
    run([]() -> Task<void> {
        std::uintptr_t lo = UINTPTR_MAX, hi = 0;
        auto body = [](std::uintptr_t& l, std::uintptr_t& h) -> Generator<long> {
            for (long i = 0; i < 100'000; ++i) {
                auto sp = stack_here();
                l = std::min(l, sp);
                h = std::max(h, sp);
                co_yield i;
            }
        };
        auto g = body(lo, hi);
        long sum = 0;
        while (auto v = co_await g.next()) {
            sum += *v;
            auto sp = stack_here();
            lo = std::min(lo, sp);
            hi = std::max(hi, sp);
        }
        CHECK(sum == 100'000L * 99'999 / 2);
        // Each hand-off goes through the loop's trampoline: the generator's frame and the
        // consumer's are resumed at the same depth, whether the trampoline runs within one
        // resumption of the task or the loop resumes it after a fairness yield. Resuming
        // one from inside the other (g++ 12 makes no tail call at -O0 and under ASan)
        // would grow by a few hundred bytes per item.
        INFO("stack spread " << hi - lo << " bytes");
        CHECK(hi - lo < 4096);
    });
}

// [no-valgrind]: the counting operator new is the test binary's (see test_loop.cpp).
TEST_CASE("a generator allocates its frame once, and nothing per item", "[no-valgrind]") {
    run([]() -> Task<void> {
        long before = allocation_count();
        auto g = count_to(100'000);
        CHECK(allocation_count() == before + 1); // the frame (from the frame pool)
        long sum = 0;
        before = allocation_count();
        while (auto v = co_await g.next())
            sum += *v;
        CHECK(allocation_count() == before);
        CHECK(sum == 100'000L * 100'001 / 2);
    });
}

TEST_CASE("draining a generator that never suspends still lets timers and other tasks run") {
    run([]() -> Task<void> {
        bool stop = false;
        auto endless = [](const bool& s) -> Generator<int> {
            while (!s)
                co_yield 1;
        };
        long items = 0;
        auto stopper = [&]() -> Task<void> {
            co_await xiio::sleep(20ms);
            stop = true;
        };
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(stopper());
            auto g = endless(stop);
            while (auto v = co_await g.next())
                items += *v;
        };
        auto start = xiio::Clock::now();
        co_await xiio::task_group(body);
        CHECK(items > 0);
        CHECK(elapsed_ms(start) < 20 + 500 * slack_scale());
    });
}
