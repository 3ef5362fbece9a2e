#pragma once
// Channel<T>: a thread-safe bounded FIFO between tasks of different loops (threads).
//
// The state (a ring of `capacity` values, the FIFO lists of waiting getters and putters,
// the closed flag) is guarded by one mutex. An operation that can complete at once does so
// under the mutex and does not suspend. One that cannot links a node (detail::ChannelNode)
// into the state's list and suspends; the node lives in the awaitable, in the waiting
// task's coroutine frame. Whoever completes it later, on any thread, does so under the
// mutex: it moves the value across (into a waiting getter's result, or out of a waiting
// putter into the ring), unlinks the node, marks it handed (or closed) and, still under the
// mutex, posts it to the waiter's loop's RemoteQueue (detail/remote_queue.hpp), whose
// eventfd wakes that loop if it sleeps. The waiter's loop runs the node's remote_done() on
// its own thread, which wakes the task there: a task is only ever resumed by its own loop,
// and a waker never touches another loop's scheduling. A waker on the waiter's own loop
// wakes it directly.
//
// Cancellation (and any exception thrown into the waiting task) reaches the wait through
// Wait::interrupt, on the waiter's thread, which takes the mutex: a node still linked was
// handed nothing, so it is unlinked and the task wakes with the exception (a cancelled get
// takes nothing, a cancelled put leaves nothing). A node no longer linked was handed
// something and is on its way through the remote queue: the exception is kept pending
// for the task's next co_await (as Loop::throw_in does for a running task), and the
// hand-off completes: the getter returns its value, the putter returns. So a value is
// never lost nor duplicated by a race between a hand-off and a cancellation.
//
// Lifetimes. A node is touched by other threads only under the mutex and while it is
// linked; once it is posted it belongs to the remote queue until the waiter's loop took it.
// A frame destroyed while its task waits (loop teardown, a dropped generator) withdraws its
// node from the remote queue if it is still there (under the mutex, which every post holds),
// so the loop never runs a dead node. The state is shared (std::shared_ptr) by the Channel
// and every waiting awaitable: destroying a Channel closes it (its waiters wake on their own
// loops with ClosedError or std::nullopt) and the state lives until the last of them let go,
// so nothing touches freed memory whatever the order.
//
// Keepalive: a waiting task holds its loop's keepalive, like a job on a thread pool. The
// loop then never reports a deadlock while a task waits in a Channel: another thread may
// put or close at any moment, and the loop cannot know whether one will.

#include <xiio/core.hpp>
#include <xiio/detail/remote_queue.hpp>
#include <xiio/sync.hpp>

#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace xiio {

namespace detail {

/// One waiting get or put of a Channel: linked into the channel's list while it waits,
/// then posted to the waiter's loop (a RemoteNode) once it was handed something.
struct ChannelNode final : RemoteNode {
    enum State : unsigned char { idle, waiting, handed, closed, cancelled };

    // Set on the waiter's thread before the node is linked; read by wakers under the mutex.
    Loop* loop = nullptr;
    RemoteQueue* queue = nullptr; // the loop's: the loop outlives the frames of its tasks
    Wait* wait = nullptr;
    void* item = nullptr; // a getter's std::optional<T> result, or a putter's value
    // Under the channel's mutex.
    ChannelNode* prev = nullptr;
    ChannelNode* next = nullptr;
    bool linked = false;
    bool posted = false; // handed to the remote queue (not woken directly)
    State state = idle;
    // The waiter's thread only.
    bool counted = false; // parked: holds a keepalive of `loop` until woken

    void release_keepalive() noexcept {
        if (std::exchange(counted, false))
            loop->keepalive(-1);
    }
    /// On the waiter's thread: the loop took the node (ran) or is gone (not ran: then no
    /// task of it runs any more).
    void remote_done(bool ran) noexcept override {
        if (!ran) {
            counted = false; // the loop is being destroyed: nothing to give back
            return;
        }
        release_keepalive();
        loop->wake(*wait);
    }
};

/// The Wait of a channel operation, which leads Wait::interrupt back to its awaitable.
struct ChannelWait : Wait {
    void* owner = nullptr;
};

/// An intrusive FIFO list of ChannelNodes.
struct ChannelList {
    ChannelNode* head = nullptr;
    ChannelNode* tail = nullptr;

    void push(ChannelNode& n) noexcept {
        n.linked = true;
        n.next = nullptr;
        n.prev = tail;
        (tail ? tail->next : head) = &n;
        tail = &n;
    }
    void unlink(ChannelNode& n) noexcept {
        (n.prev ? n.prev->next : head) = n.next;
        (n.next ? n.next->prev : tail) = n.prev;
        n.prev = n.next = nullptr;
        n.linked = false;
    }
    ChannelNode* pop() noexcept {
        ChannelNode* n = head;
        if (n)
            unlink(*n);
        return n;
    }
};

/// What a Channel and its waiting awaitables share.
template <class T>
struct ChannelState {
    explicit ChannelState(std::size_t cap) : ring(new std::optional<T>[cap]), capacity(cap) {}

    /// Under the mutex: completes the unlinked node `n` with `st` and wakes its task on its
    /// loop, directly if that is this thread's loop, else through the loop's remote queue.
    static void complete(ChannelNode& n, ChannelNode::State st) noexcept {
        n.state = st;
        if (n.loop == current_loop()) { // the waiter's thread: the fields are ours
            n.release_keepalive();
            n.loop->wake(*n.wait);
            return;
        }
        n.posted = true;
        // Fails only if the loop is gone, which cannot be: a linked node's frame is alive,
        // and a loop's frames die before it does.
        [[maybe_unused]] bool queued = n.queue->post(n);
    }

    /// Under the mutex: appends `v` (there is room).
    void push(T&& v) noexcept {
        ring[(head + size) % capacity].emplace(std::move(v));
        ++size;
    }
    /// Under the mutex: moves the oldest value into `out` and refills the freed slot from
    /// the first waiting putter.
    void pop_into(std::optional<T>& out) noexcept {
        std::optional<T>& slot = ring[head];
        out.emplace(std::move(*slot));
        slot.reset();
        head = (head + 1) % capacity;
        --size;
        if (ChannelNode* p = putters.pop()) {
            push(std::move(**static_cast<std::optional<T>*>(p->item)));
            complete(*p, ChannelNode::handed);
        }
    }
    /// Under the mutex: the value `v` goes to the first waiting getter, else into the ring
    /// if there is room; false if neither (v is untouched).
    bool offer(T& v) noexcept {
        if (ChannelNode* g = getters.pop()) { // a getter waits: the ring is empty
            static_cast<std::optional<T>*>(g->item)->emplace(std::move(v));
            complete(*g, ChannelNode::handed);
            return true;
        }
        if (size == capacity)
            return false;
        push(std::move(v));
        return true;
    }
    void close() noexcept {
        std::lock_guard lock(mutex);
        closed = true;
        while (ChannelNode* n = getters.pop())
            complete(*n, ChannelNode::closed);
        while (ChannelNode* n = putters.pop())
            complete(*n, ChannelNode::closed);
    }

    std::mutex mutex;
    std::unique_ptr<std::optional<T>[]> ring; // `size` values from `head`, circular
    std::size_t capacity;
    std::size_t head = 0;
    std::size_t size = 0;
    bool closed = false;
    ChannelList getters; // wait only while the ring is empty
    ChannelList putters; // wait only while it is full
};

/// The machinery of one channel wait: Derived provides try_now() (under the mutex; true:
/// done without waiting, with node_.state handed or closed) and list().
template <class T, class Derived, class R>
class ChannelWaiter : public Leaf<Derived, R> {
public:
    explicit ChannelWaiter(const std::shared_ptr<ChannelState<T>>& s) noexcept : s_(&s) {}
    ChannelWaiter(ChannelWaiter&& o) noexcept : s_(o.s_) {} // only before it is awaited
    ~ChannelWaiter() {
        if (node_.counted)
            leave(); // destroyed while it waits: its frame dies with the loop or generator
        drop_wait(w_);
    }

    bool await_ready() const noexcept { return false; }
    template <XiioPromise P>
    bool await_suspend(std::coroutine_handle<P> h) {
        if (!begin_wait(w_, h))
            return false; // cancelled before waiting: takes nothing, throws
        Loop& loop = *w_.runner->loop;
        ChannelState<T>& s = **s_;
        std::unique_lock lock(s.mutex);
        if (static_cast<Derived*>(this)->try_now()) {
            lock.unlock();
            // Nothing was registered: await_resume has no wait to end (end_wait returns at
            // once without a runner), which spares the fast path the loop's detach().
            Runner& r = *std::exchange(w_.runner, nullptr);
            return out_of_budget(r, h); // takes what it got when it resumes
        }
        try {
            node_.queue = loop.remote().get(); // allocates once per loop, may throw
        } catch (...) {
            w_.runner = nullptr; // see begin_wait: nothing to undo at destruction
            throw;
        }
        keep_ = *s_; // the state outlives the Channel while this waits
        node_.loop = &loop;
        node_.wait = &w_;
        node_.state = ChannelNode::waiting;
        w_.owner = static_cast<Derived*>(this);
        w_.interrupt = &interrupt;
        w_.describe = [](const Wait&, std::string& out) { out += Derived::waits_for; };
        static_cast<Derived*>(this)->list().push(node_);
        lock.unlock();
        // Only this thread reads these, and only it can deliver the node (in its loop).
        node_.counted = true;
        loop.keepalive(+1);
        loop.expect_remote(); // a hand-off from a busy peer comes within microseconds
        loop.suspend(*w_.runner, w_, h);
        return true;
    }

protected:
    /// Ends the wait: throws what was thrown into a waiter that was handed nothing.
    void finish_wait() {
        keep_.reset();
        end_wait(w_);
    }

    /// On the waiter's thread, while it waits, for an exception thrown in (a cancellation,
    /// a loop failure). See the top of this file.
    static void interrupt(Wait* w, std::exception_ptr e) noexcept {
        auto* self = static_cast<Derived*>(static_cast<ChannelWait*>(w)->owner);
        ChannelNode& n = self->node_;
        std::unique_lock lock(self->keep_->mutex);
        if (n.linked) { // handed nothing: stop waiting, take nothing, throw
            static_cast<Derived*>(self)->list().unlink(n);
            n.state = ChannelNode::cancelled;
            lock.unlock();
            n.release_keepalive();
            if (!w->error)
                w->error = std::move(e);
            n.loop->wake(*w);
            return;
        }
        lock.unlock();
        // Handed something, on its way through the remote queue: that wakes the task,
        // which takes it; the exception waits for its next co_await.
        Runner& r = *w->runner;
        if (!r.pending_)
            r.pending_ = std::move(e);
    }

    /// The frame dies while the task waits: unlink, or take the node back from the remote
    /// queue (what it was handed dies with it: no task is left to take it).
    void leave() noexcept {
        std::lock_guard lock(keep_->mutex);
        if (node_.linked)
            static_cast<Derived*>(this)->list().unlink(node_);
        else if (node_.posted)
            node_.queue->withdraw(node_); // every post is made under this mutex
        node_.release_keepalive();
    }

    const std::shared_ptr<ChannelState<T>>* s_;
    std::shared_ptr<ChannelState<T>> keep_; // while it waits
    ChannelNode node_;
    ChannelWait w_;
};

} // namespace detail

/// A bounded FIFO channel between tasks of any loops, on any threads (multi-producer,
/// multi-consumer). put() waits while it is full, get() while it is empty; each waiting
/// task is woken through its own loop (an eventfd write if that loop sleeps, no polling).
/// close(), from any thread, makes later puts and waiting puts throw ClosedError; getters
/// drain what is queued, then get std::nullopt. Waiters are served in FIFO order.
///
/// A task waiting in a Channel keeps its loop alive, as one waiting for a job on another
/// thread does: the loop does not report a deadlock then, because another thread may put
/// or close at any moment. So a task waits forever in a Channel that nobody else will put
/// to or close: close it when the producers are done, or bound the wait (timeout). For
/// tasks of one loop, Queue (xiio/sync.hpp) is cheaper and its deadlocks are reported.
///
/// T must be nothrow move-constructible (wrap other types in a std::unique_ptr): a value
/// moves between threads under the channel's lock, where a throw could not be undone.
/// Destroying a Channel closes it: tasks still waiting wake on their loops with
/// ClosedError or std::nullopt, and the shared state lives until they let go of it.
template <class T>
class Channel {
    static_assert(std::is_nothrow_move_constructible_v<T> && std::is_nothrow_destructible_v<T>,
                  "xiio::Channel: T must be nothrow move-constructible (use a unique_ptr)");
    using State = detail::ChannelState<T>;

public:
    /// Throws std::invalid_argument if capacity is 0, std::bad_alloc.
    explicit Channel(std::size_t capacity) : s_(make(capacity)) {}
    Channel(const Channel&) = delete;
    Channel& operator=(const Channel&) = delete;
    ~Channel() { s_->close(); }

    class [[nodiscard]] Putter : public detail::ChannelWaiter<T, Putter, void> {
        using Base = detail::ChannelWaiter<T, Putter, void>;
        friend Base;

    public:
        static constexpr const char* waits_for = "Channel::put"; // for dump_tasks()
        Putter(const std::shared_ptr<State>& s, T&& v) noexcept : Base(s) {
            value_.emplace(std::move(v));
        }
        Putter(Putter&& o) noexcept : Base(std::move(o)), value_(std::move(o.value_)) {}
        ~Putter() = default;
        void await_resume() {
            this->finish_wait();
            if (this->node_.state == detail::ChannelNode::closed)
                throw ClosedError();
        }

    private:
        bool try_now() noexcept {
            State& s = **this->s_;
            if (s.closed) {
                this->node_.state = detail::ChannelNode::closed;
                return true;
            }
            this->node_.state = detail::ChannelNode::handed;
            if (s.offer(*value_))
                return true;
            this->node_.item = &value_; // a get moves it out when it frees a slot
            return false;
        }
        detail::ChannelList& list() noexcept { return (*this->s_)->putters; }

        std::optional<T> value_;
    };

    class [[nodiscard]] Getter : public detail::ChannelWaiter<T, Getter, std::optional<T>> {
        using Base = detail::ChannelWaiter<T, Getter, std::optional<T>>;
        friend Base;

    public:
        static constexpr const char* waits_for = "Channel::get"; // for dump_tasks()
        explicit Getter(const std::shared_ptr<State>& s) noexcept : Base(s) {}
        Getter(Getter&& o) noexcept : Base(std::move(o)) {}
        ~Getter() = default;
        std::optional<T> await_resume() {
            this->finish_wait();
            return std::move(value_); // empty if closed
        }

    private:
        bool try_now() noexcept {
            State& s = **this->s_;
            this->node_.state = detail::ChannelNode::handed;
            if (s.size > 0) {
                s.pop_into(value_);
                return true;
            }
            if (s.closed) {
                this->node_.state = detail::ChannelNode::closed;
                return true;
            }
            this->node_.item = &value_; // a put moves its value in
            return false;
        }
        detail::ChannelList& list() noexcept { return (*this->s_)->getters; }

        std::optional<T> value_;
    };

    /// Appends `value`, waiting while the channel is full. Throws ClosedError if the
    /// channel is (or gets) closed; the value is then dropped. A cancellation point while
    /// it waits: a cancelled put inserts nothing. Once its value was taken, a cancellation
    /// no longer undoes it: the put returns and the task sees the cancellation at its next
    /// co_await.
    [[nodiscard]] Putter put(T value) noexcept { return Putter(s_, std::move(value)); }
    /// The oldest value, waiting while the channel is empty; std::nullopt once it is closed
    /// and drained. Throws nothing else. A cancellation point while it waits: a cancelled
    /// get takes nothing. Once a value was handed to it, a cancellation no longer undoes
    /// it: the get returns the value and the task sees the cancellation at its next
    /// co_await.
    [[nodiscard]] Getter get() noexcept { return Getter(s_); }

    /// Appends `value` without waiting, from any thread (also one without a loop): false
    /// if the channel is full (then `value` is left as it was). Throws ClosedError if it is
    /// closed. Not a cancellation point.
    bool try_put(T&& value) {
        std::lock_guard lock(s_->mutex);
        if (s_->closed)
            throw ClosedError();
        return s_->offer(value);
    }
    /// The oldest value without waiting, from any thread: std::nullopt if there is none
    /// (see closed()). Throws nothing. Not a cancellation point.
    std::optional<T> try_get() noexcept {
        std::optional<T> out;
        std::lock_guard lock(s_->mutex);
        if (s_->size > 0)
            s_->pop_into(out);
        return out;
    }

    /// Wakes every waiter, from any thread: getters get std::nullopt (the channel is empty
    /// if they wait), putters get ClosedError (their value is not inserted). Closing twice
    /// is fine. Throws nothing.
    void close() noexcept { s_->close(); }

    /// The values queued now (another thread may change it at once).
    std::size_t size() const noexcept {
        std::lock_guard lock(s_->mutex);
        return s_->size;
    }
    std::size_t capacity() const noexcept { return s_->capacity; }
    bool closed() const noexcept {
        std::lock_guard lock(s_->mutex);
        return s_->closed;
    }

private:
    static std::shared_ptr<State> make(std::size_t capacity) {
        if (capacity == 0)
            throw std::invalid_argument("xiio::Channel: capacity must be at least 1");
        return std::make_shared<State>(capacity);
    }

    std::shared_ptr<State> s_;
};

} // namespace xiio
