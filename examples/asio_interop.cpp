// An Asio TCP server on 127.0.0.1 whose connection handler calls xiio: every line it
// receives is upper-cased by a child process (xiio::run_process, awaited through
// xiio::on_asio) and sent back. A client in the same program sends two lines and prints
// the replies: Asio and xiio work interleave on one thread, one io_context.
#include <xiio/asio.hpp>

#include <fmt/core.h>

#include <cerrno>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

using asio::ip::tcp;

// Detached, a connection's exception would vanish unseen; here it is reported, and ends
// only this connection.
asio::awaitable<void> serve(tcp::socket socket) {
    std::string buffer;
    try {
        for (;;) {
            std::error_code ec;
            std::size_t n =
                co_await asio::async_read_until(socket, asio::dynamic_buffer(buffer), '\n',
                                                asio::redirect_error(asio::use_awaitable, ec));
            if (ec)
                co_return; // the client is gone
            std::vector<std::string> cmd{"tr", "a-z", "A-Z"};
            xiio::ProcessOptions opts;
            opts.input = buffer.substr(0, n);
            opts.capture_output = true;
            buffer.erase(0, n);
            auto upper = co_await xiio::on_asio(xiio::run_process(cmd, opts));
            co_await asio::async_write(socket, asio::buffer(upper.out), asio::use_awaitable);
        }
    } catch (const std::exception& e) {
        fmt::print(stderr, "connection dropped: {}\n", e.what());
    }
}

// Out of fds, accept fails at once: back off rather than spin. Other errors (the acceptor
// was closed) end the loop.
asio::awaitable<void> listen(tcp::acceptor& acceptor) {
    asio::steady_timer backoff(acceptor.get_executor());
    for (bool reported = false;;) {
        std::error_code ec;
        tcp::socket socket =
            co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
        int err = ec.value();
        if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
            if (!std::exchange(reported, true))
                fmt::print(stderr, "accept: {}; retrying every 100 ms\n", ec.message());
            backoff.expires_after(std::chrono::milliseconds(100));
            co_await backoff.async_wait(asio::use_awaitable);
            continue;
        }
        if (ec)
            co_return;
        reported = false;
        asio::co_spawn(acceptor.get_executor(), serve(std::move(socket)), asio::detached);
    }
}

asio::awaitable<void> client(tcp::acceptor& acceptor) {
    tcp::socket socket(co_await asio::this_coro::executor);
    co_await socket.async_connect(acceptor.local_endpoint(), asio::use_awaitable);
    std::vector<std::string> lines{"hello from asio\n", "and from xiio\n"};
    for (const auto& line : lines) {
        co_await asio::async_write(socket, asio::buffer(line), asio::use_awaitable);
        std::string reply;
        co_await asio::async_read_until(socket, asio::dynamic_buffer(reply), '\n',
                                        asio::use_awaitable);
        fmt::print("{} -> {}", line.substr(0, line.size() - 1), reply);
    }
    acceptor.close(); // stops the server's accept loop
}

int main() {
    asio::io_context ctx(1);
    tcp::acceptor acceptor(ctx, {asio::ip::make_address("127.0.0.1"), 0});
    asio::co_spawn(ctx, listen(acceptor), asio::detached);
    asio::co_spawn(ctx, client(acceptor), [](std::exception_ptr e) {
        if (e)
            std::rethrow_exception(e);
    });
    ctx.run();
}
