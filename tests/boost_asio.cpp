// on_asio() on Boost.Asio (XIIO_USE_BOOST_ASIO), a separate test program: standalone Asio
// and Boost.Asio in one program would define xiio's Asio plumbing twice. Boost 1.74 (Debian
// 12) has no per-operation cancellation, so only running, waiting and errors are tested.
#define XIIO_USE_BOOST_ASIO
#include "helpers.hpp"

#include <xiio/asio.hpp>

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
