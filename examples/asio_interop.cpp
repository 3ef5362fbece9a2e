// An Asio TCP server on 127.0.0.1 whose connection handler calls xiio: every line it
// receives is upper-cased by a child process (xiio::run_process, awaited through
// xiio::on_asio) and sent back. A client in the same program sends two lines and prints
// the replies: Asio and xiio work interleave on one thread, one io_context.
#include <xiio/asio.hpp>

#include <fmt/core.h>

#include <string>
#include <vector>

using asio::ip::tcp;

asio::awaitable<void> serve(tcp::socket socket) {
    std::string buffer;
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
}

asio::awaitable<void> listen(tcp::acceptor& acceptor) {
    for (;;) {
        tcp::socket socket = co_await acceptor.async_accept(asio::use_awaitable);
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
