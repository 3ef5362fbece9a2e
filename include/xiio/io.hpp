#pragma once
// File descriptors: the owning Fd, readiness waits, read and write.
//
// Rules (see README "File descriptors"): xiio never changes the flags of an `int` fd and
// never blocks the loop on one. A non-blocking fd is tried first and waited for only on
// EAGAIN; a blocking fd is touched only once poll(2) says it is ready, and is written at
// most PIPE_BUF bytes at a time. An Fd is xiio's: it is made non-blocking on first I/O
// and keeps its epoll registration for its life, which makes it the fast path.
// Errors: std::system_error naming the failing call ("read: Broken pipe").

#include <xiio/core.hpp>
#include <xiio/detail/std_parts.hpp>
#include <xiio/detail/sys.hpp>

#include <climits>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace xiio {

/// Owns a file descriptor and closes it. Move-only; its loop registration moves with it.
///
/// An Fd may be moved, destroyed, closed or released on any thread (inside an in_thread
/// job, say), and may outlive the loop that registered it: it only remembers which loop
/// and registration (FdState), and reaches a loop on another thread through a queue.
class Fd {
public:
    Fd() noexcept = default;
    explicit Fd(int fd) noexcept : fd_(fd) {}
    Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)), state_(std::exchange(o.state_, {})) {}
    Fd& operator=(Fd&& o) noexcept {
        if (this != &o) {
            close();
            fd_ = std::exchange(o.fd_, -1);
            state_ = std::exchange(o.state_, {});
        }
        return *this;
    }
    ~Fd() { close(); }

    int get() const noexcept { return fd_; }
    /// Gives up ownership: the fd stays open and is no longer registered (on another
    /// thread than its loop's: from that loop's next iteration on).
    int release() noexcept {
        if (state_.loop)
            detail::disown(fd_, state_, false);
        state_ = {};
        return std::exchange(fd_, -1);
    }
    /// Closes now; tasks waiting on it get std::system_error(EBADF). On another thread
    /// than the one of a loop that still runs with it registered, that loop closes the
    /// number at its next iteration (so it cannot be reused before the loop forgot it).
    void close() noexcept {
        if (fd_ < 0)
            return;
        bool handed = state_.loop && detail::disown(fd_, state_, true);
        state_ = {};
        int fd = std::exchange(fd_, -1);
        if (!handed)
            ::close(fd); // never retried: Linux frees the number on EINTR
    }
    explicit operator bool() const noexcept { return fd_ >= 0; }

    /// Plumbing: the registration state of this fd.
    detail::FdState& state() const noexcept { return state_; }

private:
    int fd_ = -1;
    mutable detail::FdState state_;
};

namespace detail {

/// Any fd parameter: an int or an Fd. Holds values, not a pointer to the Fd, so an
/// awaitable made from an Fd survives the Fd being moved before it starts. Made from an
/// Fd inside a task, it claims the Fd's registration for the current loop (Loop::claim:
/// may throw std::system_error if the fd is not open, std::bad_alloc, or
/// std::logic_error if two Fds own one number); made
/// outside any loop, it waits on the number as on an int.
struct FdRef {
    FdRef(int f) noexcept : fd(f) {}
    [[gnu::always_inline]] FdRef(const Fd& f) : fd(f.get()) {
        FdState& s = f.state();
        if (s.loop != current_loop_id()) [[unlikely]]
            claim_for_current_loop(fd, s); // once per Fd and loop
        serial = s.serial;
    }
    int fd;
    // The Fd's registration. Serials are unique in the process: one claimed by another
    // loop never matches an entry of this one, and the wait is then transient.
    std::uint64_t serial = 0;
};

/// Any read buffer: convertible to std::span<char> or std::span<std::byte>.
struct MutableBytes {
    template <class B>
        requires(std::convertible_to<B &&, std::span<char>>)
    MutableBytes(B&& b) noexcept {
        std::span<char> s = std::forward<B>(b);
        data = s.data();
        size = s.size();
    }
    template <class B>
        requires(!std::convertible_to<B &&, std::span<char>> &&
                 std::convertible_to<B &&, std::span<std::byte>>)
    MutableBytes(B&& b) noexcept {
        std::span<std::byte> s = std::forward<B>(b);
        data = reinterpret_cast<char*>(s.data());
        size = s.size();
    }
    char* data;
    std::size_t size;
};

/// Any write data: convertible to std::string_view, std::span<const char> or
/// std::span<const std::byte> (in that order of preference, so a string literal is
/// written without its terminating NUL).
struct ConstBytes {
    template <class B>
        requires(std::convertible_to<B &&, std::string_view>)
    ConstBytes(B&& b) noexcept {
        std::string_view s = std::forward<B>(b);
        data = s.data();
        size = s.size();
    }
    template <class B>
        requires(!std::convertible_to<B &&, std::string_view> &&
                 std::convertible_to<B &&, std::span<const char>>)
    ConstBytes(B&& b) noexcept {
        std::span<const char> s = std::forward<B>(b);
        data = s.data();
        size = s.size();
    }
    template <class B>
        requires(!std::convertible_to<B &&, std::string_view> &&
                 !std::convertible_to<B &&, std::span<const char>> &&
                 std::convertible_to<B &&, std::span<const std::byte>>)
    ConstBytes(B&& b) noexcept {
        std::span<const std::byte> s = std::forward<B>(b);
        data = reinterpret_cast<const char*>(s.data());
        size = s.size();
    }
    const char* data;
    std::size_t size;
};

/// Write data that an awaitable takes over rather than borrows: an rvalue that owns its
/// bytes (std::string&&, std::vector<char>&&, std::vector<std::byte>&&, any rvalue that is
/// not a view). An awaitable is often kept past the statement that made it (`add_task`,
/// `gather`, a Task stored for later), and a temporary dies at the end of that statement:
/// `tg.add_task(writeall(fd, "x" + s))` must not keep a pointer into it. A view (an
/// rvalue string_view or span, a borrowed range, a pointer) and every lvalue are borrowed
/// as before: zero-copy, and the caller keeps them alive across the await, as usual.
template <class B>
concept OwnedWriteData =
    !std::is_lvalue_reference_v<B> && !std::is_pointer_v<std::remove_cvref_t<B>> &&
    !std::ranges::enable_borrowed_range<std::remove_cvref_t<B>> &&
    !std::is_same_v<std::remove_cvref_t<B>, ConstBytes> &&
    std::is_constructible_v<std::remove_cvref_t<B>, B&&> &&
    std::is_convertible_v<const std::remove_cvref_t<B>&, ConstBytes>;

/// What a write awaitable keeps of borrowed data: nothing (it holds the view only).
struct Borrowed {};

/// The bytes of a write awaitable: a view, plus, when Keep is not Borrowed, the object the
/// view points into. Such an object moves with the awaitable (into a TaskGroup, into the
/// coroutine frame of detail::wrap, ...), and a short std::string's bytes move with it (they
/// live inside the object: SSO), so every move points the view at the new object again.
/// For Borrowed, keep is empty and takes no room: the borrowed path costs what it did.
template <class Keep>
struct WriteData {
    explicit WriteData(ConstBytes data) noexcept
        requires(std::is_same_v<Keep, Borrowed>)
        : view(data) {}
    template <class B>
        requires(!std::is_same_v<Keep, Borrowed>)
    explicit WriteData(std::in_place_t,
                       B&& owned) noexcept(std::is_nothrow_constructible_v<Keep, B&&>)
        : keep(std::forward<B>(owned)), view(std::as_const(keep)) {}
    WriteData(WriteData&& o) noexcept(std::is_nothrow_move_constructible_v<Keep>)
        : keep(std::move(o.keep)), view(o.view) {
        if constexpr (!std::is_same_v<Keep, Borrowed>)
            view = ConstBytes(std::as_const(keep));
    }
    WriteData& operator=(WriteData&&) = delete;

    [[no_unique_address]] Keep keep;
    ConstBytes view;
};

/// The Keep of write data `B`: Borrowed, or the decayed type of an owned rvalue.
template <class B>
using keep_t = std::conditional_t<OwnedWriteData<B>, std::remove_cvref_t<B>, Borrowed>;

/// Whether making the WriteData of `B` cannot throw (moving a std::string or a vector in
/// cannot; copying a const rvalue can).
template <class B>
inline constexpr bool nothrow_write_data_v =
    !OwnedWriteData<B> || std::is_nothrow_constructible_v<std::remove_cvref_t<B>, B&&>;

/// Whether `ref` may be tried without blocking. An Fd claimed by a loop was made
/// non-blocking then (Loop::claim), and so was an int that names such an Fd's number in
/// this loop; any other int, or an Fd whose awaitable was made outside any loop, is asked.
/// Throws std::system_error (fcntl).
inline bool nonblocking(const FdRef& ref, Loop& loop) {
    if (ref.serial || loop.claimed(ref.fd)) // an int fd of a Socket: no fcntl per wait
        return true;
    int fl = sys::fcntl_getfl(ref.fd);
    if (fl < 0)
        throw_errno("fcntl");
    return fl & O_NONBLOCK;
}

inline bool poll_ready(int fd, unsigned events) noexcept {
    pollfd p{fd,
             static_cast<short>(((events & READ) ? POLLIN : 0) | ((events & WRITE) ? POLLOUT : 0)),
             0};
    return retry_eintr([&] { return ::poll(&p, 1, 0); }) > 0;
}

/// The common machinery of one I/O call (Derived::call() does the syscall) and of plain
/// readiness waits (Derived has no call()). The node is linked into the fd's waiters.
template <class Derived, class R, unsigned Ev>
class FdOp : public FdNode, public Leaf<Derived, R> {
public:
    explicit FdOp(FdRef ref) noexcept : ref_(ref) {}
    FdOp(FdOp&& o) noexcept : FdNode(), ref_(o.ref_) {}
    ~FdOp() { drop_wait(w_); }

    bool await_ready() const noexcept { return false; }
    template <XiioPromise P>
    bool await_suspend(std::coroutine_handle<P> h) {
        if (!begin_wait(w_, h))
            return false;
        Loop& loop = *w_.runner->loop;
        bool attached;
        try { // what throws (fcntl, epoll_ctl, memory) leaves nothing to undo later
            if constexpr (hands_over()) {
                // A completion backend performs the operation itself: hand it over whole
                // (no try first: that would cost the syscall the backend saves).
                if (loop.completes_io())
                    this->io = &FdOp::io_step;
            }
            if constexpr (is_io()) {
                if (!this->io)
                    blocking_ = !nonblocking(ref_, loop);
                if (!this->io && !blocking_ && attempt()) {
                    Runner& r = *std::exchange(w_.runner, nullptr); // nothing to undo
                    return out_of_budget(r, h);
                }
            }
            this->wait = &w_;
            this->fd = ref_.fd;
            this->events = Ev;
            if constexpr (is_io())
                if (!this->io)
                    this->perform = &FdOp::perform_ready;
            w_.fds = {static_cast<FdNode*>(this), 1};
            attached = loop.attach(*this, ref_.serial);
        } catch (...) {
            w_.runner = nullptr; // see begin_wait
            w_.fds = {};
            throw;
        }
        if (!attached) { // a regular file: always ready
            if constexpr (is_io())
                attempt();
            return out_of_budget(*std::exchange(w_.runner, nullptr), h);
        }
        loop.suspend(*w_.runner, w_, h);
        return true;
    }

protected:
    // A function, not a constant: Derived is incomplete while this base is instantiated.
    static constexpr bool is_io() {
        return requires(Derived& d) { d.call(); };
    }
    /// Whether Derived can describe itself to a completion backend (io_call()).
    static constexpr bool hands_over() {
        return requires(Derived& d) { d.io_call(); };
    }

    /// FdNode::io: the next step of the operation, or its result.
    static bool io_step(FdNode* n, IoCall* call, int res) noexcept {
        auto* self = static_cast<Derived*>(static_cast<FdOp*>(n));
        if (call) {
            *call = self->io_call();
            return true;
        }
        return self->io_result(res);
    }
    /// The result of a one-step operation: the count, or the error.
    bool io_result(int res) noexcept {
        if (res >= 0)
            result_ = static_cast<std::size_t>(res);
        else
            err_ = -res;
        return true;
    }
    static IoCall io_call_of(std::uint8_t opcode, const void* buf, std::size_t len,
                             int flags = 0) noexcept {
        // One step moves at most 2 GiB, as read(2) and write(2) do.
        auto n = static_cast<std::uint32_t>(std::min<std::size_t>(len, 0x7ffff000));
        return {opcode, const_cast<void*>(buf), n, flags};
    }

    /// Runs the syscall; false on EAGAIN (wait again), else the outcome is kept.
    bool attempt() noexcept {
        ssize_t r = retry_eintr([&] { return static_cast<Derived*>(this)->call(); });
        if (r >= 0) {
            result_ = static_cast<std::size_t>(r);
            return true;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return false;
        err_ = errno;
        return true;
    }
    static bool perform_ready(FdNode* n) noexcept {
        auto* self = static_cast<FdOp*>(n);
        if (self->blocking_ && !poll_ready(self->fd, self->events))
            return false; // another waiter took it: never block the loop
        return self->attempt();
    }
    /// The outcome, after the wait ended.
    std::size_t finish(const char* call) {
        end_wait(w_);
        if (err_) {
            if (err_ == EPIPE)
                drain_sigpipe();
            throw_errno(call, err_);
        }
        return result_;
    }

    FdRef ref_;
    Wait w_;
    std::size_t result_ = 0;
    int err_ = 0;
    bool blocking_ = false;
};

class [[nodiscard]] ReadOp : public FdOp<ReadOp, std::size_t, READ> {
public:
    ReadOp(FdRef fd, MutableBytes buf) noexcept : FdOp(fd), buf_(buf) {}
    ssize_t call() noexcept { return sys::read(ref_.fd, buf_.data, buf_.size); }
    IoCall io_call() const noexcept { return io_call_of(IORING_OP_READ, buf_.data, buf_.size); }
    std::size_t await_resume() { return finish("read"); }

private:
    MutableBytes buf_;
};

class [[nodiscard]] ReadStringOp : public FdOp<ReadStringOp, std::string, READ> {
public:
    ReadStringOp(FdRef fd, std::size_t max_size) noexcept : FdOp(fd), max_(max_size) {}
    ReadStringOp(ReadStringOp&& o) noexcept : FdOp(std::move(o)), max_(o.max_) {}
    // The buffer is sized here, before the first attempt: call() runs in noexcept paths
    // (attempt, perform_ready), where a failed allocation would be std::terminate. Thrown
    // from here (std::length_error, std::bad_alloc), it reaches the awaiting task, and
    // nothing is registered yet.
    template <XiioPromise P>
    bool await_suspend(std::coroutine_handle<P> h) {
        buf_.resize(max_);
        return FdOp::await_suspend(h);
    }
    ssize_t call() noexcept { return sys::read(ref_.fd, buf_.data(), buf_.size()); }
    IoCall io_call() noexcept { return io_call_of(IORING_OP_READ, buf_.data(), buf_.size()); }
    std::string await_resume() {
        buf_.resize(finish("read"));
        return std::move(buf_);
    }

private:
    std::size_t max_;
    std::string buf_;
};

/// write(); Keep: see WriteData (Borrowed, or the owned rvalue's type).
template <class Keep>
class [[nodiscard]] BasicWriteOp : public FdOp<BasicWriteOp<Keep>, std::size_t, WRITE> {
    using Base = FdOp<BasicWriteOp<Keep>, std::size_t, WRITE>;

public:
    BasicWriteOp(FdRef fd, ConstBytes data) noexcept
        requires(std::is_same_v<Keep, Borrowed>)
        : Base(fd), data_(data) {}
    BasicWriteOp(FdRef fd, WriteData<Keep>&& data) noexcept(
        std::is_nothrow_move_constructible_v<WriteData<Keep>>)
        : Base(fd), data_(std::move(data)) {}
    ssize_t call() noexcept {
        // A ready blocking pipe takes PIPE_BUF bytes without blocking, not necessarily more.
        std::size_t size = data_.view.size;
        std::size_t n = this->blocking_ ? std::min<std::size_t>(size, PIPE_BUF) : size;
        return sys::write(this->ref_.fd, data_.view.data, n);
    }
    IoCall io_call() const noexcept {
        return this->io_call_of(IORING_OP_WRITE, data_.view.data, data_.view.size);
    }
    std::size_t await_resume() { return this->finish("write"); }

private:
    WriteData<Keep> data_;
};
using WriteOp = BasicWriteOp<Borrowed>;

/// read_exactly and writeall without a coroutine frame: one leaf that moves bytes until
/// the whole buffer is done, waiting (in the same Wait) whenever the fd runs dry. Each
/// call() continues where the last stopped; partial progress answers EAGAIN, which keeps
/// the task waiting. A blocking int fd gets one syscall per readiness report.
class [[nodiscard]] ReadExactlyOp : public FdOp<ReadExactlyOp, void, READ> {
public:
    ReadExactlyOp(FdRef fd, MutableBytes buf) noexcept : FdOp(fd), buf_(buf) {}
    ReadExactlyOp(ReadExactlyOp&& o) noexcept : FdOp(std::move(o)), buf_(o.buf_) {}
    ssize_t call() noexcept {
        while (got_ < buf_.size) {
            ssize_t r = sys::read(ref_.fd, buf_.data + got_, buf_.size - got_);
            if (r <= 0) {
                eof_ = r == 0;
                return r;
            }
            got_ += static_cast<std::size_t>(r);
            if (blocking_ && got_ < buf_.size)
                return sys::failed(EAGAIN); // the next read could block: wait for readiness
        }
        return static_cast<ssize_t>(got_);
    }
    IoCall io_call() const noexcept {
        return io_call_of(IORING_OP_READ, buf_.data + got_, buf_.size - got_);
    }
    bool io_result(int res) noexcept {
        if (res <= 0) {
            eof_ = res == 0;
            err_ = -res;
            return true;
        }
        got_ += static_cast<std::size_t>(res);
        return got_ == buf_.size;
    }
    void await_resume() {
        finish("read");
        if (eof_)
            throw IncompleteReadError(got_, buf_.size);
    }

private:
    MutableBytes buf_;
    std::size_t got_ = 0;
    bool eof_ = false;
};

/// writeall (write) and Socket::send_all (send with MSG_NOSIGNAL); Keep: see WriteData.
template <class Keep>
class [[nodiscard]] BasicWriteAllOp : public FdOp<BasicWriteAllOp<Keep>, void, WRITE> {
    using Base = FdOp<BasicWriteAllOp<Keep>, void, WRITE>;

public:
    BasicWriteAllOp(FdRef fd, ConstBytes data, bool send) noexcept
        requires(std::is_same_v<Keep, Borrowed>)
        : Base(fd), data_(data), send_(send) {}
    BasicWriteAllOp(FdRef fd, WriteData<Keep>&& data,
                    bool send) noexcept(std::is_nothrow_move_constructible_v<WriteData<Keep>>)
        : Base(fd), data_(std::move(data)), send_(send) {}
    BasicWriteAllOp(BasicWriteAllOp&& o) noexcept(
        std::is_nothrow_move_constructible_v<WriteData<Keep>>)
        : Base(std::move(o)), data_(std::move(o.data_)), send_(o.send_) {}
    ssize_t call() noexcept {
        const ConstBytes& d = data_.view;
        while (done_ < d.size) {
            std::size_t n = d.size - done_;
            if (this->blocking_) // a ready blocking pipe takes PIPE_BUF bytes without blocking
                n = std::min<std::size_t>(n, PIPE_BUF);
            ssize_t r = send_ ? sys::send(this->ref_.fd, d.data + done_, n, MSG_NOSIGNAL)
                              : sys::write(this->ref_.fd, d.data + done_, n);
            if (r < 0)
                return r;
            done_ += static_cast<std::size_t>(r);
            if (this->blocking_ && done_ < d.size)
                return sys::failed(EAGAIN);
        }
        return static_cast<ssize_t>(done_);
    }
    IoCall io_call() const noexcept {
        const ConstBytes& d = data_.view;
        return this->io_call_of(send_ ? IORING_OP_SEND : IORING_OP_WRITE, d.data + done_,
                                d.size - done_, send_ ? MSG_NOSIGNAL : 0);
    }
    bool io_result(int res) noexcept {
        if (res < 0) {
            this->err_ = -res;
            return true;
        }
        done_ += static_cast<std::size_t>(res);
        return done_ == data_.view.size || res == 0;
    }
    void await_resume() { this->finish(send_ ? "send" : "write"); }

private:
    WriteData<Keep> data_;
    std::size_t done_ = 0;
    bool send_;
};
using WriteAllOp = BasicWriteAllOp<Borrowed>;

template <unsigned Ev>
class [[nodiscard]] WaitOp : public FdOp<WaitOp<Ev>, void, Ev> {
public:
    using FdOp<WaitOp<Ev>, void, Ev>::FdOp;
    void await_resume() { this->finish("epoll_wait"); }
};

} // namespace detail

/// Waits until fd is reported readable (a later read may still see EAGAIN).
inline detail::WaitOp<READ> wait_readable(detail::FdRef fd) {
    return detail::WaitOp<READ>(fd);
}
/// Waits until fd is reported writable.
inline detail::WaitOp<WRITE> wait_writable(detail::FdRef fd) {
    return detail::WaitOp<WRITE>(fd);
}

/// One successful read() into `buffer`: the number of bytes read, 0 at end of file.
inline detail::ReadOp read(detail::FdRef fd, detail::MutableBytes buffer) {
    return detail::ReadOp(fd, buffer);
}
/// One successful read() of at most max_size bytes; "" at end of file.
inline detail::ReadStringOp read(detail::FdRef fd, std::size_t max_size) {
    return detail::ReadStringOp(fd, max_size);
}
/// One successful write(): the number of bytes written. `data` is borrowed (the caller
/// keeps it alive until the write is done), except an rvalue that owns its bytes
/// (`write(fd, std::string(...))`), which the awaitable takes over (see writeall).
inline detail::WriteOp write(detail::FdRef fd, detail::ConstBytes data) {
    return detail::WriteOp(fd, data);
}
/// write() of an rvalue that owns its bytes: the awaitable keeps it (moved in, no copy).
template <class B>
    requires detail::OwnedWriteData<B>
detail::BasicWriteOp<detail::keep_t<B>> write(detail::FdRef fd,
                                              B&& data) noexcept(detail::nothrow_write_data_v<B>) {
    using Keep = detail::keep_t<B>;
    return {fd, detail::WriteData<Keep>(std::in_place, std::forward<B>(data))};
}

/// Fills `buffer`, or throws IncompleteReadError (with the bytes read so far) at EOF.
/// A light awaitable (no coroutine frame); converts to Task<void>.
inline detail::ReadExactlyOp read_exactly(detail::FdRef fd, detail::MutableBytes buffer) {
    return detail::ReadExactlyOp(fd, buffer);
}

/// Writes all of `data` (as many write() calls as it takes). A light awaitable (no
/// coroutine frame); converts to Task<void>.
///
/// `data` is borrowed when it is an lvalue or a view (a named string, a string_view, a
/// span, a literal): zero-copy, and it must outlive the await. An rvalue that owns its
/// bytes (std::string&&, std::vector<char>&&, std::vector<std::byte>&&) is moved into
/// the awaitable, which keeps it until it is destroyed, so a temporary never dangles:
/// `tg.add_task(writeall(fd, "x" + s))` and `gather(writeall(fd, std::string(...)), ...)`
/// are safe, though the task runs after the statement that made the temporary ended.
inline detail::WriteAllOp writeall(detail::FdRef fd, detail::ConstBytes data) {
    return detail::WriteAllOp(fd, data, false);
}
/// writeall() of an rvalue that owns its bytes: the awaitable keeps it (moved in, no copy).
template <class B>
    requires detail::OwnedWriteData<B>
detail::BasicWriteAllOp<detail::keep_t<B>>
writeall(detail::FdRef fd, B&& data) noexcept(detail::nothrow_write_data_v<B>) {
    using Keep = detail::keep_t<B>;
    return {fd, detail::WriteData<Keep>(std::in_place, std::forward<B>(data)), false};
}

} // namespace xiio
