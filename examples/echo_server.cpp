// A TCP echo server: one task per connection in a task group; SIGINT or SIGTERM shuts it
// down gracefully (the group is cancelled: every connection closes, then main returns 0).
//
//   ./echo_server --port 7000      (--port 0, the default, picks a free port)
//   printf 'hi\n' | nc -q1 127.0.0.1 7000
#include <xiio.hpp>

#include <fmt/core.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

// Echoes until the client closes (or the server shuts down).
xiio::Task<void> serve(xiio::Socket client) {
    std::vector<char> buf(16 * 1024);
    while (std::size_t n = co_await client.recv(buf))
        co_await client.send_all(std::string_view(buf.data(), n));
}

xiio::Task<void> accept_loop(xiio::Listener& listener, xiio::TaskGroup& tg) {
    for (;;) {
        xiio::Socket client = co_await listener.accept();
        tg.add_task(serve(std::move(client)));
    }
}

xiio::Task<void> main_task(std::uint16_t port) {
    auto signals = xiio::subscribe_signals({SIGINT, SIGTERM});
    auto listener = xiio::Listener::tcp("127.0.0.1", port);
    fmt::print("listening on port {}\n", listener.port());
    std::fflush(stdout);
    co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
        tg.add_task(accept_loop(listener, tg));
        int sig = co_await signals.next();
        fmt::print("got signal {}, shutting down\n", sig);
        tg.cancel();
    });
}

int main(int argc, char** argv) {
    std::uint16_t port = 0;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            port = static_cast<std::uint16_t>(std::atoi(argv[++i]));
        } else {
            fmt::print(stderr, "usage: {} [--port N]\n", argv[0]);
            return 2;
        }
    }
    try {
        xiio::run(main_task(port));
    } catch (const std::exception& e) {
        fmt::print(stderr, "echo_server: {}\n", e.what());
        return 1;
    }
    return 0;
}
