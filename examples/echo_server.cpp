// A TCP echo server: one task per connection in a task group; SIGINT or SIGTERM shuts it
// down gracefully (the group is cancelled: every connection closes, then main returns 0).
//
//   ./echo_server --port 7000      (--port 0, the default, picks a free port)
//   printf 'hi\n' | nc -q1 127.0.0.1 7000
#include <xiio.hpp>

#include <fmt/core.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

using namespace std::chrono_literals;

// Echoes until the client closes (or the server shuts down). A member of a group that
// throws cancels the whole group: a client's reset must end this connection only, so its
// errors stop here. CancelledError is no std::exception: a shutdown still goes through.
xiio::Task<void> serve(xiio::Socket client) {
    try {
        std::vector<char> buf(16 * 1024);
        while (std::size_t n = co_await client.recv(buf))
            co_await client.send_all(std::string_view(buf.data(), n));
    } catch (const std::exception& e) {
        fmt::print(stderr, "echo_server: connection dropped: {}\n", e.what());
    }
}

// Out of fds or memory, accept fails at once, without suspending: retrying at once would
// spin. Back off instead; the connections we have go on, and end, which frees fds.
xiio::Task<void> accept_loop(xiio::Listener& listener, xiio::TaskGroup& tg) {
    for (bool reported = false;;) {
        try {
            tg.add_task(serve(co_await listener.accept()));
            reported = false;
            continue;
        } catch (const std::system_error& e) {
            int err = e.code().value();
            if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM)
                throw; // any other accept error ends the server
            if (!std::exchange(reported, true))
                fmt::print(stderr, "echo_server: {}; retrying every 100 ms\n", e.what());
        }
        co_await xiio::sleep(100ms); // outside the handler: no co_await in a catch
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
