#pragma once
// Synchronization between tasks of one loop: Event, Semaphore, Lock, Queue.
//
// Every wait is a leaf awaitable holding a detail::Wait and an intrusive SyncNode, linked
// into the primitive's FIFO list of waiters (no allocation, no timer, no polling). Waking
// is a hand-off: the waker unlinks the first waiter, transfers what it gets (a permit, the
// lock, a value, or the acceptance of its value) into its node and wakes it; the waiter
// consumes that in await_resume, always. (A Queue hands a getter a claim on a value that
// stays queued until the getter moves it out: a move that throws loses nothing.) If the
// task is cancelled after it was handed something but before it resumed, the runtime keeps
// the cancellation pending for its next co_await (see Loop::throw_in), so nothing is lost.
// A waiter cancelled while still linked was handed nothing: the waker skips woken nodes,
// and the waiter unlinks itself when it resumes and throws. So a cancelled waiter takes
// nothing and loses nothing.
//
// Loop-local: use a primitive only from tasks of one loop (or before it runs).

#include <xiio/core.hpp>

#include <cstddef>
#include <deque>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
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
    /// The first waiter that still waits, left linked (woken ones are unlinked and skipped),
    /// or null: for a hand-off that may throw before it is done, which must leave the
    /// waiter waiting if it does.
    SyncNode* front() noexcept {
        while (SyncNode* n = head) {
            if (!n->wait->woken)
                return n;
            unlink(*n);
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
        bool now;
        try {
            now = static_cast<Derived*>(this)->try_now(); // a value's move may throw
        } catch (...) {
            w_.runner = nullptr; // see begin_wait: nothing to undo at destruction
            throw;
        }
        if (now)
            return out_of_budget(*w_.runner, h); // takes what it got when it resumes
        node_.wait = &w_;
        w_.describe = &describe; // only now: a wait that completes at once never reads it
        node_.owner = static_cast<Derived*>(this);
        node_.state = SyncNode::waiting;
        list_ = &static_cast<Derived*>(this)->list();
        list_->push(node_);
        w_.runner->loop->suspend(*w_.runner, w_, h);
        return true;
    }

    static void describe(const Wait&, std::string& out) { out += Derived::waits_for; }

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

    class [[nodiscard]] Waiter : public detail::SyncWaiter<Waiter, void> {
    public:
        static constexpr const char* waits_for = "Event::wait"; // for dump_tasks()
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
/// `auto permit = co_await sem.guard();` takes one that is returned at scope exit.
class Semaphore {
public:
    explicit Semaphore(std::size_t n) noexcept : count_(n) {}
    Semaphore(const Semaphore&) = delete;
    Semaphore& operator=(const Semaphore&) = delete;

    /// Holds one permit; returns it (Semaphore::release()) when destroyed, or on release().
    /// Movable: the moved-from guard holds nothing, so a permit is returned once. The
    /// constructor from a Semaphore adopts a permit taken with acquire().
    class [[nodiscard]] Guard {
    public:
        Guard() noexcept = default;
        explicit Guard(Semaphore& s) noexcept : s_(&s) {}
        Guard(Guard&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
        Guard& operator=(Guard&& o) noexcept {
            if (this != &o) {
                release();
                s_ = std::exchange(o.s_, nullptr);
            }
            return *this;
        }
        ~Guard() { release(); }
        /// Returns the permit now (handed to the first waiter, if any); then a no-op.
        void release() noexcept {
            if (Semaphore* s = std::exchange(s_, nullptr))
                s->release();
        }
        bool owns_permit() const noexcept { return s_ != nullptr; }

    private:
        Semaphore* s_ = nullptr;
    };

    /// Returns a permit: handed to the first waiter, if any.
    void release() noexcept {
        if (!waiters_.wake_one())
            ++count_;
    }
    std::size_t available() const noexcept { return count_; }

    class [[nodiscard]] Acquirer : public detail::SyncWaiter<Acquirer, void> {
    public:
        static constexpr const char* waits_for = "Semaphore::acquire"; // for dump_tasks()
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

    class GuardAcquirer : public detail::SyncWaiter<GuardAcquirer, Guard> {
    public:
        static constexpr const char* waits_for = "Semaphore::guard"; // for dump_tasks()
        explicit GuardAcquirer(Semaphore& s) noexcept : s_(&s) {}
        GuardAcquirer(GuardAcquirer&& o) noexcept : SyncWaiter(std::move(o)), s_(o.s_) {}
        ~GuardAcquirer() = default;
        bool try_now() noexcept {
            if (s_->count_ == 0)
                return false;
            --s_->count_;
            return true;
        }
        detail::SyncList& list() noexcept { return s_->waiters_; }
        Guard await_resume() {
            finish_wait();
            return Guard(*s_); // noexcept: once finish_wait() returned, the permit is ours
        }

    private:
        Semaphore* s_;
    };
    /// Waits for a permit (FIFO, like acquire()) and takes it, held by the Guard it returns.
    /// A cancellation point while it waits: a cancelled guard() throws CancelledError (as
    /// it throws anything else thrown into the waiting task) and takes no permit: one
    /// released meanwhile goes to the next waiter, or stays available. Cancelled after a
    /// permit was handed to it, it still returns the Guard, and the task sees the
    /// cancellation at its next co_await. Throws nothing else.
    [[nodiscard]] GuardAcquirer guard() noexcept { return GuardAcquirer(*this); }

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

    class [[nodiscard]] Locker : public detail::SyncWaiter<Locker, Guard> {
    public:
        static constexpr const char* waits_for = "Lock::lock"; // for dump_tasks()
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
///
/// Strong guarantee: if moving a value throws (or the queue cannot grow), nothing is lost
/// and nobody is woken for nothing. A put whose value cannot be stored throws and stores
/// nothing (a waiting getter keeps waiting); a get whose value cannot be moved into its
/// result throws and leaves the value queued, first in line (passed to the next waiting
/// getter, if any; the queue may then hold one more than its capacity); a waiting put
/// whose value cannot be moved in when a get freed its slot is woken with that exception
/// (the get succeeds), and the next waiting put gets the slot.
///
/// The queue must outlive every get awaiting it, also one a put woke that has not run yet:
/// the value stays in the queue until that get takes it.
template <class T>
class Queue {
    // A getter claims a value when it is due one (at once if one is queued, or from the
    // put that wakes it) and moves it out when it runs, which may be later (a put woke it;
    // a get that completes at once may yield to the loop before it resumes). The
    // value stays in items_ until that single move, straight into the getter's result,
    // succeeded: a throwing move then loses nothing. The claimed values are the first
    // `claimed_` of items_; a getter holds a pointer to its own (deque references survive
    // pushes at the back and pops of other elements at the front), so getters that run
    // out of order still get the values in the order they claimed them. Taken values are
    // popped once every older one is taken too. A claimed value whose getter cannot take
    // it goes to the next waiting getter, or becomes an orphan: claimed by nobody, the
    // oldest value of the queue, claimed by the next get.
    struct Slot {
        explicit Slot(T&& v) : value(std::move(v)) {}
        T value;
        bool taken = false;
        bool orphan = false;
    };

public:
    explicit Queue(std::size_t capacity) : capacity_(capacity) {
        if (capacity == 0)
            throw std::invalid_argument("xiio::Queue: capacity must be at least 1");
    }
    Queue(const Queue&) = delete;
    Queue& operator=(const Queue&) = delete;

    /// The values queued (not those already due to a getter that has not run yet).
    std::size_t size() const noexcept { return items_.size() - claimed_ + orphans_; }
    std::size_t capacity() const noexcept { return capacity_; }
    bool closed() const noexcept { return closed_; }

    /// Wakes every waiter: getters get std::nullopt (the queue is empty if they wait),
    /// putters get ClosedError (their value is not inserted). Closing twice is fine.
    void close() noexcept {
        closed_ = true;
        getters_.wake_all(detail::SyncNode::closed);
        putters_.wake_all(detail::SyncNode::closed);
    }

    class Getter;

    class [[nodiscard]] Putter : public detail::SyncWaiter<Putter, void> {
        using Base = detail::SyncWaiter<Putter, void>;

    public:
        static constexpr const char* waits_for = "Queue::put"; // for dump_tasks()
        Putter(Queue& q, T value) : q_(&q), value_(std::move(value)) {}
        Putter(Putter&& o) noexcept(std::is_nothrow_move_constructible_v<T>)
            : Base(std::move(o)), q_(o.q_), value_(std::move(o.value_)) {}
        ~Putter() = default;
        // Stores with deque::emplace_back (strong): if it throws, the exception leaves
        // await_suspend into this task, the value is still ours, and a waiting getter
        // stays linked (it leaves the list only after the store).
        bool try_now() {
            if (q_->closed_) {
                this->node_.state = detail::SyncNode::closed;
                return true;
            }
            if (detail::SyncNode* n = q_->getters_.front()) {
                // A getter waits, so every queued value is claimed: this one is the next,
                // and the getter's.
                q_->items_.emplace_back(std::move(*value_));
                ++q_->claimed_;
                q_->getters_.unlink(*n);
                q_->hand(*n, q_->items_.back());
                return true;
            }
            if (q_->size() < q_->capacity_) {
                q_->items_.emplace_back(std::move(*value_));
                return true;
            }
            return false;
        }
        detail::SyncList& list() noexcept { return q_->putters_; }
        void await_resume() {
            this->finish_wait();
            if (error_) // accepted by a get's refill, but the value could not be moved in
                std::rethrow_exception(std::exchange(error_, nullptr));
            if (this->node_.state == detail::SyncNode::closed)
                throw ClosedError();
        }

    private:
        friend class Queue;
        Queue* q_;
        std::optional<T> value_;
        std::exception_ptr error_;
    };

    class [[nodiscard]] Getter : public detail::SyncWaiter<Getter, std::optional<T>> {
        using Base = detail::SyncWaiter<Getter, std::optional<T>>;

    public:
        static constexpr const char* waits_for = "Queue::get"; // for dump_tasks()
        explicit Getter(Queue& q) noexcept : q_(&q) {}
        Getter(Getter&& o) noexcept : Base(std::move(o)), q_(o.q_) {}
        // Destroyed with a claim it did not take (its frame destroyed before it ran: loop
        // teardown): the value stays queued as an orphan. Nobody is woken: no task is left
        // to run.
        ~Getter() {
            if (slot_) {
                slot_->orphan = true;
                ++q_->orphans_;
            }
        }
        bool try_now() noexcept {
            if (Slot* s = q_->claim())
                slot_ = s;
            else if (!q_->closed_)
                return false;
            else
                this->node_.state = detail::SyncNode::closed; // closed and drained: nullopt
            return true;
        }
        detail::SyncList& list() noexcept { return q_->getters_; }
        std::optional<T> await_resume() {
            this->finish_wait();
            if (!slot_) // closed
                return std::nullopt;
            Take take{*this};
            // A prvalue: built in place as the caller's result, no second move.
            return std::optional<T>(std::in_place, std::move(slot_->value));
        }

    private:
        friend class Queue;

        /// Ends a take after the result was built (its destructor runs after the return
        /// value is constructed): the value is taken, or, if the move threw (an exception
        /// more is in flight), it stays queued and goes to someone else.
        struct Take {
            Getter& g;
            int unwinding = std::uncaught_exceptions();
            ~Take() {
                Slot& s = *std::exchange(g.slot_, nullptr);
                if (std::uncaught_exceptions() > unwinding)
                    g.q_->release(s);
                else
                    g.q_->taken(s);
            }
        };

        Queue* q_;
        Slot* slot_ = nullptr; // the claimed value
    };

    /// Appends `value`, waiting while the queue is full. Throws ClosedError if the queue is
    /// (or gets) closed, and whatever moving `value` into the queue throws (then nothing is
    /// inserted). A cancellation point while it waits; a cancelled put inserts nothing.
    [[nodiscard]] Putter put(T value) { return Putter(*this, std::move(value)); }
    /// The oldest value, waiting while the queue is empty; std::nullopt once it is closed
    /// and drained. Throws whatever moving the value into the result throws (the value
    /// then stays queued, first in line). A cancellation point while it waits; a cancelled
    /// get takes nothing.
    [[nodiscard]] Getter get() noexcept { return Getter(*this); }

private:
    /// Claims the oldest unclaimed value for a get that does not wait, or null. The orphans
    /// come first (they are older than every unclaimed value); they are found by a walk
    /// over the claimed values, which only a failed take makes necessary.
    Slot* claim() noexcept {
        Slot* s = nullptr;
        if (orphans_ > 0) {
            for (Slot& c : items_)
                if (c.orphan) {
                    s = &c;
                    break;
                }
            s->orphan = false;
            --orphans_;
        } else if (claimed_ < items_.size()) {
            s = &items_[claimed_++];
        } else {
            return nullptr;
        }
        refill(); // a slot was freed
        return s;
    }

    /// Gives the claimed value `s` to the waiting getter `n` (unlinked) and wakes it.
    void hand(detail::SyncNode& n, Slot& s) noexcept {
        static_cast<Getter*>(n.owner)->slot_ = &s;
        n.state = detail::SyncNode::handed;
        n.wait->runner->loop->wake(*n.wait);
    }

    /// The claimed value `s` was moved out: pop the taken values at the front.
    void taken(Slot& s) noexcept {
        s.taken = true;
        while (!items_.empty() && items_.front().taken) {
            items_.pop_front();
            --claimed_;
        }
    }

    /// A getter could not take its claimed value `s`: the next waiting getter gets it (no
    /// move needed), else it is left for the next get.
    void release(Slot& s) noexcept {
        if (detail::SyncNode* n = getters_.pop()) {
            hand(*n, s);
        } else {
            s.orphan = true;
            ++orphans_;
        }
    }

    /// A slot became free: accept the first waiting putter's value. noexcept: the get that
    /// freed the slot succeeds regardless. A putter whose value cannot be moved in (its
    /// move throws, or the deque cannot grow) is woken with that exception, and the slot
    /// goes to the next putter.
    void refill() noexcept {
        while (size() < capacity_) {
            detail::SyncNode* n = putters_.pop();
            if (!n)
                return;
            Putter* p = static_cast<Putter*>(n->owner);
            try {
                items_.emplace_back(std::move(*p->value_));
            } catch (...) {
                p->error_ = std::current_exception();
            }
            n->state = detail::SyncNode::handed;
            n->wait->runner->loop->wake(*n->wait);
        }
    }

    std::size_t capacity_;
    std::deque<Slot> items_;  // oldest first; the first claimed_ are claimed
    std::size_t claimed_ = 0; // of which orphans_ are claimed by nobody
    std::size_t orphans_ = 0;
    bool closed_ = false;
    detail::SyncList getters_;
    detail::SyncList putters_;
};

} // namespace xiio
