// An HTTPS GET: resolves <host>, connects with Happy Eyeballs (connect_tcp), checks the
// server's certificate against the system's CAs (plus --cafile FILE, for a test CA) and
// the host name, sends one HTTP/1.1 request with "Connection: close", reads the answer to
// the end and prints its status line, how many header lines came and the body's size.
// The whole exchange runs under a 10 s timeout.
//
//   https_get [--cafile ca.pem] <host> <port> [path]
//   https_get example.com 443 /
#include <xiio.hpp>
#include <xiio/tls.hpp>

#include <fmt/core.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <optional>
#include <string>
#include <string_view>

using namespace std::chrono_literals;

struct Response {
    std::string status_line;
    std::size_t header_lines = 0;
    std::size_t body_bytes = 0;
    bool truncated = false; // the connection ended without close_notify
};

Response parse(const std::string& raw) {
    Response r;
    std::size_t end = raw.find("\r\n\r\n");
    std::string_view head(raw.data(), end == std::string::npos ? raw.size() : end);
    std::size_t eol = head.find("\r\n");
    r.status_line = std::string(head.substr(0, eol));
    for (std::size_t at = eol; at != std::string_view::npos; at = head.find("\r\n", at + 2))
        ++r.header_lines;
    r.body_bytes = end == std::string::npos ? 0 : raw.size() - end - 4;
    return r;
}

xiio::Task<Response> https_get(std::string host, std::uint16_t port, std::string path,
                               std::optional<std::string> ca_file) {
    xiio::TlsContext ctx = xiio::TlsContext::client(); // system CAs, verification on
    if (ca_file)
        ctx.load_verify_file(*ca_file);
    xiio::Socket s = co_await xiio::connect_tcp(host, port); // a name: Happy Eyeballs
    xiio::TlsStream tls = co_await xiio::TlsStream::connect(std::move(s), ctx, host);
    std::string host_header = port == 443 ? host : host + ":" + std::to_string(port);
    co_await tls.send_all("GET " + path + " HTTP/1.1\r\nHost: " + host_header +
                          "\r\nConnection: close\r\nUser-Agent: xiio-https_get\r\n\r\n");
    std::string raw;
    std::array<char, 16 * 1024> buf;
    bool truncated = false;
    for (;;) {
        std::size_t n = 0;
        try {
            n = co_await tls.recv(buf); // 0: the server sent close_notify
        } catch (const xiio::TlsError&) {
            // A bare TCP close ("unexpected eof"): many servers end "Connection: close"
            // answers so. The data so far is genuine, but nothing proves it is complete.
            if (raw.empty())
                throw;
            truncated = true;
        }
        if (n == 0)
            break;
        raw.append(buf.data(), n);
    }
    Response r = parse(raw);
    r.truncated = truncated;
    co_return r;
}

int main(int argc, char** argv) {
    std::optional<std::string> ca_file;
    int arg = 1;
    if (argc > 2 && std::string_view(argv[1]) == "--cafile") {
        ca_file = argv[2];
        arg = 3;
    }
    if (argc - arg < 2 || argc - arg > 3) {
        fmt::print(stderr, "usage: {} [--cafile ca.pem] <host> <port> [path]\n", argv[0]);
        return 2;
    }
    std::string host = argv[arg];
    int port = std::atoi(argv[arg + 1]);
    std::string path = argc - arg == 3 ? argv[arg + 2] : "/";
    if (port <= 0 || port > 65535) {
        fmt::print(stderr, "https_get: bad port {}\n", argv[arg + 1]);
        return 2;
    }
    try {
        Response r = xiio::run(
            xiio::timeout(10s, https_get(host, static_cast<std::uint16_t>(port), path, ca_file)));
        fmt::print("{}\n{} header lines, {} bytes of body{}\n", r.status_line, r.header_lines,
                   r.body_bytes, r.truncated ? " (the server closed without close_notify)" : "");
    } catch (const xiio::TimeoutError&) {
        fmt::print(stderr, "https_get: no complete answer within 10 s\n");
        return 1;
    } catch (const xiio::TlsError& e) { // "TLS connect: certificate verify failed (...)"
        fmt::print(stderr, "https_get: {}\n", e.what());
        return 1;
    } catch (const std::exception& e) { // resolution, connection refused, reset...
        fmt::print(stderr, "https_get: {}\n", e.what());
        return 1;
    }
}
