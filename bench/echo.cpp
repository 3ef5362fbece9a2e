// W4 echo: one echo server and C clients in one process, one loop, on 127.0.0.1; each client
// does R request/responses of 64 bytes (send, then read the 64-byte echo) and checks every
// echo. xiio (Listener/Socket) vs Asio (co_spawn + use_awaitable) in the same run.
// Prints requests/s (median, min-max of the runs) and the ratio.
#include "common.hpp"

#include <xiio.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef XIIO_BENCH_ASIO
#include <asio.hpp>
#endif

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::size_t msg_size = 64;

std::array<char, msg_size> message(int client, int i) {
    std::array<char, msg_size> m{};
    auto s = fmt::format("client {} request {} ", client, i);
    std::fill(m.begin(), m.end(), '.');
    std::copy(s.begin(), s.end(), m.begin());
    return m;
}

// ---- xiio --------------------------------------------------------------------------------

xiio::Task<void> xiio_serve(xiio::Socket s) {
    std::array<char, 4096> buf;
    while (std::size_t n = co_await s.recv(buf))
        co_await s.send_all(std::string_view(buf.data(), n));
}

xiio::Task<void> xiio_client(std::uint16_t port, int id, int requests, long& ok) {
    auto s = co_await xiio::connect_tcp("127.0.0.1", port);
    std::array<char, msg_size> back;
    for (int i = 0; i < requests; ++i) {
        auto m = message(id, i);
        co_await s.send_all(std::string_view(m.data(), m.size()));
        co_await xiio::read_exactly(s.fd(), back);
        if (back != m)
            throw std::runtime_error("xiio: wrong echo");
        ++ok;
    }
}

double run_xiio(int clients, int requests) {
    long ok = 0;
    auto start = Clock::now();
    xiio::run([&]() -> xiio::Task<void> {
        auto l = xiio::Listener::tcp("127.0.0.1", 0, 1024);
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
            for (int c = 0; c < clients; ++c)
                tg.add_task(xiio_client(l.port(), c, requests, ok));
            for (int c = 0; c < clients; ++c)
                tg.add_task(xiio_serve(co_await l.accept()));
        });
    }());
    double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (ok != static_cast<long>(clients) * requests)
        throw std::runtime_error("xiio: missing echoes");
    return static_cast<double>(ok) / s;
}

// ---- Asio ----------------------------------------------------------------------------------

#ifdef XIIO_BENCH_ASIO
using asio::ip::tcp;

asio::awaitable<void> asio_serve(tcp::socket s) {
    std::array<char, 4096> buf;
    for (;;) {
        asio::error_code ec;
        std::size_t n = co_await s.async_read_some(asio::buffer(buf),
                                                   asio::redirect_error(asio::use_awaitable, ec));
        if (ec)
            co_return;
        co_await asio::async_write(s, asio::buffer(buf.data(), n), asio::use_awaitable);
    }
}

asio::awaitable<void> asio_accept(tcp::acceptor& acc, int clients) {
    for (int c = 0; c < clients; ++c) {
        tcp::socket s = co_await acc.async_accept(asio::use_awaitable);
        s.set_option(tcp::no_delay(true));
        asio::co_spawn(acc.get_executor(), asio_serve(std::move(s)), asio::detached);
    }
}

asio::awaitable<void> asio_client(tcp::endpoint ep, int id, int requests, long& ok) {
    tcp::socket s(co_await asio::this_coro::executor);
    co_await s.async_connect(ep, asio::use_awaitable);
    s.set_option(tcp::no_delay(true));
    std::array<char, msg_size> back;
    for (int i = 0; i < requests; ++i) {
        auto m = message(id, i);
        co_await asio::async_write(s, asio::buffer(m), asio::use_awaitable);
        co_await asio::async_read(s, asio::buffer(back), asio::use_awaitable);
        if (back != m)
            throw std::runtime_error("asio: wrong echo");
        ++ok;
    }
}

double run_asio(int clients, int requests) {
    long ok = 0;
    auto start = Clock::now();
    {
        asio::io_context ctx(1);
        tcp::acceptor acc(ctx, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
        acc.listen(1024);
        auto ep = acc.local_endpoint();
        asio::co_spawn(ctx, asio_accept(acc, clients), asio::detached);
        for (int c = 0; c < clients; ++c)
            asio::co_spawn(ctx, asio_client(ep, c, requests, ok), [](std::exception_ptr e) {
                if (e)
                    std::rethrow_exception(e);
            });
        ctx.run();
    }
    double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (ok != static_cast<long>(clients) * requests)
        throw std::runtime_error("asio: missing echoes");
    return static_cast<double>(ok) / s;
}
#endif

} // namespace

int main(int argc, char** argv) {
    int clients = 100, requests = 2000, runs = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--clients"))
            clients = std::stoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--requests"))
            requests = std::stoi(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--runs"))
            runs = std::stoi(argv[i + 1]);
    }
    fmt::print("W4 echo: {} clients x {} requests of {} bytes on 127.0.0.1, one loop, "
               "median (min-max) of {} runs\n",
               clients, requests, msg_size, runs);
    // No raw epoll baseline here yet (issue 6): requests/s of xiio and Asio, and their ratio.
    auto rps = [](const bench::Stats& ns) { return 1e9 / ns.median; };
    auto x = bench::measure(runs, [&] { return 1e9 / run_xiio(clients, requests); });
    fmt::print("  xiio {:>10.0f} requests/s\n", rps(x));
#ifdef XIIO_BENCH_ASIO
    auto a = bench::measure(runs, [&] { return 1e9 / run_asio(clients, requests); });
    fmt::print("  asio {:>10.0f} requests/s\n  xiio/asio {:.2f}\n", rps(a), rps(x) / rps(a));
#endif
}
