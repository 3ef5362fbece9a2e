#pragma once
// What the loop schedules and what a leaf registers: Runner (a chain of frames), Wait (a
// leaf's registration: deadline, fd nodes, future nodes, all inside the awaitable) and the
// nodes themselves. Shared by the loop (xiio/loop.hpp) and its backends (detail/epoll.hpp,
// detail/io_uring.hpp), which see nothing of each other.

#include <xiio/detail/accounting.hpp>
#include <xiio/detail/std_parts.hpp>

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <limits>
#include <span>
#include <string>

namespace xiio {

using Clock = std::chrono::steady_clock;

/// Readiness an fd can be waited for; unscoped so that READ | WRITE is a plain mask.
enum Events : unsigned { READ = 1, WRITE = 2 };

namespace detail {

class Loop;
struct Wait;

/// A unit of scheduling (the original's Task): runs one chain of awaiting coroutine frames.
struct Runner {
    explicit Runner(Loop& l) noexcept;
    Runner(const Runner&) = delete;
    Runner& operator=(const Runner&) = delete;
    virtual ~Runner() {
        retire();
        count(Counter::runners, -1);
    }
    /// Called once the outermost frame reached its final suspend point (from inside it:
    /// the frame must not be destroyed here, see Loop::bury).
    virtual void finished() noexcept {}
    /// Called instead of starting a runner that got an exception before it ever ran.
    virtual void abandon() noexcept {}
    /// After Loop::bury(): destroy the finished frame now. May destroy the runner.
    virtual void buried() noexcept {}
    /// Leaves the loop's list of live runners (a finished member may outlive the loop).
    void retire() noexcept;

    Loop* loop;
    std::coroutine_handle<> resume_; // where the loop continues this runner
    Wait* wait_ = nullptr;           // the leaf it is suspended in, while not yet woken
    std::exception_ptr pending_;     // thrown at its next co_await (thrown in while running)
    Runner* next_ready_ = nullptr;
    /// Awaits it may still complete without suspending before it must yield (see
    /// out_of_budget in core.hpp); refilled whenever the loop resumes it.
    static constexpr std::uint8_t budget = 128;
    std::uint8_t budget_ = budget;
    bool queued_ = false;
    bool started_ = true; // group members start false: never run if cancelled first
    // The next fields fill what would be padding: a group member lives in front of its
    // frame, in room every frame reserves (see task.hpp), so its size is every frame's.
    bool root_ : 1 = false;              // in the loop's roots (else a group's member)
    bool member_done_ : 1 = false;       // a member: finished by value, error or cancellation
    bool member_cancelled_ : 1 = false;  // a member: ended by a CancelledError
    bool member_has_frame_ : 1 = false;  // a member: its frame is not yet released
    std::atomic<std::uint32_t> refs_{0}; // a member: running (1) + its TaskHandles
    Runner* prev_sibling_ = nullptr;     // the loop's roots, or the group's members
    Runner* next_sibling_ = nullptr;
};

/// Runners linked through their sibling links: the loop's roots, the members of a group.
/// A group's list is known to the loop (Loop::add_members), so a failure reaches every
/// runner.
struct RunnerList {
    Runner* head = nullptr;
    Runner* tail = nullptr;
    RunnerList* prev = nullptr; // the loop's lists of members
    RunnerList* next = nullptr;

    void push_back(Runner& r) noexcept {
        r.prev_sibling_ = tail;
        r.next_sibling_ = nullptr;
        (tail ? tail->next_sibling_ : head) = &r;
        tail = &r;
    }
    void erase(Runner& r) noexcept {
        (r.prev_sibling_ ? r.prev_sibling_->next_sibling_ : head) = r.next_sibling_;
        (r.next_sibling_ ? r.next_sibling_->prev_sibling_ : tail) = r.prev_sibling_;
        r.prev_sibling_ = r.next_sibling_ = nullptr;
    }
};

/// One step of an operation as a completion backend hands it to the kernel (FdNode::io).
struct IoCall {
    std::uint8_t opcode = 0; // IORING_OP_READ, _WRITE, _RECV or _SEND
    void* buf = nullptr;
    std::uint32_t len = 0;
    int flags = 0; // msg_flags of RECV and SEND
};

/// A waiter on one fd, linked into that fd's entry in the loop.
struct FdNode {
    Wait* wait = nullptr;
    int fd = -1;
    unsigned events = 0; // wanted
    unsigned ready = 0;  // reported
    bool attached = false;
    bool tallied = false; // counted among the woken waiters of its entry
    /// Optional: tries the I/O once the fd is reported ready, so that spurious readiness
    /// (EAGAIN after all) keeps the task waiting instead of waking it. True = done.
    bool (*perform)(FdNode*) = nullptr;
    /// Optional, for a completion backend (io_uring), which performs the operation itself:
    /// with `call` set, describes its next step (returns false if there is none); with
    /// `call` null, takes that step's result (a count, or -errno) and returns whether the
    /// operation is over (writeall continues after a short write).
    bool (*io)(FdNode*, IoCall* call, int result) = nullptr;
    FdNode* prev = nullptr;
    FdNode* next = nullptr;
    std::uint32_t op = 0; // the backend's record of what is in the kernel for it, +1
};

struct FutureNode;

/// The waiters of one future (intrusive, FIFO). Circular through the nodes, so the list
/// itself is one pointer (it is part of every group member, see FrameRoom).
struct WaiterList {
    FutureNode* last = nullptr; // last->next is the first
    FutureNode* first() const noexcept;
    FutureNode* after(const FutureNode* n) const noexcept; // null after the last
    void push(FutureNode& n) noexcept;
    void unlink(FutureNode& n) noexcept;
};

struct FutureNode {
    Wait* wait = nullptr;
    WaiterList* list = nullptr; // null once detached or once the future died
    bool reads_value = false;   // resumes reading the future (not just its doneness)
    FutureNode* prev = nullptr;
    FutureNode* next = nullptr;
};

/// A leaf's registration: deadline + fd nodes + future nodes, owned by the awaitable.
struct Wait {
    static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();

    Runner* runner = nullptr;
    std::exception_ptr error; // thrown at await_resume instead of the result
    bool woken = false;
    Clock::time_point deadline = Clock::time_point::max();
    std::uint64_t seq = 0;
    std::size_t heap_index = npos;
    bool transient_fds = false; // a node of it waits on an fd no Fd owns (epoll.hpp: tally)
    std::uint8_t in_flight = 0; // operations of it the kernel may still write (io_uring)
    std::span<FdNode> fds;
    std::span<FutureNode> futures;
    /// Set by waits that must not simply be woken when an exception is thrown in (a task
    /// group's join forwards it to its members instead).
    void (*interrupt)(Wait*, std::exception_ptr) = nullptr;
    /// Set, when they suspend, by waits that registered nothing the loop could name (a
    /// group's join, a sync primitive, a job on a thread): appends what the wait is for to
    /// the text of xiio::dump_tasks(). Only read by it.
    void (*describe)(const Wait&, std::string&) = nullptr;
};

/// What an Fd knows of its registration, which lives in the loop's table (Loop::claim).
/// Plain values, no pointers either way: an Fd can be moved, or outlive its loop, or be
/// closed on another thread, without the loop ever writing into it or it into the loop.
struct FdState {
    std::uint64_t loop = 0;   // id of the loop that owns a registration of it, 0 if none
    std::uint64_t serial = 0; // that registration (never reused: a stale one never matches)
    bool nonblocking = false; // known O_NONBLOCK (a socket, or claimed): no fcntl needed
};

inline FutureNode* WaiterList::first() const noexcept {
    return last ? last->next : nullptr;
}
inline FutureNode* WaiterList::after(const FutureNode* n) const noexcept {
    return n == last ? nullptr : n->next;
}
inline void WaiterList::push(FutureNode& n) noexcept {
    n.list = this;
    if (!last) {
        n.prev = n.next = &n;
    } else {
        n.prev = last;
        n.next = last->next;
        last->next->prev = &n;
        last->next = &n;
    }
    last = &n;
}
inline void WaiterList::unlink(FutureNode& n) noexcept {
    if (n.next == &n) {
        last = nullptr;
    } else {
        n.prev->next = n.next;
        n.next->prev = n.prev;
        if (last == &n)
            last = n.prev;
    }
    n.prev = n.next = nullptr;
    n.list = nullptr;
}

} // namespace detail
} // namespace xiio
