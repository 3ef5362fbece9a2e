#pragma once
// The plumbing of on_loop(): a call from one loop (the caller's) to a LoopThread's loop
// (the host's). See xiio/loops.hpp for the contract and docs/design.md for the walk.
//
// One call is one heap block (LoopCall<T>, shared) with three RemoteNodes, each posted at
// most once and each holding a reference to the call while it is queued (its `self`):
// - start: caller -> host. Its remote_done adds the guest task (made on the caller's
//   thread, so that nothing on the host allocates) to the host's group of calls;
// - cancel: caller -> host, if the awaiting task is cancelled (or destroyed) while it
//   waits. Its remote_done throws the caller's cancellation into the guest;
// - done: host -> caller. The guest's ticket posts it when the guest's frame is
//   destroyed, whether the guest ran or not; its remote_done wakes the awaiting task.
// The outcome (value, exception, or "the host stopped") is written on the host's thread
// before `done` is posted and read on the caller's after it was taken: the queue's mutex
// hands it over. Every other field belongs to one thread, as marked.
//
// Keepalive: the caller's loop counts the call while its task waits (+1 when start was
// posted, -1 when done arrives or the wait goes away), so waiting for another loop is not
// a deadlock. The host's LoopThread keeps its own loop alive for its whole life.

#include <xiio/core.hpp>
#include <xiio/multiplex.hpp>

#include <atomic>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <variant>

namespace xiio::detail {

/// What a LoopHandle names: a loop's remote queue, and whether that loop takes calls.
/// A LoopThread's port also keeps the group its calls run in (the host's thread only).
struct LoopPort : std::enable_shared_from_this<LoopPort> {
    std::uint64_t loop_id = 0;
    std::shared_ptr<RemoteQueue> queue; // the loop's; closed once the loop is gone
    bool hosts = false;                 // a LoopThread's loop: takes calls

    // The host's thread only.
    TaskGroup* group = nullptr; // where calls start; null once it stops taking them
    bool stopping = false;      // the LoopThread is being destroyed: calls end as "gone"
    Loop* loop = nullptr;

    /// From any thread: the loop still runs (its queue is not closed).
    bool running() const noexcept { return queue && !queue->closed(); }
};

/// The LoopThread port of this thread while its loop runs (see this_loop()).
inline LoopPort*& hosting_port() noexcept {
    thread_local LoopPort* port = nullptr;
    return port;
}

/// The parts of a call that do not depend on T.
struct LoopCallBase : std::enable_shared_from_this<LoopCallBase> {
    /// A RemoteNode that forwards to the call (three of them, each posted at most once).
    struct Node final : RemoteNode {
        LoopCallBase* call = nullptr;
        void (*on_done)(LoopCallBase&, bool ran) noexcept = nullptr;
        std::shared_ptr<LoopCallBase> self; // the call, while the node is queued
        void remote_done(bool ran) noexcept override {
            std::shared_ptr<LoopCallBase> keep = std::move(self); // may be the last one
            on_done(*call, ran);
        }
        /// Posts this node to `q` holding the call; false if that loop is gone.
        bool post(RemoteQueue& q) noexcept {
            self = call->shared_from_this();
            if (q.post(*this))
                return true;
            self.reset();
            return false;
        }
    };
    /// The caller's wait, which a cancellation reaches through `interrupt`.
    struct CallWait : Wait {
        LoopCallBase* call = nullptr;
    };

    LoopCallBase() noexcept {
        start.call = cancel.call = done.call = this;
        start.on_done = &LoopCallBase::started;
        cancel.on_done = &LoopCallBase::cancelled;
        done.on_done = &LoopCallBase::answered;
    }
    LoopCallBase(const LoopCallBase&) = delete;
    LoopCallBase& operator=(const LoopCallBase&) = delete;
    virtual ~LoopCallBase() = default;

    Node start, cancel, done;

    // Set on the caller's thread before start is posted, then read on the host's.
    std::shared_ptr<LoopPort> host;
    std::shared_ptr<RemoteQueue> reply; // the caller's loop's queue
    Task<void> guest;                   // until the host takes it (or drops it)
    bool posted = false;                // start was posted: the guest will answer
    // Set on the caller's thread before cancel is posted, then read on the host's.
    std::exception_ptr cancel_error;
    // Written on the host's thread before done is posted, then read on the caller's.
    std::exception_ptr error;
    bool gone = false; // the host stopped (or was gone) before the task could finish

    // The host's thread only.
    Runner* guest_runner = nullptr; // while the guest runs there

    // The caller's thread only.
    Loop* caller = nullptr;
    CallWait* wait = nullptr;      // the suspended awaiter, until answered or gone
    std::exception_ptr interrupt_; // the caller's cancellation, rethrown at the end
    bool cancel_posted = false;

    /// The caller stops waiting (answered, cancelled away, or its frame is destroyed).
    void stop_waiting() noexcept {
        if (std::exchange(wait, nullptr))
            caller->keepalive(-1);
    }

    /// Caller's thread: forward `e` to the guest once; the caller waits on for it.
    void forward_cancel(std::exception_ptr e) noexcept {
        if (cancel_posted)
            return;
        cancel_posted = true;
        cancel_error = std::move(e);
        cancel.post(*host->queue); // if the host is gone, the guest was dropped: done comes
    }

    static void on_interrupt(Wait* w, std::exception_ptr e) {
        LoopCallBase& c = *static_cast<CallWait*>(w)->call;
        if (!c.interrupt_)
            c.interrupt_ = e;
        c.forward_cancel(std::move(e));
    }

    /// Host's thread: start the guest in the LoopThread's group, or drop it (the host
    /// stops, or its loop is torn down: `ran` false), which answers "gone" through the
    /// guest's ticket. Allocates nothing: the guest's frame has room for its member.
    static void started(LoopCallBase& c, bool ran) noexcept {
        LoopPort& port = *c.host;
        if (ran && port.group) {
            try {
                // Throws only if the group is closed: not while it takes calls.
                c.guest_runner = port.group->add_task(std::move(c.guest)).member();
                return;
            } catch (...) {
            }
        }
        c.guest = Task<void>(); // destroys the frame: the ticket answers "gone"
    }
    /// Host's thread: the caller was cancelled; the guest gets its CancelledError.
    static void cancelled(LoopCallBase& c, bool ran) noexcept {
        if (ran && c.guest_runner)
            c.guest_runner->loop->throw_in(*c.guest_runner, c.cancel_error);
    }
    /// Caller's thread: the guest answered; wake the awaiting task if it still waits.
    static void answered(LoopCallBase& c, bool) noexcept {
        if (CallWait* w = c.wait) {
            c.stop_waiting();
            c.caller->wake(*w);
        }
    }
    /// Host's thread, when the guest's frame is destroyed (ran or not): post done. A caller
    /// that awaits one call after another posts the next within microseconds: the host
    /// watches its queue for a moment before it sleeps (Loop::expect_remote), as a thread
    /// pool's idle worker does, which saves an eventfd write and a wake-up per call.
    void answer() noexcept {
        guest_runner = nullptr;
        if (host->group)
            host->loop->expect_remote();
        if (!error && !has_value())
            gone = true;
        done.post(*reply); // if the caller's loop is gone, nobody waits any more
    }
    virtual bool has_value() const noexcept = 0;
};

template <class T>
struct LoopCall final : LoopCallBase {
    using Value = std::conditional_t<std::is_void_v<T>, std::monostate, T>;
    std::optional<Value> value; // the host's thread, then the caller's (see error)
    bool has_value() const noexcept override { return value.has_value(); }

    /// Caller's thread, after the answer: the value, or rethrows.
    T take() {
        if (interrupt_) // cancelled here: that is what the awaiting task hears
            std::rethrow_exception(interrupt_);
        if (gone)
            throw std::logic_error("xiio::on_loop: the loop is gone, or stopped before the task "
                                   "finished there (its LoopThread was destroyed)");
        if (error)
            std::rethrow_exception(error);
        if constexpr (!std::is_void_v<T>)
            return std::move(*value);
    }
};

/// A parameter of the guest coroutine: when the guest's frame is destroyed (after it ran,
/// or unstarted because the host dropped it) it answers the caller. Never copied. The
/// call holds the guest (until the host takes it) and the guest the call: whoever drops
/// the guest unstarted breaks that cycle (the host's started(), or the awaiter if the
/// start was never posted).
struct GuestTicket {
    std::shared_ptr<LoopCallBase> call; // keeps the call while the guest may run
    explicit GuestTicket(std::shared_ptr<LoopCallBase> c) noexcept : call(std::move(c)) {}
    GuestTicket(GuestTicket&& o) noexcept : call(std::exchange(o.call, nullptr)) {}
    GuestTicket(const GuestTicket&) = delete;
    GuestTicket& operator=(const GuestTicket&) = delete;
    ~GuestTicket() {
        if (call && call->posted)
            call->answer();
    }
};

/// Whether an exception is a CancelledError.
inline bool is_cancelled(const std::exception_ptr& e) noexcept {
    try {
        std::rethrow_exception(e);
    } catch (const CancelledError&) {
        return true;
    } catch (...) {
        return false;
    }
}

/// The task that runs on the host: awaits the caller's task there and keeps its outcome
/// in the call. It catches everything, so the LoopThread's group never sees an error
/// (one failing call must not cancel the others). A CancelledError while the LoopThread
/// stops is reported as "gone" (the caller did not ask for it).
template <class T>
Task<void> guest_task(GuestTicket ticket, LoopCall<T>* call, Task<T> task) {
    try {
        if constexpr (std::is_void_v<T>) {
            co_await std::move(task);
            call->value.emplace();
        } else {
            call->value.emplace(co_await std::move(task));
        }
    } catch (...) {
        call->error = std::current_exception();
    }
    if (call->error && call->host->stopping && is_cancelled(call->error))
        call->error = nullptr; // answer() reports "gone"
    (void)ticket;
}

/// The leaf a task waits in while its call runs on the other loop.
template <class T>
class [[nodiscard]] CallAwaiter {
public:
    explicit CallAwaiter(std::shared_ptr<LoopCall<T>> call) noexcept : call_(std::move(call)) {}
    CallAwaiter(CallAwaiter&& o) noexcept : call_(std::move(o.call_)) {}
    ~CallAwaiter() {
        if (!call_)
            return;
        if (call_->wait) { // frame destroyed while suspended: the guest is of no use now
            call_->stop_waiting();
            call_->forward_cancel(std::make_exception_ptr(CancelledError{}));
        }
        if (!call_->posted)
            call_->guest = Task<void>(); // it holds nothing of ours: no answer will come
        drop_wait(w_);
    }

    bool await_ready() const noexcept { return false; }
    template <XiioPromise P>
    bool await_suspend(std::coroutine_handle<P> h) {
        if (!begin_wait(w_, h))
            return false; // cancelled before it was posted: the guest never runs
        Loop& loop = *w_.runner->loop;
        try {
            call_->reply = loop.remote();
        } catch (...) {
            w_.runner = nullptr;
            throw;
        }
        call_->posted = true;
        if (!call_->start.post(*call_->host->queue)) { // the host is gone
            call_->posted = false;
            call_->gone = true;
            return false;
        }
        call_->caller = &loop;
        call_->wait = &w_;
        w_.call = call_.get();
        w_.interrupt = &LoopCallBase::on_interrupt;
        w_.describe = [](const Wait&, std::string& out) { out += "a task on another loop"; };
        loop.keepalive(+1);
        loop.expect_remote();
        loop.suspend(*w_.runner, w_, h);
        return true;
    }
    T await_resume() {
        call_->stop_waiting();
        w_.interrupt = nullptr;
        end_wait(w_); // a cancellation found before it was posted
        return call_->take();
    }

private:
    std::shared_ptr<LoopCall<T>> call_;
    LoopCallBase::CallWait w_;
};

} // namespace xiio::detail
