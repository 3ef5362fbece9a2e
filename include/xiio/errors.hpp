#pragma once
// Error types and the two helpers every OS call goes through.
//
// Error contract of xiio: an OS call that fails throws std::system_error carrying its errno,
// whose what() starts with the call's name ("epoll_ctl: Bad file descriptor"); EINTR is
// retried, never reported; misuse (nested run(), setting a future twice) throws
// std::logic_error; destructors never throw.

#include <cerrno>
#include <cstddef>
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
