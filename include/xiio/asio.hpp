#pragma once
// on_asio(): runs an xiio task inside an Asio io_context, as the original's on_asyncio() runs a
// coroutine on asyncio. The task's sleeps and fd waits go through Asio timers and
// descriptors, so Asio work and xiio work interleave on one thread.
//
// How: the task gets a loop of its own whose Poller is an AsioPoller, and the awaitable
// returned by on_asio drives that loop's phases (run_ready, next_deadline, deliver) from
// Asio instead of blocking in epoll: it waits on a steady_timer set to the next deadline,
// which the descriptors' handlers cancel when an fd becomes ready. While tasks are ready it
// posts itself instead, and the descriptor waits stay armed meanwhile: Asio's scheduler
// polls its reactor (without blocking) between posted handlers, so fds and the eventfd of
// in_thread completions are seen within an iteration or two, as under run().
//
// Standalone Asio by default; define XIIO_USE_BOOST_ASIO before including this header for
// Boost.Asio. Cancelling from the Asio side needs per-operation cancellation (Asio 1.19,
// Boost 1.77); Boost 1.74 (Debian 12) has none, so there nothing can cancel on_asio. With
// clang, Asio needs ASIO_HAS_CO_AWAIT=1 (BOOST_ASIO_HAS_CO_AWAIT=1 for Boost): the
// xiio::asio CMake target sets both.

#include <xiio.hpp>

#include <fcntl.h>
#include <memory>
#include <unordered_map>

#ifdef XIIO_USE_BOOST_ASIO
#include <boost/asio.hpp>
#define XIIO_NET_VERSION BOOST_ASIO_VERSION
namespace xiio::detail {
namespace net = boost::asio;
using net_error_code = boost::system::error_code;
using net_system_error = boost::system::system_error; // what Boost.Asio itself throws
} // namespace xiio::detail
#else
#include <asio.hpp>
#define XIIO_NET_VERSION ASIO_VERSION
namespace xiio::detail {
namespace net = ::asio;
using net_error_code = std::error_code;
using net_system_error = std::system_error;
} // namespace xiio::detail
#endif

namespace xiio::detail {
#if XIIO_NET_VERSION >= 101900
// Per-operation cancellation (Asio 1.19, Boost 1.77): `||`, cancellation slots.

/// Lets on_asio() see a cancellation instead of having its awaits throw.
inline net::awaitable<void> handle_cancellation_ourselves() {
    co_await net::this_coro::throw_if_cancelled(false);
}
/// True once if the Asio side asked this coroutine to stop; re-arms the state.
inline net::awaitable<bool> take_cancellation() {
    auto cs = co_await net::this_coro::cancellation_state;
    if (cs.cancelled() == net::cancellation_type::none)
        co_return false;
    co_await net::this_coro::reset_cancellation_state();
    co_return true;
}
#else
// Older Asio (Boost 1.74, Debian 12) cannot cancel an awaitable at all: nothing to handle.
inline net::awaitable<void> handle_cancellation_ourselves() {
    co_return;
}
inline net::awaitable<bool> take_cancellation() {
    co_return false;
}
#endif
} // namespace xiio::detail

namespace xiio {
namespace detail {

/// The fd watchers and the wake-up timer of one on_asio() call. Handlers hold it through a
/// shared_ptr: they may run after the call ended (with operation_aborted).
class AsioState : public std::enable_shared_from_this<AsioState> {
public:
    explicit AsioState(const net::any_io_executor& ex) : ex_(ex), timer_(ex) {}

    int add(int fd, unsigned events, bool oneshot) {
        // Watch a duplicate: Asio (or the user) may already watch this fd, and an fd can be
        // registered with Asio's reactor only once.
        int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (dup < 0)
            return errno;
        auto sd = std::make_unique<net::posix::stream_descriptor>(ex_);
        net_error_code ec;
        sd->assign(dup, ec);
        if (ec) {
            ::close(dup);
            return ec.value(); // EPERM for a regular file, as with epoll
        }
        Watch& w = watches_[fd];
        w.sd = std::move(sd);
        w.interest = events;
        w.oneshot = oneshot;
        ++w.generation;
        unarmed_ = true;
        return 0;
    }
    int modify(int fd, unsigned events, bool oneshot) {
        auto it = watches_.find(fd);
        if (it == watches_.end())
            return add(fd, events, oneshot);
        it->second.interest = events;
        it->second.oneshot = oneshot;
        unarmed_ = true;
        return 0;
    }
    void remove(int fd) noexcept {
        auto it = watches_.find(fd);
        if (it == watches_.end())
            return;
        net_error_code ignored;
        it->second.sd->close(ignored); // pending waits complete with operation_aborted
        watches_.erase(it);
    }

    /// Starts an async_wait for every wanted direction that has none pending. Called every
    /// iteration, also while tasks are ready (a wait that is armed only before the loop
    /// sleeps lets a task that keeps yielding starve every fd); free unless an interest
    /// changed or a wait completed since the last call.
    void arm() {
        if (!unarmed_)
            return;
        for (auto& [fd, w] : watches_)
            for (unsigned ev : {unsigned(READ), unsigned(WRITE)})
                if ((w.interest & ev) && !(w.pending & ev)) {
                    auto type = ev == READ ? net::posix::stream_descriptor::wait_read
                                           : net::posix::stream_descriptor::wait_write;
                    w.sd->async_wait(type,
                                     [self = shared_from_this(), fd = fd, ev, gen = w.generation](
                                         net_error_code ec) { self->on_ready(fd, ev, gen, ec); });
                    w.pending |= ev;
                }
        unarmed_ = false; // not before: if async_wait threw, the next call tries again
    }

    /// Waits until `deadline` or until an fd handler cancels the timer.
    net::awaitable<void> wait(Clock::time_point deadline) {
        if (!ready_.empty())
            co_return;
        timer_.expires_at(deadline);
        net_error_code ec;
        co_await timer_.async_wait(net::redirect_error(net::use_awaitable, ec));
    }

    std::vector<PollEvent> take() { return std::exchange(ready_, {}); }

    void close() noexcept {
        for (auto& [fd, w] : watches_) {
            net_error_code ignored;
            w.sd->close(ignored);
        }
        watches_.clear();
    }

private:
    struct Watch {
        std::unique_ptr<net::posix::stream_descriptor> sd;
        unsigned interest = 0;
        unsigned pending = 0;
        bool oneshot = false;
        unsigned generation = 0;
    };

    void on_ready(int fd, unsigned ev, unsigned gen, net_error_code ec) {
        auto it = watches_.find(fd);
        if (it == watches_.end() || it->second.generation != gen)
            return; // removed (or replaced) since: a stale completion
        Watch& w = it->second;
        w.pending &= ~ev;
        unarmed_ = true;
        if (ec == net::error::operation_aborted || !(w.interest & ev))
            return;
        ready_.push_back({fd, ec ? unsigned(READ | WRITE) : ev}); // errors wake both, as epoll
        if (w.oneshot)
            w.interest = 0;
        timer_.cancel();
    }

    net::any_io_executor ex_;
    net::steady_timer timer_;
    std::unordered_map<int, Watch> watches_;
    std::vector<PollEvent> ready_;
    bool unarmed_ = false; // a wanted direction may have no async_wait pending
};

/// The loop's Poller, mapped onto Asio descriptors; waiting is done by on_asio().
class AsioPoller : public Poller {
public:
    explicit AsioPoller(std::shared_ptr<AsioState> s) : state_(std::move(s)) {}
    int add(int fd, unsigned events, bool oneshot) override {
        return state_->add(fd, events, oneshot);
    }
    int modify(int fd, unsigned events, bool oneshot) override {
        return state_->modify(fd, events, oneshot);
    }
    void remove(int fd) noexcept override { state_->remove(fd); }
    void wait(Clock::time_point, std::vector<PollEvent>&) override {
        throw std::logic_error("xiio: a loop hosted by Asio does not block");
    }

private:
    std::shared_ptr<AsioState> state_;
};

/// Makes `loop` this thread's current loop while one of its phases runs (Asio handlers of
/// other on_asio calls run in between), with SIGPIPE blocked as under run().
class HostedStep {
public:
    explicit HostedStep(Loop& loop) : previous_(set_current_loop(&loop)), guard_(loop) {}
    ~HostedStep() { set_current_loop(previous_); }
    HostedStep(const HostedStep&) = delete;
    HostedStep& operator=(const HostedStep&) = delete;

private:
    Loop* previous_;
    SigpipeGuard guard_;
};

} // namespace detail

/// Runs `task` inside the Asio coroutine that awaits this, on the io_context's thread;
/// returns its value or rethrows its exception. Cancelling the Asio side (`||` with a
/// timer, a cancellation slot) throws CancelledError into the task, waits for its cleanup,
/// then throws std::system_error(operation_aborted).
template <class T>
detail::net::awaitable<T> on_asio(Task<T> task) {
    namespace net = detail::net;
    auto state = std::make_shared<detail::AsioState>(co_await net::this_coro::executor);
    detail::Loop loop(std::make_unique<detail::AsioPoller>(state));
    detail::RootRunner<T> root(loop, std::move(task), "xiio::on_asio");
    co_await detail::handle_cancellation_ourselves();
    bool cancelled = false;
    for (;;) {
        Clock::time_point deadline;
        {
            detail::HostedStep step(loop);
            loop.run_ready();
            if (root.done_)
                break;
            deadline = loop.next_deadline();
        }
        if (co_await detail::take_cancellation() && !cancelled) {
            cancelled = true; // once: the task's cleanup then runs to its end
            loop.throw_in(root, std::make_exception_ptr(CancelledError{}));
            continue;
        }
        // Arm before either path: while tasks are ready the post below lets Asio poll its
        // reactor, which reports only the descriptors that have a wait pending.
        state->arm();
        if (deadline == Clock::time_point::min())
            co_await net::post(co_await net::this_coro::executor, net::use_awaitable);
        else
            co_await state->wait(deadline);
        detail::HostedStep step(loop);
        loop.deliver(state->take());
    }
    state->close();
    if (cancelled)
        throw detail::net_system_error(net::error::operation_aborted);
    co_return root.result();
}

/// on_asio() for a light awaitable (`on_asio(xiio::sleep(1s))`).
template <detail::Wrappable A>
    requires(!detail::is_task<std::remove_cvref_t<A>>::value)
auto on_asio(A&& a) {
    return on_asio(detail::as_task(std::forward<A>(a)));
}

} // namespace xiio
