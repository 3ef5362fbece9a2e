#pragma once
// Socket addresses: Address, a value type for an IPv4, IPv6 or Unix socket address.
//
// Parsing is numeric only (inet_pton): it never resolves a name, so it never blocks and
// never touches the network (resolve() in xiio/net.hpp does names, off the loop). The
// text forms are the ones to_string() writes, so parse(a.to_string()) == a:
//   "127.0.0.1"  "127.0.0.1:80"   IPv4, with the port argument or the one in the text
//   "::1"  "[::1]"  "[::1]:80"     IPv6 (a bare "::1" has no port part: colons are its own)
//   "/run/x.sock"                  a Unix socket path (anything starting with '/')
// Anything else (a name, "localhost", an empty string, a port above 65535) is a
// std::invalid_argument whose what() quotes the text.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

namespace xiio {

/// An IPv4, IPv6 or Unix socket address: a sockaddr_storage and its length. A value type
/// (copyable, comparable); Address() is empty (family AF_UNSPEC).
class Address {
public:
    Address() noexcept = default;

    /// Parses a numeric address (see the forms above); `port` applies when the text has
    /// no port of its own. Throws std::invalid_argument naming the text.
    static Address parse(std::string_view text, std::uint16_t port = 0) {
        Address a;
        if (text.starts_with('/'))
            return unix_path(text);
        std::string host(text);
        std::uint32_t p = port;
        auto bad = [&]() -> std::invalid_argument {
            return std::invalid_argument("xiio: not a numeric IPv4, IPv6 or Unix address: \"" +
                                         std::string(text) + "\"");
        };
        auto parse_port = [&](std::string_view digits) {
            if (digits.empty() || digits.size() > 5)
                throw bad();
            p = 0;
            for (char c : digits) {
                if (c < '0' || c > '9')
                    throw bad();
                p = p * 10 + static_cast<std::uint32_t>(c - '0');
            }
            if (p > 65535)
                throw bad();
        };
        bool v6_only = false;
        if (host.starts_with('[')) { // "[v6]" or "[v6]:port"
            auto close = host.find(']');
            if (close == std::string::npos)
                throw bad();
            std::string rest = host.substr(close + 1);
            host = host.substr(1, close - 1);
            if (!rest.empty()) {
                if (rest[0] != ':')
                    throw bad();
                parse_port(std::string_view(rest).substr(1));
            }
            v6_only = true;
        } else if (auto colon = host.find(':');
                   colon != std::string::npos && host.find(':', colon + 1) == std::string::npos) {
            parse_port(std::string_view(host).substr(colon + 1)); // "v4:port"
            host.resize(colon);
        }
        auto* v4 = reinterpret_cast<sockaddr_in*>(&a.storage_);
        auto* v6 = reinterpret_cast<sockaddr_in6*>(&a.storage_);
        if (!v6_only && ::inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
            v4->sin_family = AF_INET;
            v4->sin_port = htons(static_cast<std::uint16_t>(p));
            a.len_ = sizeof(sockaddr_in);
        } else if (::inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
            v6->sin6_family = AF_INET6;
            v6->sin6_port = htons(static_cast<std::uint16_t>(p));
            a.len_ = sizeof(sockaddr_in6);
        } else {
            throw bad();
        }
        return a;
    }

    /// A Unix socket address. Throws std::invalid_argument for an empty path or one too
    /// long for sockaddr_un (107 bytes).
    static Address unix_path(std::string_view path) {
        Address a;
        auto* un = reinterpret_cast<sockaddr_un*>(&a.storage_);
        if (path.empty() || path.size() >= sizeof(un->sun_path) ||
            path.find('\0') != std::string_view::npos)
            throw std::invalid_argument("xiio: bad Unix socket path: \"" + std::string(path) +
                                        "\"");
        un->sun_family = AF_UNIX;
        std::memcpy(un->sun_path, path.data(), path.size());
        a.len_ = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
        return a;
    }

    /// Copies a sockaddr the kernel filled in (getpeername, recvfrom, getaddrinfo).
    /// Throws std::invalid_argument if `len` exceeds sockaddr_storage.
    static Address from_native(const sockaddr* addr, socklen_t len) {
        Address a;
        if (len > sizeof a.storage_)
            throw std::invalid_argument("xiio: sockaddr too long");
        std::memcpy(&a.storage_, addr, len);
        a.len_ = len;
        return a;
    }

    /// AF_INET, AF_INET6, AF_UNIX, or AF_UNSPEC for an empty Address.
    int family() const noexcept { return len_ ? storage_.ss_family : AF_UNSPEC; }
    /// The port of an IP address; 0 for a Unix or empty one.
    std::uint16_t port() const noexcept {
        switch (family()) {
        case AF_INET:
            return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
        case AF_INET6:
            return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
        default:
            return 0;
        }
    }
    /// "127.0.0.1:80", "[::1]:80", "/tmp/s.sock"; an unnamed Unix socket (an unbound
    /// peer) is "", an abstract one "@name"; an empty Address is "".
    std::string to_string() const {
        char buf[INET6_ADDRSTRLEN] = {};
        switch (family()) {
        case AF_INET:
            ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage_)->sin_addr, buf,
                        sizeof buf);
            return std::string(buf) + ":" + std::to_string(port());
        case AF_INET6:
            ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_addr, buf,
                        sizeof buf);
            return "[" + std::string(buf) + "]:" + std::to_string(port());
        case AF_UNIX: {
            const auto* un = reinterpret_cast<const sockaddr_un*>(&storage_);
            std::size_t n = len_ - offsetof(sockaddr_un, sun_path);
            if (len_ <= offsetof(sockaddr_un, sun_path) || n == 0)
                return "";
            if (un->sun_path[0] == '\0') // abstract namespace: the name is the bytes after NUL
                return "@" + std::string(un->sun_path + 1, n - 1);
            return std::string(un->sun_path, ::strnlen(un->sun_path, n));
        }
        default:
            return "";
        }
    }

    /// The sockaddr, for system calls.
    const sockaddr* native() const noexcept { return reinterpret_cast<const sockaddr*>(&storage_); }
    /// Its length in bytes (0 for an empty Address).
    socklen_t native_size() const noexcept { return len_; }

    /// Same family, address and port (IPv6: and scope id), or same Unix path.
    friend bool operator==(const Address& a, const Address& b) noexcept {
        if (a.family() != b.family())
            return false;
        switch (a.family()) {
        case AF_INET: {
            const auto* x = reinterpret_cast<const sockaddr_in*>(&a.storage_);
            const auto* y = reinterpret_cast<const sockaddr_in*>(&b.storage_);
            return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
        }
        case AF_INET6: {
            const auto* x = reinterpret_cast<const sockaddr_in6*>(&a.storage_);
            const auto* y = reinterpret_cast<const sockaddr_in6*>(&b.storage_);
            return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
                   std::memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
        }
        case AF_UNIX:
            return a.to_string() == b.to_string();
        default:
            return true; // both empty
        }
    }

private:
    sockaddr_storage storage_{};
    socklen_t len_ = 0;
};

namespace detail {

/// An IP address for binding and for numeric connects: Address::parse, plus "localhost",
/// which means 127.0.0.1 there (binding and Listener::tcp never resolve names).
inline Address ip_address(std::string_view host, std::uint16_t port) {
    if (host == "localhost")
        host = "127.0.0.1";
    Address a = Address::parse(host, port);
    if (a.family() == AF_UNIX)
        throw std::invalid_argument("xiio: not a numeric IPv4 or IPv6 address: \"" +
                                    std::string(host) + "\"");
    return a;
}

/// The address a socket call filled in; throws std::system_error naming `call`.
template <class Call>
Address query_address(int fd, Call call, const char* name) {
    sockaddr_storage s{};
    socklen_t len = sizeof s;
    if (call(fd, reinterpret_cast<sockaddr*>(&s), &len) < 0)
        throw std::system_error(errno, std::system_category(), name);
    return Address::from_native(reinterpret_cast<sockaddr*>(&s), len);
}

} // namespace detail

} // namespace xiio
