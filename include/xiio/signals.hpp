#pragma once
// Signals: subscribe_signals() blocks signals in the calling thread and reports them
// through a signalfd, which the loop waits on like any fd.
//
// Rules (see README "Signals"):
// - A signal mask is per thread. A signal sent to the process (kill(pid, sig)) goes to any
//   one thread that does not block it: every other thread of the process must block the
//   subscribed signals too (block them in main() before starting threads, which inherit
//   the mask), or the signal may be delivered there with its normal disposition (which,
//   for SIGUSR1, SIGTERM, ... kills the process). xiio's ThreadPool workers block every
//   signal. A signal sent to a thread (pthread_kill, raise) goes to that thread only.
// - The signalfd reports the signals pending for the process and for the thread that
//   reads it: call next() from a loop running on the thread that subscribed.
// - Standard signals do not queue: several deliveries of one before next() reads it may
//   be reported once (real-time signals queue).
// - Destruction drains the subscribed signals still pending (never delivered to the
//   default action), restores the signal mask in effect when the subscription was created,
//   and closes the fd. Destroy subscriptions of one thread in the reverse order of their
//   creation, on that thread: destroying an older one first would restore a mask that
//   unblocks the signals of the younger one while its signalfd still waits for them.
// - SIGPIPE: run() blocks SIGPIPE in its thread while it runs (see SigpipeGuard in
//   loop.hpp), so a subscription's "previous mask" may hold the loop's SIGPIPE block. So:
//   a subscription that does not include SIGPIPE leaves SIGPIPE's bit as it is when it is
//   destroyed (the loop's business). One that includes SIGPIPE takes it over from a loop
//   running when it is created (the loop stops consuming the SIGPIPEs its own writes raise:
//   next() reports every SIGPIPE; xiio's writes still fail with EPIPE), and when it is
//   destroyed while a loop runs, leaves SIGPIPE blocked and hands it back to that loop,
//   which unblocks it when run() returns; otherwise SIGPIPE goes back to how the thread
//   had it before the subscription (and before the loop).

#include <xiio/detail/sys.hpp>
#include <xiio/io.hpp>

#include <csignal>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>

#include <pthread.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

namespace xiio {

class SignalSubscription;
SignalSubscription subscribe_signals(std::initializer_list<int> signals);

namespace detail {

/// The signals subscribed on this thread.
inline sigset_t& subscribed_signals() noexcept {
    struct Set {
        sigset_t set;
        Set() noexcept { sigemptyset(&set); }
    };
    thread_local Set s;
    return s.set;
}

/// Reads one signalfd_siginfo from the subscription's fd; the signal's number.
class [[nodiscard]] SignalOp : public FdOp<SignalOp, int, READ> {
public:
    explicit SignalOp(detail::FdRef fd) noexcept : FdOp(fd) {}
    SignalOp(SignalOp&& o) noexcept : FdOp(std::move(o)) {}
    ssize_t call() noexcept { return sys::read(ref_.fd, &info_, sizeof info_); }
    int await_resume() {
        finish("read");
        return static_cast<int>(info_.ssi_signo);
    }

private:
    signalfd_siginfo info_{};
};

} // namespace detail

/// A set of signals blocked in the thread that subscribed and reported by next(). RAII,
/// move-only (moving it while next() is awaited is fine: its state lives on the heap).
class SignalSubscription {
public:
    /// Empty: subscribed to nothing (a moved-from subscription is empty too).
    SignalSubscription() noexcept = default;
    SignalSubscription(SignalSubscription&&) noexcept = default;
    SignalSubscription& operator=(SignalSubscription&& o) noexcept {
        if (this != &o) {
            reset();
            impl_ = std::move(o.impl_);
        }
        return *this;
    }
    ~SignalSubscription() { reset(); }

    /// Awaitable: waits for the next signal and returns its number. std::logic_error if
    /// the subscription is empty.
    detail::SignalOp next() const {
        if (!impl_)
            throw std::logic_error("xiio::SignalSubscription::next: empty subscription");
        return detail::SignalOp(impl_->fd);
    }

    /// The signalfd (-1 if empty); xiio owns it.
    int fd() const noexcept { return impl_ ? impl_->fd.get() : -1; }

    explicit operator bool() const noexcept { return static_cast<bool>(impl_); }

    /// Unsubscribes now (what the destructor does). On another thread than the one that
    /// subscribed it only closes the signalfd: signal masks are per thread, and this
    /// thread's is not the one to restore, so the signals stay blocked (and taken) in the
    /// subscribing thread.
    void reset() noexcept {
        if (!impl_)
            return;
        Impl& s = *impl_;
        if (!pthread_equal(s.thread, pthread_self())) {
            impl_.reset();
            return;
        }
        // Consume what arrived and was not read, so unblocking cannot deliver it.
        timespec zero{};
        for (;;) {
            if (::sigtimedwait(&s.set, nullptr, &zero) > 0)
                continue;
            if (errno != EINTR)
                break;
        }
        sigset_t now;
        pthread_sigmask(SIG_SETMASK, nullptr, &now);
        sigset_t restore = s.old;
        bool pipe_blocked;
        if (!sigismember(&s.set, SIGPIPE)) {
            pipe_blocked = sigismember(&now, SIGPIPE) == 1; // the loop's business
        } else if (s.user_blocked_pipe) {
            pipe_blocked = true;
        } else if (detail::Loop* loop = detail::current_loop()) {
            pipe_blocked = true; // a loop runs: it unblocks SIGPIPE when run() returns
            loop->owns_sigpipe_ = true;
        } else {
            pipe_blocked = false;
        }
        if (pipe_blocked)
            sigaddset(&restore, SIGPIPE);
        else
            sigdelset(&restore, SIGPIPE);
        pthread_sigmask(SIG_SETMASK, &restore, nullptr);
        sigset_t& taken = detail::subscribed_signals();
        for (int sig = 1; sig < NSIG; ++sig)
            if (sigismember(&s.set, sig) == 1)
                sigdelset(&taken, sig);
        impl_.reset(); // closes the fd (and drops its loop registration)
    }

private:
    friend SignalSubscription subscribe_signals(std::initializer_list<int> signals);

    struct Impl {
        Fd fd;
        sigset_t set;                   // the subscribed signals
        sigset_t old;                   // the mask when it was created
        bool user_blocked_pipe = false; // SIGPIPE was blocked before, and not by a loop
        pthread_t thread = pthread_self();
    };
    std::unique_ptr<Impl> impl_;
};

/// Blocks `signals` in the calling thread and opens a signalfd for them; next() returns
/// them one at a time. Throws std::logic_error, before changing anything, for a signal
/// that is invalid, cannot be blocked (SIGKILL, SIGSTOP; also glibc's internal ones) or is
/// already subscribed on this thread; std::invalid_argument for an empty list;
/// std::system_error if signalfd() fails. See the rules at the top of this header (other
/// threads must block the signals too; destroy in reverse order on the same thread).
inline SignalSubscription subscribe_signals(std::initializer_list<int> signals) {
    if (signals.size() == 0)
        throw std::invalid_argument("xiio::subscribe_signals: no signal given");
    sigset_t set;
    sigemptyset(&set);
    const sigset_t& taken = detail::subscribed_signals();
    for (int sig : signals) {
        std::string name = "xiio::subscribe_signals: signal " + std::to_string(sig);
        if (sig == SIGKILL || sig == SIGSTOP)
            throw std::logic_error(name + " cannot be blocked");
        if (sig <= 0 || sig >= NSIG || sigaddset(&set, sig) != 0)
            throw std::logic_error(name + " is not a valid signal that can be blocked");
        if (sigismember(&taken, sig) == 1)
            throw std::logic_error(name + " is already subscribed on this thread");
    }
    auto impl = std::make_unique<SignalSubscription::Impl>();
    impl->set = set;
    pthread_sigmask(SIG_BLOCK, &set, &impl->old);
    int fd = detail::sys::signalfd(&set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd < 0) {
        int err = errno;
        pthread_sigmask(SIG_SETMASK, &impl->old, nullptr);
        detail::throw_errno("signalfd", err);
    }
    impl->fd = Fd(fd);
    impl->fd.state().nonblocking = true;
    detail::Loop* loop = detail::current_loop();
    bool loop_pipe = loop && loop->owns_sigpipe_; // the old mask holds the loop's block
    impl->user_blocked_pipe = sigismember(&impl->old, SIGPIPE) == 1 && !loop_pipe;
    if (sigismember(&set, SIGPIPE) == 1 && loop_pipe)
        loop->owns_sigpipe_ = false; // ours now: the loop no longer drains it
    sigset_t& mine = detail::subscribed_signals();
    for (int sig : signals)
        sigaddset(&mine, sig);
    SignalSubscription sub;
    sub.impl_ = std::move(impl);
    return sub;
}

} // namespace xiio
