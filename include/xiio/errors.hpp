#pragma once
// Error types and the two helpers every OS call goes through.
//
// Error contract of xiio: an OS call that fails throws std::system_error carrying its errno,
// whose what() starts with the call's name ("epoll_ctl: Bad file descriptor"); EINTR is
// retried, never reported; misuse (nested run(), setting a future twice) throws
// std::logic_error; destructors never throw.

#include <cerrno>
#include <cstddef>
#include <exception>
#include <stdexcept>
#include <string>
#include <system_error>

namespace xiio {

/// Thrown into a task at its current (or next) co_await when it is cancelled. Deliberately
/// not a std::exception, like Python's BaseException: `catch (const std::exception&)` in
/// user code must not swallow a cancellation by accident.
struct CancelledError {};

/// Thrown by timeout() when its deadline passed before the body finished.
class TimeoutError : public std::runtime_error {
public:
    TimeoutError() : std::runtime_error("xiio: timeout") {}
    using std::runtime_error::runtime_error;
};

/// Thrown by read_exactly() when end of file came first; the first `partial` bytes of the
/// buffer hold what was read.
class IncompleteReadError : public std::runtime_error {
public:
    IncompleteReadError(std::size_t partial_, std::size_t expected)
        : std::runtime_error("xiio: end of file after " + std::to_string(partial_) + " of " +
                             std::to_string(expected) + " bytes"),
          partial(partial_) {}
    std::size_t partial;
};

namespace detail {

[[noreturn]] inline void throw_errno(const char* call, int err = errno) {
    throw std::system_error(err, std::system_category(), call);
}

/// What the deadlock error says (Loop::report_deadlock appends the dump of the tasks).
inline constexpr const char* deadlock_message =
    "xiio::run: deadlock: every task waits for a future or a group that nothing can complete";

/// The errors that noexcept paths of the loop hand to waits: a wait on an Fd that was
/// closed, on a Future destroyed under it, a deadlock. Made once, before any of them can
/// be needed (the first Loop's constructor makes them), and shared: copying an
/// exception_ptr only counts a reference, so reporting one cannot fail for want of memory.
struct PrebuiltErrors {
    std::exception_ptr closed =
        std::make_exception_ptr(std::system_error(EBADF, std::system_category(), "close"));
    std::exception_ptr future_destroyed =
        std::make_exception_ptr(std::logic_error("xiio::Future destroyed while a task awaited it"));
    std::exception_ptr deadlock = std::make_exception_ptr(std::logic_error(deadlock_message));
};
/// Throws std::bad_alloc the first time only.
inline const PrebuiltErrors& prebuilt_errors() {
    static const PrebuiltErrors errors;
    return errors;
}

/// Calls `f` until it does not fail with EINTR.
template <class F>
auto retry_eintr(F f) {
    for (;;) {
        auto r = f();
        if (r != -1 || errno != EINTR)
            return r;
    }
}

} // namespace detail
} // namespace xiio
