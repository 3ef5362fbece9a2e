#pragma once
// Sockets: Socket (a connected stream socket), Listener (TCP or Unix), resolve,
// connect_tcp (with Happy Eyeballs for names), connect_unix. Addresses: xiio/address.hpp.
//
// A Socket owns an xiio::Fd, so it is non-blocking and keeps its epoll registration for
// its life; recv/send/accept are FdOp leaves (tried at once, waited for on EAGAIN).
// Binding (Listener::tcp) takes numeric addresses only (IPv4 "127.0.0.1", IPv6 "::1" or
// "[::1]"), plus "localhost", which means 127.0.0.1 there. connect_tcp takes names too:
// resolve() runs getaddrinfo on the thread pool, so nothing blocks the loop.
// TCP sockets get TCP_NODELAY (accepted and connected); listeners set SO_REUSEADDR.
// send uses MSG_NOSIGNAL: a peer that is gone (or shutdown_write()) gives
// std::system_error(EPIPE), never SIGPIPE. Errors are std::system_error whose what()
// starts with the call's name; connect and bind errors name the address
// ("connect 127.0.0.1:1234: Connection refused").

#include <xiio/address.hpp>
#include <xiio/detail/std_parts.hpp>
#include <xiio/detail/sys.hpp>
#include <xiio/io.hpp>
#include <xiio/multiplex.hpp>
#include <xiio/threads.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <netdb.h>
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

class [[nodiscard]] RecvOp : public FdOp<RecvOp, std::size_t, READ> {
public:
    RecvOp(FdRef fd, std::span<char> buf) noexcept : FdOp(fd), buf_(buf) {}
    ssize_t call() noexcept { return sys::recv(ref_.fd, buf_.data(), buf_.size(), 0); }
    IoCall io_call() const noexcept { return io_call_of(IORING_OP_RECV, buf_.data(), buf_.size()); }
    std::size_t await_resume() { return finish("recv"); }

private:
    std::span<char> buf_;
};

/// One send(); Keep: Borrowed, or the owned rvalue's type (see WriteData in io.hpp).
template <class Keep>
class [[nodiscard]] BasicSendOp : public FdOp<BasicSendOp<Keep>, std::size_t, WRITE> {
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
    IoCall io_call() const noexcept {
        return this->io_call_of(IORING_OP_SEND, data_.view.data, data_.view.size, MSG_NOSIGNAL);
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
namespace detail {
struct KnownNonBlocking {};
} // namespace detail

class Socket {
public:
    Socket() noexcept = default;
    /// Takes over a connected stream socket. It need not be non-blocking: the first
    /// awaitable made from it in a loop makes it so (one fcntl), as for any Fd.
    explicit Socket(Fd fd) noexcept : fd_(std::move(fd)) {}
    /// Plumbing (accept, connect): an fd made with SOCK_NONBLOCK, so no fcntl is needed.
    Socket(Fd fd, detail::KnownNonBlocking) noexcept : fd_(std::move(fd)) {
        fd_.state().nonblocking = true;
    }

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

    /// The peer's address (getpeername): for an accepted socket, the client. Throws
    /// std::system_error ("getpeername: ...", e.g. ENOTCONN once the peer reset).
    Address peer() const { return detail::query_address(fd_.get(), ::getpeername, "getpeername"); }
    /// This end's address (getsockname). Throws std::system_error.
    Address local() const { return detail::query_address(fd_.get(), ::getsockname, "getsockname"); }

    int fd() const noexcept { return fd_.get(); }
    explicit operator bool() const noexcept { return static_cast<bool>(fd_); }

private:
    Fd fd_;
};

namespace detail {

class [[nodiscard]] AcceptOp : public FdOp<AcceptOp, Socket, READ> {
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
        return Socket(std::move(fd), KnownNonBlocking{});
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

    /// Listens on a numeric address (or "localhost", meaning 127.0.0.1: binding never
    /// resolves names); port 0 picks a free port (see port()). SO_REUSEADDR is set, and
    /// SO_REUSEPORT if `reuse_port` (several listeners, in several processes or loops, on
    /// one port: the kernel spreads the connections).
    static Listener tcp(std::string host, std::uint16_t port, int backlog = SOMAXCONN,
                        bool reuse_port = false) {
        Address a = detail::ip_address(host, port);
        Listener l;
        l.fd_ = detail::stream_socket(a.family());
        int one = 1;
        ::setsockopt(l.fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (reuse_port && ::setsockopt(l.fd_.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
            detail::throw_errno("setsockopt SO_REUSEPORT");
        if (::bind(l.fd_.get(), a.native(), a.native_size()) < 0)
            detail::throw_net("bind " + a.to_string(), errno);
        if (::listen(l.fd_.get(), backlog) < 0)
            detail::throw_errno("listen");
        l.port_ = l.local().port();
        return l;
    }

    /// Listens on a Unix socket at `path`, which is unlinked when the listener goes.
    static Listener unix_socket(std::string path, int backlog = SOMAXCONN) {
        Address a = Address::unix_path(path);
        Listener l;
        l.fd_ = detail::stream_socket(AF_UNIX);
        if (::bind(l.fd_.get(), a.native(), a.native_size()) < 0)
            detail::throw_net("bind " + a.to_string(), errno);
        l.path_ = std::move(path);
        if (::listen(l.fd_.get(), backlog) < 0)
            detail::throw_errno("listen");
        return l;
    }

    /// The address it listens on (getsockname; throws std::system_error).
    Address local() const { return detail::query_address(fd_.get(), ::getsockname, "getsockname"); }
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
Task<Socket> connect_to(Address a) {
    Fd fd = stream_socket(a.family());
    if (a.family() != AF_UNIX)
        set_nodelay(fd.get());
    // A non-blocking AF_UNIX connect fails with EAGAIN while the listener's backlog is full
    // (a blocking one would sleep until there is room), and no readiness event announces
    // room: retry after a pause that grows from 1 ms to 50 ms. The socket stays unconnected
    // after EAGAIN, so the same one connects again. Not for TCP, where EAGAIN means no free
    // local port, which waiting does not cure.
    int err = 0;
    for (auto pause = std::chrono::milliseconds(1);;
         pause = std::min(pause * 2, std::chrono::milliseconds(50))) {
        err = ::connect(fd.get(), a.native(), a.native_size()) < 0 ? errno : 0;
        if (err != EAGAIN || a.family() != AF_UNIX)
            break;
        co_await xiio::sleep(pause);
    }
    if (err) {
        if (err != EINPROGRESS && err != EINTR)
            throw_net("connect " + a.to_string(), err);
        co_await wait_writable(fd);
        err = 0;
        socklen_t len = sizeof err;
        if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            throw_errno("getsockopt");
        if (err)
            throw_net("connect " + a.to_string(), err);
    }
    co_return Socket(std::move(fd), detail::KnownNonBlocking{});
}

} // namespace detail

/// The error category of getaddrinfo's EAI_* codes (negative numbers in glibc): message()
/// is gai_strerror's text. resolve() throws std::system_error with it (EAI_SYSTEM is
/// reported as the errno in std::system_category instead).
inline const std::error_category& gai_category() noexcept {
    struct Category : std::error_category {
        const char* name() const noexcept override { return "getaddrinfo"; }
        std::string message(int code) const override { return ::gai_strerror(code); }
    };
    static const Category category;
    return category;
}

namespace detail {

[[noreturn]] inline void throw_gai(const std::string& host, int code) {
    throw std::system_error(code, gai_category(), "resolve " + host);
}

/// RFC 6761 section 6.3: "localhost" and names under ".localhost" are the loopback
/// addresses, answered by the library itself (no /etc/hosts, no DNS, no thread).
inline bool is_localhost(std::string_view host) noexcept {
    if (host.ends_with('.')) // the absolute form "localhost."
        host.remove_suffix(1);
    auto lower_equal = [](std::string_view a, std::string_view b) {
        return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                          [](char x, char y) { return (x | 0x20) == y; });
    };
    return lower_equal(host, "localhost") ||
           (host.size() > 10 && lower_equal(host.substr(host.size() - 10), ".localhost"));
}

/// RFC 6761 section 6.4: ".invalid" never resolves, and libraries "SHOULD always return
/// immediately with a negative response": no lookup, so it fails fast offline too.
inline bool is_invalid_tld(std::string_view host) noexcept {
    if (host.ends_with('.'))
        host.remove_suffix(1);
    auto lower_equal = [](std::string_view a, std::string_view b) {
        return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                          [](char x, char y) { return (x | 0x20) == y; });
    };
    return lower_equal(host, "invalid") ||
           (host.size() > 8 && lower_equal(host.substr(host.size() - 8), ".invalid"));
}

/// The blocking lookup, on a pool thread. Owns its host (a copy): a cancelled resolve
/// returns at once while this runs on.
inline std::vector<Address> getaddrinfo_job(const std::string& host, std::uint16_t port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM; // one entry per address, not one per protocol
    // No AI_ADDRCONFIG: glibc ignores loopback when it checks for configured families,
    // so a host with only loopback IPv6 would lose every IPv6 answer.
    addrinfo* list = nullptr;
    int rc = sys::getaddrinfo(host.c_str(), nullptr, &hints, &list);
    if (rc == EAI_SYSTEM)
        throw std::system_error(errno, std::system_category(), "resolve " + host);
    if (rc != 0)
        throw_gai(host, rc);
    std::vector<Address> out;
    try {
        for (addrinfo* ai = list; ai; ai = ai->ai_next) {
            if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
                continue;
            Address a = Address::from_native(ai->ai_addr, ai->ai_addrlen);
            auto* s = const_cast<sockaddr*>(a.native()); // set the port
            if (a.family() == AF_INET)
                reinterpret_cast<sockaddr_in*>(s)->sin_port = htons(port);
            else
                reinterpret_cast<sockaddr_in6*>(s)->sin6_port = htons(port);
            if (std::find(out.begin(), out.end(), a) == out.end())
                out.push_back(a);
        }
    } catch (...) {
        ::freeaddrinfo(list);
        throw;
    }
    ::freeaddrinfo(list);
    if (out.empty())
        throw_gai(host, EAI_NODATA);
    return out;
}

} // namespace detail

/// The IPv4 and IPv6 addresses of `host`, with `port`, in getaddrinfo's order (RFC 6724
/// preference), without duplicates. A numeric host (Address::parse's IP forms) is
/// returned at once; "localhost" and "*.localhost" are [::1] and 127.0.0.1 and names
/// under ".invalid" fail at once (RFC 6761, no lookup); any other name is looked up by
/// getaddrinfo on in_thread's pool. A name that does not resolve: std::system_error in
/// gai_category() ("resolve nonexistent.invalid: Name or service not known").
/// A cancellation point: cancelled, it returns at once while the lookup runs on.
template <class = detail::OnlyWhereUsed>
Task<std::vector<Address>> resolve(std::string host, std::uint16_t port) {
    if (host.empty() || host.starts_with('/'))
        throw std::invalid_argument("xiio::resolve: not a host name: \"" + host + "\"");
    try {
        Address a = Address::parse(host, port);
        if (a.family() != AF_UNIX)
            co_return std::vector<Address>{a};
    } catch (const std::invalid_argument&) {
    }
    if (detail::is_localhost(host))
        co_return std::vector<Address>{Address::parse("::1", port),
                                       Address::parse("127.0.0.1", port)};
    if (detail::is_invalid_tld(host))
        detail::throw_gai(host, EAI_NONAME);
    auto job = [host, port] { return detail::getaddrinfo_job(host, port); };
    co_return co_await in_thread(job);
}

namespace detail {

/// RFC 8305 section 4: IPv6 first, then the families alternate (v6, v4, v6, ...), each
/// family keeping getaddrinfo's order.
inline std::vector<Address> interleave_families(const std::vector<Address>& addrs) {
    std::vector<Address> v6, v4, out;
    for (const Address& a : addrs)
        (a.family() == AF_INET6 ? v6 : v4).push_back(a);
    for (std::size_t i = 0; i < std::max(v6.size(), v4.size()); ++i) {
        if (i < v6.size())
            out.push_back(v6[i]);
        if (i < v4.size())
            out.push_back(v4[i]);
    }
    return out;
}

/// Happy Eyeballs: one attempt at a time, the next one started when the previous failed
/// or after `delay`; the first connection wins and cancels the rest (their sockets close).
template <class = detail::OnlyWhereUsed>
Task<Socket> race_connect(std::vector<Address> addrs, std::string name, Clock::duration delay) {
    Socket winner;
    std::vector<std::string> failures; // "[::1]:80 (Connection refused)", in order of failure
    std::error_code last_error;
    std::vector<std::unique_ptr<Future<>>> failed(addrs.size());
    // Out here, not in the group's body: attempts outlive the body's frame.
    auto attempt = [&](TaskGroup& tg, std::size_t i) -> Task<void> {
        try {
            Socket s = co_await connect_to(addrs[i]);
            if (!winner) {
                winner = std::move(s);
                tg.cancel(); // the others lost: their sockets close as they unwind
            }
        } catch (const std::system_error& e) {
            failures.push_back(addrs[i].to_string() + " (" + e.code().message() + ")");
            last_error = e.code();
            failed[i]->set_result(); // the next attempt starts at once
        }
    };
    auto body = [&](TaskGroup& tg) -> Task<void> {
        for (std::size_t i = 0; i < addrs.size(); ++i) {
            failed[i] = std::make_unique<Future<>>();
            tg.add_task(attempt(tg, i));
            if (i + 1 < addrs.size()) {
                Condition next{.futures = {failed[i].get()}, .time = Clock::now() + delay};
                co_await next;
            }
        }
    };
    co_await task_group(body);
    if (!winner) {
        std::string what = "connect " + name + ": every address failed: ";
        for (std::size_t i = 0; i < failures.size(); ++i)
            what += (i ? ", " : "") + failures[i];
        throw std::system_error(last_error, what);
    }
    co_return std::move(winner);
}

} // namespace detail

/// Connects to `host` (a numeric address or a name) without blocking the loop. A name is
/// resolved (see resolve()) and its addresses are raced by Happy Eyeballs (RFC 8305):
/// IPv6 first, families alternating, the next attempt started 250 ms after the previous
/// one or at once when it failed; the first connection wins and the other attempts are
/// cancelled and closed. Throws, at the co_await: what resolve() throws; for a single
/// address, std::system_error naming it ("connect 127.0.0.1:80: Connection refused"); when
/// several all failed, std::system_error (the last failure's code) whose what() lists each
/// address tried with its error. A cancellation point while resolving and connecting.
template <class = detail::OnlyWhereUsed>
Task<Socket> connect_tcp(std::string host, std::uint16_t port) {
    std::vector<Address> addrs = co_await resolve(host, port);
    if (addrs.size() == 1)
        co_return co_await detail::connect_to(addrs.front());
    co_return co_await detail::race_connect(detail::interleave_families(addrs),
                                            host + " port " + std::to_string(port),
                                            std::chrono::milliseconds(250));
}

/// Connects to a Unix socket. While the listener's backlog is full it retries (pausing 1 ms,
/// doubling up to 50 ms) until there is room, as a blocking connect would wait: bound it
/// with a timeout if the server may never accept. A cancellation point (the pauses).
/// Throws std::invalid_argument for a path that is empty or too long, std::system_error
/// naming the path for any other failure ("connect /run/x.sock: No such file or
/// directory").
template <class = detail::OnlyWhereUsed>
Task<Socket> connect_unix(std::string path) {
    co_return co_await detail::connect_to(Address::unix_path(path));
}

} // namespace xiio
