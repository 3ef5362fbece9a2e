#pragma once
// TLS over a connected Socket: TlsContext (certificates, trust, ALPN), TlsStream (the
// encrypted stream), TlsError. Needs OpenSSL 3: link the CMake target xiio::tls, which
// brings OpenSSL::SSL; the rest of xiio never sees OpenSSL.
//
// OpenSSL runs non-blocking on the socket's own fd (SSL_set_fd): each call is tried at
// once, and on SSL_ERROR_WANT_READ / WANT_WRITE the task waits for the fd to be readable /
// writable through the loop, then retries. No thread per connection, no busy loop.
//
// Errors: a failure OpenSSL reports is a TlsError whose what() names the operation and
// carries OpenSSL's reason ("TLS connect: certificate verify failed (unable to get local
// issuer certificate)"); a peer that closes without close_notify is a TlsError
// ("TLS recv: unexpected eof while reading"), never a silent end of stream. An error of
// the socket itself (ECONNRESET, EPIPE) is std::system_error naming the operation, as for
// Socket. The thread's OpenSSL error queue is cleared before each call and emptied into
// the error thrown, so nothing leaks from one connection into another's message.
//
// Lifetimes: a TlsContext shares its SSL_CTX (reference counted) with every TlsStream
// made from it, so a stream may outlive the TlsContext object. A TlsStream owns its SSL
// object and its Socket: destroying it (or the frame of a cancelled connect/accept/recv/
// send/shutdown) frees both, at any point.
//
// Threads: configure a TlsContext (load_verify_file, set_alpn) before its first
// connect/accept; after that it may be used by loops on several threads at once (OpenSSL
// 3 allows a shared SSL_CTX that is no longer changed). A TlsStream belongs to the loop
// that made it; on it, one recv and one send (or send_all, shutdown) may run at once in
// two tasks.

#include <xiio/io.hpp>
#include <xiio/net.hpp>
#include <xiio/task.hpp>

#include <cerrno>
#include <cstddef>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <arpa/inet.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

namespace xiio {

/// A TLS failure reported by OpenSSL: what() names the operation and gives OpenSSL's
/// reason, plus the certificate verification result when verification failed.
class TlsError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace detail {

struct SslCtxFree {
    void operator()(SSL_CTX* c) const noexcept { SSL_CTX_free(c); }
};
struct SslFree {
    void operator()(SSL* s) const noexcept { SSL_free(s); }
};

/// Empties this thread's OpenSSL error queue before an SSL call, as SSL_get_error()
/// requires. ERR_clear_error() itself walks all 16 slots of the queue and frees each
/// slot's data whether or not it holds an error: about 2,000 instructions, called twice
/// per request it was a quarter of W7's overhead over the raw baseline. The queue is
/// almost always empty (tls_message() drains it), and peeking at it costs a few dozen.
inline void clear_tls_errors() noexcept {
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

/// `op: reason; reason (verify result)`, emptying this thread's OpenSSL error queue.
inline std::string tls_message(const std::string& op, SSL* ssl = nullptr) {
    std::string reasons;
    bool verify_failed = false;
    while (unsigned long code = ERR_get_error()) {
        if (ERR_GET_LIB(code) == ERR_LIB_SSL &&
            ERR_GET_REASON(code) == SSL_R_CERTIFICATE_VERIFY_FAILED)
            verify_failed = true;
        const char* r = ERR_reason_error_string(code);
        char buf[256];
        if (!r) {
            ERR_error_string_n(code, buf, sizeof buf);
            r = buf;
        }
        if (reasons.find(r) == std::string::npos)
            reasons += (reasons.empty() ? "" : "; ") + std::string(r);
    }
    if (reasons.empty())
        reasons = "unknown OpenSSL error";
    if (ssl && verify_failed) {
        long v = SSL_get_verify_result(ssl);
        if (v != X509_V_OK)
            reasons += std::string(" (") + X509_verify_cert_error_string(v) + ")";
    }
    return op + ": " + reasons;
}

[[noreturn]] inline void throw_tls(const std::string& op, SSL* ssl = nullptr) {
    throw TlsError(tls_message(op, ssl));
}

/// What to do after an SSL call that did not succeed.
enum class TlsNext { read, write };

/// Classifies SSL_get_error(): wait for reading or writing, or throw. `saved_errno` is the
/// errno right after the call. Allocates nothing unless it throws (it runs at every wait).
inline TlsNext tls_next(const char* op, SSL* ssl, int rc, int saved_errno) {
    switch (SSL_get_error(ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        return TlsNext::read;
    case SSL_ERROR_WANT_WRITE:
        return TlsNext::write;
    case SSL_ERROR_SYSCALL:
        if (saved_errno != 0) {
            clear_tls_errors();
            if (saved_errno == EPIPE)
                drain_sigpipe();
            throw std::system_error(saved_errno, std::system_category(), op);
        }
        if (ERR_peek_error() == 0) // OpenSSL 3 reports EOF as SSL_ERROR_SSL; in case not
            throw TlsError(std::string(op) + ": unexpected eof while reading");
        throw_tls(op, ssl);
    case SSL_ERROR_ZERO_RETURN:
        clear_tls_errors();
        throw TlsError(std::string(op) + ": the peer sent close_notify");
    default:
        throw_tls(op, ssl);
    }
}

/// The shared part of a TlsContext: the SSL_CTX and the server's ALPN preference list
/// (which the ALPN callback reads, so streams keep it alive with the SSL_CTX).
struct TlsContextState {
    std::unique_ptr<SSL_CTX, SslCtxFree> ctx;
    std::string alpn_wire; // length-prefixed protocol names, in order of preference

    static int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen,
                           const unsigned char* in, unsigned inlen, void* arg) {
        auto* self = static_cast<TlsContextState*>(arg);
        if (self->alpn_wire.empty())
            return SSL_TLSEXT_ERR_NOACK;
        unsigned char* chosen = nullptr;
        // The first protocol of OUR list that the client offers.
        int r = SSL_select_next_proto(
            &chosen, outlen, reinterpret_cast<const unsigned char*>(self->alpn_wire.data()),
            static_cast<unsigned>(self->alpn_wire.size()), in, inlen);
        if (r != OPENSSL_NPN_NEGOTIATED)
            return SSL_TLSEXT_ERR_NOACK; // no overlap: carry on without ALPN
        *out = chosen;
        return SSL_TLSEXT_ERR_OK;
    }
};

/// Everything a TlsStream owns, at a fixed address so that a running recv or send keeps
/// pointing at it while the TlsStream object is moved. The SSL object goes first (members
/// are destroyed in reverse), the socket's fd after it.
struct TlsStreamState {
    std::shared_ptr<TlsContextState> context;
    Socket socket;
    std::unique_ptr<SSL, SslFree> ssl;

    TlsStreamState(std::shared_ptr<TlsContextState> c, Socket s, const char* op)
        : context(std::move(c)), socket(std::move(s)) {
        if (!context)
            throw std::logic_error(std::string(op) + ": the TlsContext was moved from");
        if (!socket)
            throw std::invalid_argument(std::string(op) + ": the socket is not open");
        clear_tls_errors();
        ssl.reset(SSL_new(context->ctx.get()));
        if (!ssl)
            throw_tls(op);
        if (SSL_set_fd(ssl.get(), socket.fd()) != 1)
            throw_tls(op);
        // Claims the socket's loop registration (making an awaitable from the Socket does),
        // so the waits below on its int fd share it instead of registering each time.
        (void)socket.recv(std::span<char>());
    }

    /// Waits as OpenSSL asked; a cancellation point.
    Task<void> wait(TlsNext next) {
        if (next == TlsNext::read)
            co_await wait_readable(socket.fd());
        else
            co_await wait_writable(socket.fd());
    }

    Task<void> handshake(const char* op) { // op: a string literal
        for (;;) {
            clear_tls_errors();
            errno = 0;
            int rc = SSL_do_handshake(ssl.get());
            if (rc == 1)
                co_return;
            int err = errno;
            co_await wait(tls_next(op, ssl.get(), rc, err));
        }
    }
};

inline bool is_ip_literal(const std::string& s) {
    unsigned char buf[sizeof(in6_addr)];
    return ::inet_pton(AF_INET, s.c_str(), buf) == 1 || ::inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

} // namespace detail

/// TLS settings shared by many connections: an OpenSSL SSL_CTX. Move-only; the streams
/// made from it share the SSL_CTX, so they may outlive this object. TLS 1.2 at least.
class TlsContext {
public:
    TlsContext(TlsContext&&) noexcept = default;
    TlsContext& operator=(TlsContext&&) noexcept = default;

    /// A client context: trusts the system's CA store (SSL_CTX_set_default_verify_paths),
    /// verifies the server's certificate (SSL_VERIFY_PEER) and, in TlsStream::connect, its
    /// host name. Throws TlsError.
    static TlsContext client() {
        TlsContext c = make("TLS client context");
        SSL_CTX* ctx = c.native_handle();
        detail::clear_tls_errors();
        if (SSL_CTX_set_default_verify_paths(ctx) != 1)
            detail::throw_tls("TLS client context: system CA store");
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
        return c;
    }

    /// A server context presenting the PEM certificate chain (leaf first) and its PEM
    /// private key. Client certificates are not requested. Throws TlsError naming the
    /// file that cannot be used.
    static TlsContext server(std::string cert_chain_file, std::string key_file) {
        TlsContext c = make("TLS server context");
        SSL_CTX* ctx = c.native_handle();
        detail::clear_tls_errors();
        if (SSL_CTX_use_certificate_chain_file(ctx, cert_chain_file.c_str()) != 1)
            detail::throw_tls("TLS certificate chain " + cert_chain_file);
        if (SSL_CTX_use_PrivateKey_file(ctx, key_file.c_str(), SSL_FILETYPE_PEM) != 1)
            detail::throw_tls("TLS private key " + key_file);
        if (SSL_CTX_check_private_key(ctx) != 1)
            detail::throw_tls("TLS private key " + key_file);
        return c;
    }

    /// Also trusts the CA certificates of this PEM file. Throws TlsError.
    void load_verify_file(std::string ca_file) {
        detail::clear_tls_errors();
        if (SSL_CTX_load_verify_locations(native_handle(), ca_file.c_str(), nullptr) != 1)
            detail::throw_tls("TLS CA file " + ca_file);
    }

    /// ALPN protocols, in order of preference ("h2", "http/1.1"). A client offers them all;
    /// a server picks the first of ITS list that the client offers, and without overlap
    /// (or a client that offers none) the handshake goes on without ALPN (alpn() is
    /// empty). An empty list turns ALPN off. Names must be 1 to 255 bytes, else
    /// std::invalid_argument.
    void set_alpn(std::vector<std::string> protocols) {
        std::string wire;
        for (const std::string& p : protocols) {
            if (p.empty() || p.size() > 255)
                throw std::invalid_argument("TLS ALPN: a protocol name must be 1 to 255 bytes");
            wire += static_cast<char>(p.size());
            wire += p;
        }
        detail::clear_tls_errors();
        // SSL_CTX_set_alpn_protos returns 0 on success.
        if (SSL_CTX_set_alpn_protos(native_handle(),
                                    reinterpret_cast<const unsigned char*>(wire.data()),
                                    static_cast<unsigned>(wire.size())) != 0)
            detail::throw_tls("TLS ALPN");
        state_->alpn_wire = std::move(wire);
    }

    /// The SSL_CTX, for settings xiio does not wrap (client certificates, ciphers).
    SSL_CTX* native_handle() const noexcept { return state_->ctx.get(); }

private:
    friend class TlsStream;

    static TlsContext make(const char* op) {
        TlsContext c;
        c.state_ = std::make_shared<detail::TlsContextState>();
        detail::clear_tls_errors();
        c.state_->ctx.reset(SSL_CTX_new(TLS_method()));
        SSL_CTX* ctx = c.native_handle();
        if (!ctx)
            detail::throw_tls(op);
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        // Writes may end after one record (send returns what was sent), and a retried
        // write may come from a moved buffer (a coroutine's data lives where it lives).
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                  SSL_MODE_AUTO_RETRY);
        SSL_CTX_set_alpn_select_cb(ctx, &detail::TlsContextState::select_alpn, c.state_.get());
        // SSL_OP_IGNORE_UNEXPECTED_EOF is deliberately NOT set: a truncated stream is an error.
        return c;
    }

    TlsContext() = default;

    std::shared_ptr<detail::TlsContextState> state_;
};

/// An encrypted stream over a connected Socket, which it owns. Move-only.
class TlsStream {
public:
    TlsStream(TlsStream&&) noexcept = default;
    TlsStream& operator=(TlsStream&&) noexcept = default;

    /// The client side of a handshake on `s`: sends `server_name` as SNI (unless it is an
    /// IP address, which SNI does not carry) and checks that the server's certificate names
    /// it (a DNS name against the certificate's names, an IPv4/IPv6 address against its IP
    /// addresses), on top of the context's verification. A cancellation point; cancelled,
    /// the socket is closed. The certificate is always verified (SSL_VERIFY_PEER), whatever
    /// the context. Throws std::invalid_argument for an empty name, TlsError if the
    /// handshake fails ("certificate verify failed (hostname mismatch)").
    static Task<TlsStream> connect(Socket s, TlsContext& ctx, std::string server_name) {
        if (server_name.size() >= 2 && server_name.front() == '[' && server_name.back() == ']')
            server_name = server_name.substr(1, server_name.size() - 2);
        if (server_name.empty())
            throw std::invalid_argument("TLS connect: empty server name");
        auto st = std::make_unique<detail::TlsStreamState>(ctx.state_, std::move(s), "TLS connect");
        SSL* ssl = st->ssl.get();
        SSL_set_connect_state(ssl);
        // A client always verifies, even with a context made by server(): a connection
        // whose peer is not checked is not worth encrypting. (A verify mode set through
        // native_handle() that includes SSL_VERIFY_PEER, with its callback, is kept.)
        if (!(SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER))
            SSL_set_verify(ssl, SSL_VERIFY_PEER, nullptr);
        detail::clear_tls_errors();
        if (detail::is_ip_literal(server_name)) {
            if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), server_name.c_str()) != 1)
                detail::throw_tls("TLS connect " + server_name);
        } else {
            if (SSL_set_tlsext_host_name(ssl, server_name.c_str()) != 1 ||
                SSL_set1_host(ssl, server_name.c_str()) != 1)
                detail::throw_tls("TLS connect " + server_name);
        }
        co_await st->handshake("TLS connect");
        co_return TlsStream(std::move(st));
    }

    /// The server side of a handshake on an accepted socket. A cancellation point;
    /// cancelled, the socket is closed. Throws TlsError if the handshake fails.
    static Task<TlsStream> accept(Socket s, TlsContext& ctx) {
        auto st = std::make_unique<detail::TlsStreamState>(ctx.state_, std::move(s), "TLS accept");
        SSL_set_accept_state(st->ssl.get());
        co_await st->handshake("TLS accept");
        co_return TlsStream(std::move(st));
    }

    /// Receives some decrypted bytes into `buffer`: their number, 0 once the peer sent
    /// close_notify (and at once for an empty buffer). A peer that closed without it is a
    /// TlsError containing "unexpected eof". A cancellation point.
    Task<std::size_t> recv(std::span<char> buffer) { return recv_on(state("TLS recv"), buffer); }

    /// Encrypts and sends some of `data` (borrowed: keep it alive until done): the number
    /// of bytes taken, at most one TLS record (16 KiB). A cancellation point; a send
    /// cancelled while waiting may leave a record half written, so after it only
    /// dropping the stream is sound.
    Task<std::size_t> send(std::string_view data) { return send_on(state("TLS send"), data); }

    /// Sends all of `data` (borrowed).
    Task<void> send_all(std::string_view data) { return send_all_on(state("TLS send"), data); }

    /// Sends close_notify: the peer's recv returns 0. Does not wait for the peer's own
    /// close_notify (recv may still read until it comes); sending after it is a TlsError.
    /// The destructor does not send it: a stream dropped without shutdown() looks
    /// truncated ("unexpected eof") to the peer.
    Task<void> shutdown() { return shutdown_on(state("TLS shutdown")); }

    /// The ALPN protocol agreed on in the handshake; empty if none.
    std::string alpn() const {
        if (!state_)
            return {};
        const unsigned char* p = nullptr;
        unsigned len = 0;
        SSL_get0_alpn_selected(state_->ssl.get(), &p, &len);
        return p ? std::string(reinterpret_cast<const char*>(p), len) : std::string();
    }

    /// The SSL object (for what xiio does not wrap: the peer certificate, the cipher).
    SSL* native_handle() const noexcept { return state_ ? state_->ssl.get() : nullptr; }

private:
    // The operations run on the state, whose address stays put when the TlsStream moves.
    static Task<std::size_t> recv_on(detail::TlsStreamState* st, std::span<char> buffer) {
        if (buffer.empty())
            co_return 0;
        for (;;) {
            detail::clear_tls_errors();
            errno = 0;
            std::size_t n = 0;
            int rc = SSL_read_ex(st->ssl.get(), buffer.data(), buffer.size(), &n);
            if (rc == 1)
                co_return n;
            int err = errno;
            if (SSL_get_error(st->ssl.get(), rc) == SSL_ERROR_ZERO_RETURN) {
                detail::clear_tls_errors();
                co_return 0;
            }
            // The two waits written out rather than st->wait()'s frame: W7 spends 2 waits
            // per request here.
            if (detail::tls_next("TLS recv", st->ssl.get(), rc, err) == detail::TlsNext::read)
                co_await wait_readable(st->socket.fd());
            else
                co_await wait_writable(st->socket.fd());
        }
    }

    static Task<std::size_t> send_on(detail::TlsStreamState* st, std::string_view data) {
        if (data.empty())
            co_return 0;
        for (;;) {
            detail::clear_tls_errors();
            errno = 0;
            std::size_t n = 0;
            int rc = SSL_write_ex(st->ssl.get(), data.data(), data.size(), &n);
            if (rc == 1)
                co_return n;
            int err = errno;
            co_await st->wait(detail::tls_next("TLS send", st->ssl.get(), rc, err));
        }
    }

    // send_on's loop again rather than awaiting it: one frame per send_all, not two or
    // three (W7 sends every response with it).
    static Task<void> send_all_on(detail::TlsStreamState* st, std::string_view data) {
        while (!data.empty()) {
            detail::clear_tls_errors();
            errno = 0;
            std::size_t n = 0;
            int rc = SSL_write_ex(st->ssl.get(), data.data(), data.size(), &n);
            if (rc == 1) {
                data.remove_prefix(n);
                continue;
            }
            int err = errno;
            if (detail::tls_next("TLS send", st->ssl.get(), rc, err) == detail::TlsNext::read)
                co_await wait_readable(st->socket.fd());
            else
                co_await wait_writable(st->socket.fd());
        }
    }

    static Task<void> shutdown_on(detail::TlsStreamState* st) {
        for (;;) {
            detail::clear_tls_errors();
            errno = 0;
            int rc = SSL_shutdown(st->ssl.get());
            if (rc >= 0) // 0: ours sent, the peer's not yet received; 1: both
                co_return;
            int err = errno;
            co_await st->wait(detail::tls_next("TLS shutdown", st->ssl.get(), rc, err));
        }
    }

    explicit TlsStream(std::unique_ptr<detail::TlsStreamState> st) noexcept
        : state_(std::move(st)) {}

    detail::TlsStreamState* state(const char* op) const {
        if (!state_)
            throw std::logic_error(std::string(op) + ": the TlsStream was moved from");
        return state_.get();
    }

    std::unique_ptr<detail::TlsStreamState> state_;
};

} // namespace xiio
