// A TLS client: connects to 127.0.0.1:<port>, checks that the server's certificate is
// for "localhost" and signed by a CA it trusts (the system's, plus <ca.pem>), sends one
// line and prints the line that comes back, then closes with close_notify.
//
//   tls_client <port> <ca.pem> <text>
//
// Try it against OpenSSL's test server, which echoes each line reversed:
//   openssl s_server -accept 127.0.0.1:4433 -cert server.pem -key server.key -rev
#include <xiio.hpp>
#include <xiio/tls.hpp>

#include <fmt/core.h>

#include <array>
#include <cstdint>
#include <exception>
#include <string>

xiio::Task<std::string> fetch_line(std::uint16_t port, std::string ca_file, std::string line) {
    xiio::TlsContext ctx = xiio::TlsContext::client(); // system CAs, verification on
    ctx.load_verify_file(ca_file);                     // and our own CA
    xiio::Socket s = co_await xiio::connect_tcp("127.0.0.1", port);
    xiio::TlsStream tls = co_await xiio::TlsStream::connect(std::move(s), ctx, "localhost");
    co_await tls.send_all(line + "\n");
    std::string reply;
    std::array<char, 4096> buf;
    while (reply.find('\n') == std::string::npos) {
        std::size_t n = co_await tls.recv(buf); // 0: the server sent close_notify
        if (n == 0)
            break;
        reply.append(buf.data(), n);
    }
    co_await tls.shutdown();
    co_return reply;
}

int main(int argc, char** argv) {
    if (argc != 4) {
        fmt::print(stderr, "usage: {} <port> <ca.pem> <text>\n", argv[0]);
        return 2;
    }
    try {
        auto port = static_cast<std::uint16_t>(std::stoi(argv[1]));
        std::string reply = xiio::run(fetch_line(port, argv[2], argv[3]));
        fmt::print("{}", reply);
    } catch (const xiio::TlsError& e) { // "TLS connect: certificate verify failed (...)"
        fmt::print(stderr, "TLS error: {}\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        fmt::print(stderr, "error: {}\n", e.what());
        return 1;
    }
}
