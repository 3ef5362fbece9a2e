#pragma once
// serve(): the accept loop every server writes, with its failure modes handled once.
//
// - One task per connection, members of one TaskGroup owned by serve. A connection's
//   error (anything but CancelledError) goes to ServeOptions::on_error with the peer's
//   address and ends that connection only.
// - accept failing for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) fails at once,
//   without suspending: retrying at once would spin. serve backs off 100 ms instead, and
//   reports the first failure of each bout to on_error (with an empty Address as the
//   peer). ECONNABORTED and the network errors accept(2) says to treat like EAGAIN are
//   retried at once. Any other accept error ends serve (after the connections, as below).
// - Cancelled, serve stops accepting, lets open connections run on for `grace`, cancels
//   those left, waits for them, and rethrows the CancelledError.
//
// Why not task_group: cancelling the task that awaits a group cancels every member at
// once, which leaves no room for a grace period. serve's connections are members of a
// TaskGroup that serve joins only at the end; while it accepts, its own wait is the
// accept, so a cancellation reaches the accept alone.

#include <xiio/address.hpp>
#include <xiio/core.hpp>
#include <xiio/errors.hpp>
#include <xiio/multiplex.hpp>
#include <xiio/net.hpp>
#include <xiio/sync.hpp>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

namespace xiio {

namespace detail {
/// ServeOptions::on_error's type (spelled through an alias for tests/docs_check.py's parser).
using ServeErrorFn = std::function<void(const Address& peer, std::exception_ptr)>;
} // namespace detail

struct ServeOptions {
    /// Called (on the loop's thread) with the peer and the error of a connection that
    /// failed, and with an empty Address (family AF_UNSPEC) and the error when accept runs
    /// out of resources (once per bout). Empty: report to stderr. Must not throw (an
    /// exception it throws is dropped).
    detail::ServeErrorFn on_error; // std::function<void(const Address&, std::exception_ptr)>
    /// On cancellation: how long open connections may run on before they are cancelled.
    /// std::nullopt (the default): cancelled at once.
    std::optional<Clock::duration> grace;
};

namespace detail {

/// The default on_error: one line on stderr.
inline void report_serve_error(const Address& peer, std::exception_ptr error) noexcept {
    std::string what = "unknown exception";
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        what = e.what();
    } catch (...) {
    }
    if (peer.family() == AF_UNSPEC)
        std::fprintf(stderr, "xiio::serve: %s; retrying every 100 ms\n", what.c_str());
    else
        std::fprintf(stderr, "xiio::serve: connection from %s: %s\n", peer.to_string().c_str(),
                     what.c_str());
}

/// What serve's connections share with it.
struct ServeState {
    explicit ServeState(const ServeOptions& o) noexcept : options(&o) {}
    const ServeOptions* options;
    std::size_t open = 0; // connections running
    Event drained;        // set when open drops to 0 while draining
    bool draining = false;

    void report(const Address& peer, std::exception_ptr e) noexcept {
        try {
            if (options->on_error)
                options->on_error(peer, e);
            else
                report_serve_error(peer, e);
        } catch (...) {
        }
    }
};

template <class Handler>
Task<void> serve_connection(Handler& handler, Socket s, ServeState& st) {
    struct Count {
        ServeState& st;
        explicit Count(ServeState& s) : st(s) { ++st.open; }
        ~Count() {
            if (--st.open == 0 && st.draining)
                st.drained.set();
        }
    } count(st);
    Address peer;
    try {
        peer = s.peer();
    } catch (const std::system_error&) { // already reset: the handler will find out
    }
    try {
        co_await handler(std::move(s));
    } catch (const CancelledError&) {
        throw; // a cancelled member is no error of the group
    } catch (...) {
        st.report(peer, std::current_exception());
    }
}

/// Resource errors of accept: back off rather than spin or end.
inline bool accept_starved(int err) noexcept {
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

/// Errors accept(2) says to retry like EAGAIN (the connection, not the listener, failed).
inline bool accept_transient(int err) noexcept {
    switch (err) {
    case ECONNABORTED:
    case EPROTO:
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH:
    case EPERM: // a firewall refused it
        return true;
    default:
        return false;
    }
}

} // namespace detail

/// Accepts connections on `listener` and runs `handler(socket)` (a Task<void>) for each
/// in its own task, until cancelled. See the top of this header for errors, back-off and
/// the grace period. `handler` is kept (in serve's frame) until every connection ended.
/// Returns only by throwing: the CancelledError that stopped it, or a fatal accept error
/// (std::system_error), after every connection ended.
template <class Handler>
Task<void> serve(Listener& listener, Handler handler, ServeOptions options = {}) {
    static_assert(std::is_invocable_v<Handler&, Socket>,
                  "xiio::serve: the handler must be callable as handler(xiio::Socket)");
    // Declared before the group: a frame destroyed while suspended (a loop torn down)
    // destroys the members' frames in the group's destructor, and they use these.
    detail::ServeState st(options);
    Event stop; // a keeper member waits for it, so the group never empties (and closes)
    TaskGroup connections;
    connections.add_task(stop.wait());
    std::exception_ptr ended;
    for (bool starved = false; !ended;) {
        int err = 0;
        try {
            Socket s = co_await listener.accept();
            connections.add_task(detail::serve_connection(handler, std::move(s), st));
            starved = false;
            continue;
        } catch (const std::system_error& e) {
            err = e.code().value();
            if (detail::accept_starved(err)) {
                if (!std::exchange(starved, true))
                    st.report(Address(), std::current_exception());
            } else if (!detail::accept_transient(err)) {
                ended = std::current_exception();
            }
        } catch (...) { // CancelledError, std::bad_alloc
            ended = std::current_exception();
        }
        if (ended)
            break;
        if (detail::accept_starved(err)) {
            try {
                co_await sleep(std::chrono::milliseconds(100));
            } catch (...) {
                ended = std::current_exception();
            }
        }
    }
    // Draining: no more accepts; the open connections get the grace period.
    stop.set();
    if (options.grace && st.open > 0) {
        st.draining = true;
        try {
            (void)co_await move_on_after(*options.grace, st.drained.wait());
        } catch (...) { // cancelled again: cut the grace short
        }
    }
    connections.cancel();
    co_await connections.join();
    std::rethrow_exception(ended);
}

} // namespace xiio
