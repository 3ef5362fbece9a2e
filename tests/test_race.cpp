// Tests of xiio/race.hpp: the first task to finish decides, the others are cancelled and
// waited for.
#include <xiio/race.hpp>

#include "helpers.hpp"

#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

using namespace test;
using xiio::Task;

namespace {

Task<std::string> delayed_text(std::string s, Ms d) {
    co_await xiio::sleep(d);
    co_return s;
}

/// Sleeps for `d`; if cancelled, its cleanup awaits `cleanup` and then sets `cleaned`.
Task<int> slow_cleanup(Ms d, Ms cleanup, bool& cleaned) {
    std::exception_ptr e;
    try {
        co_await xiio::sleep(d);
    } catch (const xiio::CancelledError&) {
        e = std::current_exception();
    }
    if (e) {
        co_await xiio::sleep(cleanup);
        cleaned = true;
        std::rethrow_exception(e);
    }
    co_return 0;
}

/// Sleeps for `d`; if cancelled, its cleanup fails with `what` instead.
Task<int> failing_cleanup(Ms d, const char* what) {
    try {
        co_await xiio::sleep(d);
    } catch (const xiio::CancelledError&) {
        throw std::runtime_error(what);
    }
    co_return 0;
}

} // namespace

TEST_CASE("race returns the first task's value at its index in the variant") {
    assert_duration(10ms, [] {
        auto r = run([]() -> Task<std::variant<int, std::string>> {
            co_return co_await xiio::race(delayed(1, 200ms), delayed_text("fast", 10ms));
        });
        REQUIRE(r.index() == 1);
        CHECK(std::get<1>(r) == "fast");
    });
}

TEST_CASE("race of tasks of the same type tells the winner by the variant's index") {
    auto r = run([]() -> Task<std::variant<int, int, int>> {
        co_return co_await xiio::race(delayed(1, 200ms), delayed(2, 200ms), delayed(3, 10ms));
    });
    REQUIRE(r.index() == 2);
    CHECK(std::get<2>(r) == 3);
}

TEST_CASE("race's void members are std::monostate at their index") {
    auto slow = [](Ms d) -> Task<void> { co_await xiio::sleep(d); };
    auto r = run([&]() -> Task<std::variant<int, std::monostate, std::monostate>> {
        co_return co_await xiio::race(delayed(1, 200ms), slow(200ms), slow(10ms));
    });
    CHECK(r.index() == 2);
    CHECK(std::get<2>(r) == std::monostate{});
}

TEST_CASE("race accepts xiio awaitables as gather does") {
    auto r = run([]() -> Task<std::size_t> {
        auto v = co_await xiio::race(delayed(1, 200ms), xiio::sleep(10ms));
        co_return v.index();
    });
    CHECK(r == 1);
}

TEST_CASE("race of a vector returns the winner's index and value") {
    auto r = run([]() -> Task<std::pair<std::size_t, int>> {
        std::vector<Task<int>> ts;
        ts.push_back(delayed(10, 200ms));
        ts.push_back(delayed(11, 10ms));
        ts.push_back(delayed(12, 100ms));
        co_return co_await xiio::race(std::move(ts));
    });
    CHECK(r.first == 1);
    CHECK(r.second == 11);
}

TEST_CASE("race of a vector of void tasks returns the winner's index") {
    auto slow = [](Ms d) -> Task<void> { co_await xiio::sleep(d); };
    auto r = run([&]() -> Task<std::size_t> {
        std::vector<Task<void>> ts;
        ts.push_back(slow(200ms));
        ts.push_back(slow(150ms));
        ts.push_back(slow(10ms));
        co_return co_await xiio::race(std::move(ts));
    });
    CHECK(r == 2);
}

TEST_CASE("race cancels the losers") {
    run([]() -> Task<void> {
        bool cleaned = false;
        auto start = xiio::Clock::now();
        auto r = co_await xiio::race(slow_cleanup(10s, 0ms, cleaned), delayed(5, 10ms));
        CHECK(r.index() == 1);
        CHECK(cleaned);
        CHECK(elapsed_ms(start) < 1000);
    });
}

TEST_CASE("race rethrows the winner's exception after the losers finished") {
    run([]() -> Task<void> {
        bool cleaned = false;
        try {
            co_await xiio::race(slow_cleanup(10s, 30ms, cleaned), fail_after(10ms, "winner"));
            FAIL("no exception");
        } catch (const std::runtime_error& e) {
            CHECK(std::string(e.what()) == "winner");
        }
        CHECK(cleaned);
    });
}

TEST_CASE("race waits for the losers' cleanup before it returns") {
    bool cleaned = false;
    assert_duration(40ms, [&] {
        auto r = run([&]() -> Task<std::size_t> {
            auto v = co_await xiio::race(slow_cleanup(10s, 30ms, cleaned), delayed(1, 10ms));
            CHECK(cleaned); // set by the loser after its cleanup's sleep
            co_return v.index();
        });
        CHECK(r == 1);
    });
    CHECK(cleaned);
}

TEST_CASE("race throws a loser's cleanup error when the winner returned a value") {
    run([]() -> Task<void> {
        try {
            co_await xiio::race(failing_cleanup(10s, "loser's cleanup"), delayed(1, 10ms));
            FAIL("no exception");
        } catch (const std::runtime_error& e) {
            CHECK(std::string(e.what()) == "loser's cleanup");
        }
    });
}

TEST_CASE("race throws the winner's exception, not a loser's cleanup error") {
    run([]() -> Task<void> {
        try {
            std::vector<Task<int>> ts;
            ts.push_back(failing_cleanup(10s, "loser's cleanup"));
            ts.push_back([]() -> Task<int> {
                co_await fail_after(10ms, "winner");
                co_return 0;
            }());
            co_await xiio::race(std::move(ts));
            FAIL("no exception");
        } catch (const std::runtime_error& e) {
            CHECK(std::string(e.what()) == "winner");
        }
    });
}

TEST_CASE("a loser that finishes with a value after the winner is dropped") {
    // Both wait for one event, which wakes them in the same loop iteration: the first one
    // to run wins and cancels the other, which is woken already and completes without
    // seeing the cancellation (it stays pending, and is dropped with the finished task).
    run([]() -> Task<void> {
        xiio::Event ev;
        bool loser_returned = false;
        auto waiter = [](xiio::Event& e, int v, bool* returned) -> Task<int> {
            co_await e.wait();
            if (returned)
                *returned = true;
            co_return v;
        };
        auto setter = [](xiio::Event& e) -> Task<int> {
            co_await xiio::sleep(1ms);
            e.set();
            co_await xiio::sleep(10s);
            co_return 0;
        };
        auto r =
            co_await xiio::race(waiter(ev, 1, nullptr), waiter(ev, 2, &loser_returned), setter(ev));
        CHECK(r.index() == 0);
        CHECK(std::get<0>(r) == 1);
        CHECK(loser_returned);
    });
}

TEST_CASE("race of an empty vector throws std::invalid_argument") {
    run([]() -> Task<void> {
        CHECK_THROWS_AS(co_await xiio::race(std::vector<Task<int>>{}), std::invalid_argument);
        CHECK_THROWS_AS(co_await xiio::race(std::vector<Task<void>>{}), std::invalid_argument);
    });
}

TEST_CASE("race of an empty Task throws std::logic_error") {
    run([]() -> Task<void> {
        Task<int> empty;
        CHECK_THROWS_AS(co_await xiio::race(delayed(1, 10ms), std::move(empty)), std::logic_error);
        std::vector<Task<int>> ts(2);
        CHECK_THROWS_AS(co_await xiio::race(std::move(ts)), std::logic_error);
    });
}

TEST_CASE("cancelling the task that awaits race cancels every member") {
    run([]() -> Task<void> {
        bool a = false, b = false;
        auto start = xiio::Clock::now();
        auto racing = [&]() -> Task<void> {
            co_await xiio::race(slow_cleanup(10s, 10ms, a), slow_cleanup(10s, 20ms, b));
        };
        CHECK_THROWS_AS(co_await xiio::timeout(20ms, racing), xiio::TimeoutError);
        CHECK(a);
        CHECK(b);
        CHECK(elapsed_ms(start) < 1000);
    });
}

TEST_CASE("a race in a group whose sibling fails is cancelled with its members") {
    run([]() -> Task<void> {
        bool a = false;
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(xiio::race(slow_cleanup(10s, 10ms, a), delayed(1, 10s)));
            tg.add_task(fail_after(10ms, "sibling"));
            co_return;
        };
        CHECK_THROWS_WITH(co_await xiio::task_group(body), "sibling");
        CHECK(a);
    });
}

TEST_CASE("race of one task returns it") {
    auto r = run([]() -> Task<std::pair<std::size_t, int>> {
        std::vector<Task<int>> ts;
        ts.push_back(delayed(4, 1ms));
        co_return co_await xiio::race(std::move(ts));
    });
    CHECK(r == std::pair<std::size_t, int>(0, 4));
}

TEST_CASE("race of many tasks that complete at once does not overflow the stack") {
    auto r = run([]() -> Task<std::pair<std::size_t, int>> {
        std::vector<Task<int>> ts;
        for (int i = 0; i < 20000; ++i)
            ts.push_back([](int v) -> Task<int> { co_return v; }(i));
        co_return co_await xiio::race(std::move(ts));
    });
    CHECK(r.first == 0);
    CHECK(r.second == 0);
}
