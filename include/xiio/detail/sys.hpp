#pragma once
// The syscall seam: the calls whose failures a task must survive go through here, so that
// tests can make them fail the way the kernel may (EINTR storms, EAGAIN after readiness,
// short reads and writes, EMFILE when creating an fd) and check that xiio either behaves
// correctly or throws a clear error, never hangs or leaks.
//
// Off by default: without XIIO_SYSCALL_SEAM each function is the plain syscall, inlined,
// so users pay nothing. The test build defines it and installs an Injector.

#include <cerrno>
#include <cstddef>
#include <ctime>

#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef XIIO_SYSCALL_SEAM
#include <atomic>
#endif

namespace xiio::detail::sys {

enum class Call {
    read,
    write,
    recv,
    send,
    accept,
    epoll_create,
    epoll_pwait2,
    epoll_wait,
    eventfd,
    fcntl,
    pipe,
    pidfd_open,
    signalfd,
    socket,
    spawn,
    getaddrinfo,
    io_uring_setup,
    io_uring_enter,
};

#ifdef XIIO_SYSCALL_SEAM
/// Decides, before each call, whether it fails: returns an errno to fail it without
/// calling the kernel, or 0 to let it through, possibly with `size` shortened (a short
/// read or write). `fd` is -1 for calls that create one. Called from any thread (the thread pool
/// posts through eventfds).
class Injector {
public:
    virtual ~Injector() = default;
    virtual int before(Call call, int fd, std::size_t& size) noexcept = 0;
};

inline std::atomic<Injector*>& injector() noexcept {
    static std::atomic<Injector*> current{nullptr};
    return current;
}

inline int fault(Call call, int fd, std::size_t& size) noexcept {
    Injector* i = injector().load(std::memory_order_acquire);
    return i ? i->before(call, fd, size) : 0;
}
#else
constexpr int fault(Call, int, std::size_t&) noexcept {
    return 0;
}
#endif

/// Fails like the kernel: -1 with errno set.
inline int failed(int err) noexcept {
    errno = err;
    return -1;
}

inline ssize_t read(int fd, void* buf, std::size_t n) noexcept {
    if (int e = fault(Call::read, fd, n))
        return failed(e);
    return ::read(fd, buf, n);
}
inline ssize_t write(int fd, const void* buf, std::size_t n) noexcept {
    if (int e = fault(Call::write, fd, n))
        return failed(e);
    return ::write(fd, buf, n);
}
inline ssize_t recv(int fd, void* buf, std::size_t n, int flags) noexcept {
    if (int e = fault(Call::recv, fd, n))
        return failed(e);
    return ::recv(fd, buf, n, flags);
}
inline ssize_t send(int fd, const void* buf, std::size_t n, int flags) noexcept {
    if (int e = fault(Call::send, fd, n))
        return failed(e);
    return ::send(fd, buf, n, flags);
}
inline int accept4(int fd, int flags) noexcept {
    std::size_t none = 0;
    if (int e = fault(Call::accept, fd, none))
        return failed(e);
    return ::accept4(fd, nullptr, nullptr, flags);
}
inline int epoll_create1(int flags) noexcept {
    std::size_t none = 0;
    if (int e = fault(Call::epoll_create, -1, none))
        return failed(e);
    return ::epoll_create1(flags);
}
inline int epoll_pwait2(int fd, epoll_event* events, int max, const timespec* timeout) noexcept {
    std::size_t none = 0;
    if (int e = fault(Call::epoll_pwait2, fd, none))
        return failed(e);
    return ::epoll_pwait2(fd, events, max, timeout, nullptr);
}
inline int epoll_wait(int fd, epoll_event* events, int max, int timeout_ms) noexcept {
    std::size_t none = 0;
    if (int e = fault(Call::epoll_wait, fd, none))
        return failed(e);
    return ::epoll_wait(fd, events, max, timeout_ms);
}
inline int eventfd(unsigned initial, int flags) noexcept {
    std::size_t none = 0;
    if (int e = fault(Call::eventfd, -1, none))
        return failed(e);
    return ::eventfd(initial, flags);
}
/// fcntl(fd, F_GETFL).
inline int fcntl_getfl(int fd) noexcept {
    std::size_t none = 0;
    if (int e = fault(Call::fcntl, fd, none))
        return failed(e);
    return ::fcntl(fd, F_GETFL);
}
inline int pipe2(int fds[2], int flags) noexcept {
    std::size_t none = 0;
    if (int e = fault(Call::pipe, -1, none))
        return failed(e);
    return ::pipe2(fds, flags);
}
inline int pidfd_open(pid_t pid) noexcept {
    std::size_t none = 0;
    if (int e = fault(Call::pidfd_open, -1, none))
        return failed(e);
    // glibc 2.36's <sys/pidfd.h> does not link from C++: call it by number.
    return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}
inline int signalfd(const sigset_t* set, int flags) noexcept {
    std::size_t none = 0;
    if (int e = fault(Call::signalfd, -1, none))
        return failed(e);
    return ::signalfd(-1, set, flags);
}
inline int socket(int family, int type, int protocol) noexcept {
    std::size_t none = 0;
    if (int e = fault(Call::socket, -1, none))
        return failed(e);
    return ::socket(family, type, protocol);
}
/// posix_spawn reports its error as the result, not in errno.
inline int posix_spawn(pid_t* pid, const char* path, const posix_spawn_file_actions_t* fa,
                       const posix_spawnattr_t* attr, char* const argv[],
                       char* const envp[]) noexcept {
    std::size_t none = 0;
    if (int e = fault(Call::spawn, -1, none))
        return e;
    return ::posix_spawn(pid, path, fa, attr, argv, envp);
}
/// io_uring_setup(2), by number (glibc has no wrapper). `params` is struct io_uring_params.
inline int io_uring_setup(unsigned entries, void* params) noexcept {
    std::size_t none = 0;
    if (int e = fault(Call::io_uring_setup, -1, none))
        return failed(e);
    return static_cast<int>(::syscall(SYS_io_uring_setup, entries, params));
}
/// io_uring_enter(2) with an extended argument (`arg`, `argsz`).
inline int io_uring_enter(int ring, unsigned to_submit, unsigned min_complete, unsigned flags,
                          const void* arg, std::size_t argsz) noexcept {
    std::size_t none = 0;
    if (int e = fault(Call::io_uring_enter, ring, none))
        return failed(e);
    return static_cast<int>(
        ::syscall(SYS_io_uring_enter, ring, to_submit, min_complete, flags, arg, argsz));
}
/// getaddrinfo reports its error as the result (EAI_*): an injected errno e becomes
/// EAI_SYSTEM with errno e. Called on a thread of the pool, which an Injector may hold
/// up (sleep in before()) to make a slow lookup without a network.
inline int getaddrinfo(const char* host, const char* service, const addrinfo* hints,
                       addrinfo** res) noexcept {
    std::size_t none = 0;
    if (int e = fault(Call::getaddrinfo, -1, none)) {
        errno = e;
        return EAI_SYSTEM;
    }
    return ::getaddrinfo(host, service, hints, res);
}

} // namespace xiio::detail::sys
