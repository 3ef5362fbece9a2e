// W8 UDP ping-pong: two UDP sockets on 127.0.0.1, connected to each other, one loop; a
// 64-byte datagram goes back and forth N times (the pinger sends it and receives the echo,
// the ponger receives it and sends it back) and every echo is checked. ns per round trip.
//
// xiio: two tasks on xiio::DatagramSocket with the connected send/recv; Asio: two
// coroutines on asio::ip::udp::socket with async_send/async_receive; raw: an epoll state
// machine, each socket registered once (EPOLLIN, level-triggered), every recv tried first
// and waited for only after EAGAIN (a send to a connected loopback UDP socket does not
// block). The region starts with the sockets open and ends when the last echo came back.
#include "common.hpp"

#include <xiio.hpp>

#include <array>
#include <cerrno>
#include <cstring>
#include <span>
#include <string_view>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef XIIO_BENCH_ASIO
#include <asio.hpp>
#endif

namespace {

constexpr std::size_t msg_size = 64;
using Message = std::array<char, msg_size>;

/// Round trip i carries a datagram that differs from the previous one.
void stamp(Message& m, long i) {
    std::memcpy(m.data(), &i, sizeof i);
}

// ---- xiio --------------------------------------------------------------------------------

xiio::Task<void> xiio_ping(const xiio::DatagramSocket& s, long trips, long& done) {
    Message m, back;
    m.fill('.');
    for (long i = 0; i < trips; ++i) {
        stamp(m, i);
        co_await s.send(std::string_view(m.data(), m.size()));
        std::size_t n = co_await s.recv(std::span<char>(back));
        bench::check(n == msg_size && back == m, "xiio: wrong echo");
        ++done;
    }
}

xiio::Task<void> xiio_pong(const xiio::DatagramSocket& s, long trips) {
    Message m;
    for (long i = 0; i < trips; ++i) {
        std::size_t n = co_await s.recv(std::span<char>(m));
        co_await s.send(std::string_view(m.data(), n));
    }
}

bench::Sample run_xiio(long trips) {
    long done = 0;
    bench::Region region;
    xiio::run([&]() -> xiio::Task<void> {
        auto a = xiio::DatagramSocket::udp("127.0.0.1", 0);
        auto b = xiio::DatagramSocket::udp("127.0.0.1", 0);
        a.connect(b.local());
        b.connect(a.local());
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
            tg.add_task(xiio_ping(a, trips, done));
            tg.add_task(xiio_pong(b, trips));
            co_return;
        });
    }());
    double ns = region.stop();
    bench::check(done == trips, "xiio: missing round trips");
    return {ns / static_cast<double>(trips)};
}

// ---- raw: an epoll state machine -------------------------------------------------------------

class RawUdp {
public:
    explicit RawUdp(long trips) : ep_(::epoll_create1(EPOLL_CLOEXEC)) {
        sockaddr_in addr[2]{};
        for (int i = 0; i < 2; ++i) {
            ends_[i].fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            addr[i].sin_family = AF_INET;
            addr[i].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            socklen_t len = sizeof addr[i];
            if (ends_[i].fd < 0 ||
                ::bind(ends_[i].fd, reinterpret_cast<sockaddr*>(&addr[i]), len) < 0 ||
                ::getsockname(ends_[i].fd, reinterpret_cast<sockaddr*>(&addr[i]), &len) < 0)
                fail("socket");
            ends_[i].left = trips;
        }
        ends_[0].pinger = true;
        for (int i = 0; i < 2; ++i) {
            if (::connect(ends_[i].fd, reinterpret_cast<sockaddr*>(&addr[1 - i]),
                          sizeof addr[1 - i]) < 0)
                fail("connect");
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.ptr = &ends_[i];
            if (::epoll_ctl(ep_, EPOLL_CTL_ADD, ends_[i].fd, &ev) < 0)
                fail("epoll_ctl");
        }
    }
    ~RawUdp() {
        for (auto& e : ends_)
            ::close(e.fd);
        ::close(ep_);
    }
    RawUdp(const RawUdp&) = delete;
    RawUdp& operator=(const RawUdp&) = delete;

    long run() {
        End& ping = ends_[0];
        ping.out.fill('.');
        stamp(ping.out, 0);
        send(ping, ping.out.data(), msg_size);
        receive(ping); // tried first: EAGAIN, the ponger has not run yet
        epoll_event events[8];
        while (ping.left > 0) {
            int n = bench::epoll_wait_ns(ep_, events, 8, nullptr);
            if (n < 0 && errno != EINTR)
                fail("epoll_pwait2");
            for (int i = 0; i < n; ++i)
                receive(*static_cast<End*>(events[i].data.ptr));
        }
        return done_;
    }

private:
    struct End {
        int fd = -1;
        bool pinger = false;
        long left = 0; // round trips still to start (pinger) or datagrams to echo (ponger)
        Message out{}, in{};
    };

    [[noreturn]] static void fail(const char* what) {
        throw std::runtime_error(std::string("raw: ") + what + ": " + std::strerror(errno));
    }
    static void send(End& e, const char* data, std::size_t n) {
        if (::send(e.fd, data, n, MSG_NOSIGNAL) != static_cast<ssize_t>(n))
            fail("send");
    }
    /// Receives until EAGAIN: the pinger checks the echo and sends the next datagram, the
    /// ponger echoes; both try their next receive at once.
    void receive(End& e) {
        while (e.left > 0) {
            ssize_t r = ::recv(e.fd, e.in.data(), e.in.size(), MSG_TRUNC);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                fail("recv");
            }
            if (e.pinger) {
                bench::check(r == msg_size && e.in == e.out, "raw: wrong echo");
                ++done_;
                if (--e.left == 0)
                    return;
                stamp(e.out, done_);
                send(e, e.out.data(), msg_size);
            } else {
                --e.left;
                send(e, e.in.data(), static_cast<std::size_t>(r));
            }
        }
    }

    int ep_;
    std::array<End, 2> ends_;
    long done_ = 0;
};

bench::Sample run_raw(long trips) {
    bench::Region region;
    long done = RawUdp(trips).run();
    double ns = region.stop();
    bench::check(done == trips, "raw: missing round trips");
    return {ns / static_cast<double>(trips)};
}

// ---- Asio ----------------------------------------------------------------------------------

#ifdef XIIO_BENCH_ASIO
using asio::ip::udp;

asio::awaitable<void> asio_ping(udp::socket& s, long trips, long& done) {
    Message m, back;
    m.fill('.');
    for (long i = 0; i < trips; ++i) {
        stamp(m, i);
        co_await s.async_send(asio::buffer(m), asio::use_awaitable);
        std::size_t n = co_await s.async_receive(asio::buffer(back), asio::use_awaitable);
        bench::check(n == msg_size && back == m, "asio: wrong echo");
        ++done;
    }
}

asio::awaitable<void> asio_pong(udp::socket& s, long trips) {
    Message m;
    for (long i = 0; i < trips; ++i) {
        std::size_t n = co_await s.async_receive(asio::buffer(m), asio::use_awaitable);
        co_await s.async_send(asio::buffer(m.data(), n), asio::use_awaitable);
    }
}

bench::Sample run_asio(long trips) {
    long done = 0;
    bench::Region region;
    {
        asio::io_context ctx(1);
        auto lo = asio::ip::make_address("127.0.0.1");
        udp::socket a(ctx, udp::endpoint(lo, 0)), b(ctx, udp::endpoint(lo, 0));
        a.connect(b.local_endpoint());
        b.connect(a.local_endpoint());
        auto rethrow = [](std::exception_ptr e) {
            if (e)
                std::rethrow_exception(e);
        };
        asio::co_spawn(ctx, asio_ping(a, trips, done), rethrow);
        asio::co_spawn(ctx, asio_pong(b, trips), rethrow);
        ctx.run();
    }
    double ns = region.stop();
    bench::check(done == trips, "asio: missing round trips");
    return {ns / static_cast<double>(trips)};
}
#endif

} // namespace

int main(int argc, char** argv) {
    auto a = bench::parse(argc, argv, 200000);
    long trips = a.n;
    fmt::print("W8 UDP ping-pong: {} round trips of a {}-byte datagram on 127.0.0.1, one loop; "
               "ns per round trip\n",
               trips, msg_size);
    if (a.wants_impl("raw"))
        bench::measure(a, "W8", "udp", "raw", trips, [&] { return run_raw(trips); });
    if (a.wants_impl("xiio"))
        bench::measure(a, "W8", "udp", "xiio", trips, [&] { return run_xiio(trips); });
#ifdef XIIO_BENCH_ASIO
    if (a.wants_impl("asio"))
        bench::measure(a, "W8", "udp", "asio", trips, [&] { return run_asio(trips); });
#endif
}
