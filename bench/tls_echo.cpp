// W7 TLS echo: W4 over TLS 1.3. One echo server and C clients in one process, one loop, on
// 127.0.0.1; every client first completes its TLS 1.3 handshake (untimed), then each does
// R request/responses of 64 bytes (send, read the 64-byte echo, check it). ns per request
// and requests/s over the timed phase only: the cost of the encrypted echo, not of
// handshakes.
//
// xiio: TlsStream (connect/accept, send_all/recv); Asio: asio::ssl::stream over
// tcp::socket with C++20 coroutines; raw: non-blocking OpenSSL (SSL_set_fd) in an epoll
// state machine, SSL_read/SSL_write tried first and waited for (EPOLLIN/EPOLLOUT) only on
// SSL_ERROR_WANT_READ/WANT_WRITE.
//
// The certificate is made at startup, in memory (an EC P-256 key and a self-signed
// certificate for localhost and 127.0.0.1); the clients trust exactly it and verify it.
// The servers send no session tickets (a TLS 1.3 server sends two after each handshake by
// default, which the clients would read inside the timed phase). Both sides read ahead
// (SSL_CTX_set_read_ahead): without it OpenSSL reads a record's 5-byte header and its body
// in two read(2)s, 6 reads per request instead of Asio's 4 (Asio reads into its own
// buffer, whole records at once).
#include "common.hpp"

#include <xiio.hpp>
#include <xiio/tls.hpp>

#include <array>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#ifdef XIIO_BENCH_ASIO
#include <asio.hpp>
#include <asio/ssl.hpp>
#endif

namespace {

constexpr std::size_t msg_size = 64;
using Message = std::array<char, msg_size>;

/// Request i of a client: distinct per (client, i), as in W4.
Message message(int client, int i) {
    Message m;
    m.fill('.');
    std::uint32_t id[2] = {static_cast<std::uint32_t>(client), static_cast<std::uint32_t>(i)};
    std::memcpy(m.data(), id, sizeof id);
    return m;
}

bench::Sample sample(double ns, long ok) {
    double per = ns / static_cast<double>(ok);
    return {per, {{"requests_per_s", 1e9 / per}}};
}

[[noreturn]] void ssl_fail(const char* what) {
    char buf[256] = "no OpenSSL error";
    if (unsigned long e = ERR_get_error())
        ERR_error_string_n(e, buf, sizeof buf);
    throw std::runtime_error(std::string(what) + ": " + buf);
}

// ---- the throwaway certificate -------------------------------------------------------------

/// An EC P-256 key and a self-signed certificate for localhost and 127.0.0.1, valid for a
/// day, made once per process (not in any timed region).
struct Identity {
    EVP_PKEY* key = nullptr;
    X509* cert = nullptr;

    Identity() {
        key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
        cert = X509_new();
        if (!key || !cert)
            ssl_fail("keygen");
        X509_set_version(cert, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
        X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
        X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
        X509_set_pubkey(cert, key);
        X509_NAME* name = X509_get_subject_name(cert);
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                   reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
        X509_set_issuer_name(cert, name);
        X509V3_CTX v3;
        X509V3_set_ctx_nodb(&v3);
        X509V3_set_ctx(&v3, cert, cert, nullptr, nullptr, 0);
        X509_EXTENSION* san =
            X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
        if (!san || X509_add_ext(cert, san, -1) != 1)
            ssl_fail("subjectAltName");
        X509_EXTENSION_free(san);
        if (X509_sign(cert, key, EVP_sha256()) == 0)
            ssl_fail("X509_sign");
    }
    ~Identity() {
        X509_free(cert);
        EVP_PKEY_free(key);
    }
    Identity(const Identity&) = delete;
    Identity& operator=(const Identity&) = delete;

    /// Server side: present the certificate, TLS 1.3 only, no session tickets, no client
    /// certificate requested, read ahead.
    void serve(SSL_CTX* ctx) const {
        if (SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1)
            ssl_fail("server certificate");
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
        SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
        SSL_CTX_set_num_tickets(ctx, 0);
        SSL_CTX_set_read_ahead(ctx, 1);
    }
    /// Client side: trust this certificate (and verify it), TLS 1.3 only, read ahead.
    void trust(SSL_CTX* ctx) const {
        if (X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), cert) != 1)
            ssl_fail("trust");
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
        SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
        SSL_CTX_set_read_ahead(ctx, 1);
    }
};

const Identity& identity() {
    static const Identity id;
    return id;
}

// ---- xiio --------------------------------------------------------------------------------

xiio::Task<void> xiio_connect(std::uint16_t port, xiio::TlsContext& ctx,
                              std::optional<xiio::TlsStream>& out) {
    auto s = co_await xiio::connect_tcp("127.0.0.1", port);
    out.emplace(co_await xiio::TlsStream::connect(std::move(s), ctx, "localhost"));
}

xiio::Task<void> xiio_accept(xiio::Socket s, xiio::TlsContext& ctx,
                             std::optional<xiio::TlsStream>& out) {
    out.emplace(co_await xiio::TlsStream::accept(std::move(s), ctx));
}

/// Echoes until it has echoed `bytes` (the client's requests; the streams are dropped
/// without close_notify once the timed phase is over).
xiio::Task<void> xiio_serve(xiio::TlsStream& s, std::size_t bytes) {
    std::array<char, 4096> buf;
    while (bytes > 0) {
        std::size_t n = co_await s.recv(buf);
        bench::check(n > 0, "xiio: early end of stream");
        co_await s.send_all(std::string_view(buf.data(), n));
        bytes -= n;
    }
}

xiio::Task<void> xiio_client(xiio::TlsStream& s, int id, int requests, long& ok) {
    Message back;
    for (int i = 0; i < requests; ++i) {
        auto m = message(id, i);
        co_await s.send_all(std::string_view(m.data(), m.size()));
        for (std::size_t got = 0; got < msg_size;) {
            std::size_t n = co_await s.recv(std::span<char>(back).subspan(got));
            bench::check(n > 0, "xiio: early end of stream");
            got += n;
        }
        bench::check(back == m, "xiio: wrong echo");
        ++ok;
    }
}

bench::Sample run_xiio(int clients, int requests) {
    long ok = 0;
    double ns = 0;
    // client() is the only public constructor without files; the server context is made
    // from one and given the in-memory certificate through native_handle().
    auto cctx = xiio::TlsContext::client();
    identity().trust(cctx.native_handle());
    auto sctx = xiio::TlsContext::client();
    identity().serve(sctx.native_handle());
    xiio::run([&]() -> xiio::Task<void> {
        auto l = xiio::Listener::tcp("127.0.0.1", 0, 1024);
        std::vector<std::optional<xiio::TlsStream>> cs(static_cast<std::size_t>(clients)),
            ss(static_cast<std::size_t>(clients));
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
            for (auto& c : cs)
                tg.add_task(xiio_connect(l.port(), cctx, c));
            for (auto& s : ss)
                tg.add_task(xiio_accept(co_await l.accept(), sctx, s));
        });
        bench::Region region;
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
            for (int c = 0; c < clients; ++c) {
                tg.add_task(xiio_client(*cs[static_cast<std::size_t>(c)], c, requests, ok));
                tg.add_task(xiio_serve(*ss[static_cast<std::size_t>(c)],
                                       msg_size * static_cast<std::size_t>(requests)));
            }
            co_return;
        });
        ns = region.stop();
    }());
    bench::check(ok == static_cast<long>(clients) * requests, "xiio: missing echoes");
    return sample(ns, ok);
}

// ---- raw: non-blocking OpenSSL in an epoll state machine -----------------------------------

struct SslCtx {
    SSL_CTX* p;
    explicit SslCtx(const SSL_METHOD* m) : p(SSL_CTX_new(m)) {
        if (!p)
            ssl_fail("SSL_CTX_new");
    }
    ~SslCtx() { SSL_CTX_free(p); }
    SslCtx(const SslCtx&) = delete;
    SslCtx& operator=(const SslCtx&) = delete;
};

// Every socket is registered once, level-triggered, for what its SSL object waits for next:
// EPOLLIN, or EPOLLOUT while an SSL_write reported WANT_WRITE (at 64 bytes it never
// does). The handshakes run first, untimed, in the same loop; then the timed phase starts.
class RawTlsEcho {
public:
    RawTlsEcho(int clients, int requests)
        : cctx_(TLS_client_method()), sctx_(TLS_server_method()), requests_(requests) {
        identity().trust(cctx_.p);
        identity().serve(sctx_.p);
        SSL_CTX_set_mode(cctx_.p, SSL_MODE_ENABLE_PARTIAL_WRITE);
        SSL_CTX_set_mode(sctx_.p, SSL_MODE_ENABLE_PARTIAL_WRITE);
        ep_ = ::epoll_create1(EPOLL_CLOEXEC);
        int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof addr;
        if (::bind(listener, reinterpret_cast<sockaddr*>(&addr), len) < 0 ||
            ::listen(listener, 1024) < 0 ||
            ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) < 0)
            fail("listen");
        // Setup (untimed): blocking connect and accept (the backlog holds them all).
        for (int c = 0; c < clients; ++c) {
            int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0)
                fail("connect");
            conns_.push_back(make(fd, true, c));
            int s = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
            if (s < 0)
                fail("accept");
            conns_.push_back(make(s, false, c));
        }
        ::close(listener);
        for (auto& c : conns_) {
            ::setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            int fl = ::fcntl(c->fd, F_GETFL);
            ::fcntl(c->fd, F_SETFL, fl | O_NONBLOCK);
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.ptr = c.get();
            if (::epoll_ctl(ep_, EPOLL_CTL_ADD, c->fd, &ev) < 0)
                fail("epoll_ctl");
            c->armed = EPOLLIN;
        }
        // Handshakes (untimed), in the loop.
        pending_ = static_cast<int>(conns_.size());
        for (auto& c : conns_)
            handshake(*c);
        loop();
    }
    ~RawTlsEcho() {
        for (auto& c : conns_) {
            SSL_free(c->ssl);
            ::close(c->fd);
        }
        ::close(ep_);
    }
    RawTlsEcho(const RawTlsEcho&) = delete;
    RawTlsEcho& operator=(const RawTlsEcho&) = delete;

    /// The timed phase: every client sends its first request, and the loop runs until every
    /// client got every echo and every server echoed every request.
    long run() {
        pending_ = static_cast<int>(conns_.size());
        for (auto& c : conns_) {
            c->state = Conn::echoing;
            if (c->client) {
                c->out = message(c->id, 0);
                c->out_len = msg_size;
            }
            io(*c);
        }
        loop();
        return ok_;
    }

private:
    struct Conn {
        enum State { handshaking, echoing, finished } state = handshaking;
        int fd = -1;
        SSL* ssl = nullptr;
        bool client = false;
        int id = 0;
        int done = 0; // client: requests answered; server: requests echoed
        Message sent{};
        std::size_t got = 0; // client: bytes of the echo so far
        std::array<char, 4096> buf;
        // What to write next (client: the request; server: the echo), and how far.
        Message out{};
        std::size_t out_len = 0, out_done = 0;
        std::size_t echo_len = 0; // server: bytes received (and echoed or being echoed) so far
        unsigned armed = 0;
    };

    [[noreturn]] static void fail(const char* what) {
        throw std::runtime_error(std::string("raw: ") + what + ": " + std::strerror(errno));
    }

    std::unique_ptr<Conn> make(int fd, bool client, int id) {
        auto c = std::make_unique<Conn>();
        c->fd = fd;
        c->client = client;
        c->id = id;
        c->ssl = SSL_new(client ? cctx_.p : sctx_.p);
        if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1)
            ssl_fail("SSL_new");
        if (client) {
            SSL_set_connect_state(c->ssl);
            if (SSL_set_tlsext_host_name(c->ssl, "localhost") != 1 ||
                SSL_set1_host(c->ssl, "localhost") != 1)
                ssl_fail("SSL_set1_host");
        } else {
            SSL_set_accept_state(c->ssl);
        }
        return c;
    }

    void arm(Conn& c, unsigned events) {
        if (c.armed == events)
            return;
        epoll_event ev{};
        ev.events = events;
        ev.data.ptr = &c;
        if (::epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev) < 0)
            fail("epoll_ctl");
        c.armed = events;
    }

    /// After an SSL call that returned rc <= 0: wait as OpenSSL asks, or fail.
    void want(Conn& c, int rc, const char* what) {
        switch (SSL_get_error(c.ssl, rc)) {
        case SSL_ERROR_WANT_READ:
            return arm(c, EPOLLIN);
        case SSL_ERROR_WANT_WRITE:
            return arm(c, EPOLLOUT);
        default:
            ssl_fail(what);
        }
    }

    void finish(Conn& c) {
        c.state = Conn::finished;
        --pending_;
    }

    void loop() {
        epoll_event events[256];
        while (pending_ > 0) {
            int n = ::epoll_wait(ep_, events, 256, -1);
            if (n < 0 && errno != EINTR)
                fail("epoll_wait");
            for (int i = 0; i < n; ++i) {
                auto* c = static_cast<Conn*>(events[i].data.ptr);
                if (c->state == Conn::handshaking)
                    handshake(*c);
                else if (c->state == Conn::echoing)
                    io(*c);
            }
        }
    }

    void handshake(Conn& c) {
        ERR_clear_error();
        int rc = SSL_do_handshake(c.ssl);
        if (rc == 1) {
            arm(c, EPOLLIN);
            return finish(c);
        }
        want(c, rc, "raw: handshake");
    }

    /// Writes what is pending, then reads until OpenSSL wants to wait.
    void io(Conn& c) {
        for (;;) {
            while (c.out_done < c.out_len) {
                std::size_t n = 0;
                const char* data = c.client ? c.out.data() : c.buf.data();
                int rc = SSL_write_ex(c.ssl, data + c.out_done, c.out_len - c.out_done, &n);
                if (rc != 1)
                    return want(c, rc, "raw: SSL_write");
                c.out_done += n;
            }
            if (!c.client && c.echo_len == msg_size * static_cast<std::size_t>(requests_))
                return finish(c);        // the last echo went out
            if (c.client && c.out_len) { // the request went out: now its echo
                c.sent = c.out;
                c.out_len = c.out_done = 0;
                c.got = 0;
            }
            arm(c, EPOLLIN);
            std::size_t n = 0;
            char* into = c.client ? c.buf.data() + c.got : c.buf.data();
            std::size_t room = c.client ? msg_size - c.got : c.buf.size();
            int rc = SSL_read_ex(c.ssl, into, room, &n);
            if (rc != 1)
                return want(c, rc, "raw: SSL_read");
            if (c.client) {
                c.got += n;
                if (c.got < msg_size)
                    continue;
                bench::check(std::memcmp(c.buf.data(), c.sent.data(), msg_size) == 0,
                             "raw: wrong echo");
                ++ok_;
                if (++c.done == requests_)
                    return finish(c);
                c.out = message(c.id, c.done);
                c.out_len = msg_size;
                c.out_done = 0;
            } else {
                c.out_len = n; // the echo, from buf
                c.out_done = 0;
                c.echo_len += n;
            }
        }
    }

    SslCtx cctx_, sctx_;
    int ep_ = -1;
    int requests_;
    int pending_ = 0;
    long ok_ = 0;
    std::vector<std::unique_ptr<Conn>> conns_;
};

bench::Sample run_raw(int clients, int requests) {
    RawTlsEcho echo(clients, requests);
    bench::Region region;
    long ok = echo.run();
    double ns = region.stop();
    bench::check(ok == static_cast<long>(clients) * requests, "raw: missing echoes");
    return sample(ns, ok);
}

// ---- Asio ----------------------------------------------------------------------------------

#ifdef XIIO_BENCH_ASIO
using asio::ip::tcp;
using TlsSocket = asio::ssl::stream<tcp::socket>;

asio::awaitable<void> asio_connect(tcp::endpoint ep, asio::ssl::context& ctx,
                                   std::unique_ptr<TlsSocket>& out) {
    auto s = std::make_unique<TlsSocket>(co_await asio::this_coro::executor, ctx);
    co_await s->next_layer().async_connect(ep, asio::use_awaitable);
    s->next_layer().set_option(tcp::no_delay(true));
    // The same checks as xiio's and raw's: SNI, and the name verified by OpenSSL itself.
    if (SSL_set_tlsext_host_name(s->native_handle(), "localhost") != 1 ||
        SSL_set1_host(s->native_handle(), "localhost") != 1)
        ssl_fail("SSL_set1_host");
    co_await s->async_handshake(asio::ssl::stream_base::client, asio::use_awaitable);
    out = std::move(s);
}

asio::awaitable<void> asio_accept(tcp::acceptor& acc, asio::ssl::context& ctx,
                                  std::vector<std::unique_ptr<TlsSocket>>& out) {
    for (auto& slot : out) {
        auto s = std::make_unique<TlsSocket>(co_await acc.async_accept(asio::use_awaitable), ctx);
        s->next_layer().set_option(tcp::no_delay(true));
        // Handshakes run concurrently, each in its own coroutine.
        asio::co_spawn(
            acc.get_executor(),
            [](std::unique_ptr<TlsSocket> s,
               std::unique_ptr<TlsSocket>& slot) -> asio::awaitable<void> {
                co_await s->async_handshake(asio::ssl::stream_base::server, asio::use_awaitable);
                slot = std::move(s);
            }(std::move(s), slot),
            asio::detached);
    }
}

asio::awaitable<void> asio_serve(TlsSocket& s, std::size_t bytes) {
    std::array<char, 4096> buf;
    while (bytes > 0) {
        std::size_t n = co_await s.async_read_some(asio::buffer(buf), asio::use_awaitable);
        co_await asio::async_write(s, asio::buffer(buf.data(), n), asio::use_awaitable);
        bytes -= n;
    }
}

asio::awaitable<void> asio_client(TlsSocket& s, int id, int requests, long& ok) {
    Message back;
    for (int i = 0; i < requests; ++i) {
        auto m = message(id, i);
        co_await asio::async_write(s, asio::buffer(m), asio::use_awaitable);
        co_await asio::async_read(s, asio::buffer(back), asio::use_awaitable);
        bench::check(back == m, "asio: wrong echo");
        ++ok;
    }
}

bench::Sample run_asio(int clients, int requests) {
    long ok = 0;
    auto rethrow = [](std::exception_ptr e) {
        if (e)
            std::rethrow_exception(e);
    };
    asio::ssl::context cctx(asio::ssl::context::tls_client), sctx(asio::ssl::context::tls_server);
    identity().trust(cctx.native_handle());
    identity().serve(sctx.native_handle());
    asio::io_context ctx(1);
    std::vector<std::unique_ptr<TlsSocket>> cs(static_cast<std::size_t>(clients)),
        ss(static_cast<std::size_t>(clients));
    {
        // Handshakes, untimed: the first run() returns once every one is done.
        tcp::acceptor acc(ctx, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
        acc.listen(1024);
        asio::co_spawn(ctx, asio_accept(acc, sctx, ss), rethrow);
        for (auto& c : cs)
            asio::co_spawn(ctx, asio_connect(acc.local_endpoint(), cctx, c), rethrow);
        ctx.run();
    }
    for (auto& p : cs)
        bench::check(p != nullptr, "asio: a handshake did not finish");
    for (auto& p : ss)
        bench::check(p != nullptr, "asio: a handshake did not finish");
    ctx.restart();
    bench::Region region;
    for (int c = 0; c < clients; ++c) {
        auto i = static_cast<std::size_t>(c);
        asio::co_spawn(ctx, asio_client(*cs[i], c, requests, ok), rethrow);
        asio::co_spawn(ctx, asio_serve(*ss[i], msg_size * static_cast<std::size_t>(requests)),
                       rethrow);
    }
    ctx.run();
    double ns = region.stop();
    bench::check(ok == static_cast<long>(clients) * requests, "asio: missing echoes");
    return sample(ns, ok);
}
#endif

} // namespace

int main(int argc, char** argv) {
    auto a = bench::parse(argc, argv, 2000);
    int clients = static_cast<int>(a.get("clients", 100));
    int requests = static_cast<int>(a.get("requests", a.n));
    long ops = static_cast<long>(clients) * requests;
    fmt::print("W7 TLS echo: {} clients x {} requests of {} bytes over TLS 1.3 on 127.0.0.1, "
               "one loop, handshakes untimed; ns per request\n",
               clients, requests, msg_size);
    identity(); // the key and certificate, before any timing
    if (a.wants_impl("raw"))
        bench::measure(a, "W7", "tls", "raw", ops, [&] { return run_raw(clients, requests); });
    if (a.wants_impl("xiio"))
        bench::measure(a, "W7", "tls", "xiio", ops, [&] { return run_xiio(clients, requests); });
#ifdef XIIO_BENCH_ASIO
    if (a.wants_impl("asio"))
        bench::measure(a, "W7", "tls", "asio", ops, [&] { return run_asio(clients, requests); });
#endif
}
