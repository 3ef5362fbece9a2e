// W3 ping-pong: P pairs of non-blocking AF_UNIX stream socketpairs; on each pair a 64-byte
// message goes back and forth K times (the initiator writes it and reads the echo, the
// responder reads it and writes it back) and every echo is checked. ns per round trip
// (of all pairs together: wall / (P * K)).
// W5 idle load (`--idle N`): the same with N more tasks that sleep for 10 minutes the
// whole time (xiio: sleeping tasks, Asio: waiting steady_timers, raw: entries in the
// timer heap), i.e. what a loop pays per iteration for a large idle population.
//
// xiio: two tasks per pair on xiio::Fd (persistent epoll registration) with writeall and
// read_exactly; Asio: two coroutines per pair on local::stream_protocol sockets from
// connect_pair, with async_write and async_read; raw: an epoll state machine, each fd
// registered once (EPOLLIN, level-triggered), every read and write tried first and
// waited for only after EAGAIN, and a timer heap consulted every iteration.
// W3 also has uring, a raw io_uring state machine (no timers: not for W5), and xiio-uring,
// the xiio code on xiio's io_uring backend.
// The measured region starts once the loop runs and the idle sleepers (if any) wait,
// and ends when the last pair finished: the same region for W3 and W5, so that their
// ratio is the cost of the idle population alone.
#include "common.hpp"
#include "uring.hpp"

#include <xiio.hpp>

#include <array>
#include <cerrno>
#include <chrono>
#include <functional>
#include <queue>
#include <span>
#include <string_view>
#include <system_error>
#include <vector>

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef XIIO_BENCH_ASIO
#include <asio.hpp>
#endif

namespace {

using namespace std::chrono_literals;
using bench::Clock;
constexpr std::size_t msg_size = 64;
using Message = std::array<char, msg_size>;
constexpr auto idle_time = 10min;

struct Params {
    long pairs, trips, idle;
    long ops() const { return pairs * trips; }
};

/// Round trip i carries a message that differs from the previous one.
void stamp(Message& m, long i) {
    std::memcpy(m.data(), &i, sizeof i);
}

std::vector<std::array<int, 2>> socketpairs(long n) {
    std::vector<std::array<int, 2>> v(static_cast<std::size_t>(n));
    for (auto& p : v)
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, p.data()) < 0)
            throw std::runtime_error("socketpair failed");
    return v;
}

// ---- xiio --------------------------------------------------------------------------------

xiio::Task<void> xiio_ping(const xiio::Fd& fd, long trips, long& done) {
    Message m, back;
    m.fill('.');
    for (long i = 0; i < trips; ++i) {
        stamp(m, i);
        co_await xiio::writeall(fd, std::string_view(m.data(), m.size()));
        co_await xiio::read_exactly(fd, std::span<char>(back));
        bench::check(back == m, "xiio: wrong echo");
        ++done;
    }
}

xiio::Task<void> xiio_pong(const xiio::Fd& fd, long trips) {
    Message m;
    for (long i = 0; i < trips; ++i) {
        co_await xiio::read_exactly(fd, std::span<char>(m));
        co_await xiio::writeall(fd, std::string_view(m.data(), m.size()));
    }
}

bench::Sample run_xiio(const Params& p) {
    long done = 0;
    double ns = 0;
    xiio::run([&]() -> xiio::Task<void> {
        co_await xiio::task_group([&](xiio::TaskGroup& idle) -> xiio::Task<void> {
            for (long i = 0; i < p.idle; ++i)
                idle.add_task(xiio::sleep(idle_time));
            co_await xiio::yield(); // every sleeper ran up to its sleep
            std::vector<std::array<xiio::Fd, 2>> fds;
            bench::Region region;
            for (auto [a, b] : socketpairs(p.pairs))
                fds.push_back({xiio::Fd(a), xiio::Fd(b)});
            co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
                for (auto& f : fds) {
                    tg.add_task(xiio_ping(f[0], p.trips, done));
                    tg.add_task(xiio_pong(f[1], p.trips));
                }
                co_return;
            });
            ns = region.stop();
            idle.cancel();
        });
    }());
    bench::check(done == p.ops(), "xiio: missing round trips");
    return {ns / static_cast<double>(p.ops())};
}

// ---- raw: an epoll state machine and a timer heap ------------------------------------------

class RawPingPong {
public:
    explicit RawPingPong(const Params& p) : ep_(::epoll_create1(EPOLL_CLOEXEC)) {
        auto now = Clock::now();
        for (long i = 0; i < p.idle; ++i)
            timers_.push({now + idle_time, nullptr}); // never due while we run
        for (auto [a, b] : socketpairs(p.pairs)) {
            ends_.push_back({a, true, p.trips});
            ends_.push_back({b, false, p.trips});
        }
        for (auto& e : ends_) {
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.ptr = &e;
            if (::epoll_ctl(ep_, EPOLL_CTL_ADD, e.fd, &ev) < 0)
                fail("epoll_ctl");
        }
        pairs_left_ = p.pairs;
    }
    ~RawPingPong() {
        for (auto& e : ends_)
            ::close(e.fd);
        ::close(ep_);
    }
    RawPingPong(const RawPingPong&) = delete;
    RawPingPong& operator=(const RawPingPong&) = delete;

    long run() {
        for (auto& e : ends_)
            if (e.initiator) {
                e.out.fill('.');
                stamp(e.out, 0);
                send(e);
            }
        epoll_event events[256];
        while (pairs_left_ > 0) {
            // One iteration of a loop with timers: fire what is due, sleep until the next.
            timespec ts, *timeout = nullptr;
            if (!timers_.empty()) {
                auto now = Clock::now();
                while (!timers_.empty() && timers_.top().deadline <= now) {
                    auto t = timers_.top();
                    timers_.pop();
                    if (t.fn)
                        t.fn();
                }
                if (!timers_.empty()) {
                    auto ns =
                        std::chrono::ceil<std::chrono::nanoseconds>(timers_.top().deadline - now)
                            .count();
                    ts = {static_cast<time_t>(ns / 1'000'000'000),
                          static_cast<long>(ns % 1'000'000'000)};
                    timeout = &ts;
                }
            }
            int n = bench::epoll_wait_ns(ep_, events, 256, timeout);
            if (n < 0 && errno != EINTR)
                fail("epoll_pwait2");
            for (int i = 0; i < n; ++i) {
                auto* e = static_cast<End*>(events[i].data.ptr);
                if (e->writing)
                    send(*e);
                else
                    receive(*e);
            }
        }
        return done_;
    }

private:
    struct End {
        int fd;
        bool initiator;
        long left; // messages still to send (initiator) or to echo (responder)
        Message out{}, in{};
        std::size_t got = 0, sent = 0;
        bool writing = false; // waits for EPOLLOUT after a short write
    };
    struct Timer {
        Clock::time_point deadline;
        void (*fn)();
        bool operator>(const Timer& o) const noexcept { return deadline > o.deadline; }
    };

    [[noreturn]] static void fail(const char* what) {
        throw std::runtime_error(std::string("raw: ") + what + ": " + std::strerror(errno));
    }
    void interest(End& e, unsigned events) {
        epoll_event ev{};
        ev.events = events;
        ev.data.ptr = &e;
        if (::epoll_ctl(ep_, EPOLL_CTL_MOD, e.fd, &ev) < 0)
            fail("epoll_ctl");
    }

    void send(End& e) {
        while (e.sent < msg_size) {
            ssize_t w = ::write(e.fd, e.out.data() + e.sent, msg_size - e.sent);
            if (w < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                    fail("write");
                if (!e.writing) { // never at 64 bytes in flight, but a loop must cope
                    e.writing = true;
                    interest(e, EPOLLIN | EPOLLOUT);
                }
                return;
            }
            e.sent += static_cast<std::size_t>(w);
        }
        if (e.writing) {
            e.writing = false;
            interest(e, EPOLLIN);
        }
        e.sent = 0;
        --e.left;
        if (!e.initiator && e.left == 0)
            return; // the responder echoed its last message
        e.got = 0;
        receive(e); // try first: epoll only after EAGAIN
    }

    void receive(End& e) {
        for (;;) {
            ssize_t r = ::read(e.fd, e.in.data() + e.got, msg_size - e.got);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                fail("read");
            }
            if (r == 0)
                fail("read: early end of stream");
            e.got += static_cast<std::size_t>(r);
            if (e.got == msg_size)
                break;
        }
        if (e.initiator) {
            bench::check(e.in == e.out, "raw: wrong echo");
            ++done_;
            if (e.left == 0) {
                --pairs_left_;
                return;
            }
            stamp(e.out, done_);
        } else {
            e.out = e.in;
        }
        send(e);
    }

    int ep_;
    std::vector<End> ends_; // never resized after epoll holds pointers into it
    std::priority_queue<Timer, std::vector<Timer>, std::greater<>> timers_;
    long pairs_left_ = 0;
    long done_ = 0;
};

bench::Sample run_raw(const Params& p) {
    RawPingPong loop(p); // the idle timers are set up outside the region, as for the others
    bench::Region region;
    long done = loop.run();
    double ns = region.stop();
    bench::check(done == p.ops(), "raw: missing round trips");
    return {ns / static_cast<double>(p.ops())};
}

// ---- uring: a raw io_uring state machine ---------------------------------------------------

// Completion-based: every end always has its next operation in flight, and one
// io_uring_enter per iteration submits all that is queued and waits for at least one
// completion. No readiness, no EAGAIN: a receive with nothing to read waits inside the
// kernel. A message goes out as a send linked to the receive of what comes back
// (bench::uring::send_then_recv): the send posts no completion when it succeeds, both use
// MSG_WAITALL (the kernel finishes a short transfer itself), so per message there is one
// completion, a whole 64-byte receive. The initiator sends, then receives the echo; the
// responder receives, then sends it back out of the same buffer and receives the next.
class UringPingPong {
public:
    explicit UringPingPong(const Params& p)
        : ring_(static_cast<unsigned>(4 * p.pairs + 8), static_cast<unsigned>(4 * p.pairs + 8)) {
        for (auto [a, b] : socketpairs(p.pairs)) {
            ends_.push_back({a, true, p.trips});
            ends_.push_back({b, false, p.trips});
        }
        pairs_left_ = p.pairs;
    }
    ~UringPingPong() {
        for (auto& e : ends_)
            ::close(e.fd);
    }
    UringPingPong(const UringPingPong&) = delete;
    UringPingPong& operator=(const UringPingPong&) = delete;

    const char* mode() const noexcept { return ring_.mode(); }

    long run() {
        for (auto& e : ends_) {
            if (e.initiator) {
                e.out.fill('.');
                stamp(e.out, 0);
                exchange(e, e.out);
            } else {
                auto* sqe = ring_.get_sqe();
                bench::uring::prep_rw(sqe, IORING_OP_RECV, e.fd, e.in.data(), msg_size, tag(e));
                sqe->msg_flags = MSG_WAITALL;
            }
        }
        __kernel_timespec limit{10, 0}; // a benchmark that stalls fails instead of hanging
        while (pairs_left_ > 0) {
            if (!ring_.submit_and_wait(1, &limit))
                throw std::runtime_error("uring: no completion in 10 s");
            ring_.for_each_cqe([this](const io_uring_cqe& c) { complete(c); });
        }
        return done_;
    }

private:
    struct alignas(8) End {
        int fd;
        bool initiator;
        long left; // messages still to receive (responder) or echoes to get (initiator)
        Message out{}, in{};
    };
    static constexpr std::uint64_t send_bit = 1; // user_data: End* | send_bit for the send
    static std::uint64_t tag(End& e) noexcept { return reinterpret_cast<std::uintptr_t>(&e); }

    /// Sends `m` and then receives the next 64 bytes into e.in.
    void exchange(End& e, const Message& m) {
        bench::uring::send_then_recv(ring_, e.fd, m.data(), msg_size, tag(e) | send_bit,
                                     e.in.data(), msg_size, MSG_WAITALL, tag(e));
    }

    void complete(const io_uring_cqe& c) {
        auto* e = reinterpret_cast<End*>(c.user_data & ~send_bit);
        if (c.user_data & send_bit) { // posted only on failure (or where CQEs cannot be skipped)
            if (c.res != static_cast<int>(msg_size))
                throw std::system_error(c.res < 0 ? -c.res : EIO, std::system_category(),
                                        "uring: send");
            return;
        }
        if (c.res != static_cast<int>(msg_size))
            throw std::system_error(c.res < 0 ? -c.res : EIO, std::system_category(),
                                    "uring: recv (short: end of stream)");
        --e->left;
        if (e->initiator) {
            bench::check(e->in == e->out, "uring: wrong echo");
            ++done_;
            if (e->left == 0) {
                --pairs_left_;
                return;
            }
            stamp(e->out, done_);
            exchange(*e, e->out);
        } else if (e->left > 0) {
            exchange(*e, e->in); // the receive starts once the echo is out: one buffer
        } else {
            auto* sqe = ring_.get_sqe(); // the last echo
            bench::uring::prep_rw(sqe, IORING_OP_SEND, e->fd, e->in.data(), msg_size,
                                  tag(*e) | send_bit);
            sqe->msg_flags = MSG_WAITALL | MSG_NOSIGNAL;
        }
    }

    std::vector<End> ends_; // never resized after SQEs point into it
    // Declared after ends_, so destroyed first: closing the ring cancels what is still in
    // flight (after an error) before the buffers it points into go.
    bench::uring::Ring ring_;
    long pairs_left_ = 0;
    long done_ = 0;
};

bench::Sample run_uring(const Params& p, std::string& mode) {
    UringPingPong loop(p);
    mode = loop.mode();
    bench::Region region;
    long done = loop.run();
    double ns = region.stop();
    bench::check(done == p.ops(), "uring: missing round trips");
    return {ns / static_cast<double>(p.ops())};
}

// ---- Asio ----------------------------------------------------------------------------------

#ifdef XIIO_BENCH_ASIO
using asio::local::stream_protocol;

asio::awaitable<void> asio_ping(stream_protocol::socket& s, long trips, long& done) {
    Message m, back;
    m.fill('.');
    for (long i = 0; i < trips; ++i) {
        stamp(m, i);
        co_await asio::async_write(s, asio::buffer(m), asio::use_awaitable);
        co_await asio::async_read(s, asio::buffer(back), asio::use_awaitable);
        bench::check(back == m, "asio: wrong echo");
        ++done;
    }
}

asio::awaitable<void> asio_pong(stream_protocol::socket& s, long trips) {
    Message m;
    for (long i = 0; i < trips; ++i) {
        co_await asio::async_read(s, asio::buffer(m), asio::use_awaitable);
        co_await asio::async_write(s, asio::buffer(m), asio::use_awaitable);
    }
}

asio::awaitable<void> asio_idle(asio::steady_timer& t) {
    asio::error_code ec; // operation_aborted once the run is over
    co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
}

bench::Sample run_asio(const Params& p) {
    long done = 0, running = 2 * p.pairs;
    double ns = 0;
    asio::io_context ctx(1);
    std::vector<asio::steady_timer> idle;
    idle.reserve(static_cast<std::size_t>(p.idle));
    for (long i = 0; i < p.idle; ++i) {
        idle.emplace_back(ctx, idle_time);
        asio::co_spawn(ctx, asio_idle(idle.back()), asio::detached);
    }
    std::vector<std::array<stream_protocol::socket, 2>> socks;
    std::optional<bench::Region> region;
    auto rethrow = [](std::exception_ptr e) {
        if (e)
            std::rethrow_exception(e);
    };
    // The last ping or pong to finish stops the clock and cancels the idle timers.
    auto finished = [&](std::exception_ptr e) {
        rethrow(e);
        if (--running == 0) {
            ns = region->stop();
            for (auto& t : idle)
                t.cancel();
        }
    };
    auto start = [&]() -> asio::awaitable<void> {
        // Queued behind the idle coroutines: once it runs, every idle timer waits.
        region.emplace();
        socks.reserve(static_cast<std::size_t>(p.pairs));
        for (long i = 0; i < p.pairs; ++i) {
            socks.push_back({stream_protocol::socket(ctx), stream_protocol::socket(ctx)});
            asio::local::connect_pair(socks.back()[0], socks.back()[1]);
        }
        for (auto& s : socks) {
            asio::co_spawn(ctx, asio_ping(s[0], p.trips, done), finished);
            asio::co_spawn(ctx, asio_pong(s[1], p.trips), finished);
        }
        co_return;
    };
    asio::co_spawn(ctx, start, rethrow);
    ctx.run();
    bench::check(done == p.ops(), "asio: missing round trips");
    return {ns / static_cast<double>(p.ops())};
}
#endif

} // namespace

int main(int argc, char** argv) {
    auto a = bench::parse(argc, argv, 200'000);
    Params p{a.get("pairs", 1), a.n, a.get("idle", 0)};
    const char* w = p.idle ? "W5" : "W3";
    auto c = fmt::format("P{}", p.pairs);
    fmt::print("{}: {} pair(s) x {} round trips of {} bytes over AF_UNIX socketpairs, {} idle "
               "sleepers; ns per round trip\n",
               w, p.pairs, p.trips, msg_size, p.idle);
    if (a.wants_impl("raw"))
        bench::measure(a, w, c, "raw", p.ops(), [&] { return run_raw(p); });
    for (const char* impl : {"xiio", "xiio-uring"})
        if (a.wants_impl(impl) &&
            !(impl == std::string_view("xiio-uring") && bench::uring::xiio_refused())) {
            bench::Backend backend(bench::Backend::of(impl));
            bench::measure(a, w, c, impl, p.ops(), [&] { return run_xiio(p); });
        }
    // No uring case for W5: its point is a loop with timers, which the raw uring loop lacks.
    if (int err = a.wants_impl("uring") && p.idle == 0 ? bench::uring::unavailable() : 0)
        fmt::print("  uring: no io_uring here ({}): skipped\n", std::strerror(err));
    else if (a.wants_impl("uring") && p.idle == 0) {
        std::string mode;
        bench::measure(a, w, c, "uring", p.ops(), [&] { return run_uring(p, mode); });
        fmt::print("  uring setup: {}\n", mode);
    }
#ifdef XIIO_BENCH_ASIO
    if (a.wants_impl("asio"))
        bench::measure(a, w, c, "asio", p.ops(), [&] { return run_asio(p); });
#endif
}
