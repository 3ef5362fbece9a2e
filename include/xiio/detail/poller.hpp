#pragma once
// The waiting step: the seam between the loop and the OS (see docs/design.md, "The seam").
// EpollPoller is the default; tests substitute doubles through poller_factory(), and
// xiio/asio.hpp maps the same interface onto Asio descriptors.

#include <xiio/detail/std_parts.hpp>
#include <xiio/detail/sys.hpp>
#include <xiio/detail/wait.hpp>
#include <xiio/errors.hpp>

#include <limits>
#include <memory>
#include <vector>

#include <sys/epoll.h>
#include <unistd.h>

namespace xiio {
namespace detail {

struct PollEvent {
    int fd;
    unsigned events; // READ|WRITE; errors and hang-ups report both
};

/// The waiting step: the seam between the loop and the OS. Epoll is the default; tests
/// substitute a double to inject failures, and other loops (Asio) can host xiio through it.
class Poller {
public:
    virtual ~Poller() = default;
    /// Interest changes; return 0 or an errno (EPERM: this fd cannot be watched).
    virtual int add(int fd, unsigned events, bool oneshot) = 0;
    virtual int modify(int fd, unsigned events, bool oneshot) = 0;
    virtual void remove(int fd) noexcept = 0;
    /// Registers a wake-up eventfd edge-triggered, if this poller can: every write to it
    /// is then reported once, and the loop need not read it back (one syscall less per
    /// wake-up). Returns false if not supported: the fd is then added level-triggered.
    virtual bool add_wakeup(int) { return false; }
    /// Blocks until an fd is ready or `deadline` passes (min(): do not block, max(): no
    /// deadline) and appends what is ready to `ready`. Throws on failure.
    virtual void wait(Clock::time_point deadline, std::vector<PollEvent>& ready) = 0;
};

class EpollPoller : public Poller {
public:
    EpollPoller() : fd_(sys::epoll_create1(EPOLL_CLOEXEC)) {
        if (fd_ < 0)
            throw_errno("epoll_create1");
    }
    ~EpollPoller() override { ::close(fd_); }
    EpollPoller(const EpollPoller&) = delete;
    EpollPoller& operator=(const EpollPoller&) = delete;

    int add(int fd, unsigned events, bool oneshot) override {
        int err = ctl(EPOLL_CTL_ADD, fd, events, oneshot);
        // Still registered for a file that was closed while a dup keeps it open: take over.
        return err == EEXIST ? ctl(EPOLL_CTL_MOD, fd, events, oneshot) : err;
    }
    int modify(int fd, unsigned events, bool oneshot) override {
        int err = ctl(EPOLL_CTL_MOD, fd, events, oneshot);
        // The fd was closed and its number reused: epoll dropped the old file silently.
        return err == ENOENT ? ctl(EPOLL_CTL_ADD, fd, events, oneshot) : err;
    }
    void remove(int fd) noexcept override { ::epoll_ctl(fd_, EPOLL_CTL_DEL, fd, nullptr); }
    bool add_wakeup(int fd) override {
        // An eventfd wakes its epoll waiters on every write, so with EPOLLET each write is
        // one event, whatever the counter holds; the counter itself never matters.
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLET;
        ev.data.fd = fd;
        return ::epoll_ctl(fd_, EPOLL_CTL_ADD, fd, &ev) == 0;
    }

    void wait(Clock::time_point deadline, std::vector<PollEvent>& ready) override {
        epoll_event events[256];
        int n;
        do { // on EINTR, wait again for what is left: a signal storm must not extend it
            n = wait_once(deadline, events, 256);
        } while (n < 0 && errno == EINTR);
        if (n < 0)
            throw_errno(pwait2_ ? "epoll_pwait2" : "epoll_wait");
        for (int i = 0; i < n; ++i) {
            unsigned e = events[i].events;
            unsigned r = 0;
            if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                r |= READ;
            if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))
                r |= WRITE;
            ready.push_back({events[i].data.fd, r});
        }
    }

private:
    /// epoll_pwait2 takes a nanosecond timeout. Kernels before 5.11, valgrind and some
    /// seccomp profiles answer ENOSYS: then epoll_wait, with the timeout rounded up to
    /// whole milliseconds (a timer may fire up to 1 ms late, never early).
    int wait_once(Clock::time_point deadline, epoll_event* events, int max) noexcept {
        std::chrono::nanoseconds left{-1};
        if (deadline != Clock::time_point::max()) {
            auto now = Clock::now();
            // Rounded up: waking a nanosecond early would only cost another wait.
            left = deadline > now ? std::chrono::ceil<std::chrono::nanoseconds>(deadline - now)
                                  : std::chrono::nanoseconds(0);
        }
        if (pwait2_) {
            timespec ts{static_cast<time_t>(left.count() / 1'000'000'000),
                        static_cast<long>(left.count() % 1'000'000'000)};
            int n = sys::epoll_pwait2(fd_, events, max, left.count() < 0 ? nullptr : &ts);
            if (n >= 0 || errno != ENOSYS)
                return n;
            pwait2_ = false;
        }
        int ms = -1;
        if (left.count() >= 0) {
            auto up = std::chrono::ceil<std::chrono::milliseconds>(left).count();
            ms = static_cast<int>(std::min<decltype(up)>(up, std::numeric_limits<int>::max()));
        }
        return sys::epoll_wait(fd_, events, max, ms);
    }

    int ctl(int op, int fd, unsigned events, bool oneshot) noexcept {
        epoll_event ev{};
        ev.events = ((events & READ) ? EPOLLIN | EPOLLRDHUP : 0u) |
                    ((events & WRITE) ? EPOLLOUT : 0u) | (oneshot ? EPOLLONESHOT : 0u);
        ev.data.fd = fd;
        return ::epoll_ctl(fd_, op, fd, &ev) == 0 ? 0 : errno;
    }
    int fd_;
    bool pwait2_ = true; // until the kernel says ENOSYS
};

/// Makes the Poller of each new loop; tests replace it to inject failures.
using PollerFactory = std::function<std::unique_ptr<Poller>()>;
inline PollerFactory& poller_factory() {
    thread_local PollerFactory factory;
    return factory;
}
inline std::unique_ptr<Poller> make_poller() {
    auto& f = poller_factory();
    return f ? f() : std::make_unique<EpollPoller>();
}

} // namespace detail
} // namespace xiio
