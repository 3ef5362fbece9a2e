// Tests of xiio/channel.hpp: Channel, between tasks of one loop and of loops on threads.
#include "helpers.hpp"

#include <xiio/channel.hpp>

#include <atomic>
#include <exception>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

using namespace test;
using xiio::Task;

namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool sanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool sanitized = true;
#else
constexpr bool sanitized = false;
#endif
#else
constexpr bool sanitized = false;
#endif

/// Scales a count down under the sanitizers and valgrind (slack_scale() > 1), which are
/// 10-50 times slower: the paths taken are the same, only fewer times.
long scaled(long n) {
    if (slack_scale() > 1)
        return n / 20;
    return sanitized ? n / 10 : n;
}

/// Runs the task `make()` returns on a loop of its own (xiio::run) on a new thread.
/// join() waits and rethrows what the task threw.
class OnThread {
public:
    template <class F>
    explicit OnThread(F make)
        : thread_([this, make = std::move(make)]() mutable {
              try {
                  xiio::run(make());
              } catch (...) {
                  error_ = std::current_exception();
              }
          }) {}
    OnThread(const OnThread&) = delete;
    OnThread& operator=(const OnThread&) = delete;
    ~OnThread() {
        if (thread_.joinable())
            thread_.join();
    }
    void join() {
        thread_.join();
        if (error_)
            std::rethrow_exception(error_);
    }

private:
    std::exception_ptr error_;
    std::thread thread_; // last: started once error_ exists
};

} // namespace

TEST_CASE("a channel of capacity 0 is invalid", "[channel]") {
    CHECK_THROWS_AS(xiio::Channel<int>(0), std::invalid_argument);
}

TEST_CASE("a channel delivers values in FIFO order up to its capacity without waiting",
          "[channel]") {
    run([]() -> Task<void> {
        xiio::Channel<std::string> ch(3);
        CHECK(ch.capacity() == 3);
        co_await ch.put("a");
        co_await ch.put("b");
        CHECK(ch.try_put(std::string("c")));
        std::string d = "d";
        CHECK_FALSE(ch.try_put(std::move(d))); // full: left as it was
        CHECK(d == "d");
        CHECK(ch.size() == 3);
        auto a = co_await ch.get();
        auto b = ch.try_get();
        auto c = co_await ch.get();
        CHECK(a == "a");
        CHECK(b == "b");
        CHECK(c == "c");
        CHECK_FALSE(ch.try_get());
        CHECK(ch.size() == 0);
    });
}

TEST_CASE("a channel put waits while full and get waits while empty, in one loop", "[channel]") {
    run([]() -> Task<void> {
        xiio::Channel<int> ch(2);
        std::vector<int> log;
        co_await xiio::gather(
            [&]() -> Task<void> {
                for (int i = 0; i < 6; ++i) {
                    co_await ch.put(i);
                    log.push_back(i);
                }
                ch.close();
            }(),
            [&]() -> Task<void> {
                co_await xiio::sleep(20ms);
                CHECK(log.size() == 2); // the third put waits for room
                while (auto v = co_await ch.get())
                    log.push_back(100 + *v);
            }());
        REQUIRE(log.size() == 12);
        std::vector<int> got;
        for (int x : log)
            if (x >= 100)
                got.push_back(x - 100);
        CHECK(got == std::vector<int>{0, 1, 2, 3, 4, 5});
    });
}

TEST_CASE("a get waiting on one loop is woken by a put from another thread, and its loop "
          "does not report a deadlock meanwhile",
          "[channel]") {
    // Catch's assertions are not thread-safe: the threads record, the test thread checks.
    xiio::Channel<int> ch(1);
    auto start = xiio::Clock::now();
    std::optional<int> got;
    long waited_ms = 0;
    OnThread consumer([&]() -> Task<void> {
        got = co_await ch.get(); // the only task: waits 50 ms with nothing else to do
        waited_ms = elapsed_ms(start);
    });
    std::this_thread::sleep_for(50ms);
    CHECK(ch.try_put(42));
    consumer.join();
    CHECK(got == 42);
    CHECK(waited_ms >= 50);
}

TEST_CASE("a put waiting on a full channel is woken by a get on another loop", "[channel]") {
    xiio::Channel<int> ch(1);
    OnThread producer([&]() -> Task<void> {
        co_await ch.put(1);
        co_await ch.put(2); // waits for the consumer's first get
        co_await ch.put(3);
        ch.close();
    });
    std::vector<int> got;
    OnThread consumer([&]() -> Task<void> {
        co_await xiio::sleep(50ms);
        while (auto v = co_await ch.get())
            got.push_back(*v);
    });
    producer.join();
    consumer.join();
    CHECK(got == std::vector<int>{1, 2, 3});
}

TEST_CASE("a put on a closed channel throws ClosedError and get drains it, then returns "
          "nullopt",
          "[channel]") {
    run([]() -> Task<void> {
        xiio::Channel<int> ch(4);
        co_await ch.put(1);
        co_await ch.put(2);
        ch.close();
        ch.close();
        CHECK(ch.closed());
        CHECK_THROWS_AS(co_await ch.put(3), xiio::ClosedError);
        CHECK_THROWS_AS(ch.try_put(3), xiio::ClosedError);
        auto a = co_await ch.get();
        auto b = co_await ch.get();
        auto c = co_await ch.get();
        CHECK(a == 1);
        CHECK(b == 2);
        CHECK_FALSE(c);
    });
}

TEST_CASE("close from another thread wakes getters and putters on their own loops", "[channel]") {
    xiio::Channel<int> empty(1), full(1);
    REQUIRE(full.try_put(0));
    std::atomic<int> nullopts{0}, closed_errors{0};
    auto waiter = [&]() -> Task<void> {
        co_await xiio::gather(
            [&]() -> Task<void> {
                if (!co_await empty.get())
                    ++nullopts;
            }(),
            [&]() -> Task<void> {
                try {
                    co_await full.put(1);
                } catch (const xiio::ClosedError&) {
                    ++closed_errors;
                }
            }());
    };
    OnThread a(waiter), b(waiter);
    std::this_thread::sleep_for(50ms);
    empty.close();
    full.close();
    a.join();
    b.join();
    CHECK(nullopts == 2);
    CHECK(closed_errors == 2);
    CHECK(full.try_get() == 0); // what was queued before close stays to be drained
}

TEST_CASE("destroying a channel with waiters on other loops closes it: they get nullopt or "
          "ClosedError",
          "[channel]") {
    auto empty = std::make_unique<xiio::Channel<std::string>>(1);
    auto full = std::make_unique<xiio::Channel<std::string>>(1);
    REQUIRE(full->try_put("queued"));
    std::atomic<int> nullopts{0}, closed_errors{0};
    OnThread getter([&, &ch = *empty]() -> Task<void> {
        if (!co_await ch.get())
            ++nullopts;
    });
    OnThread putter([&, &ch = *full]() -> Task<void> {
        try {
            co_await ch.put("more");
        } catch (const xiio::ClosedError&) {
            ++closed_errors;
        }
    });
    std::this_thread::sleep_for(50ms);
    empty.reset();
    full.reset(); // its queued value is destroyed with it
    getter.join();
    putter.join();
    CHECK(nullopts == 1);
    CHECK(closed_errors == 1);
}

TEST_CASE("a cancelled channel get takes nothing and a cancelled put leaves nothing", "[channel]") {
    run([]() -> Task<void> {
        xiio::Channel<int> ch(1);
        auto got = co_await xiio::move_on_after(10ms, ch.get());
        CHECK_FALSE(got); // timed out
        co_await ch.put(7);
        CHECK(ch.size() == 1); // the cancelled get took nothing
        auto put = co_await xiio::move_on_after(10ms, ch.put(8));
        CHECK_FALSE(put);      // timed out: the channel stayed full
        CHECK(ch.size() == 1); // and 8 is not in it
        auto v = co_await ch.get();
        CHECK(v == 7);
        CHECK_FALSE(ch.try_get());
    });
}

TEST_CASE("a channel get cancelled after it was handed a value still returns the value",
          "[channel]") {
    run([]() -> Task<void> {
        xiio::Channel<int> ch(1);
        std::optional<int> got;
        bool cancelled = false;
        auto getter = [&]() -> Task<void> {
            got = co_await ch.get();
            try {
                co_await xiio::yield();
            } catch (const xiio::CancelledError&) {
                cancelled = true;
            }
        };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(getter());
            co_await xiio::yield();
            co_await ch.put(5); // handed to the waiting getter
            tg.cancel();
        });
        CHECK(got == 5);
        CHECK(cancelled);
        CHECK(ch.size() == 0);
    });
}

TEST_CASE("a get cancelled while a put from another thread is handing it a value returns the "
          "value and sees the cancellation at its next co_await",
          "[channel]") {
    // The getter's loop is kept busy (blocked) while the other thread hands it the value, so
    // the hand-off is in the loop's remote queue when the cancellation comes.
    xiio::Channel<int> ch(1);
    std::atomic<bool> parked{false}, put_done{false};
    std::optional<int> got;
    bool cancelled = false;
    OnThread consumer([&]() -> Task<void> {
        auto getter = [&]() -> Task<void> { // named: it must outlive its task
            got = co_await ch.get();
            try {
                co_await xiio::yield();
            } catch (const xiio::CancelledError&) {
                cancelled = true;
            }
        };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(getter());
            co_await xiio::sleep(10ms); // the getter waits now
            parked = true;
            while (!put_done)
                std::this_thread::sleep_for(1ms); // blocks the loop: the hand-off stays queued
            tg.cancel();
        });
    });
    while (!parked)
        std::this_thread::sleep_for(1ms);
    CHECK(ch.try_put(42)); // handed to the waiting getter
    put_done = true;
    consumer.join();
    CHECK(got == 42);
    CHECK(cancelled);
    CHECK(ch.size() == 0);
}

TEST_CASE("a put cancelled while a get from another thread takes its value returns and sees the "
          "cancellation at its next co_await",
          "[channel]") {
    xiio::Channel<int> ch(1);
    REQUIRE(ch.try_put(1));
    std::atomic<bool> parked{false}, got_done{false};
    bool put_returned = false, cancelled = false;
    OnThread producer([&]() -> Task<void> {
        auto putter = [&]() -> Task<void> {
            co_await ch.put(2); // waits: full
            put_returned = true;
            try {
                co_await xiio::yield();
            } catch (const xiio::CancelledError&) {
                cancelled = true;
            }
        };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(putter());
            co_await xiio::sleep(10ms);
            parked = true;
            while (!got_done)
                std::this_thread::sleep_for(1ms);
            tg.cancel();
        });
    });
    while (!parked)
        std::this_thread::sleep_for(1ms);
    auto first = ch.try_get(); // frees the slot: the waiting put's value moves in
    got_done = true;
    producer.join();
    CHECK(first == 1);
    CHECK(put_returned);
    CHECK(cancelled);
    CHECK(ch.try_get() == 2);
}

namespace {
xiio::Generator<int> relay(xiio::Channel<int>& ch) {
    while (auto v = co_await ch.get())
        co_yield *v;
}
} // namespace

TEST_CASE("a get whose frame is destroyed while it waits leaves the channel, also with a "
          "hand-off in flight",
          "[channel]") {
    // A generator destroyed while a task waits inside its body destroys the body's frame
    // with the get suspended in it: the get must leave the channel's list (a later put
    // must not write into the dead frame) or, if a value was already handed to it, take
    // its node back from the loop's remote queue (the loop must not run a dead node).
    for (bool in_flight : {false, true}) {
        xiio::Channel<int> ch(1);
        std::atomic<bool> parked{false}, put_done{false};
        bool failed = false;
        OnThread consumer([&]() -> Task<void> {
            std::optional<xiio::Generator<int>> g(relay(ch));
            auto waiter = [&]() -> Task<void> {
                try {
                    co_await g->next();
                } catch (const std::logic_error&) {
                    failed = true; // the generator was destroyed under it
                }
            };
            co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
                tg.add_task(waiter());
                co_await xiio::sleep(10ms); // the get waits in the generator's body now
                parked = true;
                while (in_flight && !put_done)
                    std::this_thread::sleep_for(1ms); // the hand-off stays queued
                g.reset();
            });
        });
        while (in_flight && !parked)
            std::this_thread::sleep_for(1ms);
        if (in_flight)
            CHECK(ch.try_put(7)); // handed to the waiting get
        put_done = true;
        consumer.join();
        CHECK(failed);
        CHECK(ch.try_put(8)); // queued: no waiter is left
        CHECK(ch.try_get() == 8);
    }
}

TEST_CASE("a timeout around a channel get fires while the get keeps its loop alive", "[channel]") {
    xiio::Channel<int> ch(1);
    assert_duration(50ms, [&] {
        run([&]() -> Task<void> {
            CHECK_THROWS_AS(co_await xiio::timeout(50ms, ch.get()), xiio::TimeoutError);
        });
    });
    CHECK(ch.try_put(1)); // the timed-out get took nothing and left no waiter behind
    CHECK(ch.try_get() == 1);
}

TEST_CASE("cancellations racing hand-offs across threads lose and duplicate no value",
          "[channel]") {
    // Both sides wait under timeouts of a few microseconds, so cancellations keep landing
    // while a value is being handed over from the other thread. A put that returned was
    // taken (it retries the same value otherwise); a get that returned a value owns it.
    const int n = static_cast<int>(scaled(20'000));
    xiio::Channel<int> ch(2);
    std::vector<int> got;
    int producer_timeouts = 0, consumer_timeouts = 0;
    OnThread producer([&]() -> Task<void> {
        std::minstd_rand rng(1);
        for (int i = 0; i < n; ++i) {
            for (;;) {
                bool ok = false;
                auto put = [&]() -> Task<void> {
                    co_await ch.put(i);
                    ok = true;
                };
                co_await xiio::move_on_after(std::chrono::microseconds(rng() % 60), put());
                if (ok)
                    break;
                ++producer_timeouts;
            }
        }
        ch.close();
    });
    OnThread consumer([&]() -> Task<void> {
        std::minstd_rand rng(2);
        for (bool open = true; open;) {
            auto get = [&]() -> Task<void> {
                auto v = co_await ch.get();
                if (v)
                    got.push_back(*v);
                else
                    open = false;
            };
            if (!co_await xiio::move_on_after(std::chrono::microseconds(rng() % 60), get()))
                ++consumer_timeouts;
        }
    });
    producer.join();
    consumer.join();
    REQUIRE(got.size() == static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i)
        if (got[static_cast<std::size_t>(i)] != i)
            FAIL("value " << i << " arrived as " << got[static_cast<std::size_t>(i)]);
    INFO("timeouts: producer " << producer_timeouts << ", consumer " << consumer_timeouts);
    CHECK(producer_timeouts + consumer_timeouts > 0);
}

TEST_CASE("a million ints through a channel of capacity 64 between two loops arrive once "
          "and in order per producer",
          "[channel]") {
    constexpr int producers = 4;
    const long per_producer = scaled(1'000'000) / producers;
    xiio::Channel<long> ch(64);
    std::vector<long> next(producers, 0);
    long received = 0;
    bool in_order = true;
    OnThread consumer([&]() -> Task<void> {
        while (auto v = co_await ch.get()) {
            auto p = static_cast<std::size_t>(*v % producers);
            in_order = in_order && *v / producers == next[p];
            ++next[p];
            ++received;
        }
    });
    OnThread producer([&]() -> Task<void> {
        auto produce = [&](long id) -> Task<void> {
            for (long i = 0; i < per_producer; ++i)
                co_await ch.put(i * producers + id);
        };
        co_await xiio::gather(produce(0), produce(1), produce(2), produce(3));
        ch.close();
    });
    producer.join();
    consumer.join();
    CHECK(in_order);
    CHECK(received == per_producer * producers);
    for (long c : next)
        CHECK(c == per_producer);
}

TEST_CASE("two producer loops and two consumer loops share a channel: every value arrives "
          "exactly once",
          "[channel]") {
    const long per_producer = scaled(100'000);
    xiio::Channel<long> ch(16);
    std::atomic<int> producing{2};
    std::vector<long> got[2];
    auto producer = [&](long id) {
        return [&, id]() -> Task<void> {
            for (long i = 0; i < per_producer; ++i)
                co_await ch.put(i * 2 + id);
            if (--producing == 0)
                ch.close();
        };
    };
    auto consumer = [&](int id) {
        return [&, id]() -> Task<void> {
            while (auto v = co_await ch.get())
                got[id].push_back(*v);
        };
    };
    OnThread c0(consumer(0)), c1(consumer(1)), p0(producer(0)), p1(producer(1));
    p0.join();
    p1.join();
    c0.join();
    c1.join();
    std::vector<long> seen(static_cast<std::size_t>(per_producer * 2), 0);
    bool in_order = true;
    for (auto& g : got) {
        long last[2] = {-1, -1}; // each consumer sees each producer's values in order
        for (long v : g) {
            ++seen[static_cast<std::size_t>(v)];
            in_order = in_order && v > last[v % 2];
            last[v % 2] = v;
        }
    }
    CHECK(in_order);
    CHECK(got[0].size() + got[1].size() == seen.size());
    CHECK(std::count(seen.begin(), seen.end(), 1) == static_cast<long>(seen.size()));
}

TEST_CASE("a channel moves move-only values between loops", "[channel]") {
    xiio::Channel<std::unique_ptr<int>> ch(2);
    long sum = 0;
    OnThread consumer([&]() -> Task<void> {
        while (auto p = co_await ch.get())
            sum += **p;
    });
    OnThread producer([&]() -> Task<void> {
        for (int i = 1; i <= 1000; ++i)
            co_await ch.put(std::make_unique<int>(i));
        ch.close();
    });
    producer.join();
    consumer.join();
    CHECK(sum == 1000 * 1001 / 2);
}

TEST_CASE("every channel awaitable can be run and added as a task", "[channel]") {
    xiio::Channel<int> ch(1);
    xiio::run(ch.put(3));
    auto v = xiio::run(ch.get());
    CHECK(v == 3);
    run([&]() -> Task<void> {
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(ch.get());
            tg.add_task(ch.put(4));
            co_return;
        });
        CHECK(ch.size() == 0);
    });
}
