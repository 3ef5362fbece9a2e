// Tests of xiio/threads.hpp: ThreadPool and in_thread.
// g++ 12 destroys twice a lambda with by-copy captures that is a temporary inside a
// co_await expression: every lambda given to run()/in_thread() below is named first.
#include "helpers.hpp"

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <csignal>
#include <pthread.h>
#include <sys/wait.h>

using namespace test;
using xiio::Task;

namespace {

/// The number of jobs running at once, and the most seen.
struct Concurrency {
    std::atomic<int> now{0};
    std::atomic<int> peak{0};
    void enter() {
        int n = ++now;
        int p = peak.load();
        while (n > p && !peak.compare_exchange_weak(p, n)) {
        }
    }
    void leave() { --now; }
};

/// Under the sanitizers everything is several times slower: keep the stress test smaller.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int stress_tasks = 50;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
constexpr int stress_tasks = 50;
#else
constexpr int stress_tasks = 100;
#endif
#else
constexpr int stress_tasks = 100;
#endif

/// Waits at most `limit` for the child `pid` and returns its wait status; a child still
/// running then is killed and reaped (the test fails).
int wait_child(pid_t pid, Ms limit) {
    auto until = xiio::Clock::now() + limit * slack_scale();
    int status = 0;
    while (::waitpid(pid, &status, WNOHANG) == 0) {
        if (xiio::Clock::now() > until) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            FAIL("the child did not finish in time");
        }
        std::this_thread::sleep_for(5ms);
    }
    return status;
}

} // namespace

TEST_CASE("in_thread returns the function's value") {
    auto v = run([]() -> Task<int> {
        auto job = [](int a, int b) { return a * b; };
        auto r = co_await xiio::in_thread(job, 6, 7);
        co_return r;
    });
    CHECK(v == 42);
}

TEST_CASE("in_thread runs the function on another thread and resumes on the loop's thread") {
    run([]() -> Task<void> {
        auto loop_thread = std::this_thread::get_id();
        auto job = [] { return std::this_thread::get_id(); };
        auto worker = co_await xiio::in_thread(job);
        CHECK(worker != loop_thread);
        CHECK(std::this_thread::get_id() == loop_thread);
    });
}

TEST_CASE("in_thread of a void function completes") {
    std::atomic<bool> ran{false};
    run([&]() -> Task<void> {
        auto job = [&ran] { ran = true; };
        co_await xiio::in_thread(job);
    });
    CHECK(ran);
}

TEST_CASE("in_thread returns a move-only value") {
    auto p = run([]() -> Task<std::unique_ptr<std::string>> {
        auto job = [] { return std::make_unique<std::string>("moved"); };
        auto r = co_await xiio::in_thread(job);
        co_return r;
    });
    REQUIRE(p);
    CHECK(*p == "moved");
}

TEST_CASE("a function returning a reference gives a copy") {
    static int global = 5;
    auto v = run([]() -> Task<int> {
        auto job = []() -> int& { return global; };
        int r = co_await xiio::in_thread(job);
        co_return r;
    });
    CHECK(v == 5);
}

TEST_CASE("the arguments are copies owned by the job") {
    auto v = run([]() -> Task<std::string> {
        std::string s = "abc";
        auto job = [](std::string& x, const std::string& y) { return x + y; };
        auto task = xiio::in_thread(job, s, std::string("def"));
        s = "changed";
        auto r = co_await std::move(task);
        co_return r;
    });
    CHECK(v == "abcdef");
}

TEST_CASE("the job's exception is rethrown in the awaiting task") {
    run([]() -> Task<void> {
        auto job = []() -> int { throw std::runtime_error("job failed"); };
        CHECK_THROWS_WITH(co_await xiio::in_thread(job), "job failed");
        auto job2 = [] { throw 7; };
        CHECK_THROWS_AS(co_await xiio::in_thread(job2), int);
    });
}

TEST_CASE("a ThreadPool with no workers is an invalid argument") {
    CHECK_THROWS_AS(xiio::ThreadPool(0), std::invalid_argument);
}

TEST_CASE("the default size is the smaller of 32 and the hardware threads plus 4") {
    auto n = xiio::ThreadPool::default_max_workers();
    CHECK(n == std::min<std::size_t>(32, std::thread::hardware_concurrency() + 4));
}

TEST_CASE("max_workers bounds concurrency so 3 jobs of 100 ms on 2 workers take 200 ms") {
    xiio::ThreadPool pool(2);
    Concurrency c;
    assert_duration(200ms, [&] {
        run([&]() -> Task<void> {
            auto job = [&c] {
                c.enter();
                std::this_thread::sleep_for(100ms);
                c.leave();
            };
            co_await xiio::gather(pool.run(job), pool.run(job), pool.run(job));
        });
    });
    CHECK(c.peak == 2);
}

TEST_CASE("workers are reused so a pool never starts more threads than max_workers") {
    xiio::ThreadPool pool(3);
    std::mutex m;
    std::set<std::thread::id> ids;
    run([&]() -> Task<void> {
        auto job = [&] {
            std::this_thread::sleep_for(1ms);
            std::lock_guard lock(m);
            ids.insert(std::this_thread::get_id());
        };
        std::vector<Task<void>> tasks;
        for (int i = 0; i < 30; ++i)
            tasks.push_back(pool.run(job));
        co_await xiio::gather(std::move(tasks));
        for (int i = 0; i < 10; ++i)
            co_await pool.run(job);
    });
    CHECK(ids.size() <= 3);
    CHECK(!ids.empty());
}

TEST_CASE("the loop stays responsive while a job runs") {
    int ticks = 0;
    run([&]() -> Task<void> {
        bool done = false;
        auto job = [] { std::this_thread::sleep_for(200ms); };
        auto ticker = [&]() -> Task<void> {
            while (!done) {
                co_await xiio::sleep(10ms);
                ++ticks;
            }
        };
        auto worker = [&]() -> Task<void> {
            co_await xiio::in_thread(job);
            done = true;
        };
        co_await xiio::gather(ticker(), worker());
    });
    CHECK(ticks >= 10);
}

TEST_CASE("a task waiting only for a job is not a deadlock") {
    // Every task waits for a job or a future: only the keepalive prevents the deadlock
    // report while the job runs.
    auto v = run([]() -> Task<int> {
        xiio::Future<int> f;
        auto job = [] {
            std::this_thread::sleep_for(50ms);
            return 3;
        };
        auto producer = [&]() -> Task<void> {
            int r = co_await xiio::in_thread(job);
            f.set_result(r);
        };
        auto consumer = [&]() -> Task<int> {
            int r = co_await f;
            co_return r;
        };
        auto [a, b] = co_await xiio::gather(producer(), consumer());
        (void)a;
        co_return b;
    });
    CHECK(v == 3);
}

TEST_CASE("a deadlock is still reported once the cancelled job's task is gone") {
    // The job of a cancelled task keeps running but can wake nobody: it must not hide a
    // deadlock of the other tasks.
    xiio::ThreadPool pool(1);
    auto body = [&]() -> Task<void> {
        auto job = [] { std::this_thread::sleep_for(300ms); };
        auto r = co_await xiio::move_on_after(10ms, pool.run(job));
        CHECK(!r);
        xiio::Future<void> never;
        co_await never;
    };
    auto start = xiio::Clock::now();
    CHECK_THROWS_AS(run(body), std::logic_error);
    CHECK(elapsed_ms(start) < 200);
}

TEST_CASE("cancelling the awaiting task returns promptly and discards the job's result") {
    std::optional<xiio::ThreadPool> pool(std::in_place, 2);
    auto token = std::make_shared<int>(0);
    std::atomic<bool> finished{false};
    assert_duration(20ms, [&] {
        run([&]() -> Task<void> {
            auto job = [token, &finished] {
                std::this_thread::sleep_for(200ms);
                finished = true;
                return std::make_unique<int>(*token);
            };
            auto r = co_await xiio::move_on_after(20ms, pool->run(job));
            CHECK(!r);
            CHECK(!finished);
        });
    });
    // The job runs on: its copy of the lambda (and of token) is alive until it finished.
    CHECK(token.use_count() == 2);
    pool.reset(); // waits for the job
    CHECK(finished);
    CHECK(token.use_count() == 1); // the job's copies were destroyed, once
}

TEST_CASE("a job that owns what it uses safely outlives its cancelled task") {
    // The README's rule: a cancelled task returns at once and its frame dies while the job
    // runs on, so the job must not reference the task's locals. It gets a buffer moved in
    // (its own object), its state through a shared_ptr captured by value, and references
    // only what outlives the pool (`released` is destroyed after the pool). Under ASan a
    // reference to the task's `buffer` would be a use after free here.
    std::atomic<bool> released{false};
    auto state = std::make_shared<std::size_t>(0);
    std::optional<xiio::ThreadPool> pool(std::in_place, 1);
    run([&]() -> Task<void> {
        std::vector<char> buffer(1 << 16, 'a'); // a local of the task
        auto job = [state, &released](std::vector<char>& own) {
            while (!released) // until the task (and its frame) are gone
                std::this_thread::sleep_for(1ms);
            std::fill(own.begin(), own.end(), 'b');
            *state = static_cast<std::size_t>(std::count(own.begin(), own.end(), 'b'));
            return own.size();
        };
        auto r = co_await xiio::move_on_after(10ms, pool->run(job, std::move(buffer)));
        CHECK(!r);
    });
    released = true; // the task's frame is destroyed: the job runs on, on what it owns
    pool.reset();    // waits for the job
    CHECK(*state == std::size_t(1) << 16);
    CHECK(state.use_count() == 1); // the job's copy is gone
}

TEST_CASE("a timeout around a job throws TimeoutError and the job runs to its end") {
    std::atomic<bool> finished{false};
    {
        xiio::ThreadPool pool(1);
        run([&]() -> Task<void> {
            auto job = [&finished] {
                std::this_thread::sleep_for(100ms);
                finished = true;
            };
            CHECK_THROWS_AS(co_await xiio::timeout(10ms, pool.run(job)), xiio::TimeoutError);
        });
        CHECK(!finished);
    }
    CHECK(finished);
}

TEST_CASE("a task cancelled before it awaits the job never submits it") {
    std::atomic<bool> ran{false};
    std::optional<xiio::ThreadPool> pool(std::in_place, 1);
    run([&]() -> Task<void> {
        auto job = [&ran] { ran = true; };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.cancel();
            CHECK_THROWS_AS(co_await pool->run(job), xiio::CancelledError);
        });
    });
    pool.reset();
    CHECK(!ran);
}

TEST_CASE("the ThreadPool destructor waits for running and queued jobs without a loop") {
    std::atomic<int> done{0};
    auto start = xiio::Clock::now();
    {
        xiio::ThreadPool pool(1);
        run([&]() -> Task<void> {
            auto job = [&done] {
                std::this_thread::sleep_for(50ms);
                ++done;
            };
            // Three jobs on one worker: one runs and two are queued when the wait ends.
            auto r = co_await xiio::move_on_after(
                10ms, xiio::gather(pool.run(job), pool.run(job), pool.run(job)));
            CHECK(!r);
        });
        CHECK(done < 3);
    }
    CHECK(done == 3);
    CHECK(elapsed_ms(start) >= 150);
}

TEST_CASE("a job finishing after run returned does not crash") {
    auto token = std::make_shared<int>(1);
    {
        xiio::ThreadPool pool(1);
        run([&]() -> Task<void> {
            auto job = [token] {
                std::this_thread::sleep_for(100ms);
                return *token;
            };
            auto r = co_await xiio::move_on_after(10ms, pool.run(job));
            CHECK(!r);
        });
        // The loop (and its eventfd) are gone; the job still runs and then finds nobody.
    }
    CHECK(token.use_count() == 1);
    // A new loop on this thread works and gets its own wake-ups.
    auto v = run([]() -> Task<int> {
        auto job = [] { return 9; };
        auto r = co_await xiio::in_thread(job);
        co_return r;
    });
    CHECK(v == 9);
}

TEST_CASE("in_thread works from two threads each running its own loop") {
    std::atomic<int> sum{0};
    auto body = [&](int base) {
        xiio::run([&sum, base]() -> Task<void> {
            for (int i = 0; i < 200; ++i) {
                auto job = [base, i] { return base + i; };
                int r = co_await xiio::in_thread(job);
                sum += r;
            }
        }());
    };
    std::thread a(body, 0);
    std::thread b(body, 1000);
    a.join();
    b.join();
    CHECK(sum == (0 + 199) * 100 + (1000 + 1199) * 100);
}

TEST_CASE("many jobs from many tasks complete quickly and some are cancelled by timeouts") {
    std::atomic<long> ran{0};
    long completed = 0, timed_out = 0;
    auto start = xiio::Clock::now();
    run([&]() -> Task<void> {
        auto job = [&ran](int v) {
            ++ran;
            if (v % 50 == 0) // the first and the middle call of a task: they time out
                std::this_thread::sleep_for(5ms);
            return v;
        };
        auto worker = [&](int id) -> Task<void> {
            for (int i = 0; i < 100; ++i) {
                int v = id * 100 + i;
                if (i % 10 == 0) {
                    auto r = co_await xiio::move_on_after(1ms, xiio::in_thread(job, v));
                    if (r) {
                        CHECK(*r == v);
                        ++completed;
                    } else {
                        ++timed_out;
                    }
                } else {
                    int r = co_await xiio::in_thread(job, v);
                    if (r != v)
                        FAIL("wrong value");
                    ++completed;
                }
            }
        };
        std::vector<Task<void>> tasks;
        for (int id = 0; id < stress_tasks; ++id)
            tasks.push_back(worker(id));
        co_await xiio::gather(std::move(tasks));
        // Jobs of timed-out tasks may still run (each a few ms at most, all started: the
        // queue is FIFO). Let them finish before the loop goes, so that none posts its
        // completion while the loop is being destroyed (it would hold the loop's eventfd
        // a moment longer, and the fd leak check could see it).
        co_await xiio::sleep(50ms);
    });
    INFO("completed " << completed << ", timed out " << timed_out);
    CHECK(completed + timed_out == stress_tasks * 100L);
    CHECK(completed >= stress_tasks * 90L);
    CHECK(elapsed_ms(start) < 10000);
    // Jobs whose tasks timed out may still run; they all run eventually.
    auto until = xiio::Clock::now() + 5s;
    while (ran < stress_tasks * 100L && xiio::Clock::now() < until)
        std::this_thread::sleep_for(1ms);
    CHECK(ran == stress_tasks * 100L);
}

TEST_CASE("in_thread runs jobs in parallel: three sleeps of 100 ms take 100 ms (original)") {
    assert_duration(100ms, [] {
        run([]() -> Task<void> {
            auto nap = [] { std::this_thread::sleep_for(100ms); };
            co_await xiio::gather(xiio::in_thread(nap), xiio::in_thread(nap), xiio::in_thread(nap));
        });
    });
}

TEST_CASE("pool workers block the asynchronous signals and never the synchronous ones") {
    xiio::ThreadPool pool(1);
    auto masks = run([&]() -> Task<std::vector<sigset_t>> {
        auto job = [] { return current_mask(); };
        std::vector<sigset_t> got;
        got.push_back(co_await pool.run(job));
        got.push_back(co_await xiio::in_thread(job));
        co_return got;
    });
    REQUIRE(masks.size() == 2);
    for (const sigset_t& m : masks) {
        for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS}) {
            INFO("signal " << sig);
            CHECK(sigismember(&m, sig) == 0);
        }
        for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGCHLD, SIGPIPE}) {
            INFO("signal " << sig);
            CHECK(sigismember(&m, sig) == 1);
        }
    }
}

// [no-valgrind]: memcheck checks the forked child for leaks when it calls _exit (the
// pool it never destroys) and replaces its exit status with --error-exitcode's.
TEST_CASE("a SIGSEGV raised in a pool job reaches the process's handler", "[no-valgrind]") {
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        // The child: no Catch assertion here, only an exit status. 42 from the handler; 0
        // if the signal stayed blocked (pending in the worker) and the job just returned.
        struct sigaction sa {};
        sa.sa_handler = [](int) { ::_exit(42); };
        sigemptyset(&sa.sa_mask);
        ::sigaction(SIGSEGV, &sa, nullptr);
        // A new pool: the parent's workers do not exist in the child. Never destroyed:
        // the child leaves by _exit.
        auto* pool = new xiio::ThreadPool(1);
        try {
            xiio::run([pool]() -> Task<void> {
                auto job = [] { ::raise(SIGSEGV); };
                co_await pool->run(job);
            }());
        } catch (...) {
            ::_exit(1);
        }
        ::_exit(0);
    }
    int status = wait_child(pid, 10'000ms);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 42);
}
