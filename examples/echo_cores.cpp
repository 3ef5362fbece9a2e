// A thread-per-core echo server: one LoopThread per core, each serving its own SO_REUSEPORT
// listener on one shared port (the kernel spreads the connections). SIGINT cancels every
// loop's server through its on_loop call: each stops accepting, lets its open connections
// finish (a second at most), and returns.
//
//   ./echo_cores --port 7000      (--port 0, the default, picks a free port)
#include <xiio.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string_view>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

xiio::Task<void> echo(xiio::Socket client) {
    std::vector<char> buf(16 * 1024);
    while (std::size_t n = co_await client.recv(buf))
        co_await client.send_all(std::string_view(buf.data(), n));
}

// One core's server, run on its own loop: the listener is used there only.
xiio::Task<void> shard(xiio::Listener listener) {
    xiio::ServeOptions options;
    options.grace = 1s; // on shutdown, a second for the echoes under way
    co_await xiio::serve(listener, echo, options);
}

xiio::Task<void> main_task(std::uint16_t port, xiio::SignalSubscription& signals) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    std::vector<xiio::Listener> listeners; // all bound before any accepts: one port
    for (unsigned i = 0; i < cores; ++i)
        port =
            listeners.emplace_back(xiio::Listener::tcp("127.0.0.1", port, SOMAXCONN, true)).port();
    std::deque<xiio::LoopThread> loops; // destroyed last: each joins its thread
    fmt::print("listening on port {} with {} loops\n", port, cores);
    std::fflush(stdout);
    co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
        for (auto& listener : listeners)
            tg.add_task(xiio::on_loop(loops.emplace_back().handle(), shard(std::move(listener))));
        int sig = co_await signals.next();
        fmt::print("got signal {}, shutting down\n", sig);
        tg.cancel(); // forwarded to every loop; the group waits for their servers
    });
    fmt::print("all {} loops stopped\n", cores);
}

int main(int argc, char** argv) {
    auto signals = xiio::subscribe_signals({SIGINT}); // before any thread starts
    int port = argc == 3 && !std::strcmp(argv[1], "--port") ? std::atoi(argv[2]) : 0;
    xiio::run(main_task(static_cast<std::uint16_t>(port), signals));
}
