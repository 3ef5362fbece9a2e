// Tests of xiio/task.hpp and xiio/core.hpp: tasks, run(), sleep, yield, Condition, Future.
#include "helpers.hpp"

#include <memory>
#include <random>
#include <thread>

using namespace test;
using xiio::Task;

namespace {

Task<int> value(int v) {
    co_return v;
}

Task<void> set_flag(bool& flag) {
    flag = true;
    co_return;
}

Task<int> throws_logic() {
    throw std::logic_error("inner");
    co_return 0;
}

} // namespace

static_assert(!std::is_base_of_v<std::exception, xiio::CancelledError>,
              "a catch (std::exception&) must not swallow a cancellation");
static_assert(std::is_base_of_v<std::runtime_error, xiio::TimeoutError>);
static_assert(std::is_base_of_v<std::runtime_error, xiio::IncompleteReadError>);
static_assert(!std::is_copy_constructible_v<xiio::Task<int>>);
static_assert(!std::is_copy_constructible_v<xiio::Future<int>> &&
              !std::is_move_constructible_v<xiio::Future<int>>);
static_assert(!std::is_copy_constructible_v<xiio::Fd>);

TEST_CASE("task doesn't start until awaited") {
    run([]() -> Task<void> {
        bool started = false;
        auto t = set_flag(started);
        co_await xiio::yield();
        CHECK_FALSE(started);
        co_await t;
        CHECK(started);
    });
}

TEST_CASE("a task returns its value, also a move-only one") {
    auto r = run([]() -> Task<std::unique_ptr<int>> {
        {
            auto got = co_await value(42);
            CHECK(got == 42);
        }
        auto inner = []() -> Task<std::unique_ptr<int>> { co_return std::make_unique<int>(7); };
        co_return co_await inner();
    });
    REQUIRE(r);
    CHECK(*r == 7);
}

TEST_CASE("exceptions propagate through co_await and out of run") {
    CHECK_THROWS_WITH(run([]() -> Task<int> { co_return co_await throws_logic(); }), "inner");
}

TEST_CASE("lots of synchronous completions don't overflow the stack") {
    auto sum = run([]() -> Task<long> {
        long s = 0;
        for (int i = 0; i < 1'000'000; ++i)
            s += co_await value(1);
        co_return s;
    });
    CHECK(sum == 1'000'000);
}

TEST_CASE("lots of asynchronous completions don't overflow the stack") {
    auto sum = run([]() -> Task<long> {
        auto later = [](int v) -> Task<int> {
            co_await xiio::yield();
            co_return v;
        };
        long s = 0;
        for (int i = 0; i < 200'000; ++i)
            s += co_await later(1);
        co_return s;
    });
    CHECK(sum == 200'000);
}

namespace {
Task<long> depth(long n) {
    if (n == 0)
        co_return 0;
    co_return co_await depth(n - 1) + 1;
}
Task<long> depth_suspending(long n) {
    if (n == 0) {
        co_await xiio::yield(); // the whole chain then unwinds from the loop
        co_return 0;
    }
    co_return co_await depth_suspending(n - 1) + 1;
}
Task<long> depth_throwing(long n) {
    if (n == 0)
        throw std::runtime_error("bottom");
    co_return co_await depth_throwing(n - 1) + 1;
}
} // namespace

// Each level was resumed inside its parent's await_suspend: 100,000 levels overflowed the
// 8 MiB stack with g++ 12 at -O0 and under ASan (both compilers).
TEST_CASE("a task that awaits itself 100,000 levels deep runs on constant stack") {
    CHECK(run(depth(100'000)) == 100'000);
    CHECK(run(depth_suspending(100'000)) == 100'000);
    CHECK_THROWS_WITH(run(depth_throwing(100'000)), "bottom");
}

TEST_CASE("awaiting a moved-from task throws logic_error") {
    run([]() -> Task<void> {
        auto t = value(1);
        auto moved = std::move(t);
        CHECK_THROWS_AS(co_await t, std::logic_error);
        {
            auto got = co_await moved;
            CHECK(got == 1);
        }
    });
}

TEST_CASE("awaiting a task twice throws logic_error") {
    run([]() -> Task<void> {
        auto t = value(1);
        {
            auto got = co_await t;
            CHECK(got == 1);
        }
        CHECK_THROWS_AS(co_await t, std::logic_error);
    });
}

TEST_CASE("run inside a running loop throws logic_error") {
    run([]() -> Task<void> {
        CHECK_THROWS_AS(xiio::run(value(1)), std::logic_error);
        co_return;
    });
}

TEST_CASE("run of an empty or already finished task throws logic_error") {
    CHECK_THROWS_AS(xiio::run(Task<int>()), std::logic_error);
    auto t = value(1);
    auto holder = [&]() -> Task<void> {
        co_await t;
        CHECK_THROWS_AS(xiio::run(std::move(t)), std::logic_error); // nested, too
    };
    xiio::run(holder());
    CHECK_THROWS_AS(xiio::run(std::move(t)), std::logic_error);
}

// [no-valgrind]: 100 ms sleeps on several threads need more than 100 ms slack under valgrind.
TEST_CASE("run works on several threads at once, each with its own loop", "[no-valgrind]") {
    assert_duration(100ms, [] {
        std::vector<std::thread> threads;
        std::atomic<int> done{0};
        for (int i = 0; i < 4; ++i)
            threads.emplace_back([&] {
                xiio::run([]() -> Task<void> { co_await xiio::sleep(100ms); }());
                ++done;
            });
        for (auto& t : threads)
            t.join();
        CHECK(done == 4);
    });
}

TEST_CASE("run accepts a light awaitable") {
    assert_duration(50ms, [] { xiio::run(xiio::sleep(50ms)); });
}

TEST_CASE("sleep waits at least its duration") {
    assert_duration(100ms, [] {
        auto r = run([]() -> Task<std::string> {
            co_await xiio::sleep(100ms);
            co_return "Hello World";
        });
        CHECK(r == "Hello World");
    });
}

TEST_CASE("sleep accepts any duration type") {
    assert_duration(50ms, [] {
        run([]() -> Task<void> { co_await xiio::sleep(std::chrono::duration<double>(0.05)); });
    });
}

TEST_CASE("yield lets every ready task run once first, in FIFO order") {
    auto order = run([]() -> Task<std::string> {
        std::string s;
        auto step = [&s](char c) -> Task<void> {
            s += c;
            co_await xiio::yield();
            s += static_cast<char>(c + 1);
        };
        co_await xiio::gather(step('a'), step('x'), step('m'));
        co_return s;
    });
    CHECK(order == "axmbyn");
}

namespace {

/// "123" if `pause` lets another ready task run before the task that awaited it goes on.
template <class Pause>
std::string order_around(Pause pause) {
    return run([&]() -> Task<std::string> {
        std::string s;
        auto first = [&]() -> Task<void> {
            s += '1';
            co_await pause();
            s += '3';
        };
        auto second = [&s]() -> Task<void> {
            s += '2';
            co_return;
        };
        co_await xiio::gather(first(), second());
        co_return s;
    });
}

} // namespace

TEST_CASE("sleep with a non-positive duration behaves like yield") {
    CHECK(order_around([] { return xiio::sleep(-5ms); }) == "123");
    CHECK(order_around([] { return xiio::sleep(0ms); }) == "123");
}

TEST_CASE("sleep_until a past time point behaves like yield") {
    CHECK(order_around([] { return xiio::sleep_until(xiio::Clock::now() - 1s); }) == "123");
}

// [no-valgrind]: at valgrind's speed, starting 2,000 sleepers takes longer than the 100 ms
// margin before the first deadline.
TEST_CASE("many concurrent sleepers wake in deadline order, none early", "[no-valgrind]") {
    run([]() -> Task<void> {
        std::mt19937 rng(42);
        std::vector<xiio::Clock::time_point> deadlines;
        std::vector<int> order;
        std::vector<Task<void>> tasks;
        int early = 0;
        // Deadlines start 100 ms out, so that none has passed before its sleeper starts
        // (a passed one is scheduled like yield(), ahead of timers that fire later).
        auto base = xiio::Clock::now() + 100ms;
        for (int i = 0; i < 2000; ++i) {
            auto deadline = base + std::chrono::microseconds(rng() % 100'000);
            deadlines.push_back(deadline);
            tasks.push_back([](int id, xiio::Clock::time_point t, std::vector<int>& out,
                               int& early_count) -> Task<void> {
                co_await xiio::sleep_until(t);
                if (xiio::Clock::now() < t)
                    ++early_count;
                out.push_back(id);
            }(i, deadline, order, early));
        }
        co_await xiio::gather(std::move(tasks));
        CHECK(early == 0);
        REQUIRE(order.size() == 2000);
        for (std::size_t i = 1; i < order.size(); ++i)
            CHECK(deadlines[static_cast<std::size_t>(order[i - 1])] <=
                  deadlines[static_cast<std::size_t>(order[i])]);
    });
}

TEST_CASE("an endless sleep can still be cancelled") {
    run([]() -> Task<void> {
        auto woke = co_await xiio::move_on_after(20ms, xiio::sleep(std::chrono::hours::max()));
        CHECK_FALSE(woke);
    });
}

// ---- Condition -------------------------------------------------------------------------

TEST_CASE("Condition::combine takes the earliest time") {
    auto t = xiio::Clock::now();
    auto c = xiio::Condition::combine({{}, {.time = t + 1s}, {.time = t + 3s}, {.time = t - 2s}});
    CHECK(c.time == t - 2s);
}

TEST_CASE("Condition::combine takes the union of futures") {
    xiio::Future<int> f1, f2, f3;
    auto c = xiio::Condition::combine({{}, {.futures = {&f1}}, {.futures = {&f1, &f2}}});
    CHECK(c.futures == std::vector<const xiio::FutureBase*>{&f1, &f2});
}

TEST_CASE("Condition::combine merges the events of files") {
    std::vector<xiio::Condition> parts{
        {}, {.files = {{1, xiio::READ}, {2, xiio::READ}}}, {.files = {{1, xiio::WRITE}}}};
    auto c = xiio::Condition::combine(parts); // any range works
    CHECK(c.files == xiio::Files{{1, xiio::READ | xiio::WRITE}, {2, xiio::READ}});
}

TEST_CASE("Condition::fulfilled checks files and their events") {
    xiio::Condition c{.files = {{1, xiio::READ}}};
    CHECK(c.fulfilled({{1, xiio::READ}, {2, xiio::READ}}));
    CHECK_FALSE(c.fulfilled({{1, xiio::WRITE}, {2, xiio::READ}}));
}

TEST_CASE("Condition::fulfilled checks futures and time") {
    xiio::Future<int> f;
    xiio::Condition c{.futures = {&f}};
    CHECK_FALSE(c.fulfilled({}));
    f.set_exception(std::make_exception_ptr(std::runtime_error("x")));
    CHECK(c.fulfilled({}));
    CHECK(xiio::Condition{.time = xiio::Clock::now()}.fulfilled({}));
    CHECK_FALSE(xiio::Condition{.time = xiio::Clock::now() + 1h}.fulfilled({}));
}

TEST_CASE("awaiting a Condition returns every ready file") {
    run([]() -> Task<void> {
        Pipe p;
        REQUIRE(::write(p.w.get(), "x", 1) == 1);
        Pipe idle;
        xiio::Condition c{.files = {{p.r.get(), xiio::READ},
                                    {p.w.get(), xiio::WRITE},
                                    {idle.r.get(), xiio::READ}}};
        auto ready = co_await c;
        CHECK(ready == xiio::Files{{p.r.get(), xiio::READ}, {p.w.get(), xiio::WRITE}});
    });
}

TEST_CASE("a Condition's deadline returns empty files") {
    assert_duration(50ms, [] {
        run([]() -> Task<void> {
            Pipe p;
            xiio::Condition c{.files = {{p.r.get(), xiio::READ}},
                              .time = xiio::Clock::now() + 50ms};
            auto ready = co_await std::move(c);
            CHECK(ready.empty());
        });
    });
}

TEST_CASE("a Condition wakes when one of its futures is set") {
    assert_duration(30ms, [] {
        run([]() -> Task<void> {
            xiio::Future<int> f, never;
            auto waiter = [&]() -> Task<void> {
                xiio::Condition c{.futures = {&never, &f}, .time = xiio::Clock::now() + 1s};
                auto ready = co_await c;
                CHECK(ready.empty());
                CHECK(f.done());
            };
            auto setter = [&]() -> Task<void> {
                co_await xiio::sleep(30ms);
                f.set_result(1);
            };
            co_await xiio::gather(waiter(), setter());
        });
    });
}

// ---- Future ----------------------------------------------------------------------------

TEST_CASE("a future set before any loop runs gives its value") {
    xiio::Future<std::string> f;
    f.set_result("test");
    CHECK(run([&]() -> Task<std::string> { co_return co_await f; }) == "test");
}

TEST_CASE("a future rethrows its exception to every await") {
    xiio::Future<int> f;
    f.set_exception(std::make_exception_ptr(std::invalid_argument("bad")));
    run([&]() -> Task<void> {
        CHECK_THROWS_AS(co_await f, std::invalid_argument);
        CHECK_THROWS_AS(co_await f, std::invalid_argument);
    });
}

TEST_CASE("a future is awaited by several tasks, each gets a copy") {
    auto results = run([]() -> Task<std::vector<std::string>> {
        xiio::Future<std::string> f;
        auto waiter = [&]() -> Task<std::string> { co_return co_await f; };
        auto setter = [&]() -> Task<std::string> {
            co_await xiio::sleep(10ms);
            f.set_result("v");
            co_return "set";
        };
        auto [a, b, c, d] = co_await xiio::gather(waiter(), waiter(), setter(), waiter());
        co_return std::vector<std::string>{a, b, c, d};
    });
    CHECK(results == std::vector<std::string>{"v", "v", "set", "v"});
}

TEST_CASE("Future<void> wakes its waiters") {
    run([]() -> Task<void> {
        xiio::Future<> f;
        int woke = 0;
        auto waiter = [&]() -> Task<void> {
            co_await f;
            ++woke;
        };
        auto setter = [&]() -> Task<void> {
            co_await xiio::yield();
            f.set_result();
        };
        co_await xiio::gather(waiter(), waiter(), setter());
        CHECK(woke == 2);
    });
}

TEST_CASE("setting a future twice throws logic_error") {
    xiio::Future<int> f;
    f.set_result(1);
    CHECK_THROWS_AS(f.set_result(2), std::logic_error);
    CHECK_THROWS_AS(f.set_exception(std::make_exception_ptr(1)), std::logic_error);
    xiio::Future<> v;
    v.set_result();
    CHECK_THROWS_AS(v.set_result(), std::logic_error);
}

TEST_CASE("a future destroyed while awaited fails its waiters with logic_error") {
    run([]() -> Task<void> {
        auto f = std::make_unique<xiio::Future<int>>();
        auto waiter = [&]() -> Task<void> { CHECK_THROWS_AS(co_await *f, std::logic_error); };
        auto destroyer = [&]() -> Task<void> {
            co_await xiio::yield();
            f.reset();
        };
        co_await xiio::gather(waiter(), destroyer());
    });
}

TEST_CASE("the documented forms that avoid g++ 12's co_await bugs work") {
    run([]() -> Task<void> {
        Pipe p;
        co_await xiio::writeall(p.w, "x");
        // A braced list inside co_await does not compile on g++ 12: build the value first.
        xiio::Condition c{.files = {{p.r.get(), xiio::READ}}};
        auto ready = co_await c;
        CHECK(ready.size() == 1);
        ready = co_await std::move(c);
        CHECK(ready.size() == 1);
        // A by-copy capturing lambda temporary inside co_await is destroyed twice on g++ 12:
        // name it first.
        auto text = std::make_shared<std::string>("copied");
        auto body = [text]() -> Task<std::string> {
            co_await xiio::yield();
            co_return *text;
        };
        auto got = co_await xiio::timeout(1s, body);
        CHECK(got == "copied");
        auto group_body = [text](xiio::TaskGroup&) -> Task<std::size_t> {
            co_await xiio::yield();
            co_return text->size();
        };
        auto size = co_await xiio::task_group(group_body);
        CHECK(size == 6);
        CHECK(text.use_count() == 3); // the two named lambdas, no extra or missing copy
    });
}

// ---- regressions of the second-round review ---------------------------------------------

TEST_CASE("a Condition can be passed to run, add_task and gather") {
    test::Pipe p;
    REQUIRE(::write(p.w.get(), "x", 1) == 1);
    xiio::Condition c{.files = {{p.r.get(), xiio::READ}}};
    auto ready = xiio::run(c); // an lvalue is copied
    CHECK(ready == xiio::Files{{p.r.get(), xiio::READ}});
    CHECK(c.files.size() == 1);
    run([&]() -> Task<void> {
        xiio::Condition later{.time = xiio::Clock::now() + 5ms};
        auto [a, b] = co_await xiio::gather(c, std::move(later));
        CHECK(a.size() == 1);
        CHECK(b.empty());
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            auto h = tg.add_task(c);
            co_await h;
            CHECK(h.result().size() == 1);
        };
        co_await xiio::task_group(body);
    });
}

TEST_CASE("a future set and then destroyed still satisfies a Condition it was part of") {
    run([]() -> Task<void> {
        auto f = std::make_unique<xiio::Future<int>>();
        xiio::Condition c{.futures = {f.get()}};
        auto setter = [&]() -> Task<void> {
            f->set_result(1);
            f.reset(); // the waiter was woken, but has not resumed yet
            co_return;
        };
        auto [ready, _] = co_await xiio::gather(std::move(c), setter());
        CHECK(ready.empty());
    });
}

// Each allocation an await makes fails in turn (the first awaits with 64 sleepers in the
// heap, so the timer heap must grow): bad_alloc reaches the task, and the heap still
// works. Before the fix a failed growth left a heap index behind, and the leaf's
// destructor removed a timer that was never added.
template <class MakeAwaitable>
void sweep_allocation_failures(MakeAwaitable make) {
    run([&]() -> Task<void> {
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            for (int i = 0; i < 64; ++i) // a new loop's heap: capacity 64 after 64 pushes
                tg.add_task(xiio::sleep(std::chrono::milliseconds(200 + i)));
            co_await xiio::yield(); // all of them now wait in the heap
            long failures = 0;
            for (long n = 0;; ++n) {
                bool threw = false;
                {
                    test::FailAllocation fail(n);
                    try {
                        co_await make();
                    } catch (const std::bad_alloc&) {
                        threw = true;
                    }
                    if (!test::FailAllocation::fired())
                        break;
                }
                CHECK(threw);
                ++failures;
                co_await xiio::sleep(1ms); // the heap still works
            }
            CHECK(failures >= 1);
            tg.cancel();
        };
        co_await xiio::task_group(body);
    });
}

// [no-valgrind]: the failing allocation comes from the test binary's operator new.
TEST_CASE("a sleep whose timer cannot be added throws bad_alloc and leaves the heap intact",
          "[no-valgrind]") {
    sweep_allocation_failures([] { return xiio::sleep(1ms); });
}

TEST_CASE("a Condition whose timer cannot be added throws bad_alloc and leaves the heap intact",
          "[no-valgrind]") {
    sweep_allocation_failures([] { return xiio::Condition{.time = xiio::Clock::now() + 1ms}; });
}

// A read that always finds data completes without suspending: its task held the loop.
TEST_CASE("fairness: a reader of an always-ready fd does not delay timers or other tasks") {
    run([]() -> Task<void> {
        xiio::Fd zero(::open("/dev/zero", O_RDONLY | O_CLOEXEC));
        REQUIRE(zero);
        xiio::Future<int> set;
        set.set_result(1);
        bool stop = false;
        long reads = 0, awaits = 0;
        auto reader = [&]() -> Task<void> {
            char c;
            for (auto end = xiio::Clock::now() + 2s; !stop && xiio::Clock::now() < end;)
                reads += static_cast<long>(co_await xiio::read(zero, std::span<char>(&c, 1)));
        };
        auto waiter = [&]() -> Task<void> { // a future that is already set: the same
            for (auto end = xiio::Clock::now() + 2s; !stop && xiio::Clock::now() < end;)
                awaits += co_await set;
        };
        xiio::Clock::duration late{};
        auto observer = [&]() -> Task<void> {
            auto start = xiio::Clock::now();
            co_await xiio::sleep(10ms);
            late = xiio::Clock::now() - start - 10ms;
            stop = true;
        };
        co_await xiio::gather(observer(), reader(), waiter());       // the observer sleeps first
        CHECK(late < std::chrono::milliseconds(25 * slack_scale())); // without the budget: 2 s
        CHECK(reads > 0);
        CHECK(awaits > 0);
    });
}
