// Tests of xiio/tls.hpp against real peers: the `openssl s_server` and `openssl s_client`
// commands as child processes, and TlsStream against TlsStream in one loop. The
// certificates (a CA, a server certificate for localhost and 127.0.0.1 signed by it, and a
// self-signed one nobody trusts) are made once per run with the openssl command, in a
// temporary directory. [no-valgrind]: children and OpenSSL's crypto make valgrind slow,
// and the memcheck stage does not need them to check xiio's own code.
#include "helpers.hpp"

#include <xiio/tls.hpp>
#ifndef XIIO_TLS_BUF
#define XIIO_TLS_BUF 65536
#endif
#ifndef XIIO_TLS_N
#define XIIO_TLS_N (1 << 20)
#endif

#include <array>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <type_traits>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace test;
using xiio::Socket;
using xiio::Task;
using xiio::TlsContext;
using xiio::TlsError;
using xiio::TlsStream;

static_assert(!std::is_copy_constructible_v<TlsStream> && std::is_move_constructible_v<TlsStream>);
static_assert(std::is_base_of_v<std::runtime_error, TlsError>);

extern char** environ;

namespace {

/// The certificates, made on first use and removed at exit.
struct Pki {
    std::filesystem::path dir;
    std::string ca, cert, key, untrusted_cert, untrusted_key;

    Pki() {
        dir = std::filesystem::temp_directory_path() / ("xiio-tls-" + std::to_string(::getpid()));
        std::filesystem::create_directories(dir);
        auto f = [&](const char* name) { return (dir / name).string(); };
        ca = f("ca.pem");
        cert = f("server.pem");
        key = f("server.key");
        untrusted_cert = f("untrusted.pem");
        untrusted_key = f("untrusted.key");
        const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes ";
        const std::string script =
            "cd '" + dir.string() + "' && " + "openssl req -x509 " + ec +
            "-keyout ca.key -out ca.pem -days 2 -subj /CN=xiio-test-ca && " + "openssl req " + ec +
            "-keyout server.key -out server.csr -subj /CN=localhost && " +
            "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext.cnf && " +
            "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
            "-out server.pem -days 2 -extfile ext.cnf && " +
            "openssl req -x509 " + ec +
            "-keyout untrusted.key -out untrusted.pem -days 2 -subj /CN=localhost "
            "-addext subjectAltName=DNS:localhost,IP:127.0.0.1";
        const std::string quiet = "(" + script + ") >/dev/null 2>&1";
        if (std::system(quiet.c_str()) != 0)
            throw std::runtime_error("cannot make the test certificates with openssl");
    }
    ~Pki() {
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
    }
};

const Pki& pki() {
    static Pki p;
    return p;
}

/// A child process with its stdin and stdout on pipes (stderr to /dev/null). Killed and
/// reaped when destroyed, whatever happened.
struct Child {
    pid_t pid = -1;
    xiio::Fd in;  // the child's stdin: kept open (s_server and s_client end at its EOF)
    xiio::Fd out; // the child's stdout

    explicit Child(const std::vector<std::string>& argv) {
        int inp[2], outp[2];
        REQUIRE(::pipe2(inp, O_CLOEXEC) == 0);
        REQUIRE(::pipe2(outp, O_CLOEXEC) == 0);
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, inp[0], 0);
        posix_spawn_file_actions_adddup2(&fa, outp[1], 1);
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
        posix_spawnattr_t attr;
        posix_spawnattr_init(&attr);
        sigset_t none, pipe;
        sigemptyset(&none);
        sigemptyset(&pipe);
        sigaddset(&pipe, SIGPIPE);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setsigdefault(&attr, &pipe);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        std::vector<char*> args;
        for (const auto& a : argv)
            args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        int rc = ::posix_spawnp(&pid, args[0], &fa, &attr, args.data(), environ);
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
        ::close(inp[0]);
        ::close(outp[1]);
        in = xiio::Fd(inp[1]);
        out = xiio::Fd(outp[0]);
        REQUIRE(rc == 0);
    }
    ~Child() {
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
    }

    /// Its exit code, waiting at most `bound`; -1 if it is still running then.
    int wait_exit(Ms bound) {
        auto end = xiio::Clock::now() + bound * slack_scale();
        while (xiio::Clock::now() < end) {
            int status = 0;
            if (::waitpid(pid, &status, WNOHANG) == pid) {
                pid = -1;
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            }
            ::usleep(5000);
        }
        return -1;
    }

    /// Reads stdout (blocking, at most `bound`) until it contains `marker` and a newline
    /// after it, or until EOF; returns all that was read.
    std::string read_until(const std::string& marker, Ms bound = 5000ms) {
        std::string text;
        auto end = xiio::Clock::now() + bound * slack_scale();
        for (;;) {
            auto at = text.find(marker);
            if (at != std::string::npos && text.find('\n', at) != std::string::npos)
                return text;
            auto left = std::chrono::duration_cast<Ms>(end - xiio::Clock::now()).count();
            if (left <= 0)
                return text;
            pollfd p{out.get(), POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left)) <= 0)
                continue;
            char buf[4096];
            ssize_t n = ::read(out.get(), buf, sizeof buf);
            if (n <= 0)
                return text;
            text.append(buf, static_cast<std::size_t>(n));
        }
    }
};

/// `openssl s_server` on a free port of 127.0.0.1, echoing each line reversed (-rev).
struct SServer {
    Child child;
    std::uint16_t port = 0;

    explicit SServer(std::vector<std::string> extra = {}, const std::string& cert = pki().cert,
                     const std::string& key = pki().key)
        : child(args(std::move(extra), cert, key)) {
        std::string text = child.read_until("ACCEPT 127.0.0.1:");
        auto at = text.find("ACCEPT 127.0.0.1:");
        INFO("s_server said: " << text);
        REQUIRE(at != std::string::npos);
        port = static_cast<std::uint16_t>(std::stoi(text.substr(at + 17)));
        REQUIRE(port != 0);
    }
    static std::vector<std::string> args(std::vector<std::string> extra, const std::string& cert,
                                         const std::string& key) {
        std::vector<std::string> a = {"openssl", "s_server", "-accept", "127.0.0.1:0", "-cert",
                                      cert,      "-key",     key,       "-rev"};
        a.insert(a.end(), extra.begin(), extra.end());
        return a;
    }
};

/// A client context that trusts the test CA.
TlsContext test_client() {
    TlsContext c = TlsContext::client();
    c.load_verify_file(pki().ca);
    return c;
}

/// Receives until `n` bytes came (or the stream ended).
Task<std::string> recv_n(TlsStream& s, std::size_t n, std::size_t chunk = 4096) {
    std::string got;
    std::vector<char> buf(chunk);
    while (got.size() < n) {
        std::size_t k =
            co_await s.recv(std::span<char>(buf.data(), std::min(chunk, n - got.size())));
        if (k == 0)
            break;
        got.append(buf.data(), k);
    }
    co_return got;
}

/// A connected TlsStream pair in this loop: server (test CA's certificate) and client.
struct Pair {
    TlsContext server_ctx = TlsContext::server(pki().cert, pki().key);
    TlsContext client_ctx = test_client();
    std::optional<TlsStream> server, client;
};

void small_buffers(const Socket& s, int size) {
    if (size) {
        ::setsockopt(s.fd(), SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        ::setsockopt(s.fd(), SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    }
}

Task<void> accept_into(std::optional<TlsStream>& into, const xiio::Listener& listener,
                       TlsContext& ctx, int bufsize) {
    Socket s = co_await listener.accept();
    small_buffers(s, bufsize);
    TlsStream t = co_await TlsStream::accept(std::move(s), ctx);
    into.emplace(std::move(t));
}

Task<void> connect_into(std::optional<TlsStream>& into, std::uint16_t port, TlsContext& ctx,
                        int bufsize) {
    Socket s = co_await xiio::connect_tcp("127.0.0.1", port);
    small_buffers(s, bufsize);
    TlsStream t = co_await TlsStream::connect(std::move(s), ctx, "localhost");
    into.emplace(std::move(t));
}

Task<void> connect_pair(Pair& p, int bufsize = 0) {
    auto listener = xiio::Listener::tcp("127.0.0.1", 0);
    co_await xiio::gather(accept_into(p.server, listener, p.server_ctx, bufsize),
                          connect_into(p.client, listener.port(), p.client_ctx, bufsize));
}

/// Connects to s_server and returns the TlsError's message ("" if it connected).
Task<std::string> connect_error(std::uint16_t port, TlsContext& ctx, std::string name) {
    Socket s = co_await xiio::connect_tcp("127.0.0.1", port);
    try {
        TlsStream t = co_await TlsStream::connect(std::move(s), ctx, name);
    } catch (const TlsError& e) {
        co_return e.what();
    }
    co_return "";
}

} // namespace

TEST_CASE("TLS: TlsStream::connect to openssl s_server: echo and ALPN", "[tls][no-valgrind]") {
    SServer server({"-alpn", "h2,http/1.1"});
    run([&]() -> Task<void> {
        TlsContext ctx = test_client();
        ctx.set_alpn({"http/1.1", "h2"});
        Socket s = co_await xiio::connect_tcp("127.0.0.1", server.port);
        TlsStream tls = co_await TlsStream::connect(std::move(s), ctx, "localhost");
        CHECK(tls.alpn() == "h2"); // the server's preference, among those offered
        co_await tls.send_all("hello tls\n");
        std::string back = co_await recv_n(tls, 10);
        CHECK(back == "slt olleh\n");
    });
}

TEST_CASE("TLS: the host name may be an IP address checked against the IP SAN",
          "[tls][no-valgrind]") {
    SServer server;
    run([&]() -> Task<void> {
        TlsContext ctx = test_client();
        {
            Socket s = co_await xiio::connect_tcp("127.0.0.1", server.port);
            TlsStream tls = co_await TlsStream::connect(std::move(s), ctx, "127.0.0.1");
            CHECK(tls.alpn().empty());
            co_await tls.send_all("ip\n");
            std::string back = co_await recv_n(tls, 3);
            CHECK(back == "pi\n");
            co_await tls.shutdown();
        } // s_server serves one connection at a time
        std::string wrong_ip = co_await connect_error(server.port, ctx, "127.0.0.2");
        CHECK_THAT(wrong_ip, Catch::Contains("certificate verify failed") &&
                                 Catch::Contains("IP address mismatch"));
    });
}

TEST_CASE("TLS: an untrusted certificate is a TlsError: certificate verify failed",
          "[tls][no-valgrind]") {
    SServer server;
    SServer self_signed({}, pki().untrusted_cert, pki().untrusted_key);
    run([&]() -> Task<void> {
        TlsContext system_only = TlsContext::client(); // the test CA is not in the system store
        std::string e1 = co_await connect_error(server.port, system_only, "localhost");
        CHECK_THAT(e1, Catch::Contains("TLS connect: certificate verify failed") &&
                           Catch::Contains("unable to get local issuer certificate"));
        TlsContext ctx = test_client();
        std::string e2 = co_await connect_error(self_signed.port, ctx, "localhost");
        CHECK_THAT(e2, Catch::Contains("certificate verify failed") &&
                           Catch::Contains("self-signed certificate"));
        // A server context verifies when it connects too (it trusts nothing by default).
        TlsContext as_server = TlsContext::server(pki().cert, pki().key);
        std::string e3 = co_await connect_error(server.port, as_server, "localhost");
        CHECK_THAT(e3, Catch::Contains("certificate verify failed"));
        // The error queue was emptied: a good connection after the failures succeeds, and
        // its later error carries no reason of theirs.
        std::string ok = co_await connect_error(server.port, ctx, "localhost");
        CHECK(ok.empty());
    });
}

TEST_CASE("TLS: a host name the certificate does not name is a TlsError", "[tls][no-valgrind]") {
    SServer server;
    run([&]() -> Task<void> {
        TlsContext ctx = test_client();
        std::string e = co_await connect_error(server.port, ctx, "wrong.example");
        CHECK_THAT(e, Catch::Contains("certificate verify failed") &&
                          Catch::Contains("hostname mismatch"));
        Socket s = co_await xiio::connect_tcp("127.0.0.1", server.port);
        CHECK_THROWS_AS(co_await TlsStream::connect(std::move(s), ctx, ""), std::invalid_argument);
    });
}

TEST_CASE("TLS: openssl s_client against TlsStream::accept: ALPN and close_notify",
          "[tls][no-valgrind]") {
    auto listener = xiio::Listener::tcp("127.0.0.1", 0);
    Child client({"openssl", "s_client", "-connect", "127.0.0.1:" + std::to_string(listener.port()),
                  "-servername", "localhost", "-CAfile", pki().ca, "-verify_return_error", "-alpn",
                  "http/1.1,h2", "-quiet"});
    REQUIRE(::write(client.in.get(), "ping\n", 5) == 5);
    std::string alpn;
    run([&]() -> Task<void> {
        TlsContext ctx = TlsContext::server(pki().cert, pki().key);
        ctx.set_alpn({"h2", "http/1.1"});
        Socket s = co_await listener.accept();
        TlsStream tls = co_await TlsStream::accept(std::move(s), ctx);
        alpn = tls.alpn();
        std::string got = co_await recv_n(tls, 5);
        CHECK(got == "ping\n");
        co_await tls.send_all("pong\n");
        co_await tls.shutdown(); // s_client ends cleanly on close_notify
    });
    CHECK(alpn == "h2");
    CHECK(client.wait_exit(5000ms) == 0);
    std::string out = client.read_until("pong");
    CHECK_THAT(out, Catch::Contains("pong\n"));
}

TEST_CASE("TLS: s_server killed mid-stream is a TlsError: unexpected eof", "[tls][no-valgrind]") {
    SServer server;
    run([&]() -> Task<void> {
        TlsContext ctx = test_client();
        Socket s = co_await xiio::connect_tcp("127.0.0.1", server.port);
        TlsStream tls = co_await TlsStream::connect(std::move(s), ctx, "localhost");
        co_await tls.send_all("x\n");
        std::string back = co_await recv_n(tls, 2);
        CHECK(back == "x\n");
        ::kill(server.child.pid, SIGKILL);
        std::array<char, 64> buf;
        try {
            co_await tls.recv(buf);
            FAIL("recv returned after the peer was killed");
        } catch (const TlsError& e) {
            CHECK_THAT(e.what(), Catch::Contains("TLS recv") && Catch::Contains("unexpected eof"));
        }
    });
}

TEST_CASE("TLS: close_notify is a clean 0 and a bare TCP close is unexpected eof",
          "[tls][no-valgrind]") {
    run([&]() -> Task<void> {
        Pair p;
        co_await connect_pair(p);
        co_await p.client->send_all("bye");
        co_await p.client->shutdown();
        std::string got = co_await recv_n(*p.server, 100);
        CHECK(got == "bye"); // then recv returned 0: close_notify
        std::array<char, 16> buf;
        std::size_t again = co_await p.server->recv(buf);
        CHECK(again == 0);
        // The other direction still works after one side's close_notify.
        co_await p.server->send_all("late");
        std::string late = co_await recv_n(*p.client, 4);
        CHECK(late == "late");

        Pair q;
        co_await connect_pair(q);
        co_await q.client->send_all("cut");
        // The client reads what the server sent (TLS 1.3 session tickets come with it):
        // closing a socket with unread data sends a reset, not a FIN.
        co_await q.server->send_all("!");
        std::string bang = co_await recv_n(*q.client, 1);
        CHECK(bang == "!");
        q.client.reset(); // no shutdown(): the fd closes without close_notify
        std::string cut = co_await recv_n(*q.server, 3);
        CHECK(cut == "cut");
        try {
            co_await q.server->recv(buf);
            FAIL("recv returned after a close without close_notify");
        } catch (const TlsError& e) {
            CHECK_THAT(e.what(), Catch::Contains("unexpected eof"));
        }
    });
}

TEST_CASE("TLS: 1 MiB both ways at once through small buffers", "[tls][no-valgrind]") {
    run([&]() -> Task<void> {
        Pair p;
        co_await connect_pair(p, XIIO_TLS_BUF); // small socket buffers: writes wait (WANT_WRITE)
        std::string a(XIIO_TLS_N, '\0'), b(XIIO_TLS_N, '\0');
        for (std::size_t i = 0; i < a.size(); ++i) {
            a[i] = static_cast<char>('a' + i % 23);
            b[i] = static_cast<char>('A' + i % 19);
        }
        std::string at_server, at_client;
        auto send_a = [&]() -> Task<void> { co_await p.client->send_all(a); };
        auto send_b = [&]() -> Task<void> { co_await p.server->send_all(b); };
        auto recv_a = [&]() -> Task<void> {
            at_server = co_await recv_n(*p.server, a.size(), 1000);
        };
        auto recv_b = [&]() -> Task<void> {
            at_client = co_await recv_n(*p.client, b.size(), 777);
        };
        co_await xiio::gather(send_a(), send_b(), recv_a(), recv_b());
        CHECK(at_server == a);
        CHECK(at_client == b);
    });
}

TEST_CASE("TLS: a timeout cancels a handshake the peer never answers and leaks nothing",
          "[tls][no-valgrind]") {
    run([&]() -> Task<void> {
        auto listener = xiio::Listener::tcp("127.0.0.1", 0);
        TlsContext client_ctx = test_client();
        TlsContext server_ctx = TlsContext::server(pki().cert, pki().key);
        // The client side: the server accepts TCP and never speaks TLS.
        Socket raw_client = co_await xiio::connect_tcp("127.0.0.1", listener.port());
        Socket mute_server = co_await listener.accept();
        auto start = xiio::Clock::now();
        CHECK_THROWS_AS(co_await xiio::timeout(50ms, TlsStream::connect(std::move(raw_client),
                                                                        client_ctx, "localhost")),
                        xiio::TimeoutError);
        // The server side: a TCP client that never sends its ClientHello.
        Socket mute_client = co_await xiio::connect_tcp("127.0.0.1", listener.port());
        Socket raw_server = co_await listener.accept();
        CHECK_THROWS_AS(
            co_await xiio::timeout(50ms, TlsStream::accept(std::move(raw_server), server_ctx)),
            xiio::TimeoutError);
        CHECK(elapsed_ms(start) < 1000 * slack_scale());
        // Each cancelled handshake closed its socket: the peers read end of stream.
        std::array<char, 16> buf;
        std::size_t n1 = co_await mute_server.recv(buf);
        std::size_t n2 = co_await mute_client.recv(buf);
        CHECK(n1 > 0); // the ClientHello, then...
        std::size_t n3 = 1;
        while (n3 > 0)
            n3 = co_await mute_server.recv(buf);
        CHECK(n2 == 0);
    });
}

TEST_CASE("TLS: a timeout cancels a recv and the stream stays usable", "[tls][no-valgrind]") {
    run([&]() -> Task<void> {
        Pair p;
        co_await connect_pair(p);
        std::array<char, 16> buf;
        CHECK_THROWS_AS(co_await xiio::timeout(30ms, p.server->recv(buf)), xiio::TimeoutError);
        co_await p.client->send_all("after");
        std::string got = co_await recv_n(*p.server, 5);
        CHECK(got == "after");
        // A cancelled recv in a stream that then goes away: nothing leaks (the run checks fds).
        auto doomed = [&]() -> Task<void> {
            Pair q;
            co_await connect_pair(q);
            std::array<char, 16> b;
            co_await q.client->recv(b);
        };
        CHECK_THROWS_AS(co_await xiio::timeout(30ms, doomed), xiio::TimeoutError);
    });
}

TEST_CASE("TLS: contexts report bad files and bad ALPN names", "[tls][no-valgrind]") {
    CHECK_THROWS_AS(TlsContext::server("/nonexistent/cert.pem", pki().key), TlsError);
    try {
        TlsContext::server(pki().cert, pki().untrusted_key);
        FAIL("a key that does not match the certificate was accepted");
    } catch (const TlsError& e) {
        CHECK_THAT(e.what(), Catch::Contains("TLS private key"));
    }
    TlsContext c = TlsContext::client();
    CHECK_THROWS_AS(c.load_verify_file("/nonexistent/ca.pem"), TlsError);
    CHECK_THROWS_AS(c.set_alpn({""}), std::invalid_argument);
    CHECK(ERR_peek_error() == 0); // nothing left in the thread's error queue
}

TEST_CASE("TLS: a TlsStream outlives its TlsContext object", "[tls][no-valgrind]") {
    run([&]() -> Task<void> {
        std::optional<TlsStream> server, client;
        {
            auto server_ctx =
                std::make_unique<TlsContext>(TlsContext::server(pki().cert, pki().key));
            server_ctx->set_alpn({"h2"});
            auto client_ctx = std::make_unique<TlsContext>(test_client());
            client_ctx->set_alpn({"h2"});
            auto listener = xiio::Listener::tcp("127.0.0.1", 0);
            co_await xiio::gather(accept_into(server, listener, *server_ctx, 0),
                                  connect_into(client, listener.port(), *client_ctx, 0));
        }
        CHECK(server->alpn() == "h2");
        TlsStream moved = std::move(*client);
        co_await moved.send_all("still here");
        std::string got = co_await recv_n(*server, 10);
        CHECK(got == "still here");
    });
}

TEST_CASE("TLS: a peer speaking plain text instead of TLS is a TlsError naming the cause",
          "[tls][no-valgrind]") {
    run([&]() -> Task<void> {
        auto listener = xiio::Listener::tcp("127.0.0.1", 0);
        TlsContext client_ctx = test_client();
        TlsContext server_ctx = TlsContext::server(pki().cert, pki().key);
        // The client side: a plain HTTP server answers the ClientHello with text. It closes
        // only after the handshake failed: closed before, the ClientHello reaching the closed
        // socket could make the kernel answer with a reset, and the error would be the reset's.
        Socket raw_client = co_await xiio::connect_tcp("127.0.0.1", listener.port());
        Socket http_server = co_await listener.accept();
        co_await http_server.send_all("HTTP/1.1 400 Bad Request\r\n\r\n");
        try {
            co_await TlsStream::connect(std::move(raw_client), client_ctx, "localhost");
            FAIL("a TLS handshake succeeded against plain text");
        } catch (const TlsError& e) {
            // "TLS connect: wrong version number": the text is not a TLS record header.
            CHECK_THAT(e.what(), Catch::StartsWith("TLS connect: "));
            CHECK_THAT(e.what(), Catch::Contains("wrong version number"));
        }
        http_server.close();
        // The server side: a plain TCP client writes text where its ClientHello belongs.
        Socket text_client = co_await xiio::connect_tcp("127.0.0.1", listener.port());
        Socket raw_server = co_await listener.accept();
        co_await text_client.send_all("hello, is this a web server?\r\n");
        try {
            co_await TlsStream::accept(std::move(raw_server), server_ctx);
            FAIL("a TLS handshake succeeded against plain text");
        } catch (const TlsError& e) {
            CHECK_THAT(e.what(), Catch::StartsWith("TLS accept: "));
            CHECK_THAT(e.what(), Catch::Contains("wrong version number"));
        }
        // The failed handshake closed its socket: the text client reads an alert then end of
        // stream, or a reset (the server closed with our unread text in its buffer), not a
        // hang.
        std::array<char, 64> buf;
        try {
            std::size_t n = 1;
            while (n > 0)
                n = co_await xiio::timeout(5s, text_client.recv(buf));
        } catch (const std::system_error& e) {
            CHECK(e.code() == std::errc::connection_reset);
        }
        CHECK(ERR_peek_error() == 0); // nothing left in the thread's error queue
    });                               // and run() checks that no fd is left open
}
