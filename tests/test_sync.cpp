// Tests of xiio/sync.hpp: Event, Semaphore, Lock, Queue.
#include "helpers.hpp"

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

using namespace test;
using xiio::Task;

static_assert(std::is_base_of_v<std::runtime_error, xiio::ClosedError>);
static_assert(!std::is_copy_constructible_v<xiio::Lock::Guard> &&
              std::is_move_constructible_v<xiio::Lock::Guard>);
static_assert(!std::is_copy_constructible_v<xiio::Semaphore::Guard> &&
              !std::is_copy_assignable_v<xiio::Semaphore::Guard> &&
              std::is_nothrow_move_constructible_v<xiio::Semaphore::Guard> &&
              std::is_nothrow_move_assignable_v<xiio::Semaphore::Guard>);

namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr long pipeline_items = 100'000;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr long pipeline_items = 100'000;
#else
constexpr long pipeline_items = 1'000'000;
#endif
#else
constexpr long pipeline_items = 1'000'000;
#endif

Task<void> wait_and_log(xiio::Event& e, std::vector<int>& log, int id) {
    co_await e.wait();
    log.push_back(id);
}

Task<void> acquire_and_log(xiio::Semaphore& s, std::vector<int>& log, int id) {
    co_await s.acquire();
    log.push_back(id);
}

Task<void> lock_and_log(xiio::Lock& l, std::vector<int>& log, int id) {
    auto guard = co_await l.lock();
    log.push_back(id);
    co_await xiio::yield();
}

/// What Fragile's copy and move throw.
struct MoveError : std::runtime_error {
    MoveError() : std::runtime_error("Fragile: move failed") {}
};

/// A value whose copy and move throw while it is poisoned and `armed` is set: for the
/// queue's strong guarantee. They throw before changing anything, as a throwing move must
/// for a container to offer a strong guarantee.
struct Fragile {
    static inline thread_local bool armed = false;
    int value = 0;
    bool poisoned = false;

    explicit Fragile(int v, bool p = false) : value(v), poisoned(p) {}
    Fragile(const Fragile& o) : value(o.value), poisoned(o.poisoned) { check(); }
    Fragile(Fragile&& o) : value(o.value), poisoned(o.poisoned) { check(); }
    Fragile& operator=(const Fragile& o) {
        o.check();
        value = o.value;
        poisoned = o.poisoned;
        return *this;
    }
    Fragile& operator=(Fragile&& o) { return *this = static_cast<const Fragile&>(o); }
    void check() const {
        if (poisoned && armed)
            throw MoveError();
    }
};

/// Sets Fragile::armed for its scope (also when a check fails and throws).
struct Armed {
    Armed() { Fragile::armed = true; }
    ~Armed() { Fragile::armed = false; }
    Armed(const Armed&) = delete;
    Armed& operator=(const Armed&) = delete;
};

} // namespace

// ---- Event ---------------------------------------------------------------------------------

TEST_CASE("event wait returns at once when the event is set") {
    run([]() -> Task<void> {
        xiio::Event e;
        CHECK_FALSE(e.is_set());
        e.set();
        CHECK(e.is_set());
        co_await e.wait();
        co_await e.wait();
    });
}

TEST_CASE("event set wakes every waiter in FIFO order and setting twice is fine") {
    run([]() -> Task<void> {
        xiio::Event e;
        std::vector<int> log;
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            for (int i = 0; i < 5; ++i)
                tg.add_task(wait_and_log(e, log, i));
            co_await xiio::yield();
            CHECK(log.empty());
            e.set();
            e.set();
            co_return;
        });
        CHECK(log == std::vector<int>{0, 1, 2, 3, 4});
        e.set();
        CHECK(e.is_set());
    });
}

TEST_CASE("event wait can be cancelled by a timeout and passed where a task is expected") {
    run([]() -> Task<void> {
        xiio::Event e;
        auto r = co_await xiio::move_on_after(20ms, e.wait());
        CHECK_FALSE(r);
        co_await xiio::gather(e.wait(), [&]() -> Task<void> {
            e.set();
            co_return;
        }());
        co_await xiio::timeout(1s, e.wait());
    });
    xiio::Event e;
    e.set();
    xiio::run(e.wait());
}

// ---- Semaphore -----------------------------------------------------------------------------

TEST_CASE("semaphore bounds concurrency to its count") {
    run([]() -> Task<void> {
        xiio::Semaphore sem(3);
        int active = 0, peak = 0, done = 0;
        auto worker = [&]() -> Task<void> {
            co_await sem.acquire();
            ++active;
            peak = std::max(peak, active);
            co_await xiio::sleep(1ms);
            --active;
            ++done;
            sem.release();
        };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            for (int i = 0; i < 20; ++i)
                tg.add_task(worker());
            co_return;
        });
        CHECK(peak == 3);
        CHECK(done == 20);
        CHECK(sem.available() == 3);
    });
}

TEST_CASE("semaphore waiters get permits in FIFO order") {
    run([]() -> Task<void> {
        xiio::Semaphore sem(0);
        std::vector<int> log;
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            for (int i = 0; i < 5; ++i)
                tg.add_task(acquire_and_log(sem, log, i));
            co_await xiio::yield();
            for (int i = 0; i < 5; ++i) {
                sem.release();
                co_await xiio::yield();
                CHECK(log.size() == static_cast<std::size_t>(i + 1));
            }
        });
        CHECK(log == std::vector<int>{0, 1, 2, 3, 4});
    });
}

TEST_CASE("a cancelled acquire leaves the permit free") {
    run([]() -> Task<void> {
        xiio::Semaphore sem(0);
        std::vector<int> log;
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            auto cancelled = xiio::move_on_after(10ms, sem.acquire());
            tg.add_task(std::move(cancelled));
            co_await xiio::sleep(1ms);
            tg.add_task(acquire_and_log(sem, log, 1));
            co_await xiio::sleep(30ms); // the first waiter timed out and left the queue
            sem.release();
        });
        CHECK(log == std::vector<int>{1});
        CHECK(sem.available() == 0);
        sem.release();
        CHECK(sem.available() == 1);
    });
}

TEST_CASE("a waiter cancelled after it was handed a permit keeps it and sees the cancellation "
          "at its next await") {
    run([]() -> Task<void> {
        xiio::Semaphore sem(0);
        bool acquired = false, cancelled = false;
        auto holder = [&]() -> Task<void> {
            co_await sem.acquire();
            acquired = true;
            try {
                co_await xiio::yield();
            } catch (const xiio::CancelledError&) {
                cancelled = true;
            }
            sem.release();
        };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(holder());
            co_await xiio::yield();
            sem.release(); // handed to the waiter, which is now ready
            tg.cancel();   // cancelled before it resumed
            co_return;
        });
        CHECK(acquired);
        CHECK(cancelled);
        CHECK(sem.available() == 1);
    });
}

// ---- Semaphore::guard() --------------------------------------------------------------------

TEST_CASE("a semaphore guard holds a permit and returns it at scope exit", "[sync]") {
    run([]() -> Task<void> {
        xiio::Semaphore sem(2);
        {
            auto permit = co_await sem.guard();
            CHECK(permit.owns_permit());
            CHECK(sem.available() == 1);
            {
                auto second = co_await sem.guard();
                CHECK(sem.available() == 0);
            }
            CHECK(sem.available() == 1);
        }
        CHECK(sem.available() == 2);
        xiio::Semaphore::Guard empty;
        CHECK_FALSE(empty.owns_permit());
        empty.release(); // holds nothing: returns nothing
        CHECK(sem.available() == 2);
    });
}

TEST_CASE("a moved semaphore guard returns its permit once", "[sync]") {
    run([]() -> Task<void> {
        xiio::Semaphore sem(2);
        {
            auto permit = co_await sem.guard();
            auto moved = std::move(permit);
            CHECK_FALSE(permit.owns_permit());
            CHECK(moved.owns_permit());
            permit.release(); // moved from: a no-op
            CHECK(sem.available() == 1);
            auto other = co_await sem.guard();
            CHECK(sem.available() == 0);
            moved = std::move(other); // returns moved's permit, takes other's
            CHECK(sem.available() == 1);
            CHECK(moved.owns_permit());
            CHECK_FALSE(other.owns_permit());
            auto& self = moved;
            moved = std::move(self); // self-move keeps the permit
            CHECK(moved.owns_permit());
            CHECK(sem.available() == 1);
        }
        CHECK(sem.available() == 2);
    });
}

TEST_CASE("an early release of a semaphore guard hands the permit to the next waiter once",
          "[sync]") {
    run([]() -> Task<void> {
        xiio::Semaphore sem(1);
        std::vector<int> log;
        auto waiter = [&]() -> Task<void> {
            auto permit = co_await sem.guard();
            log.push_back(1);
            co_await xiio::yield();
        };
        auto permit = co_await sem.guard();
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(waiter());
            co_await xiio::yield();
            CHECK(log.empty());
            permit.release();
            CHECK_FALSE(permit.owns_permit());
            CHECK(sem.available() == 0); // handed to the waiter, not counted
            permit.release();            // a second release returns nothing
            CHECK(sem.available() == 0);
            co_await xiio::yield();
            CHECK(log == std::vector<int>{1});
        });
        CHECK(sem.available() == 1);
    });
}

TEST_CASE("a cancelled guard() wait takes no permit", "[sync]") {
    run([]() -> Task<void> {
        xiio::Semaphore sem(0);
        auto r = co_await xiio::move_on_after(10ms, sem.guard());
        CHECK_FALSE(r);
        CHECK(sem.available() == 0);
        sem.release(); // nobody waits: the cancelled wait left the list
        CHECK(sem.available() == 1);
        auto again = co_await xiio::timeout(1s, sem.guard());
        CHECK(again.owns_permit());
        CHECK(sem.available() == 0);
    });
}

TEST_CASE("a guard() waiter cancelled in the middle of the queue leaves the permit to the next",
          "[sync]") {
    run([]() -> Task<void> {
        xiio::Semaphore sem(0);
        std::vector<int> log;
        auto patient = [&](int id) -> Task<void> {
            auto permit = co_await sem.guard();
            log.push_back(id);
            co_await xiio::sleep(1ms);
        };
        auto impatient = [&]() -> Task<void> {
            auto got = co_await xiio::move_on_after(10ms, sem.guard());
            if (got)
                log.push_back(99);
        };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(patient(1));
            tg.add_task(impatient());
            tg.add_task(patient(3));
            co_await xiio::sleep(30ms); // the impatient waiter timed out
            sem.release();
        });
        CHECK(log == std::vector<int>{1, 3}); // 1 passed its permit on to 3 at scope exit
        CHECK(sem.available() == 1);
    });
}

TEST_CASE("a guard() waiter cancelled after it was handed a permit gets the guard, which "
          "returns it as the cancellation unwinds",
          "[sync]") {
    run([]() -> Task<void> {
        xiio::Semaphore sem(0);
        bool owned = false, cancelled = false;
        auto holder = [&]() -> Task<void> {
            auto permit = co_await sem.guard();
            owned = permit.owns_permit();
            try {
                co_await xiio::yield();
            } catch (const xiio::CancelledError&) {
                cancelled = true;
                CHECK(sem.available() == 0); // still held
                throw;
            }
        };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(holder());
            co_await xiio::yield();
            sem.release(); // handed to the waiter, which is now ready
            tg.cancel();   // cancelled before it resumed
            co_return;
        });
        CHECK(owned);
        CHECK(cancelled);
        CHECK(sem.available() == 1);
    });
}

TEST_CASE("guards hand permits off in FIFO order, one holder at a time", "[sync]") {
    run([]() -> Task<void> {
        xiio::Semaphore sem(1);
        std::vector<int> log;
        int active = 0, peak = 0;
        auto worker = [&](int id) -> Task<void> {
            auto permit = co_await sem.guard();
            ++active;
            peak = std::max(peak, active);
            log.push_back(id);
            co_await xiio::yield();
            co_await xiio::yield();
            --active;
        };
        auto first = co_await sem.guard();
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            for (int i = 0; i < 5; ++i)
                tg.add_task(worker(i));
            co_await xiio::yield();
            CHECK(log.empty());
            first.release();
        });
        CHECK(log == std::vector<int>{0, 1, 2, 3, 4});
        CHECK(peak == 1);
        CHECK(sem.available() == 1);
    });
}

TEST_CASE("semaphore guards return their permits when exceptions unwind", "[sync]") {
    run([]() -> Task<void> {
        xiio::Semaphore sem(2);
        auto fails = [&]() -> Task<void> {
            auto permit = co_await sem.guard();
            co_await xiio::yield();
            throw std::runtime_error("boom");
        };
        CHECK_THROWS_AS(co_await fails(), std::runtime_error);
        CHECK(sem.available() == 2);

        // A failing member cancels the others: those holding a guard return their permit,
        // the one waiting in guard() takes none.
        bool waiter_got = false;
        auto holder = [&]() -> Task<void> {
            auto permit = co_await sem.guard();
            co_await xiio::sleep(10s);
        };
        auto waiter = [&]() -> Task<void> {
            auto permit = co_await sem.guard();
            waiter_got = true;
        };
        auto failing = [&]() -> Task<void> {
            co_await xiio::sleep(5ms);
            CHECK(sem.available() == 0);
            throw std::runtime_error("member failed");
        };
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(holder());
            tg.add_task(holder());
            tg.add_task(waiter());
            tg.add_task(failing());
            co_return;
        };
        CHECK_THROWS_AS(co_await xiio::task_group(body), std::runtime_error);
        CHECK_FALSE(waiter_got);
        CHECK(sem.available() == 2);
    });
}

// ---- Lock ----------------------------------------------------------------------------------

TEST_CASE("lock gives exclusive access in FIFO order") {
    run([]() -> Task<void> {
        xiio::Lock lock;
        std::vector<int> log;
        auto first = co_await lock.lock();
        CHECK(lock.locked());
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            for (int i = 0; i < 4; ++i)
                tg.add_task(lock_and_log(lock, log, i));
            co_await xiio::yield();
            CHECK(log.empty());
            first.unlock();
        });
        CHECK(log == std::vector<int>{0, 1, 2, 3});
        CHECK_FALSE(lock.locked());
    });
}

TEST_CASE("lock guard releases the lock when an exception unwinds") {
    run([]() -> Task<void> {
        xiio::Lock lock;
        auto fails = [&]() -> Task<void> {
            auto guard = co_await lock.lock();
            co_await xiio::yield();
            throw std::runtime_error("boom");
        };
        CHECK_THROWS_AS(co_await fails(), std::runtime_error);
        CHECK_FALSE(lock.locked());
        auto guard = co_await lock.lock();
        CHECK(guard.owns_lock());
        auto moved = std::move(guard);
        CHECK_FALSE(guard.owns_lock());
        CHECK(lock.locked());
    });
}

TEST_CASE("a cancelled lock waiter does not take the lock") {
    run([]() -> Task<void> {
        xiio::Lock lock;
        auto held = co_await lock.lock();
        auto r = co_await xiio::move_on_after(10ms, lock.lock());
        CHECK_FALSE(r);
        held.unlock();
        CHECK_FALSE(lock.locked());
        auto again = co_await xiio::timeout(1s, lock.lock());
        CHECK(again.owns_lock());
    });
}

// ---- Queue ---------------------------------------------------------------------------------

TEST_CASE("queue of capacity 0 is invalid") {
    CHECK_THROWS_AS(xiio::Queue<int>(0), std::invalid_argument);
}

TEST_CASE("queue delivers values in FIFO order up to its capacity without waiting") {
    run([]() -> Task<void> {
        xiio::Queue<std::unique_ptr<int>> q(3);
        for (int i = 0; i < 3; ++i)
            co_await q.put(std::make_unique<int>(i));
        CHECK(q.size() == 3);
        for (int i = 0; i < 3; ++i) {
            auto v = co_await q.get();
            REQUIRE(v);
            REQUIRE(*v);
            CHECK(**v == i);
        }
        CHECK(q.size() == 0);
    });
}

TEST_CASE("queue put waits while full and get waits while empty") {
    run([]() -> Task<void> {
        xiio::Queue<int> q(2);
        co_await q.put(1);
        co_await q.put(2);
        auto full = co_await xiio::move_on_after(20ms, q.put(3));
        CHECK_FALSE(full);
        CHECK(q.size() == 2); // the cancelled put inserted nothing
        auto a = co_await q.get();
        auto b = co_await q.get();
        CHECK(a == 1);
        CHECK(b == 2);
        auto empty = co_await xiio::move_on_after(20ms, q.get());
        CHECK_FALSE(empty);
        std::vector<int> got;
        co_await xiio::gather(
            [&]() -> Task<void> {
                for (int i = 0; i < 10; ++i)
                    co_await q.put(i);
            }(),
            [&]() -> Task<void> {
                for (int i = 0; i < 10; ++i) {
                    auto v = co_await q.get();
                    got.push_back(*v);
                    co_await xiio::yield();
                }
            }());
        CHECK(got == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
    });
}

TEST_CASE("queue waiters are served in FIFO order") {
    run([]() -> Task<void> {
        xiio::Queue<int> q(1);
        std::vector<int> got;
        auto getter = [&](int i) -> Task<void> {
            auto v = co_await q.get();
            got.push_back(i * 100 + *v);
        };
        auto putter = [&](int i) -> Task<void> { co_await q.put(i); };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            for (int i = 0; i < 3; ++i)
                tg.add_task(getter(i));
            co_await xiio::yield();
            co_await q.put(1);
            co_await q.put(2);
            co_await q.put(3);
        });
        CHECK(got == std::vector<int>{1, 102, 203});
        std::vector<int> order;
        co_await q.put(0);
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            for (int i = 1; i <= 3; ++i)
                tg.add_task(putter(i));
            co_await xiio::yield();
            for (int i = 0; i < 4; ++i) {
                auto v = co_await q.get();
                order.push_back(*v);
            }
        });
        CHECK(order == std::vector<int>{0, 1, 2, 3});
    });
}

TEST_CASE("a cancelled get leaves the value queued") {
    run([]() -> Task<void> {
        xiio::Queue<int> q(1);
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(xiio::move_on_after(10ms, q.get()));
            co_await xiio::sleep(30ms);
            co_await q.put(7);
        });
        CHECK(q.size() == 1);
        auto v = co_await q.get();
        CHECK(v == 7);
    });
}

TEST_CASE("a get cancelled after it was handed a value still returns the value") {
    run([]() -> Task<void> {
        xiio::Queue<int> q(1);
        std::optional<int> got;
        bool cancelled = false;
        auto getter = [&]() -> Task<void> {
            got = co_await q.get();
            try {
                co_await xiio::yield();
            } catch (const xiio::CancelledError&) {
                cancelled = true;
            }
        };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(getter());
            co_await xiio::yield();
            co_await q.put(5); // handed to the waiting getter
            tg.cancel();
        });
        CHECK(got == 5);
        CHECK(cancelled);
        CHECK(q.size() == 0);
    });
}

TEST_CASE("close wakes getters with nullopt after the queue drained") {
    run([]() -> Task<void> {
        xiio::Queue<std::string> q(4);
        std::vector<std::optional<std::string>> got;
        auto getter = [&]() -> Task<void> { got.push_back(co_await q.get()); };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            for (int i = 0; i < 2; ++i)
                tg.add_task(getter());
            co_await xiio::yield();
            q.close();
            q.close();
            co_return;
        });
        REQUIRE(got.size() == 2);
        CHECK_FALSE(got[0]);
        CHECK_FALSE(got[1]);

        xiio::Queue<std::string> q2(4);
        co_await q2.put("a");
        co_await q2.put("b");
        q2.close();
        auto a = co_await q2.get();
        auto b = co_await q2.get();
        auto c = co_await q2.get();
        CHECK(a == "a");
        CHECK(b == "b");
        CHECK_FALSE(c);
    });
}

TEST_CASE("close wakes waiting putters with ClosedError and put after close throws") {
    run([]() -> Task<void> {
        xiio::Queue<int> q(1);
        co_await q.put(1);
        int closed_errors = 0;
        auto putter = [&]() -> Task<void> {
            try {
                co_await q.put(2);
            } catch (const xiio::ClosedError&) {
                ++closed_errors;
            }
        };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            for (int i = 0; i < 3; ++i)
                tg.add_task(putter());
            co_await xiio::yield();
            q.close();
            co_return;
        });
        CHECK(closed_errors == 3);
        CHECK_THROWS_AS(co_await q.put(3), xiio::ClosedError);
        auto v = co_await q.get();
        CHECK(v == 1);
        auto end = co_await q.get();
        CHECK_FALSE(end);
    });
}

TEST_CASE("a pipeline moves a million items through a queue of capacity 64") {
    run([]() -> Task<void> {
        xiio::Queue<long> q(64);
        long sum = 0, count = 0;
        co_await xiio::gather(
            [&]() -> Task<void> {
                for (long i = 0; i < pipeline_items; ++i)
                    co_await q.put(i);
                q.close();
            }(),
            [&]() -> Task<void> {
                while (auto v = co_await q.get()) {
                    sum += *v;
                    ++count;
                }
            }());
        CHECK(count == pipeline_items);
        CHECK(sum == pipeline_items * (pipeline_items - 1) / 2);
    });
}

TEST_CASE("every sync awaitable can be run and added as a task") {
    xiio::Semaphore sem(1);
    xiio::run(sem.acquire());
    CHECK(sem.available() == 0);
    sem.release();
    auto permit = xiio::run(sem.guard());
    CHECK(permit.owns_permit());
    CHECK(sem.available() == 0);
    permit.release();
    CHECK(sem.available() == 1);
    xiio::run(sem.acquire());
    xiio::Lock lock;
    auto guard = xiio::run(lock.lock());
    CHECK(guard.owns_lock());
    guard.unlock();
    xiio::Queue<int> q(1);
    xiio::run(q.put(4));
    auto v = xiio::run(q.get());
    CHECK(v == 4);
}

TEST_CASE("a waiter cancelled in the middle of the queue is skipped and the next one gets the "
          "permit") {
    run([]() -> Task<void> {
        xiio::Semaphore sem(0);
        std::vector<int> log;
        auto impatient = [&]() -> Task<void> {
            auto got = co_await xiio::move_on_after(10ms, sem.acquire());
            if (got)
                log.push_back(99);
        };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(acquire_and_log(sem, log, 1));
            tg.add_task(impatient());
            tg.add_task(acquire_and_log(sem, log, 3));
            co_await xiio::sleep(30ms);
            sem.release();
            sem.release();
        });
        CHECK(log == std::vector<int>{1, 3});
        CHECK(sem.available() == 0);
    });
}

TEST_CASE("a put whose value cannot be moved in throws and stores nothing") {
    run([]() -> Task<void> {
        xiio::Queue<Fragile> q(2);
        // Built unarmed and awaited as an lvalue (g++ 12 moves an awaiter given as an
        // xvalue, which would throw first): only the store may throw.
        auto put = q.put(Fragile(1, true));
        {
            Armed armed;
            CHECK_THROWS_AS(co_await put, MoveError);
        }
        CHECK(q.size() == 0);
        co_await q.put(Fragile(2));
        auto v = co_await q.get();
        REQUIRE(v);
        CHECK(v->value == 2);
    });
}

TEST_CASE("a put whose value cannot be handed to a waiting getter leaves that getter waiting") {
    run([]() -> Task<void> {
        xiio::Queue<Fragile> q(1);
        std::optional<Fragile> got;
        auto getter = [&]() -> Task<void> { got = co_await q.get(); };
        auto r = co_await xiio::move_on_after(2s, [&]() -> Task<void> {
            co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
                tg.add_task(getter());
                co_await xiio::yield();             // the getter waits
                auto put = q.put(Fragile(1, true)); // awaited as an lvalue, see above
                {
                    Armed armed;
                    CHECK_THROWS_AS(co_await put, MoveError);
                }
                CHECK(q.size() == 0);
                co_await q.put(Fragile(2)); // the getter still waits and gets this one
            });
        }());
        CHECK(r); // no hang: the getter was not lost
        REQUIRE(got);
        CHECK(got->value == 2);
        CHECK(q.size() == 0);
    });
}

TEST_CASE("a get whose value cannot be moved out throws and leaves the value first in line") {
    run([]() -> Task<void> {
        xiio::Queue<Fragile> q(2);
        co_await q.put(Fragile(1, true));
        co_await q.put(Fragile(2));
        {
            Armed armed;
            CHECK_THROWS_AS(co_await q.get(), MoveError);
        }
        CHECK(q.size() == 2);
        auto a = co_await q.get();
        auto b = co_await q.get();
        REQUIRE(a);
        REQUIRE(b);
        CHECK(a->value == 1);
        CHECK(b->value == 2);
    });
}

TEST_CASE("a woken getter that cannot move its value out leaves it to the next getter") {
    run([]() -> Task<void> {
        xiio::Queue<Fragile> q(1);
        bool first_failed = false;
        std::optional<Fragile> second;
        auto first = [&]() -> Task<void> {
            try {
                co_await q.get();
            } catch (const MoveError&) {
                first_failed = true;
            }
            Fragile::armed = false;
        };
        auto next = [&]() -> Task<void> { second = co_await q.get(); };
        auto r = co_await xiio::move_on_after(2s, [&]() -> Task<void> {
            co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
                tg.add_task(first());
                tg.add_task(next());
                co_await xiio::yield();           // both wait
                co_await q.put(Fragile(1, true)); // handed to `first`, which has not run yet
                Fragile::armed = true;            // so its move out throws
            });
        }());
        Fragile::armed = false;
        CHECK(r);
        CHECK(first_failed);
        REQUIRE(second);
        CHECK(second->value == 1);
        CHECK(q.size() == 0);

        // With no other getter waiting, the value stays queued for the next get.
        std::optional<Fragile> lost;
        auto lone = [&]() -> Task<void> {
            try {
                lost = co_await q.get();
            } catch (const MoveError&) {
            }
        };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(lone());
            co_await xiio::yield();
            co_await q.put(Fragile(2, true));
            Fragile::armed = true;
            co_await xiio::yield(); // `lone` runs and fails
            Fragile::armed = false;
        });
        CHECK_FALSE(lost);
        CHECK(q.size() == 1);
        auto v = co_await q.get();
        REQUIRE(v);
        CHECK(v->value == 2);
    });
}

TEST_CASE("a get succeeds when the refill from a waiting putter throws, and that putter gets "
          "the error") {
    run([]() -> Task<void> {
        xiio::Queue<Fragile> q(1);
        co_await q.put(Fragile(1));
        int putter_errors = 0;
        bool second_done = false;
        auto bad_putter = [&]() -> Task<void> {
            try {
                co_await q.put(Fragile(2, true));
            } catch (const MoveError&) {
                ++putter_errors;
            }
        };
        auto good_putter = [&]() -> Task<void> {
            co_await q.put(Fragile(3));
            second_done = true;
        };
        std::optional<Fragile> got;
        auto r = co_await xiio::move_on_after(2s, [&]() -> Task<void> {
            co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
                tg.add_task(bad_putter());
                tg.add_task(good_putter());
                co_await xiio::yield(); // both wait: the queue is full
                {
                    Armed armed; // the get frees the slot; moving 2 in throws
                    got = co_await q.get();
                }
            });
        }());
        CHECK(r); // no putter was stranded
        REQUIRE(got);
        CHECK(got->value == 1);
        CHECK(putter_errors == 1);
        CHECK(second_done); // the slot went to the next putter
        CHECK(q.size() == 1);
        auto v = co_await q.get();
        REQUIRE(v);
        CHECK(v->value == 3);
        CHECK(q.size() == 0);
    });
}
