// A TCP echo server on xiio::serve (one task per connection); SIGINT or SIGTERM shuts it
// down gracefully: serve stops accepting, gives the connections a second to finish, cancels
// those left, and main returns 0.
//
//   ./echo_server --port 7000      (--port 0, the default, picks a free port)
//   printf 'hi\n' | nc -q1 127.0.0.1 7000
#include <xiio.hpp>

#include <fmt/core.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string_view>
#include <utility>
#include <vector>

using namespace std::chrono_literals;

// Echoes until the client closes (or the server shuts down). An error (a client's reset)
// ends this connection only: xiio::serve hands it to on_error and carries on.
xiio::Task<void> echo(xiio::Socket client) {
    std::vector<char> buf(16 * 1024);
    while (std::size_t n = co_await client.recv(buf))
        co_await client.send_all(std::string_view(buf.data(), n));
}

xiio::Task<void> main_task(std::uint16_t port) {
    auto signals = xiio::subscribe_signals({SIGINT, SIGTERM});
    auto listener = xiio::Listener::tcp("127.0.0.1", port);
    fmt::print("listening on port {}\n", listener.port());
    std::fflush(stdout);
    xiio::ServeOptions options;
    options.on_error = [](const xiio::Address& peer, std::exception_ptr error) {
        try {
            std::rethrow_exception(error);
        } catch (const std::exception& e) {
            if (peer.family() == AF_UNSPEC) // accept out of fds or memory: serve backs off
                fmt::print(stderr, "echo_server: {}; retrying every 100 ms\n", e.what());
            else
                fmt::print(stderr, "echo_server: connection dropped: {}: {}\n", peer.to_string(),
                           e.what());
        }
    };
    options.grace = 1s; // on shutdown, a second for the echoes under way
    co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
        tg.add_task(xiio::serve(listener, echo, options));
        int sig = co_await signals.next();
        fmt::print("got signal {}, shutting down\n", sig);
        tg.cancel();
    });
}

int main(int argc, char** argv) {
    std::uint16_t port = 0;
    if (argc == 3 && std::strcmp(argv[1], "--port") == 0) {
        port = static_cast<std::uint16_t>(std::atoi(argv[2]));
    } else if (argc != 1) {
        fmt::print(stderr, "usage: {} [--port N]\n", argv[0]);
        return 2;
    }
    try {
        xiio::run(main_task(port));
    } catch (const std::exception& e) {
        fmt::print(stderr, "echo_server: {}\n", e.what());
        return 1;
    }
    return 0;
}
