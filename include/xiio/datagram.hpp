#pragma once
// Datagram sockets: DatagramSocket, UDP (IPv4, IPv6) or Unix datagrams.
//
// Like Socket, a DatagramSocket owns an Fd (non-blocking, close-on-exec, registered with
// the loop for its life), and recv_from/send_to are FdOp leaves: tried at once, waited
// for on EAGAIN. A cancelled recv_from took nothing: the datagram stays queued.
//
// Truncation: a datagram longer than the buffer is never delivered cut short in silence.
// The receive asks the kernel for the datagram's real length (MSG_TRUNC); if it did not
// fit, the receive throws std::system_error(EMSGSIZE) naming both sizes. The datagram is
// consumed then (as the kernel does), so size buffers for the largest datagram expected
// (65507 bytes is the most UDP over IPv4 carries).

#include <xiio/address.hpp>
#include <xiio/net.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include <sys/socket.h>
#include <unistd.h>

namespace xiio {

namespace detail {

/// recvfrom (From) or recv of one datagram, with the truncation check.
template <bool From>
class [[nodiscard]] BasicDatagramRecvOp
    : public FdOp<BasicDatagramRecvOp<From>,
                  std::conditional_t<From, std::pair<std::size_t, Address>, std::size_t>, READ> {
    using Result = std::conditional_t<From, std::pair<std::size_t, Address>, std::size_t>;
    using Base = FdOp<BasicDatagramRecvOp<From>, Result, READ>;

public:
    BasicDatagramRecvOp(FdRef fd, std::span<char> buf) noexcept : Base(fd), buf_(buf) {}
    BasicDatagramRecvOp(BasicDatagramRecvOp&& o) noexcept : Base(std::move(o)), buf_(o.buf_) {}
    ssize_t call() noexcept {
        len_ = sizeof from_;
        return ::recvfrom(this->ref_.fd, buf_.data(), buf_.size(), MSG_TRUNC,
                          From ? reinterpret_cast<sockaddr*>(&from_) : nullptr,
                          From ? &len_ : nullptr);
    }
    Result await_resume() {
        std::size_t n = this->finish(From ? "recvfrom" : "recv");
        if (n > buf_.size())
            throw std::system_error(EMSGSIZE, std::system_category(),
                                    std::string(From ? "recvfrom" : "recv") + ": a datagram of " +
                                        std::to_string(n) + " bytes does not fit in " +
                                        std::to_string(buf_.size()));
        if constexpr (From)
            return {n, Address::from_native(reinterpret_cast<const sockaddr*>(&from_), len_)};
        else
            return n;
    }

private:
    std::span<char> buf_;
    sockaddr_storage from_{};
    socklen_t len_ = 0;
};

/// sendto of one datagram; the address is copied in (a temporary Address never dangles),
/// the data borrowed.
class [[nodiscard]] SendToOp : public FdOp<SendToOp, std::size_t, WRITE> {
public:
    SendToOp(FdRef fd, std::string_view data, const Address& to) noexcept
        : FdOp(fd), data_(data), to_(to) {}
    SendToOp(SendToOp&& o) noexcept : FdOp(std::move(o)), data_(o.data_), to_(o.to_) {}
    ssize_t call() noexcept {
        return ::sendto(ref_.fd, data_.data(), data_.size(), MSG_NOSIGNAL, to_.native(),
                        to_.native_size());
    }
    std::size_t await_resume() { return finish("sendto"); }

private:
    std::string_view data_;
    Address to_;
};

inline Fd datagram_socket(int family) {
    int s = ::socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0)
        throw_errno("socket");
    Fd fd(s);
    fd.state().nonblocking = true;
    return fd;
}

} // namespace detail

/// A datagram socket (UDP over IPv4 or IPv6, or Unix datagrams). RAII, non-blocking,
/// move-only.
class DatagramSocket {
public:
    DatagramSocket() noexcept = default;
    DatagramSocket(DatagramSocket&& o) noexcept
        : fd_(std::move(o.fd_)), path_(std::exchange(o.path_, {})) {}
    DatagramSocket& operator=(DatagramSocket&& o) noexcept {
        if (this != &o) {
            close();
            fd_ = std::move(o.fd_);
            path_ = std::exchange(o.path_, {});
        }
        return *this;
    }
    ~DatagramSocket() { close(); }

    /// A UDP socket bound to a numeric address (or "localhost", meaning 127.0.0.1); port 0
    /// picks a free port (see local()). Throws std::invalid_argument (not numeric),
    /// std::system_error ("bind 127.0.0.1:53: ...").
    static DatagramSocket udp(std::string host, std::uint16_t port) {
        Address a = detail::ip_address(host, port);
        DatagramSocket d;
        d.fd_ = detail::datagram_socket(a.family());
        if (::bind(d.fd_.get(), a.native(), a.native_size()) < 0)
            detail::throw_net("bind " + a.to_string(), errno);
        return d;
    }

    /// A Unix datagram socket bound to `path`, which is unlinked when the socket is closed.
    /// Throws std::invalid_argument (empty or too long path), std::system_error.
    static DatagramSocket unix_datagram(std::string path) {
        Address a = Address::unix_path(path);
        DatagramSocket d;
        d.fd_ = detail::datagram_socket(AF_UNIX);
        if (::bind(d.fd_.get(), a.native(), a.native_size()) < 0)
            detail::throw_net("bind " + a.to_string(), errno);
        d.path_ = std::move(path);
        return d;
    }

    /// Receives one datagram into `buffer`: its size and its sender. A datagram that does
    /// not fit throws std::system_error(EMSGSIZE) (see the header's comment).
    detail::BasicDatagramRecvOp<true> recv_from(std::span<char> buffer) const {
        return {fd_, buffer};
    }
    /// Sends `data` (borrowed: keep it alive until the send is done) as one datagram to
    /// `to` (copied). Returns the bytes sent: all of them.
    detail::SendToOp send_to(std::string_view data, const Address& to) const {
        return {fd_, data, to};
    }

    /// Sets the default peer (connect(2) of a datagram socket: immediate, no handshake);
    /// then send() and recv() need no address, and only that peer's datagrams arrive.
    /// Throws std::system_error ("connect [::1]:53: ...").
    void connect(const Address& peer) {
        if (::connect(fd_.get(), peer.native(), peer.native_size()) < 0)
            detail::throw_net("connect " + peer.to_string(), errno);
    }
    /// One datagram to the connected peer (an unconnected socket: EDESTADDRREQ).
    detail::SendOp send(std::string_view data) const { return detail::SendOp(fd_, data); }
    /// One datagram from the connected peer; too big for `buffer`: EMSGSIZE.
    detail::BasicDatagramRecvOp<false> recv(std::span<char> buffer) const { return {fd_, buffer}; }

    /// The bound address (getsockname): the real port after port 0.
    Address local() const { return detail::query_address(fd_.get(), ::getsockname, "getsockname"); }

    /// Closes now (unlinking a Unix socket's path); the destructor does it too.
    void close() noexcept {
        fd_.close();
        if (!path_.empty())
            ::unlink(std::exchange(path_, {}).c_str());
    }
    int fd() const noexcept { return fd_.get(); }
    explicit operator bool() const noexcept { return static_cast<bool>(fd_); }

private:
    Fd fd_;
    std::string path_;
};

} // namespace xiio
