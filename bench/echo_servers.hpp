#pragma once
// The hand-written server loops of W4's remote cases (see echo_remote.hpp): raw epoll and
// raw io_uring. Each serves the connections its listener accepts until `stop` is readable.
#include "echo_remote.hpp"
#include "uring.hpp"

#include <array>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <system_error>
#include <utility>
#include <vector>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace remote {

// ---- raw epoll ---------------------------------------------------------------------------

// As W4's in-process raw server: every connection registered once, level-triggered, for
// EPOLLIN (EPOLLOUT only while a short write waits); every recv and send tried first and
// epoll asked only after EAGAIN: per request recv, send, recv (EAGAIN) and a share of an
// epoll_wait.
class RawServer {
public:
    RawServer(int listener, int stop) : ep_(::epoll_create1(EPOLL_CLOEXEC)), listener_(listener) {
        if (ep_.get() < 0)
            fail("raw: epoll_create1");
        watch(listener, &listener_tag_);
        watch(stop, &stop_tag_);
    }
    ~RawServer() {
        for (auto& c : conns_)
            if (c->fd >= 0)
                ::close(c->fd);
    }
    RawServer(const RawServer&) = delete;
    RawServer& operator=(const RawServer&) = delete;

    void run() {
        std::array<epoll_event, 256> events;
        for (;;) {
            int n = ::epoll_wait(ep_.get(), events.data(), static_cast<int>(events.size()), -1);
            if (n < 0 && errno != EINTR)
                fail("raw: epoll_wait");
            for (int i = 0; i < n; ++i) {
                void* p = events[i].data.ptr;
                if (p == &stop_tag_)
                    return;
                if (p == &listener_tag_) {
                    accept_all();
                    continue;
                }
                auto* c = static_cast<Conn*>(p);
                if (c->fd >= 0)
                    io(*c);
            }
        }
    }

private:
    struct Conn {
        int fd = -1;
        std::size_t out = 0, out_done = 0; // bytes to echo, bytes echoed
        unsigned armed = 0;
        std::array<char, 4096> buf;
    };

    void watch(int fd, void* tag) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.ptr = tag;
        if (::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, fd, &ev) < 0)
            fail("raw: epoll_ctl");
    }
    void arm(Conn& c, unsigned events) {
        if (c.armed == events)
            return;
        epoll_event ev{};
        ev.events = events;
        ev.data.ptr = &c;
        if (::epoll_ctl(ep_.get(), c.armed ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c.fd, &ev) < 0)
            fail("raw: epoll_ctl");
        c.armed = events;
    }

    void accept_all() {
        for (;;) {
            int fd = ::accept4(listener_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                fail("raw: accept4");
            }
            int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            conns_.push_back(std::make_unique<Conn>());
            conns_.back()->fd = fd;
            arm(*conns_.back(), EPOLLIN);
            io(*conns_.back()); // data may be there already
        }
    }

    void io(Conn& c) {
        for (;;) {
            while (c.out_done < c.out) { // the echo first: a short write waits for EPOLLOUT
                ssize_t w =
                    ::send(c.fd, c.buf.data() + c.out_done, c.out - c.out_done, MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK)
                        return arm(c, EPOLLOUT);
                    fail("raw: send");
                }
                c.out_done += static_cast<std::size_t>(w);
            }
            arm(c, EPOLLIN);
            ssize_t r = ::recv(c.fd, c.buf.data(), c.buf.size(), 0);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                fail("raw: recv");
            }
            if (r == 0) {
                ::close(std::exchange(c.fd, -1)); // also leaves the epoll set
                return;
            }
            c.out = static_cast<std::size_t>(r);
            c.out_done = 0;
        }
    }

    UniqueFd ep_;
    int listener_;
    char listener_tag_ = 0, stop_tag_ = 0;
    std::vector<std::unique_ptr<Conn>> conns_;
};

inline void serve_raw(int listener, int stop) {
    RawServer(listener, stop).run();
}

// ---- raw io_uring ------------------------------------------------------------------------

// Completion-based: an accept always in flight on the listener, a poll on `stop`, and on
// every connection a receive. A received request queues its echo as a send linked to the
// next receive into the same buffer (bench::uring::send_then_recv: the receive starts once
// the echo is out, even for a client that sends early; the send posts no completion when
// it succeeds), so per request there are two SQEs and one CQE. One io_uring_enter per
// iteration submits all that is queued and waits for at least one completion: at many
// busy connections one enter serves many requests.
class UringServer {
public:
    UringServer(int listener, int stop, int max_conns)
        : listener_(listener),
          ring_(std::make_unique<bench::uring::Ring>(static_cast<unsigned>(2 * max_conns + 16),
                                                     static_cast<unsigned>(2 * max_conns + 16))) {
        accept();
        io_uring_sqe* sqe = ring_->get_sqe();
        sqe->opcode = IORING_OP_POLL_ADD;
        sqe->fd = stop;
        sqe->poll32_events = POLLIN;
        sqe->user_data = stop_tag;
    }
    ~UringServer() {
        ring_.reset(); // cancels what is in flight before the connections' buffers go
        for (auto& c : conns_)
            if (c->fd >= 0)
                ::close(c->fd);
    }
    UringServer(const UringServer&) = delete;
    UringServer& operator=(const UringServer&) = delete;

    void run() {
        __kernel_timespec limit{time_limit_s, 0};
        while (!stopped_) {
            if (!ring_->submit_and_wait(1, &limit))
                throw std::runtime_error("uring: no completion in time");
            ring_->for_each_cqe([this](const io_uring_cqe& c) { complete(c); });
        }
    }

private:
    struct alignas(8) Conn {
        int fd = -1;
        int sent = 0; // the length of the echo last sent
        std::array<char, 4096> buf;
    };
    static constexpr std::uint64_t accept_tag = 1, stop_tag = 2; // never a Conn*
    static constexpr std::uint64_t send_bit = 1;                 // user_data: Conn* | send_bit
    static std::uint64_t tag(Conn& c) noexcept { return reinterpret_cast<std::uintptr_t>(&c); }

    void accept() {
        io_uring_sqe* sqe = ring_->get_sqe();
        sqe->opcode = IORING_OP_ACCEPT;
        sqe->fd = listener_;
        sqe->accept_flags = SOCK_CLOEXEC;
        sqe->user_data = accept_tag;
    }

    void complete(const io_uring_cqe& cqe) {
        if (cqe.user_data == stop_tag) {
            stopped_ = true;
            return;
        }
        if (cqe.user_data == accept_tag) {
            if (cqe.res < 0)
                throw std::system_error(-cqe.res, std::system_category(), "uring: accept");
            int one = 1;
            ::setsockopt(cqe.res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            conns_.push_back(std::make_unique<Conn>());
            Conn& c = *conns_.back();
            c.fd = cqe.res;
            bench::uring::prep_rw(ring_->get_sqe(), IORING_OP_RECV, c.fd, c.buf.data(),
                                  c.buf.size(), tag(c));
            accept();
            return;
        }
        auto& c = *reinterpret_cast<Conn*>(cqe.user_data & ~send_bit);
        if (cqe.user_data & send_bit) { // posted only on failure (or where it cannot be skipped)
            if (cqe.res != c.sent)      // short under MSG_WAITALL: the connection broke
                throw std::system_error(cqe.res < 0 ? -cqe.res : EIO, std::system_category(),
                                        "uring: send");
            return;
        }
        if (cqe.res < 0)
            throw std::system_error(-cqe.res, std::system_category(), "uring: recv");
        if (cqe.res == 0) { // the client is done; nothing of this connection is in flight
            ::close(std::exchange(c.fd, -1));
            return;
        }
        c.sent = cqe.res;
        bench::uring::send_then_recv(*ring_, c.fd, c.buf.data(), static_cast<std::size_t>(cqe.res),
                                     tag(c) | send_bit, c.buf.data(), c.buf.size(), 0, tag(c));
    }

    int listener_;
    bool stopped_ = false;
    std::vector<std::unique_ptr<Conn>> conns_;
    std::unique_ptr<bench::uring::Ring> ring_; // reset first in the destructor
};

inline void serve_uring(int listener, int stop, int max_conns) {
    UringServer(listener, stop, max_conns).run();
}

} // namespace remote
