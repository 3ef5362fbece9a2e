#pragma once
// Sockets: Socket (a connected stream socket), Listener (TCP or Unix), connect_tcp,
// connect_unix.
//
// A Socket owns an xiio::Fd, so it is non-blocking and keeps its epoll registration for
// its life; recv/send/accept are FdOp leaves (tried at once, waited for on EAGAIN).
// Addresses are NUMERIC only (IPv4 "127.0.0.1", IPv6 "::1" or "[::1]"), plus "localhost",
// which means 127.0.0.1: no name resolution, so nothing can block the loop. Resolve names
// yourself (e.g. getaddrinfo in xiio::in_thread) and pass the numeric address.
// TCP sockets get TCP_NODELAY (accepted and connected); listeners set SO_REUSEADDR.
// send uses MSG_NOSIGNAL: a peer that is gone (or shutdown_write()) gives
// std::system_error(EPIPE), never SIGPIPE. Errors are std::system_error whose what()
// starts with the call's name; connect and bind errors name the address
// ("connect 127.0.0.1:1234: Connection refused").

#include <xiio/detail/std_parts.hpp>
#include <xiio/detail/sys.hpp>
#include <xiio/io.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace xiio {

class Socket;

namespace detail {

[[noreturn]] inline void throw_net(const std::string& what, int err) {
    throw std::system_error(err, std::system_category(), what);
}

/// A parsed numeric address.
struct SockAddr {
    sockaddr_storage storage{};
    socklen_t len = 0;
    int family = AF_UNSPEC;
    std::string text; // "127.0.0.1:80", "[::1]:80" or the Unix path

    const sockaddr* get() const noexcept { return reinterpret_cast<const sockaddr*>(&storage); }
};

inline SockAddr ip_address(std::string host, std::uint16_t port) {
    SockAddr a;
    if (host == "localhost")
        host = "127.0.0.1";
    std::string bare = host;
    if (bare.size() >= 2 && bare.front() == '[' && bare.back() == ']')
        bare = bare.substr(1, bare.size() - 2);
    auto* v4 = reinterpret_cast<sockaddr_in*>(&a.storage);
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
    if (::inet_pton(AF_INET, bare.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        a.len = sizeof(sockaddr_in);
        a.family = AF_INET;
        a.text = bare + ":" + std::to_string(port);
    } else if (::inet_pton(AF_INET6, bare.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        a.len = sizeof(sockaddr_in6);
        a.family = AF_INET6;
        a.text = "[" + bare + "]:" + std::to_string(port);
    } else {
        throw std::invalid_argument("xiio: not a numeric IPv4 or IPv6 address (names are not "
                                    "resolved, except localhost): " +
                                    host);
    }
    return a;
}

inline SockAddr unix_address(const std::string& path) {
    SockAddr a;
    auto* un = reinterpret_cast<sockaddr_un*>(&a.storage);
    if (path.empty() || path.size() >= sizeof(un->sun_path))
        throw std::invalid_argument("xiio: bad Unix socket path: " + path);
    un->sun_family = AF_UNIX;
    std::memcpy(un->sun_path, path.c_str(), path.size() + 1);
    a.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
    a.family = AF_UNIX;
    a.text = path;
    return a;
}

/// A new non-blocking, close-on-exec stream socket, owned.
inline Fd stream_socket(int family) {
    int s = sys::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0)
        throw_errno("socket");
    Fd fd(s);
    fd.state().nonblocking = true; // saves the fcntl on first I/O
    return fd;
}

inline void set_nodelay(int fd) noexcept {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

class RecvOp : public FdOp<RecvOp, std::size_t, READ> {
public:
    RecvOp(FdRef fd, std::span<char> buf) noexcept : FdOp(fd), buf_(buf) {}
    ssize_t call() noexcept { return sys::recv(ref_.fd, buf_.data(), buf_.size(), 0); }
    std::size_t await_resume() { return finish("recv"); }

private:
    std::span<char> buf_;
};

/// One send(); Keep: Borrowed, or the owned rvalue's type (see WriteData in io.hpp).
template <class Keep>
class BasicSendOp : public FdOp<BasicSendOp<Keep>, std::size_t, WRITE> {
    using Base = FdOp<BasicSendOp<Keep>, std::size_t, WRITE>;

public:
    BasicSendOp(FdRef fd, ConstBytes data) noexcept
        requires(std::is_same_v<Keep, Borrowed>)
        : Base(fd), data_(data) {}
    BasicSendOp(FdRef fd, WriteData<Keep>&& data) noexcept(
        std::is_nothrow_move_constructible_v<WriteData<Keep>>)
        : Base(fd), data_(std::move(data)) {}
    ssize_t call() noexcept {
        return sys::send(this->ref_.fd, data_.view.data, data_.view.size, MSG_NOSIGNAL);
    }
    std::size_t await_resume() { return this->finish("send"); }

private:
    WriteData<Keep> data_;
};
using SendOp = BasicSendOp<Borrowed>;

/// Socket::send/send_all's data beyond std::string_view: an owned rvalue (kept by the
/// awaitable), or a view that converts to ConstBytes but not to std::string_view (a
/// std::vector<char> lvalue, a std::span<const std::byte>), borrowed.
template <class B>
concept OtherWriteData = OwnedWriteData<B> || (!std::is_convertible_v<B&&, std::string_view> &&
                                               std::is_convertible_v<B&&, ConstBytes>);

/// The WriteData of such `data`: owned if it is an OwnedWriteData, else a view of it.
template <class B>
WriteData<keep_t<B>> write_data(B&& data) noexcept(nothrow_write_data_v<B>) {
    if constexpr (OwnedWriteData<B>)
        return WriteData<keep_t<B>>(std::in_place, std::forward<B>(data));
    else
        return WriteData<Borrowed>(ConstBytes(std::forward<B>(data)));
}

class AcceptOp;

} // namespace detail

/// A connected stream socket (TCP or Unix). RAII, non-blocking, move-only.
class Socket {
public:
    Socket() noexcept = default;
    explicit Socket(Fd fd) noexcept : fd_(std::move(fd)) { fd_.state().nonblocking = true; }

    // Making an awaitable inside a task claims the socket's registration for the loop
    // (see FdRef): recv, send, send_all and accept may throw std::bad_alloc there.

    /// One successful recv(): the number of bytes received, 0 once the peer closed.
    detail::RecvOp recv(std::span<char> buffer) const { return detail::RecvOp(fd_, buffer); }
    /// One successful send(): the number of bytes sent (maybe fewer than given).
    /// `data` is borrowed (zero-copy; keep it alive until the send is done) unless it is
    /// an rvalue that owns its bytes, which the awaitable takes over (as writeall does).
    detail::SendOp send(std::string_view data) const { return detail::SendOp(fd_, data); }
    /// send() of an owned rvalue (kept by the awaitable: `send(std::string(...))` passed to
    /// add_task never dangles), or of other write data (std::vector<char>, std::span of
    /// std::byte), borrowed.
    template <class B>
        requires detail::OtherWriteData<B>
    detail::BasicSendOp<detail::keep_t<B>> send(B&& data) const {
        return {fd_, detail::write_data(std::forward<B>(data))};
    }
    /// Sends all of `data` (a light awaitable, like writeall; converts to Task<void>).
    /// Borrowed or owned as for send(): `tg.add_task(s.send_all(std::string(...)))` is safe.
    detail::WriteAllOp send_all(std::string_view data) const {
        return detail::WriteAllOp(fd_, data, true);
    }
    template <class B>
        requires detail::OtherWriteData<B>
    detail::BasicWriteAllOp<detail::keep_t<B>> send_all(B&& data) const {
        return {fd_, detail::write_data(std::forward<B>(data)), true};
    }
    /// Half-closes: the peer reads end of stream; later sends throw EPIPE.
    void shutdown_write() {
        if (::shutdown(fd_.get(), SHUT_WR) < 0)
            detail::throw_errno("shutdown");
    }
    /// Closes now (the destructor does it too).
    void close() noexcept { fd_.close(); }

    int fd() const noexcept { return fd_.get(); }
    explicit operator bool() const noexcept { return static_cast<bool>(fd_); }

private:
    Fd fd_;
};

namespace detail {

class AcceptOp : public FdOp<AcceptOp, Socket, READ> {
public:
    AcceptOp(FdRef fd, bool tcp) noexcept : FdOp(fd), tcp_(tcp) {}
    AcceptOp(AcceptOp&& o) noexcept : FdOp(std::move(o)), tcp_(o.tcp_) {}
    ~AcceptOp() {
        if (accepted_ >= 0) // accepted, but the task was torn down before it resumed
            ::close(accepted_);
    }
    ssize_t call() noexcept {
        int s = sys::accept4(ref_.fd, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (s >= 0)
            accepted_ = s;
        return s;
    }
    Socket await_resume() {
        finish("accept");
        Fd fd(std::exchange(accepted_, -1));
        if (tcp_)
            set_nodelay(fd.get());
        return Socket(std::move(fd));
    }

private:
    bool tcp_;
    int accepted_ = -1;
};

} // namespace detail

/// A listening socket (TCP or Unix). RAII, move-only.
class Listener {
public:
    Listener() noexcept = default;
    Listener(Listener&& o) noexcept
        : fd_(std::move(o.fd_)), port_(o.port_), path_(std::exchange(o.path_, {})) {}
    Listener& operator=(Listener&& o) noexcept {
        if (this != &o) {
            close();
            fd_ = std::move(o.fd_);
            port_ = o.port_;
            path_ = std::exchange(o.path_, {});
        }
        return *this;
    }
    ~Listener() { close(); }

    /// Listens on a numeric address (or "localhost"); port 0 picks a free port (see
    /// port()). SO_REUSEADDR is set.
    static Listener tcp(std::string host, std::uint16_t port, int backlog = 128) {
        detail::SockAddr a = detail::ip_address(std::move(host), port);
        Listener l;
        l.fd_ = detail::stream_socket(a.family);
        int one = 1;
        ::setsockopt(l.fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (::bind(l.fd_.get(), a.get(), a.len) < 0)
            detail::throw_net("bind " + a.text, errno);
        if (::listen(l.fd_.get(), backlog) < 0)
            detail::throw_errno("listen");
        sockaddr_storage bound{};
        socklen_t len = sizeof bound;
        if (::getsockname(l.fd_.get(), reinterpret_cast<sockaddr*>(&bound), &len) < 0)
            detail::throw_errno("getsockname");
        l.port_ = ntohs(a.family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                            : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
        return l;
    }

    /// Listens on a Unix socket at `path`, which is unlinked when the listener goes.
    static Listener unix_socket(std::string path, int backlog = 128) {
        detail::SockAddr a = detail::unix_address(path);
        Listener l;
        l.fd_ = detail::stream_socket(AF_UNIX);
        if (::bind(l.fd_.get(), a.get(), a.len) < 0)
            detail::throw_net("bind " + a.text, errno);
        l.path_ = std::move(path);
        if (::listen(l.fd_.get(), backlog) < 0)
            detail::throw_errno("listen");
        return l;
    }

    /// The bound TCP port; 0 for a Unix socket.
    std::uint16_t port() const noexcept { return port_; }
    int fd() const noexcept { return fd_.get(); }

    /// Waits for and accepts one connection (TCP_NODELAY set on TCP ones). Making it may
    /// throw std::bad_alloc (see Socket::recv).
    detail::AcceptOp accept() const { return detail::AcceptOp(fd_, path_.empty()); }

    /// Closes the socket and unlinks a Unix socket's path.
    void close() noexcept {
        fd_.close();
        if (!path_.empty())
            ::unlink(std::exchange(path_, {}).c_str());
    }

private:
    Fd fd_;
    std::uint16_t port_ = 0;
    std::string path_;
};

namespace detail {

template <class = detail::OnlyWhereUsed>
Task<Socket> connect_to(SockAddr a) {
    Fd fd = stream_socket(a.family);
    if (a.family != AF_UNIX)
        set_nodelay(fd.get());
    // A non-blocking AF_UNIX connect fails with EAGAIN while the listener's backlog is full
    // (a blocking one would sleep until there is room), and no readiness event announces
    // room: retry after a pause that grows from 1 ms to 50 ms. The socket stays unconnected
    // after EAGAIN, so the same one connects again. Not for TCP, where EAGAIN means no free
    // local port, which waiting does not cure.
    int err = 0;
    for (auto pause = std::chrono::milliseconds(1);;
         pause = std::min(pause * 2, std::chrono::milliseconds(50))) {
        err = ::connect(fd.get(), a.get(), a.len) < 0 ? errno : 0;
        if (err != EAGAIN || a.family != AF_UNIX)
            break;
        co_await xiio::sleep(pause);
    }
    if (err) {
        if (err != EINPROGRESS && err != EINTR)
            throw_net("connect " + a.text, err);
        co_await wait_writable(fd);
        err = 0;
        socklen_t len = sizeof err;
        if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            throw_errno("getsockopt");
        if (err)
            throw_net("connect " + a.text, err);
    }
    co_return Socket(std::move(fd));
}

} // namespace detail

/// Connects to a numeric address (or "localhost") without blocking the loop.
/// A non-numeric host throws std::invalid_argument (at the co_await); a failed connect
/// throws std::system_error naming the address ("connect 127.0.0.1:80: Connection
/// refused"). A cancellation point while the connection is in progress.
template <class = detail::OnlyWhereUsed>
Task<Socket> connect_tcp(std::string host, std::uint16_t port) {
    co_return co_await detail::connect_to(detail::ip_address(std::move(host), port));
}

/// Connects to a Unix socket. While the listener's backlog is full it retries (pausing 1 ms,
/// doubling up to 50 ms) until there is room, as a blocking connect would wait: bound it
/// with a timeout if the server may never accept. A cancellation point (the pauses).
/// Throws std::invalid_argument for a path that is empty or too long, std::system_error
/// naming the path for any other failure ("connect /run/x.sock: No such file or
/// directory").
template <class = detail::OnlyWhereUsed>
Task<Socket> connect_unix(std::string path) {
    co_return co_await detail::connect_to(detail::unix_address(path));
}

} // namespace xiio
