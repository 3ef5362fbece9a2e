// Tests of xiio/shield.hpp: a shielded task runs to its end; the awaiting task's
// cancellation is held back until then and thrown at its next co_await.
#include <xiio/shield.hpp>

#include "helpers.hpp"

#include <stdexcept>
#include <string>

#include <xiio/race.hpp>

using namespace test;
using xiio::Task;

TEST_CASE("a shield returns its task's value") {
    auto v = run([]() -> Task<int> {
        int x = co_await xiio::shield(delayed(3, 1ms));
        co_await xiio::yield(); // no cancellation was held
        co_return x;
    });
    CHECK(v == 3);
}

TEST_CASE("a shield accepts xiio awaitables") {
    assert_duration(10ms,
                    [] { run([]() -> Task<void> { co_await xiio::shield(xiio::sleep(10ms)); }); });
}

TEST_CASE("an outer timeout during a shielded task: the task completes, the timeout comes at "
          "the next co_await") {
    int v = 0;
    bool after_shield = false, after_next = false;
    assert_duration(60ms, [&] {
        run([&]() -> Task<void> {
            auto body = [&]() -> Task<void> {
                v = co_await xiio::shield(delayed(7, 60ms));
                after_shield = true;
                co_await xiio::yield(); // the held cancellation is thrown here
                after_next = true;
            };
            CHECK_THROWS_AS(co_await xiio::timeout(20ms, body), xiio::TimeoutError);
        });
    });
    CHECK(v == 7);
    CHECK(after_shield);
    CHECK_FALSE(after_next);
}

TEST_CASE("a cancellation held by a shield is a CancelledError at the next co_await") {
    run([]() -> Task<void> {
        int v = 0;
        bool cancelled = false;
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task([](xiio::TaskGroup& g) -> Task<void> {
                co_await xiio::sleep(10ms);
                g.cancel();
            }(tg));
            v = co_await xiio::shield(delayed(5, 40ms));
            try {
                co_await xiio::sleep(10s);
            } catch (const xiio::CancelledError&) {
                cancelled = true;
                throw;
            }
        };
        co_await xiio::task_group(body);
        CHECK(v == 5);
        CHECK(cancelled);
    });
}

TEST_CASE("a cancellation pending before the shield began is held until it ends") {
    run([]() -> Task<void> {
        int v = 0;
        bool cancelled = false;
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.cancel(); // cancels the body too: pending for its next co_await
            v = co_await xiio::shield(delayed(6, 10ms));
            try {
                co_await xiio::yield();
            } catch (const xiio::CancelledError&) {
                cancelled = true;
                throw;
            }
        };
        co_await xiio::task_group(body);
        CHECK(v == 6);
        CHECK(cancelled);
    });
}

TEST_CASE("a timeout inside a shielded task works") {
    run([]() -> Task<void> {
        auto inner = []() -> Task<void> { co_await xiio::timeout(10ms, xiio::sleep(10s)); };
        auto start = xiio::Clock::now();
        CHECK_THROWS_AS(co_await xiio::shield(inner()), xiio::TimeoutError);
        CHECK(elapsed_ms(start) < 1000);
    });
}

TEST_CASE("a timeout inside a shielded task works while the outer cancellation is held") {
    run([]() -> Task<void> {
        bool timed_out = false;
        auto inner = [&]() -> Task<void> {
            try {
                co_await xiio::timeout(40ms, xiio::sleep(10s));
            } catch (const xiio::TimeoutError&) {
                timed_out = true; // the cleanup's own limit, not the outer one
            }
        };
        auto body = [&]() -> Task<void> {
            co_await xiio::shield(inner());
            co_await xiio::yield();
        };
        auto start = xiio::Clock::now();
        CHECK_THROWS_AS(co_await xiio::timeout(10ms, body), xiio::TimeoutError);
        CHECK(timed_out);
        CHECK(elapsed_ms(start) >= 40);
        CHECK(elapsed_ms(start) < 1000);
    });
}

TEST_CASE("a shield of a task that throws rethrows its exception, held cancellation or not") {
    run([]() -> Task<void> {
        CHECK_THROWS_WITH(co_await xiio::shield(fail_after(1ms, "plain")), "plain");
        std::string caught;
        auto body = [&]() -> Task<void> {
            try {
                co_await xiio::shield(fail_after(40ms, "shielded"));
            } catch (const std::runtime_error& e) {
                caught = e.what();
            }
            co_await xiio::yield(); // the held cancellation
        };
        CHECK_THROWS_AS(co_await xiio::timeout(10ms, body), xiio::TimeoutError);
        CHECK(caught == "shielded");
    });
}

TEST_CASE("nested shields both hold the cancellation") {
    run([]() -> Task<void> {
        int v = 0;
        bool inner_done = false;
        auto inner = [&]() -> Task<int> {
            int x = co_await xiio::shield(delayed(8, 40ms));
            inner_done = true;
            co_return x + 1;
        };
        auto body = [&]() -> Task<void> {
            v = co_await xiio::shield(inner());
            co_await xiio::yield();
        };
        CHECK_THROWS_AS(co_await xiio::timeout(10ms, body), xiio::TimeoutError);
        CHECK(inner_done);
        CHECK(v == 9);
    });
}

TEST_CASE("a group waits for a shielded member whose sibling failed, then throws the error") {
    bool shielded_done = false;
    assert_duration(50ms, [&] {
        run([&]() -> Task<void> {
            auto member = [&]() -> Task<void> {
                co_await xiio::shield(delayed(1, 50ms));
                shielded_done = true;
                co_await xiio::sleep(10s); // cancelled here
            };
            auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
                tg.add_task(member());
                tg.add_task(fail_after(10ms, "sibling"));
                co_return;
            };
            CHECK_THROWS_WITH(co_await xiio::task_group(body), "sibling");
        });
    });
    CHECK(shielded_done);
}

TEST_CASE("a shielded loser of a race finishes before race returns; its value is dropped") {
    bool loser_done = false;
    assert_duration(50ms, [&] {
        auto r = run([&]() -> Task<std::size_t> {
            auto loser = [&]() -> Task<int> {
                int v = co_await xiio::shield(delayed(1, 50ms));
                loser_done = true;
                co_return v;
            };
            auto v = co_await xiio::race(loser(), delayed(2, 10ms));
            co_return v.index();
        });
        CHECK(r == 1);
    });
    CHECK(loser_done);
}

TEST_CASE("a shield of an empty Task throws std::logic_error") {
    run([]() -> Task<void> {
        Task<int> empty;
        CHECK_THROWS_AS(co_await xiio::shield(std::move(empty)), std::logic_error);
    });
}

TEST_CASE("many shields in a row do not overflow the stack") {
    auto v = run([]() -> Task<long> {
        long sum = 0;
        for (int i = 0; i < 20000; ++i)
            sum += co_await xiio::shield([](int x) -> Task<int> { co_return x; }(i));
        co_return sum;
    });
    CHECK(v == 20000L * 19999 / 2);
}
