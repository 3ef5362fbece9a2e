// W4 echo: one echo server and C clients in one process, one loop, on 127.0.0.1; each client
// does R request/responses of 64 bytes (send, then read the 64-byte echo) and checks every
// echo. xiio (Listener/Socket), Asio (co_spawn + use_awaitable) and a raw epoll state
// machine. ns per request (the region includes listen, connect and accept of every client)
// and requests/s. That is case `echo` (xiio also as xiio-uring, on its io_uring backend).
// Cases c1, c100, c1000 (echo_remote.hpp): the server alone here, on --loops N threads,
// the clients in another process; raw epoll and raw io_uring servers in echo_servers.hpp,
// xiio's and Asio's below.
#include "common.hpp"
#include "echo_remote.hpp"
#include "echo_servers.hpp"

#include <xiio.hpp>

#include <array>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef XIIO_BENCH_ASIO
#include <asio.hpp>
#endif

namespace {

constexpr std::size_t msg_size = 64;
using Message = std::array<char, msg_size>;

/// Request i of a client: distinct per (client, i), cheap to make (the same in every
/// implementation, so it does not dilute the comparison).
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

// ---- xiio --------------------------------------------------------------------------------

xiio::Task<void> xiio_serve(xiio::Socket s) {
    std::array<char, 4096> buf;
    while (std::size_t n = co_await s.recv(buf))
        co_await s.send_all(std::string_view(buf.data(), n));
}

xiio::Task<void> xiio_client(std::uint16_t port, int id, int requests, long& ok) {
    auto s = co_await xiio::connect_tcp("127.0.0.1", port);
    Message back;
    for (int i = 0; i < requests; ++i) {
        auto m = message(id, i);
        co_await s.send_all(std::string_view(m.data(), m.size()));
        co_await xiio::read_exactly(s.fd(), back);
        bench::check(back == m, "xiio: wrong echo");
        ++ok;
    }
}

bench::Sample run_xiio(int clients, int requests) {
    long ok = 0;
    bench::Region region;
    xiio::run([&]() -> xiio::Task<void> {
        auto l = xiio::Listener::tcp("127.0.0.1", 0, 1024);
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
            for (int c = 0; c < clients; ++c)
                tg.add_task(xiio_client(l.port(), c, requests, ok));
            for (int c = 0; c < clients; ++c)
                tg.add_task(xiio_serve(co_await l.accept()));
        });
    }());
    double ns = region.stop();
    bench::check(ok == static_cast<long>(clients) * requests, "xiio: missing echoes");
    return sample(ns, ok);
}

/// W4 c1/c100/c1000: one server loop on its own thread; the clients are another process.
xiio::Task<void> xiio_stop_on(int stop, xiio::TaskGroup& tg) {
    co_await xiio::wait_readable(stop);
    tg.cancel();
}

void serve_xiio(int listener, int stop) {
    xiio::run([&]() -> xiio::Task<void> {
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
            tg.add_task(xiio_stop_on(stop, tg));
            // The SO_REUSEPORT listener is made by hand (echo_remote.hpp) and shared by no
            // other loop; accepting on it is setup, outside the measured region.
            for (;;) {
                int fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) {
                    if (errno != EAGAIN && errno != EWOULDBLOCK)
                        throw std::system_error(errno, std::system_category(), "xiio: accept4");
                    co_await xiio::wait_readable(listener);
                    continue;
                }
                int one = 1;
                ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                tg.add_task(xiio_serve(xiio::Socket(xiio::Fd(fd))));
            }
        });
    }());
}

// ---- raw: an epoll state machine -----------------------------------------------------------

// Every socket is registered once, level-triggered, for what it waits for next (EPOLLIN;
// EPOLLOUT only while a connect or a short write is pending, which at 64 bytes is only
// the connect). Every read and write is tried first; epoll is asked only after EAGAIN.
class RawEcho {
public:
    RawEcho(int clients, int requests) : requests_(requests) {
        ep_ = ::epoll_create1(EPOLL_CLOEXEC);
        listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof addr;
        if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), len) < 0 ||
            ::listen(listener_, 1024) < 0 ||
            ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) < 0)
            fail("listen");
        listen_conn_.fd = listener_;
        listen_conn_.kind = Conn::listener;
        add(listen_conn_, EPOLLIN);
        for (int c = 0; c < clients; ++c) {
            auto conn = std::make_unique<Conn>();
            conn->kind = Conn::client;
            conn->id = c;
            conn->fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            ::setsockopt(conn->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            int r = ::connect(conn->fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
            if (r < 0 && errno != EINPROGRESS)
                fail("connect");
            add(*conn, EPOLLOUT); // connected once writable
            conns_.push_back(std::move(conn));
        }
        open_ = 2 * clients; // every client and every accepted connection must close
    }
    ~RawEcho() {
        for (auto& c : conns_)
            if (c->fd >= 0)
                ::close(c->fd);
        ::close(listener_);
        ::close(ep_);
    }

    long run() {
        epoll_event events[256];
        while (open_ > 0) {
            int n = ::epoll_wait(ep_, events, 256, -1);
            if (n < 0 && errno != EINTR)
                fail("epoll_wait");
            for (int i = 0; i < n; ++i) {
                auto* c = static_cast<Conn*>(events[i].data.ptr);
                if (c->fd >= 0) // a connection closed earlier in this batch is skipped
                    on_event(*c, events[i].events);
            }
        }
        return ok_;
    }

private:
    struct Conn {
        enum Kind { listener, client, server } kind = server;
        int fd = -1;
        int id = 0;
        int done = 0; // client: requests answered
        bool connected = false;
        Message sent; // client: the request in flight
        std::size_t got = 0;
        std::array<char, 4096> buf;        // client: the echo so far; server: what to echo
        std::size_t out = 0, out_done = 0; // server: bytes to echo, bytes echoed
        unsigned armed = 0;
    };

    [[noreturn]] static void fail(const char* what) {
        throw std::runtime_error(std::string("raw: ") + what + ": " + std::strerror(errno));
    }
    void ctl(Conn& c, int op, unsigned events) {
        epoll_event ev{};
        ev.events = events;
        ev.data.ptr = &c;
        if (::epoll_ctl(ep_, op, c.fd, &ev) < 0)
            fail("epoll_ctl");
        c.armed = events;
    }
    void add(Conn& c, unsigned events) { ctl(c, EPOLL_CTL_ADD, events); }
    void arm(Conn& c, unsigned events) {
        if (c.armed != events)
            ctl(c, EPOLL_CTL_MOD, events);
    }
    void close(Conn& c) {
        ::close(c.fd); // also leaves the epoll set
        c.fd = -1;
        --open_;
    }

    void on_event(Conn& c, unsigned) {
        switch (c.kind) {
        case Conn::listener:
            return accept_all();
        case Conn::client:
            if (!c.connected) {
                int err = 0;
                socklen_t len = sizeof err;
                ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    errno = err;
                    fail("connect");
                }
                c.connected = true;
                arm(c, EPOLLIN);
                return send_request(c);
            }
            return client_read(c);
        case Conn::server:
            return server_io(c);
        }
    }

    void accept_all() {
        for (;;) {
            int fd = ::accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                fail("accept4");
            }
            int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            auto conn = std::make_unique<Conn>();
            conn->fd = fd;
            add(*conn, EPOLLIN);
            Conn& c = *conn;
            conns_.push_back(std::move(conn));
            server_io(c); // data may be there already
        }
    }

    void send_request(Conn& c) {
        c.sent = message(c.id, c.done);
        c.got = 0;
        // 64 bytes into an empty socket buffer: a short write would be a broken socket.
        if (::send(c.fd, c.sent.data(), msg_size, MSG_NOSIGNAL) != static_cast<ssize_t>(msg_size))
            fail("send");
        client_read(c); // try first: epoll only after EAGAIN
    }

    void client_read(Conn& c) {
        for (;;) {
            ssize_t r = ::recv(c.fd, c.buf.data() + c.got, msg_size - c.got, 0);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                fail("recv");
            }
            if (r == 0)
                fail("recv: early end of stream");
            c.got += static_cast<std::size_t>(r);
            if (c.got < msg_size)
                continue;
            bench::check(std::memcmp(c.buf.data(), c.sent.data(), msg_size) == 0,
                         "raw: wrong echo");
            ++ok_;
            if (++c.done == requests_)
                return close(c);
            return send_request(c);
        }
    }

    void server_io(Conn& c) {
        for (;;) {
            while (c.out_done < c.out) { // the echo first: a short write waits for EPOLLOUT
                ssize_t w =
                    ::send(c.fd, c.buf.data() + c.out_done, c.out - c.out_done, MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK)
                        return arm(c, EPOLLOUT);
                    fail("send");
                }
                c.out_done += static_cast<std::size_t>(w);
            }
            arm(c, EPOLLIN);
            ssize_t r = ::recv(c.fd, c.buf.data(), c.buf.size(), 0);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                fail("recv");
            }
            if (r == 0)
                return close(c);
            c.out = static_cast<std::size_t>(r);
            c.out_done = 0;
        }
    }

    int ep_ = -1, listener_ = -1;
    int requests_;
    int open_ = 0;
    long ok_ = 0;
    Conn listen_conn_;
    std::vector<std::unique_ptr<Conn>> conns_;
};

bench::Sample run_raw(int clients, int requests) {
    bench::Region region;
    long ok = RawEcho(clients, requests).run();
    double ns = region.stop();
    bench::check(ok == static_cast<long>(clients) * requests, "raw: missing echoes");
    return sample(ns, ok);
}

// ---- Asio ----------------------------------------------------------------------------------

#ifdef XIIO_BENCH_ASIO
using asio::ip::tcp;

asio::awaitable<void> asio_serve(tcp::socket s) {
    std::array<char, 4096> buf;
    for (;;) {
        asio::error_code ec;
        std::size_t n = co_await s.async_read_some(asio::buffer(buf),
                                                   asio::redirect_error(asio::use_awaitable, ec));
        if (ec)
            co_return;
        co_await asio::async_write(s, asio::buffer(buf.data(), n), asio::use_awaitable);
    }
}

asio::awaitable<void> asio_accept(tcp::acceptor& acc, int clients) {
    for (int c = 0; c < clients; ++c) {
        tcp::socket s = co_await acc.async_accept(asio::use_awaitable);
        s.set_option(tcp::no_delay(true));
        asio::co_spawn(acc.get_executor(), asio_serve(std::move(s)), asio::detached);
    }
}

asio::awaitable<void> asio_client(tcp::endpoint ep, int id, int requests, long& ok) {
    tcp::socket s(co_await asio::this_coro::executor);
    co_await s.async_connect(ep, asio::use_awaitable);
    s.set_option(tcp::no_delay(true));
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
    bench::Region region;
    {
        asio::io_context ctx(1);
        tcp::acceptor acc(ctx, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
        acc.listen(1024);
        auto ep = acc.local_endpoint();
        asio::co_spawn(ctx, asio_accept(acc, clients), asio::detached);
        for (int c = 0; c < clients; ++c)
            asio::co_spawn(ctx, asio_client(ep, c, requests, ok), [](std::exception_ptr e) {
                if (e)
                    std::rethrow_exception(e);
            });
        ctx.run();
    }
    double ns = region.stop();
    bench::check(ok == static_cast<long>(clients) * requests, "asio: missing echoes");
    return sample(ns, ok);
}

asio::awaitable<void> asio_accept_all(tcp::acceptor& acc) {
    for (;;) {
        tcp::socket s = co_await acc.async_accept(asio::use_awaitable);
        s.set_option(tcp::no_delay(true));
        asio::co_spawn(acc.get_executor(), asio_serve(std::move(s)), asio::detached);
    }
}

/// W4 c1/c100/c1000: one io_context on its own thread; the clients are another process.
void serve_asio(int listener, int stop) {
    asio::io_context ctx(1);
    tcp::acceptor acc(ctx);
    acc.assign(tcp::v4(), ::dup(listener)); // the acceptor and the descriptor own dups
    asio::posix::stream_descriptor stop_fd(ctx, ::dup(stop));
    stop_fd.async_wait(asio::posix::stream_descriptor::wait_read,
                       [&](asio::error_code) { ctx.stop(); });
    asio::co_spawn(ctx, asio_accept_all(acc), [](std::exception_ptr e) {
        if (e)
            std::rethrow_exception(e);
    });
    ctx.run();
}
#endif

} // namespace

// W4 c1, c100, c1000: the server under test here, the clients in another process.
void run_remote_cases(const bench::Args& a, bool quick_sizes) {
    int loops = static_cast<int>(a.get("loops", 1));
    if (loops < 1)
        throw std::invalid_argument("--loops: at least 1");
    // The path of this binary, to start it again as the client process. Read once here:
    // under valgrind /proc/self/exe is valgrind itself, but readlink() of it says ours.
    char self[4096];
    ssize_t len = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0)
        throw std::runtime_error("readlink /proc/self/exe failed");
    self[len] = 0;
    struct Case {
        const char* name;
        int clients, requests;
    };
    // About 1 s each on the 2-core development VM; --quick a tenth.
    const Case cases[] = {{"c1", 1, 40'000}, {"c100", 100, 500}, {"c1000", 1000, 50}};
    for (const Case& k : cases) {
        if (!a.wants_case(k.name))
            continue;
        int requests = static_cast<int>(a.get("requests", k.requests / (quick_sizes ? 10 : 1)));
        long ops = static_cast<long>(k.clients) * requests;
        auto name = loops == 1 ? std::string(k.name) : fmt::format("{}x{}", k.name, loops);
        fmt::print("W4 {}: {} clients (another process) x {} requests of {} bytes, the server on "
                   "{} loop(s); ns per request (server wall time)\n",
                   name, k.clients, requests, msg_size, loops);
        auto measure = [&](const char* impl, const remote::ServeFn& serve) {
            if (a.wants_impl(impl))
                bench::measure(a, "W4", name, impl, ops, [&] {
                    return remote::run(serve, self, k.clients, requests, loops);
                });
        };
        measure("raw", remote::serve_raw);
        for (const char* impl : {"xiio", "xiio-uring"}) {
            if (impl == std::string_view("xiio-uring") && a.wants_impl(impl) &&
                bench::uring::xiio_refused())
                continue;
            bench::Backend backend(bench::Backend::of(impl));
            measure(impl, serve_xiio);
        }
#ifdef XIIO_BENCH_ASIO
        measure("asio", serve_asio);
#endif
        if (int err = a.wants_impl("uring") ? bench::uring::unavailable() : 0)
            fmt::print("  uring: no io_uring here ({}): skipped\n", std::strerror(err));
        else
            measure("uring", [&](int listener, int stop) {
                remote::serve_uring(listener, stop, k.clients);
            });
    }
}

int main(int argc, char** argv) try {
    auto a = bench::parse(argc, argv, 2000);
    if (a.opts.count("clients-only")) // the client process of the cases c1, c100, c1000
        return remote::clients_main(static_cast<int>(a.get("clients-only", 3)),
                                    static_cast<std::uint16_t>(a.get("port", 0)),
                                    static_cast<int>(a.get("clients", 1)),
                                    static_cast<int>(a.get("requests", 1)));
    run_remote_cases(a, a.get("quick", 0) != 0);
    if (!a.wants_case("echo"))
        return 0;
    int clients = static_cast<int>(a.get("clients", 100));
    int requests = static_cast<int>(a.get("requests", a.n));
    long ops = static_cast<long>(clients) * requests;
    fmt::print("W4 echo: {} clients x {} requests of {} bytes on 127.0.0.1, one loop; ns per "
               "request\n",
               clients, requests, msg_size);
    if (a.wants_impl("raw"))
        bench::measure(a, "W4", "echo", "raw", ops, [&] { return run_raw(clients, requests); });
    for (const char* impl : {"xiio", "xiio-uring"})
        if (a.wants_impl(impl) &&
            !(impl == std::string_view("xiio-uring") && bench::uring::xiio_refused())) {
            bench::Backend backend(bench::Backend::of(impl));
            bench::measure(a, "W4", "echo", impl, ops, [&] { return run_xiio(clients, requests); });
        }
#ifdef XIIO_BENCH_ASIO
    if (a.wants_impl("asio"))
        bench::measure(a, "W4", "echo", "asio", ops, [&] { return run_asio(clients, requests); });
#endif
} catch (const std::exception& e) {
    std::fprintf(stderr, "bench_echo: %s\n", e.what());
    return 1;
}
