#pragma once
// Synchronization between tasks of one loop: Event, Semaphore, Lock, Queue.
//
// Every wait is a leaf awaitable holding a detail::Wait and an intrusive SyncNode, linked
// into the primitive's FIFO list of waiters (no allocation, no timer, no polling). Waking
// is a hand-off: the waker unlinks the first waiter, transfers what it gets (a permit, the
// lock, a value, or the acceptance of its value) into its node and wakes it; the waiter
// consumes that in await_resume, always. If the task is cancelled after it was handed
// something but before it resumed, the runtime keeps the cancellation pending for its next
// co_await (see Loop::throw_in), so nothing is lost. A waiter cancelled while still linked
// was handed nothing: the waker skips woken nodes, and the waiter unlinks itself when it
// resumes and throws. So a cancelled waiter takes nothing and loses nothing.
//
// Loop-local: use a primitive only from tasks of one loop (or before it runs).

#include <xiio/core.hpp>

#include <cstddef>
#include <deque>
#include <optional>
#include <stdexcept>
#include <utility>

namespace xiio {

/// Thrown by Queue::put on a closed queue (also to a put waiting when close() is called).
class ClosedError : public std::runtime_error {
public:
    ClosedError() : std::runtime_error("xiio::Queue: closed") {}
};

namespace detail {

/// A waiter in a primitive's FIFO list.
struct SyncNode {
    enum State : unsigned char { waiting, handed, closed };
    Wait* wait = nullptr;
    void* owner = nullptr; // the awaitable holding this node
    SyncNode* prev = nullptr;
    SyncNode* next = nullptr;
    bool linked = false;
    State state = waiting;
};

/// Intrusive FIFO list of waiters.
struct SyncList {
    SyncNode* head = nullptr;
    SyncNode* tail = nullptr;

    bool empty() const noexcept { return !head; }
    void push(SyncNode& n) noexcept {
        n.linked = true;
        n.next = nullptr;
        n.prev = tail;
        (tail ? tail->next : head) = &n;
        tail = &n;
    }
    void unlink(SyncNode& n) noexcept {
        if (!n.linked)
            return;
        (n.prev ? n.prev->next : head) = n.next;
        (n.next ? n.next->prev : tail) = n.prev;
        n.prev = n.next = nullptr;
        n.linked = false;
    }
    /// Unlinks and returns the first waiter that still waits; waiters already woken (by a
    /// cancellation) are unlinked and skipped: they take nothing.
    SyncNode* pop() noexcept {
        while (SyncNode* n = head) {
            unlink(*n);
            if (!n->wait->woken)
                return n;
        }
        return nullptr;
    }
    /// Hands `state` to the first live waiter and wakes it; false if none waits.
    bool wake_one(SyncNode::State state = SyncNode::handed) noexcept {
        SyncNode* n = pop();
        if (!n)
            return false;
        n->state = state;
        n->wait->runner->loop->wake(*n->wait);
        return true;
    }
    void wake_all(SyncNode::State state) noexcept {
        while (wake_one(state)) {
        }
    }
};

/// The machinery of one wait: Derived provides try_now() (true: done without waiting) and
/// list() (where to wait), and reads node_.state in await_resume after finish_wait().
template <class Derived, class R>
class SyncWaiter : public Leaf<Derived, R> {
public:
    SyncWaiter() noexcept = default;
    SyncWaiter(SyncWaiter&&) noexcept {}
    // Destroyed while suspended (loop teardown): leave the list. Whatever it was handed
    // but did not resume to take is dropped with the frame.
    ~SyncWaiter() {
        if (node_.linked)
            list_->unlink(node_);
        drop_wait(w_);
    }

    bool await_ready() const noexcept { return false; }
    template <XiioPromise P>
    bool await_suspend(std::coroutine_handle<P> h) {
        if (!begin_wait(w_, h))
            return false;               // cancelled before waiting: takes nothing, throws
        node_.state = SyncNode::handed; // try_now() may say closed instead
        if (static_cast<Derived*>(this)->try_now())
            return false;
        node_.wait = &w_;
        node_.owner = static_cast<Derived*>(this);
        node_.state = SyncNode::waiting;
        list_ = &static_cast<Derived*>(this)->list();
        list_->push(node_);
        w_.runner->loop->suspend(*w_.runner, w_, h);
        return true;
    }

protected:
    /// Ends the wait; throws the cancellation of a waiter that was handed nothing.
    // A waiter that was handed something was woken by the hand-off, so a later
    // cancellation found no wait to throw into and is pending for the next co_await:
    // end_wait() throws nothing then, and the hand-off is consumed.
    void finish_wait() {
        if (node_.linked)
            list_->unlink(node_);
        end_wait(w_); // throws the cancellation (or loop failure) of a waiting waiter
    }

    SyncNode node_;
    SyncList* list_ = nullptr; // where node_ is linked while it waits
    Wait w_;
};

} // namespace detail

/// A flag tasks wait for. set() wakes every waiter; setting it again is a no-op.
class Event {
public:
    Event() = default;
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;

    void set() noexcept {
        set_ = true;
        waiters_.wake_all(detail::SyncNode::handed);
    }
    bool is_set() const noexcept { return set_; }

    class Waiter : public detail::SyncWaiter<Waiter, void> {
    public:
        explicit Waiter(Event& e) noexcept : e_(&e) {}
        Waiter(Waiter&& o) noexcept : SyncWaiter(std::move(o)), e_(o.e_) {}
        ~Waiter() = default;
        bool try_now() const noexcept { return e_->set_; }
        detail::SyncList& list() noexcept { return e_->waiters_; }
        void await_resume() { finish_wait(); }

    private:
        Event* e_;
    };
    /// Waits until the event is set (returns at once if it is).
    [[nodiscard]] Waiter wait() noexcept { return Waiter(*this); }

private:
    bool set_ = false;
    detail::SyncList waiters_;
};

/// A counting semaphore: acquire() waits for a permit (FIFO), release() returns one.
class Semaphore {
public:
    explicit Semaphore(std::size_t n) noexcept : count_(n) {}
    Semaphore(const Semaphore&) = delete;
    Semaphore& operator=(const Semaphore&) = delete;

    /// Returns a permit: handed to the first waiter, if any.
    void release() noexcept {
        if (!waiters_.wake_one())
            ++count_;
    }
    std::size_t available() const noexcept { return count_; }

    class Acquirer : public detail::SyncWaiter<Acquirer, void> {
    public:
        explicit Acquirer(Semaphore& s) noexcept : s_(&s) {}
        Acquirer(Acquirer&& o) noexcept : SyncWaiter(std::move(o)), s_(o.s_) {}
        ~Acquirer() = default;
        bool try_now() noexcept {
            if (s_->count_ == 0) // a free permit implies nobody waits (hand-off)
                return false;
            --s_->count_;
            return true;
        }
        detail::SyncList& list() noexcept { return s_->waiters_; }
        void await_resume() { finish_wait(); }

    private:
        Semaphore* s_;
    };
    /// Waits for a permit and takes it.
    [[nodiscard]] Acquirer acquire() noexcept { return Acquirer(*this); }

private:
    std::size_t count_;
    detail::SyncList waiters_;
};

/// A mutual-exclusion lock for tasks: `auto guard = co_await lock.lock();`. FIFO.
class Lock {
public:
    Lock() = default;
    Lock(const Lock&) = delete;
    Lock& operator=(const Lock&) = delete;

    /// Holds the lock; unlocks when destroyed (or on unlock()). Movable.
    class [[nodiscard]] Guard {
    public:
        Guard() noexcept = default;
        explicit Guard(Lock& l) noexcept : l_(&l) {}
        Guard(Guard&& o) noexcept : l_(std::exchange(o.l_, nullptr)) {}
        Guard& operator=(Guard&& o) noexcept {
            if (this != &o) {
                unlock();
                l_ = std::exchange(o.l_, nullptr);
            }
            return *this;
        }
        ~Guard() { unlock(); }
        void unlock() noexcept {
            if (Lock* l = std::exchange(l_, nullptr))
                l->unlock();
        }
        bool owns_lock() const noexcept { return l_ != nullptr; }

    private:
        Lock* l_ = nullptr;
    };

    bool locked() const noexcept { return locked_; }

    class Locker : public detail::SyncWaiter<Locker, Guard> {
    public:
        explicit Locker(Lock& l) noexcept : l_(&l) {}
        Locker(Locker&& o) noexcept : SyncWaiter(std::move(o)), l_(o.l_) {}
        ~Locker() = default;
        bool try_now() noexcept {
            if (l_->locked_)
                return false;
            l_->locked_ = true;
            return true;
        }
        detail::SyncList& list() noexcept { return l_->waiters_; }
        Guard await_resume() {
            finish_wait();
            return Guard(*l_);
        }

    private:
        Lock* l_;
    };
    /// Waits until the lock is free and takes it.
    Locker lock() noexcept { return Locker(*this); }

private:
    void unlock() noexcept {
        if (!waiters_.wake_one()) // else ownership passes to the first waiter
            locked_ = false;
    }
    bool locked_ = false;
    detail::SyncList waiters_;
};

/// A bounded FIFO channel between tasks of one loop.
/// put() waits while full; get() waits while empty. close() makes later puts and waiting
/// puts throw ClosedError; getters drain what is queued, then get std::nullopt.
template <class T>
class Queue {
public:
    explicit Queue(std::size_t capacity) : capacity_(capacity) {
        if (capacity == 0)
            throw std::invalid_argument("xiio::Queue: capacity must be at least 1");
    }
    Queue(const Queue&) = delete;
    Queue& operator=(const Queue&) = delete;

    std::size_t size() const noexcept { return items_.size(); }
    std::size_t capacity() const noexcept { return capacity_; }
    bool closed() const noexcept { return closed_; }

    /// Wakes every waiter: getters get std::nullopt (the queue is empty if they wait),
    /// putters get ClosedError (their value is not inserted). Closing twice is fine.
    void close() noexcept {
        closed_ = true;
        getters_.wake_all(detail::SyncNode::closed);
        putters_.wake_all(detail::SyncNode::closed);
    }

    class Putter : public detail::SyncWaiter<Putter, void> {
        using Base = detail::SyncWaiter<Putter, void>;

    public:
        Putter(Queue& q, T value) : q_(&q), value_(std::move(value)) {}
        Putter(Putter&& o) noexcept(std::is_nothrow_move_constructible_v<T>)
            : Base(std::move(o)), q_(o.q_), value_(std::move(o.value_)) {}
        ~Putter() = default;
        bool try_now() {
            if (q_->closed_) {
                this->node_.state = detail::SyncNode::closed;
                return true;
            }
            if (detail::SyncNode* n = q_->getters_.pop()) {
                // A getter waits, so the queue is empty: hand the value over directly.
                static_cast<Getter*>(n->owner)->slot_.emplace(std::move(*value_));
                n->state = detail::SyncNode::handed;
                n->wait->runner->loop->wake(*n->wait);
                return true;
            }
            if (q_->items_.size() < q_->capacity_) {
                q_->items_.push_back(std::move(*value_));
                return true;
            }
            return false;
        }
        detail::SyncList& list() noexcept { return q_->putters_; }
        void await_resume() {
            this->finish_wait();
            if (this->node_.state == detail::SyncNode::closed)
                throw ClosedError();
        }

    private:
        friend class Queue;
        Queue* q_;
        std::optional<T> value_;
    };

    class Getter : public detail::SyncWaiter<Getter, std::optional<T>> {
        using Base = detail::SyncWaiter<Getter, std::optional<T>>;

    public:
        explicit Getter(Queue& q) noexcept : q_(&q) {}
        Getter(Getter&& o) noexcept : Base(std::move(o)), q_(o.q_) {}
        ~Getter() = default;
        bool try_now() {
            if (!q_->items_.empty()) {
                slot_.emplace(std::move(q_->items_.front()));
                q_->items_.pop_front();
                q_->refill();
                return true;
            }
            if (!q_->closed_)
                return false;
            this->node_.state = detail::SyncNode::closed; // closed and drained: nullopt
            return true;
        }
        detail::SyncList& list() noexcept { return q_->getters_; }
        std::optional<T> await_resume() {
            this->finish_wait();
            return std::move(slot_);
        }

    private:
        friend class Queue;
        friend class Putter;
        Queue* q_;
        std::optional<T> slot_;
    };

    /// Appends `value`, waiting while the queue is full. ClosedError if it is closed.
    [[nodiscard]] Putter put(T value) { return Putter(*this, std::move(value)); }
    /// The oldest value, waiting while the queue is empty; std::nullopt once it is closed
    /// and drained.
    [[nodiscard]] Getter get() noexcept { return Getter(*this); }

private:
    /// A slot became free: accept the first waiting putter's value.
    void refill() {
        if (auto* n = putters_.pop()) {
            Putter* p = static_cast<Putter*>(n->owner);
            items_.push_back(std::move(*p->value_));
            n->state = detail::SyncNode::handed;
            n->wait->runner->loop->wake(*n->wait);
        }
    }

    std::size_t capacity_;
    std::deque<T> items_;
    bool closed_ = false;
    detail::SyncList getters_;
    detail::SyncList putters_;
};

} // namespace xiio
