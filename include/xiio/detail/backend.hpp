#pragma once
// The seam between the loop and the OS: how a wait on an fd, or an operation on it, starts
// and completes, and how the loop blocks until something does. Two implementations:
// - detail/epoll.hpp, a readiness backend: a wait registers interest, the OS reports the fd
//   ready, and the operation (FdNode::perform) then runs as a plain syscall;
// - detail/io_uring.hpp, a completion backend: the operation itself (FdNode::io) is handed
//   to the kernel, which reports it done; readiness waits become poll operations.
// The loop (xiio/loop.hpp) keeps what both share: the ready queue, timers, runners,
// cancellation ("throw-in") and the queue from other threads.

#include <xiio/detail/wait.hpp>
#include <xiio/errors.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace xiio::detail {

class Loop;

// What a backend asks of its loop (defined in xiio/loop.hpp).
/// The first part of `w` that fired: make its runner ready.
inline void wake(Loop& loop, Wait& w) noexcept;
/// The wake-up eventfd fired: run what other threads posted.
inline void run_remote(Loop& loop) noexcept;
/// Fds closed on other threads may have had their numbers reused: forget them first.
inline void take_orphans(Loop& loop) noexcept;

class IoBackend {
public:
    explicit IoBackend(Loop& loop) noexcept : loop_(loop) {}
    virtual ~IoBackend() = default;
    IoBackend(const IoBackend&) = delete;
    IoBackend& operator=(const IoBackend&) = delete;

    /// An Fd claimed number `fd`: its entry is named `serial` until forget(). Throws
    /// std::bad_alloc, std::logic_error if another Fd owns the number.
    virtual void claim(int fd, std::uint64_t serial) = 0;
    /// Whether an Fd claimed `fd` (made O_NONBLOCK then).
    virtual bool claimed(int fd) const noexcept = 0;
    /// Starts `n` (a readiness wait, or an operation where this backend performs them).
    /// `serial` names the claimed entry (0 for an int fd). False: the fd cannot be waited
    /// for (a regular file under epoll) and counts as ready. Throws std::system_error,
    /// std::bad_alloc; then nothing was started.
    virtual bool attach(FdNode& n, std::uint64_t serial) = 0;
    /// Ends `n` (the leaf resumes, or its frame dies). On return the OS holds nothing of
    /// it: no completion will touch `n` or its buffer.
    virtual void detach(FdNode& n) noexcept = 0;
    /// The Fd that claimed `serial` closes or lets go: fail its waiters with the closed
    /// error, drop the entry. True if it was there.
    virtual bool forget(int fd, std::uint64_t serial) noexcept = 0;
    /// Watches the eventfd through which other threads wake the loop; true if the loop
    /// need not read it back (the backend consumes each write). Throws std::system_error.
    virtual bool add_wakeup(int fd) = 0;
    /// The wake-up eventfd is about to be closed (the loop ends): stop watching it.
    virtual void remove_wakeup() noexcept {}
    /// `w` was woken while an operation of it is still in the kernel (io_uring): ask the
    /// kernel to stop it; the wait is woken when its completion arrives.
    virtual void cancel(Wait&) noexcept {}
    /// Blocks until something completes or `deadline` passes (min(): do not block,
    /// max(): no deadline). Throws std::system_error.
    virtual void wait(Clock::time_point deadline) = 0;
    /// Wakes the waiters of what the last wait() collected.
    virtual void deliver() noexcept = 0;

    std::size_t fd_waiters = 0; // attached nodes: while any, the loop is not deadlocked

protected:
    Loop& loop_;
};

/// The entries of a backend, indexed by fd number. `Entry` has `serial` (the claiming Fd's,
/// 0 for none) and `head` (its attached nodes).
template <class Entry>
class FdTable {
public:
    /// The entry of `fd`, null if never made.
    Entry* find(int fd) noexcept {
        return fd >= 0 && static_cast<std::size_t>(fd) < size_ ? &v_[static_cast<std::size_t>(fd)]
                                                               : nullptr;
    }
    const Entry* find(int fd) const noexcept { return const_cast<FdTable*>(this)->find(fd); }
    /// The entry of `fd` (>= 0), made if needed. Throws std::bad_alloc (then nothing changed).
    Entry& at(int fd) {
        const auto i = static_cast<std::size_t>(fd);
        if (i >= size_) {
            v_.resize(i + 1);
            size_ = v_.size(); // kept: computing it divides by sizeof(Entry)
        }
        return v_[i];
    }
    void claim(int fd, std::uint64_t serial) {
        Entry& e = at(fd);
        if (e.serial)
            throw std::logic_error("xiio: two Fds own fd " + std::to_string(fd));
        e.serial = serial;
    }
    bool claimed(int fd) const noexcept {
        const Entry* e = find(fd);
        return e && e->serial != 0;
    }
    std::vector<Entry>& entries() noexcept { return v_; }

private:
    std::vector<Entry> v_;
    std::size_t size_ = 0;
};

/// Marks every attached node of `head`'s list detached and fails its wait with the
/// closed-fd error (its Fd is closing); `each` sees every node first.
template <class F>
void fail_closed(Loop& loop, FdNode* head, std::size_t& waiters, F each) noexcept {
    for (FdNode* n = head; n;) {
        FdNode* next = n->next;
        each(*n);
        n->attached = false;
        --waiters;
        if (!n->wait->error)
            n->wait->error = prebuilt_errors().closed; // cannot fail: see PrebuiltErrors
        wake(loop, *n->wait);
        n = next;
    }
}

} // namespace xiio::detail
