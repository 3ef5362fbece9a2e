// A TCP client with connect_tcp. So that it runs anywhere, the program starts its own
// server first: a Listener on 127.0.0.1, port 0 (a free port), whose accept loop is a
// member of a task group and answers every line in upper case. The client connects, sends
// lines, reads each reply up to its newline, half-closes, and the group is cancelled when
// it is done; a timeout bounds the whole. Then a connect to the closed port fails.
//
//   ./client [line...]     (default lines: "hello", "coroutines on linux")
#include <xiio.hpp>

#include <fmt/core.h>

#include <cctype>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

using namespace std::chrono_literals;

// The server's side of one connection: upper-cases what arrives until the client closes.
// Its errors (a reset) stop here: a member that throws would cancel the whole group.
xiio::Task<void> serve(xiio::Socket client) {
    try {
        std::vector<char> buf(4096);
        while (std::size_t n = co_await client.recv(buf)) {
            for (std::size_t i = 0; i < n; ++i)
                buf[i] = static_cast<char>(std::toupper(static_cast<unsigned char>(buf[i])));
            co_await client.send_all(std::string_view(buf.data(), n));
        }
    } catch (const std::exception& e) {
        fmt::print(stderr, "server: connection dropped: {}\n", e.what());
    }
}

// A demo's accept loop: any accept error ends it (examples/echo_server.cpp shows one that
// backs off and goes on when the process runs out of fds).
xiio::Task<void> accept_loop(xiio::Listener& listener, xiio::TaskGroup& tg) {
    for (;;)
        tg.add_task(serve(co_await listener.accept()));
}

// Reads from `s` until `pending` holds a whole line; returns it without its newline, and
// keeps what came after it in `pending` for the next call. "" once the server closed.
xiio::Task<std::string> read_line(const xiio::Socket& s, std::string& pending) {
    char buf[1024];
    std::size_t end;
    while ((end = pending.find('\n')) == std::string::npos) {
        std::size_t n = co_await s.recv(buf);
        if (n == 0)
            co_return std::string();
        pending.append(buf, n);
    }
    std::string line = pending.substr(0, end);
    pending.erase(0, end + 1);
    co_return line;
}

// The client: one connection, one reply per line sent.
xiio::Task<void> talk(std::uint16_t port, const std::vector<std::string>& lines) {
    xiio::Socket s = co_await xiio::connect_tcp("127.0.0.1", port);
    std::string pending;
    for (const std::string& line : lines) {
        co_await s.send_all(line + "\n"); // an owned temporary: the awaitable keeps it
        std::string reply = co_await read_line(s, pending);
        fmt::print("> {}\n< {}\n", line, reply);
    }
    s.shutdown_write(); // the server reads end of stream and closes its side
    std::string rest = co_await read_line(s, pending);
    fmt::print("server closed the connection{}\n", rest.empty() ? "" : " (after more data?)");
}

xiio::Task<void> main_task(std::vector<std::string> lines) {
    auto listener = xiio::Listener::tcp("127.0.0.1", 0);
    std::uint16_t port = listener.port();
    fmt::print("server listening on 127.0.0.1:{}\n", port);
    auto session = [&]() -> xiio::Task<void> {
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
            tg.add_task(accept_loop(listener, tg));
            co_await talk(port, lines);
            tg.cancel(); // stops the accept loop (and any connection still served)
        });
    };
    co_await xiio::timeout(10s, session);
    listener.close();

    // Nobody listens there any more: connect_tcp throws a system_error naming the address.
    try {
        xiio::Socket again = co_await xiio::connect_tcp("127.0.0.1", port);
        fmt::print("connected again to fd {}?\n", again.fd());
    } catch (const std::system_error& e) {
        fmt::print("after the server closed: {}\n",
                   e.code() == std::errc::connection_refused ? "connection refused" : e.what());
    }
}

int main(int argc, char** argv) {
    std::vector<std::string> lines(argv + 1, argv + argc);
    if (lines.empty())
        lines = {"hello", "coroutines on linux"};
    try {
        xiio::run(main_task(lines));
    } catch (const std::exception& e) {
        fmt::print(stderr, "client: {}\n", e.what());
        return 1;
    }
    return 0;
}
