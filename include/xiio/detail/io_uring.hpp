#pragma once
// The completion backend, on io_uring through the kernel's ABI (<linux/io_uring.h>, mmap
// and two syscalls, in detail/io_uring_ring.hpp; no liburing). An operation (a read, a
// write, a recv, a send: see FdNode::io) is handed to the kernel whole and reported done;
// any other wait on an fd becomes a one-shot poll operation, after which FdNode::perform
// runs the syscall as under epoll. Everything queued while the ready tasks run goes to
// the kernel in the one io_uring_enter that also waits: a request/response costs one
// syscall, not four.
//
// Who owns what. Each operation in the kernel has a record here (ops_), named in the
// submission's user_data; the node it serves lives in a coroutine frame. A poll operation
// writes nothing into the frame, so a poll whose wait ended is only orphaned (its record
// forgets the node) and cancelled. A read writes into the task's buffer until it completes,
// so a wait with such an operation in the kernel (Wait::in_flight) is never woken by
// anything else: the loop asks this backend to cancel it, and the wait is woken by its
// completion, -ECANCELED or, if the data came first, the data (returned; a cancellation
// then stays pending for the next co_await). A frame destroyed with one in the kernel
// (drop_wait) waits here for the cancellation to complete.
//
// Submissions not yet handed to the kernel can be taken back: they are overwritten with a
// no-op, so a closed fd's number never reaches the kernel after close().

#include <xiio/detail/backend.hpp>
#include <xiio/detail/io_uring_ring.hpp>
#include <xiio/detail/sys.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <linux/io_uring.h>
#include <poll.h>

namespace xiio::detail {

struct IoUringParams {
    unsigned entries = 256; // submission queue; the completion queue has 4 times as many
};

class IoUringBackend final : public IoBackend {
public:
    IoUringBackend(Loop& loop, IoUringParams params) : IoBackend(loop), ring_(params.entries) {
        wake_.kind = Op::wakeup;
    }
    ~IoUringBackend() override {
        // Nothing may complete into freed memory: cancel what is left (orphaned polls,
        // the wake-up read) and wait for every completion before the ring goes away.
        for (std::uint32_t i = 0; i < ops_.size(); ++i)
            if (ops_[i].kind != Op::free)
                cancel_op(i + 1);
        if (wake_.busy)
            cancel_op(wake_tag);
        // Cancelled operations complete at once; bounded all the same, since a leak here
        // must not turn into a hang.
        const auto until = Clock::now() + std::chrono::seconds(5);
        while (in_kernel_ > 0 && Clock::now() < until) {
            ring_.enter(true, std::min(until, Clock::now() + std::chrono::milliseconds(100)));
            reap(true);
        }
    }

    void claim(int fd, std::uint64_t serial) override { fds_.claim(fd, serial); }
    bool claimed(int fd) const noexcept override { return fds_.claimed(fd); }

    bool attach(FdNode& n, std::uint64_t serial) override {
        if (n.fd < 0)
            throw_errno("io_uring", EBADF);
        FdEntry* e = fds_.find(n.fd);
        if (!serial || !e || e->serial != serial) {
            take_orphans(loop_); // before trusting an entry: its number may be reused
            e = fds_.find(n.fd);
            // A number no Fd of this loop owns: check it now, as epoll_ctl would, rather
            // than learn of a bad number from a completion nobody can throw from. (An
            // int naming a Socket's number, `read_exactly(s.fd(), ...)`, needs no check.)
            if ((!e || !e->serial) && ::fcntl(n.fd, F_GETFD) < 0)
                throw_errno("io_uring", errno);
            e = &fds_.at(n.fd);
        }
        std::uint32_t id = new_op(); // may throw std::bad_alloc: nothing done yet
        Op& op = ops_[id - 1];
        op.node = &n;
        n.ready = 0;
        n.op = id;
        if (n.io) {
            op.kind = Op::io;
            ++n.wait->in_flight;
        } else {
            op.kind = Op::poll;
        }
        prepare(id);
        n.prev = nullptr;
        n.next = e->head;
        if (e->head)
            e->head->prev = &n;
        e->head = &n;
        n.attached = true;
        ++fd_waiters; // here: operations in the kernel for a live wait
        return true;
    }

    void detach(FdNode& n) noexcept override {
        if (FdEntry* e = fds_.find(n.fd)) {
            (n.prev ? n.prev->next : e->head) = n.next;
            if (n.next)
                n.next->prev = n.prev;
        }
        n.prev = n.next = nullptr;
        n.attached = false;
        if (n.op)
            drop(n);
    }

    bool forget(int fd, std::uint64_t serial) noexcept override {
        FdEntry* e = fds_.find(fd);
        if (!e || e->serial != serial)
            return false;
        std::size_t unlinked = 0; // fd_waiters counts operations, which end on their own
        fail_closed(loop_, e->head, unlinked, [this](FdNode& n) {
            n.prev = nullptr; // the entry is dropped below; detach() then finds it detached
            if (n.op && ops_[n.op - 1].kind == Op::poll)
                drop(n); // an operation proper is cancelled by wake(), which stops it first
        });
        *e = FdEntry{};
        return true;
    }

    bool add_wakeup(int fd) override {
        wake_fd_ = fd;
        submit_wakeup();
        return true; // the read consumes every write: the loop never reads it back
    }

    void remove_wakeup() noexcept override {
        wake_fd_ = -1; // its completion, -ECANCELED or a count, is not followed by another
        if (!wake_.busy || taken_back(wake_tag)) {
            wake_.busy = false;
            return;
        }
        cancel_op(wake_tag);
        // The read holds the eventfd's file, not its number: wait until it let go.
        const auto until = Clock::now() + std::chrono::seconds(5);
        while (wake_.busy && Clock::now() < until) {
            ring_.enter(true, std::min(until, Clock::now() + std::chrono::milliseconds(100)));
            reap(true);
        }
    }

    void cancel(Wait& w) noexcept override {
        for (FdNode& n : w.fds) {
            if (!n.op)
                continue;
            Op& op = ops_[n.op - 1];
            if ((op.kind != Op::io && op.kind != Op::poll_then_io) || op.cancelling)
                continue;
            if (taken_back(n.op)) {
                release_node(n.op, n);
                --w.in_flight;
            } else {
                op.cancelling = true;
                cancel_op(n.op);
            }
        }
        if (!w.in_flight)
            wake(loop_, w);
    }

    void wait(Clock::time_point deadline) override {
        const bool block = deadline != Clock::time_point::min();
        if (!block && ring_.queued() == 0 && fd_waiters == 0 && !wake_pending_)
            return; // work is ready and nothing could complete: no syscall
        for (;;) {
            if (ring_.enter(block && !wake_pending_, deadline) >= 0)
                return;
            if (errno == ETIME)
                return;
            if (errno == EINTR) { // a signal: wait again for what is left of the deadline
                if (block && deadline != Clock::time_point::max() && Clock::now() >= deadline)
                    return;
                continue;
            }
            if (errno == EAGAIN || errno == EBUSY) // completions to reap first
                return;
            throw_errno("io_uring_enter");
        }
    }

    void deliver() noexcept override { reap(false); }

private:
    /// A record of an operation in the kernel. `node` is null once orphaned (its wait
    /// ended while a poll was pending): then the completion only frees the record.
    struct Op {
        enum Kind : std::uint8_t { free, poll, io, poll_then_io, wakeup };
        FdNode* node = nullptr;
        std::uint32_t sqe_pos = 0; // where it was queued (taken back if not yet consumed)
        std::uint32_t next_free = 0;
        Kind kind = free;
        bool cancelling = false;
        bool busy = false; // the wake-up read: in the kernel
    };
    static constexpr std::uint64_t ignored_tag = 0; // cancellations and no-ops
    static constexpr std::uint64_t wake_tag = ~std::uint64_t{0};

    struct FdEntry {
        FdNode* head = nullptr;
        std::uint64_t serial = 0;
    };

    /// Whether the submission of `id` was not consumed yet: it is then turned into a
    /// no-op, which the kernel completes without looking at its fd or buffer.
    bool taken_back(std::uint64_t id) noexcept {
        const Op& op = id == wake_tag ? wake_ : ops_[id - 1];
        if (!ring_.take_back(op.sqe_pos, ignored_tag))
            return false;
        if (id != wake_tag)
            count(Counter::registrations, -1);
        --in_kernel_;
        return true;
    }

    /// Room for one submission, its completion to come. `counted`: an operation for a
    /// wait, counted as a registration by the leak accounting (the wake-up read is
    /// counted by the loop, cancellations are not waited for).
    io_uring_sqe& next_sqe(std::uint32_t& pos, bool counted = true) noexcept {
        io_uring_sqe& sqe = ring_.next_sqe(pos);
        ++in_kernel_;
        if (counted)
            count(Counter::registrations, 1);
        return sqe;
    }

    std::uint32_t new_op() {
        if (free_) {
            std::uint32_t id = free_;
            free_ = ops_[id - 1].next_free;
            return id;
        }
        ops_.emplace_back();
        return static_cast<std::uint32_t>(ops_.size());
    }
    void release(std::uint32_t id) noexcept {
        Op& op = ops_[id - 1];
        op = Op{};
        op.next_free = free_;
        free_ = id;
    }

    /// Queues the next step of operation `id`: its poll, or the operation itself. The
    /// syscall seam (sys.hpp) is asked first, as before a syscall: an injected error
    /// completes the step with it (EAGAIN: wait for readiness first, EINTR: try again),
    /// a shortened size shortens it.
    void prepare(std::uint32_t id) noexcept {
        Op& op = ops_[id - 1];
        FdNode& n = *op.node;
        if (op.kind == Op::io) {
            IoCall call;
            n.io(&n, &call, 0);
            std::size_t len = call.len;
            sys::Call which = call.opcode == IORING_OP_READ    ? sys::Call::read
                              : call.opcode == IORING_OP_WRITE ? sys::Call::write
                              : call.opcode == IORING_OP_RECV  ? sys::Call::recv
                                                               : sys::Call::send;
            if (int e = sys::fault(which, n.fd, len)) {
                if (e == EAGAIN || e == EINTR) {
                    op.kind = e == EAGAIN ? Op::poll_then_io : Op::io;
                    if (e == EAGAIN)
                        return queue_poll(id, n);
                    return prepare(id);
                }
                return complete_now(id, -e);
            }
            io_uring_sqe& sqe = next_sqe(op.sqe_pos);
            sqe.opcode = call.opcode;
            sqe.fd = n.fd;
            sqe.addr = reinterpret_cast<std::uintptr_t>(call.buf);
            sqe.len = static_cast<std::uint32_t>(len);
            if (call.opcode == IORING_OP_READ || call.opcode == IORING_OP_WRITE)
                sqe.off = ~std::uint64_t{0}; // the file's position, as read(2) and write(2)
            else
                sqe.msg_flags = static_cast<std::uint32_t>(call.flags);
            sqe.user_data = id;
            return;
        }
        queue_poll(id, n);
    }

    void queue_poll(std::uint32_t id, FdNode& n) noexcept {
        io_uring_sqe& sqe = next_sqe(ops_[id - 1].sqe_pos);
        sqe.opcode = IORING_OP_POLL_ADD;
        sqe.fd = n.fd;
        sqe.poll32_events =
            ((n.events & READ) ? POLLIN | POLLRDHUP : 0u) | ((n.events & WRITE) ? POLLOUT : 0u);
        sqe.user_data = id;
    }

    /// An injected failure: reported as the operation's completion, without the kernel.
    void complete_now(std::uint32_t id, int res) noexcept {
        FdNode& n = *ops_[id - 1].node;
        n.io(&n, nullptr, res);
        finish_io(id, n, res);
    }

    void submit_wakeup() noexcept {
        io_uring_sqe& sqe = next_sqe(wake_.sqe_pos, false);
        sqe.opcode = IORING_OP_READ;
        sqe.fd = wake_fd_;
        sqe.addr = reinterpret_cast<std::uintptr_t>(&wake_count_);
        sqe.len = sizeof wake_count_;
        sqe.user_data = wake_tag;
        wake_.busy = true;
    }

    /// Asks the kernel to stop operation `id` (its completion follows, -ECANCELED if it
    /// was stopped). The cancellation's own completion is ignored.
    void cancel_op(std::uint64_t id) noexcept {
        std::uint32_t pos;
        io_uring_sqe& sqe = next_sqe(pos, false);
        --in_kernel_; // the cancellation's completion is not waited for
        sqe.opcode = IORING_OP_ASYNC_CANCEL;
        sqe.fd = -1;
        sqe.addr = id;
        sqe.user_data = ignored_tag;
    }

    /// `n` ends while its operation may be in the kernel.
    void drop(FdNode& n) noexcept {
        const std::uint32_t id = std::exchange(n.op, 0);
        --fd_waiters;
        Op& op = ops_[id - 1];
        const bool io = op.kind == Op::io || op.kind == Op::poll_then_io;
        if (io)
            --n.wait->in_flight;
        if (taken_back(id)) {
            release(id);
            return;
        }
        op.node = nullptr; // orphaned: its completion only frees the record
        if (!op.cancelling)
            cancel_op(id);
        op.cancelling = true;
        if (op.kind != Op::io)
            return; // a poll writes nothing into the frame
        // A read may still write into the dying frame: wait until the kernel let go.
        while (ops_[id - 1].kind != Op::free) {
            if (ring_.enter(true, Clock::time_point::max()) < 0 && errno != EINTR &&
                errno != EAGAIN && errno != EBUSY)
                IoRing::fatal("io_uring_enter");
            reap(true);
        }
    }

    /// Handles every completion posted. `quiet`: inside drop(), where the wake-up only
    /// notes that the loop is to run what other threads posted.
    void reap(bool quiet) noexcept {
        ring_.reap([&](std::uint64_t tag, int res) {
            if (tag != ignored_tag)
                complete(tag, res, quiet);
        });
        if (wake_pending_ && !quiet) {
            wake_pending_ = false;
            run_remote(loop_);
        }
    }

    void complete(std::uint64_t tag, int res, bool quiet) noexcept {
        --in_kernel_;
        if (tag != wake_tag)
            count(Counter::registrations, -1);
        if (tag == wake_tag) {
            wake_.busy = false;
            if (wake_fd_ < 0)
                return; // removed
            if (res < 0 && res != -EINTR && res != -EAGAIN) {
                wake_fd_ = -1; // cannot happen to a live eventfd: stop rather than spin
                return;
            }
            submit_wakeup();
            wake_pending_ = true; // run at the end of this reap (or the next, if quiet)
            (void)quiet;
            return;
        }
        const auto id = static_cast<std::uint32_t>(tag);
        Op& op = ops_[id - 1];
        if (!op.node) { // orphaned
            release(id);
            return;
        }
        FdNode& n = *op.node;
        Wait& w = *n.wait;
        if (op.kind == Op::poll || op.kind == Op::poll_then_io) {
            unsigned hit = READ | WRITE; // an error: let the operation meet it
            if (res >= 0) {
                auto e = static_cast<unsigned>(res);
                hit = ((e & (POLLIN | POLLRDHUP | POLLHUP | POLLERR)) ? READ : 0u) |
                      ((e & (POLLOUT | POLLHUP | POLLERR)) ? WRITE : 0u);
            }
            if (op.kind == Op::poll_then_io) { // ready: now the operation itself
                if (op.cancelling)
                    return finish_io(id, n, -ECANCELED);
                op.kind = Op::io;
                return prepare(id);
            }
            n.ready |= hit;
            if (w.woken) // e.g. a Condition woken by another fd: collects this one too
                return release_node(id, n);
            if (!n.perform || n.perform(&n)) {
                release_node(id, n);
                return wake(loop_, w);
            }
            n.ready = 0;
            return queue_poll(id, n); // spurious (EAGAIN after all): wait again
        }
        // An operation proper.
        if ((res == -EAGAIN || res == -EINTR) && !op.cancelling) {
            op.kind = res == -EAGAIN ? Op::poll_then_io : Op::io;
            return res == -EAGAIN ? queue_poll(id, n) : prepare(id);
        }
        if (res == -ECANCELED && op.cancelling)
            return finish_io(id, n, res);
        if (!n.io(&n, nullptr, res) && !op.cancelling)
            return prepare(id); // more to do (writeall after a short write)
        finish_io(id, n, res);
    }

    /// Operation `id` of `n` is over: its wait is woken (it was woken by nothing else).
    /// If it completed although a cancellation was thrown in meanwhile, what it did is
    /// kept and returned, and the cancellation waits for the next co_await (the
    /// hand-off rule); the error of a closed Fd is then dropped.
    void finish_io(std::uint32_t id, FdNode& n, int res) noexcept {
        Wait& w = *n.wait;
        release_node(id, n);
        --w.in_flight;
        if (res >= 0 && w.error) {
            if (w.error == prebuilt_errors().closed)
                w.error = nullptr;
            else if (!w.runner->pending_)
                w.runner->pending_ = std::exchange(w.error, nullptr);
        }
        if (!w.in_flight)
            wake(loop_, w);
    }

    void release_node(std::uint32_t id, FdNode& n) noexcept {
        release(id);
        n.op = 0;
        --fd_waiters;
    }

    IoRing ring_;
    std::vector<Op> ops_;
    std::uint32_t free_ = 0;    // first free record, +1
    std::size_t in_kernel_ = 0; // submissions whose completion is still to come
    FdTable<FdEntry> fds_;

    Op wake_;
    int wake_fd_ = -1;
    std::uint64_t wake_count_ = 0;
    bool wake_pending_ = false;
};

} // namespace xiio::detail
