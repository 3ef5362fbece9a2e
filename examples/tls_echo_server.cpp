// A TLS echo server on xiio::serve: each connection does its handshake (TlsStream::accept,
// under a 10 s timeout so that a silent client cannot hold it open), then echoes bytes
// until the client's close_notify, and answers with its own. SIGINT or SIGTERM shuts it
// down as examples/echo_server.cpp does: serve stops accepting, gives the connections a
// second, cancels those left, and main returns 0.
//
//   ./tls_echo_server server.pem server.key --port 7443   (--port 0, the default: any)
//   openssl s_client -quiet -CAfile ca.pem -servername localhost -connect 127.0.0.1:7443
#include <xiio.hpp>
#include <xiio/tls.hpp>

#include <fmt/core.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using namespace std::chrono_literals;

// A handshake that fails (a client speaking plain text, or not trusting us) or a client
// that vanishes mid-stream ends this connection only: serve hands the error to on_error.
xiio::Task<void> echo(xiio::Socket client, xiio::TlsContext& ctx) {
    xiio::TlsStream tls =
        co_await xiio::timeout(10s, xiio::TlsStream::accept(std::move(client), ctx));
    std::vector<char> buf(16 * 1024);
    while (std::size_t n = co_await tls.recv(buf))
        co_await tls.send_all(std::string_view(buf.data(), n));
    co_await tls.shutdown(); // our close_notify: the client sees a clean end of stream
}

xiio::Task<void> main_task(std::string cert, std::string key, std::uint16_t port) {
    auto signals = xiio::subscribe_signals({SIGINT, SIGTERM});
    xiio::TlsContext ctx = xiio::TlsContext::server(cert, key); // throws TlsError if bad
    auto listener = xiio::Listener::tcp("127.0.0.1", port);
    fmt::print("listening on port {}\n", listener.port());
    std::fflush(stdout);
    xiio::ServeOptions options;
    options.on_error = [](const xiio::Address& peer, std::exception_ptr error) {
        try {
            std::rethrow_exception(error);
        } catch (const std::exception& e) {
            fmt::print(stderr, "tls_echo_server: {}: {}\n", peer.to_string(), e.what());
        }
    };
    options.grace = 1s;
    // serve keeps the handler until every connection ended; ctx outlives serve.
    auto handler = [&ctx](xiio::Socket s) { return echo(std::move(s), ctx); };
    co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
        tg.add_task(xiio::serve(listener, handler, options));
        int sig = co_await signals.next();
        fmt::print("got signal {}, shutting down\n", sig);
        std::fflush(stdout);
        tg.cancel();
    });
}

int main(int argc, char** argv) {
    std::uint16_t port = 0;
    if (argc == 5 && std::string_view(argv[3]) == "--port") {
        port = static_cast<std::uint16_t>(std::atoi(argv[4]));
    } else if (argc != 3) {
        fmt::print(stderr, "usage: {} <cert.pem> <key.pem> [--port N]\n", argv[0]);
        return 2;
    }
    try {
        xiio::run(main_task(argv[1], argv[2], port));
    } catch (const std::exception& e) {
        fmt::print(stderr, "tls_echo_server: {}\n", e.what());
        return 1;
    }
    return 0;
}
