// on_asio() on Boost.Asio (XIIO_USE_BOOST_ASIO), a separate test program: standalone Asio
// and Boost.Asio in one program would define xiio's Asio plumbing twice. Boost 1.74 (Debian
// 12) has no per-operation cancellation, so only running, waiting and errors are tested.
#define XIIO_USE_BOOST_ASIO
#include "helpers.hpp"

#include <xiio/asio.hpp>

#include <atomic>
#include <limits>

using namespace test;
using xiio::Task;
namespace net = boost::asio;

namespace {

template <class F>
void boost_run(F body) {
    LeakCheck leaks;
    std::exception_ptr error;
    {
        net::io_context ctx(1);
        net::co_spawn(ctx, body(), [&](std::exception_ptr e) { error = e; });
        ctx.run();
    }
    leaks.check();
    if (error)
        std::rethrow_exception(error);
}

} // namespace

TEST_CASE("on_asio on Boost.Asio: xiio and Boost timers interleave on one thread") {
    assert_duration(100ms, [] {
        boost_run([]() -> net::awaitable<void> {
            auto ex = co_await net::this_coro::executor;
            bool boost_done = false;
            net::steady_timer t(ex, 100ms);
            t.async_wait([&](boost::system::error_code) { boost_done = true; });
            co_await xiio::on_asio(xiio::sleep(100ms));
            co_await xiio::on_asio(xiio::sleep(5ms)); // by now the Boost timer has fired too
            CHECK(boost_done);
        });
    });
}

TEST_CASE("on_asio on Boost.Asio: a pipe read written by a Boost handler") {
    boost_run([]() -> net::awaitable<void> {
        Pipe p;
        auto ex = co_await net::this_coro::executor;
        net::posix::stream_descriptor w(ex, ::dup(p.w.get()));
        net::steady_timer t(ex, 20ms);
        t.async_wait([&](boost::system::error_code) {
            net::async_write(w, net::buffer("boost", 5),
                             [](boost::system::error_code, std::size_t) {});
        });
        auto got = co_await xiio::on_asio(xiio::read(p.r, 100));
        CHECK(got == "boost");
    });
}

TEST_CASE("on_asio on Boost.Asio: exceptions of the xiio task reach the Boost coroutine") {
    CHECK_THROWS_WITH(boost_run([]() -> net::awaitable<void> {
                          co_await xiio::on_asio([]() -> Task<void> {
                              co_await xiio::sleep(1ms);
                              throw std::runtime_error("from xiio");
                          }());
                      }),
                      "from xiio");
}

TEST_CASE("on_asio on Boost.Asio: a task that keeps yielding starves no fd or job") {
    // As in test_asio.cpp: the descriptor waits stay armed while tasks are ready, and Boost's
    // scheduler polls its reactor between posted handlers.
    long after_write = -1, after_job = -1;
    bool gave_up = false;
    boost_run([&]() -> net::awaitable<void> {
        Pipe p;
        auto ex = co_await net::this_coro::executor;
        std::atomic<long> yields{0};
        long at_write = -1;
        bool done = false;
        net::steady_timer t(ex, 10ms);
        t.async_wait([&](boost::system::error_code) {
            if (::write(p.w.get(), "x", 1) == 1)
                at_write = yields.load();
        });
        auto busy = [&]() -> Task<void> {
            auto limit = xiio::Clock::now() + 2s;
            while (!done) {
                if (xiio::Clock::now() >= limit) {
                    gave_up = true;
                    co_return;
                }
                co_await xiio::yield();
                yields.fetch_add(1);
            }
        };
        auto waiter = [&]() -> Task<void> {
            co_await xiio::read(p.r, 1);
            after_write = yields.load() - at_write;
            after_job = std::numeric_limits<long>::max();
            for (int i = 0; i < 3 && !gave_up; ++i) { // the best of 3: a worker may be preempted
                std::atomic<long> at_end{0};
                auto job = [&] { at_end = yields.load(); };
                co_await xiio::in_thread(job);
                after_job = std::min(after_job, yields.load() - at_end.load());
            }
            done = true;
        };
        co_await xiio::on_asio(xiio::gather(busy(), waiter()));
    });
    INFO("the reader resumed after " << after_write << " yields, the job's task after "
                                     << after_job);
    CHECK_FALSE(gave_up);
    CHECK(after_write < 1000);
    CHECK(after_job < 1000);
}
