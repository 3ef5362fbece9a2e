#pragma once
// The core vocabulary of the original Python xiio: Condition, Future, sleep and yield.
//
// Every awaitable here is a "leaf": it registers a detail::Wait with the loop in
// await_suspend and removes it in await_resume. A leaf first takes an exception thrown in
// while its task was running (a cancellation): it then does not suspend and throws it.

#include <xiio/detail/std_parts.hpp>
#include <xiio/task.hpp>

#include <initializer_list>
#include <optional>
#include <stdexcept>
#include <vector>

namespace xiio {

class FutureBase;

namespace detail {

/// Binds `w` to the awaiting task. False: an exception is pending for this task; it was
/// moved into `w` and the leaf must not suspend (await_resume throws it). A leaf whose
/// registration then throws must clear w.runner before it rethrows: the awaitable may be
/// destroyed only with its frame (clang keeps it there), after the runner is gone, and
/// drop_wait() must not reach for it.
template <class P>
bool begin_wait(Wait& w, std::coroutine_handle<P> h) noexcept {
    Runner& r = *h.promise().runner_;
    w.runner = &r;
    w.woken = false;
    if (r.pending_) {
        w.error = std::exchange(r.pending_, nullptr);
        return false;
    }
    return true;
}

/// Fairness: a leaf that completes without suspending (a read of an fd that is always
/// ready, an accept that keeps failing, a future already set) calls this. Every `budget`
/// such completions in a row, the task must give the loop back: true means the leaf
/// suspends after all, its outcome kept, and the task is queued behind every ready task
/// (as by yield), so timers, signals, fds and other tasks run first. No Wait is registered
/// for it: a cancellation that arrives meanwhile stays pending for the next co_await
/// rather than throwing away an operation that completed. tokio's cooperative budget
/// does the same.
inline bool out_of_budget(Runner& r, std::coroutine_handle<> h) noexcept {
    if (--r.budget_ != 0)
        return false;
    r.resume_ = h;
    r.loop->schedule(&r);
    return true;
}

/// Removes `w`'s registrations and throws what was thrown in while it waited.
inline void end_wait(Wait& w) {
    if (!w.runner)
        return;
    w.runner->loop->detach(w);
    w.runner = nullptr;
    if (w.error)
        std::rethrow_exception(std::exchange(w.error, nullptr));
}

/// The await_suspend of a wait for something with a list of waiters (a Future, a
/// TaskHandle's member): `done` means it is there already, and the leaf completes at once
/// (within the budget); else `w` suspends until the list wakes it. Throws nothing.
template <class P>
bool wait_in_list(Wait& w, FutureNode& node, WaiterList& list, bool done,
                  std::coroutine_handle<P> h) noexcept {
    if (!begin_wait(w, h))
        return false;
    if (done)
        return out_of_budget(*w.runner, h);
    node.wait = &w;
    node.reads_value = true;
    w.futures = {&node, 1};
    list.push(node);
    w.runner->loop->suspend(*w.runner, w, h);
    return true;
}

/// Detaches a wait whose frame is destroyed while suspended (loop teardown).
inline void drop_wait(Wait& w) noexcept {
    if (w.runner)
        w.runner->loop->detach(w);
}

} // namespace detail

/// Something a task may wait for: readiness of fds, a future being done, a deadline.
/// `co_await condition` suspends until any part holds and returns the ready fds (empty
/// when the deadline or a future fired). g++ 12 rejects a braced list inside co_await:
/// build the Condition first (`Condition c{.files = {{fd, READ}}}; co_await c;`).
struct Condition {
    // Every member has an initializer, so `Condition{.time = t}` does not trip
    // -Wmissing-field-initializers in user code.
    Files files = {};
    std::vector<const FutureBase*> futures = {};
    Clock::time_point time = Clock::time_point::max();

    /// One condition that holds when any of `conditions` holds.
    static Condition combine(std::initializer_list<Condition> conditions) {
        return combine_range(conditions);
    }
    template <std::ranges::input_range R>
        requires(std::convertible_to<std::ranges::range_reference_t<R>, const Condition&>)
    static Condition combine(R&& conditions) {
        return combine_range(conditions);
    }

    /// Whether any part holds, given the fds reported ready.
    bool fulfilled(const Files& ready) const;

    /// A Condition passed where a Task is expected (`run`, `add_task`, `gather`): a task
    /// that waits for it (a copy, from an lvalue). Templates that only Task<Files> matches,
    /// so that g++ compiles that coroutine only where it is used (see detail::OnlyWhereUsed).
    using value_type = Files;
    template <std::same_as<Files> F>
    operator Task<F>() const&;
    template <std::same_as<Files> F>
    operator Task<F>() &&;

private:
    template <class R>
    static Condition combine_range(const R& conditions) {
        Condition result;
        for (const Condition& c : conditions) {
            for (auto [fd, events] : c.files)
                result.files[fd] |= events;
            for (const FutureBase* f : c.futures)
                if (std::find(result.futures.begin(), result.futures.end(), f) ==
                    result.futures.end())
                    result.futures.push_back(f);
            result.time = std::min(result.time, c.time);
        }
        return result;
    }
};

/// The part of a future that conditions see: whether it is done.
class FutureBase {
public:
    FutureBase() = default;
    FutureBase(const FutureBase&) = delete;
    FutureBase& operator=(const FutureBase&) = delete;

    bool done() const noexcept { return done_; }

protected:
    ~FutureBase() {
        // Waiters must not read a dead future: they get an error instead. A Condition
        // that the future satisfied before it died only needed to know that it is done.
        while (detail::FutureNode* n = waiters_.first()) {
            waiters_.unlink(*n);
            if (!done_ || n->reads_value)
                n->wait->error = detail::prebuilt_errors().future_destroyed; // cannot fail
            n->wait->runner->loop->wake(*n->wait);
        }
    }
    void finish() {
        if (done_)
            throw std::logic_error("xiio::Future: result already set");
        done_ = true;
        for (detail::FutureNode* n = waiters_.first(); n; n = waiters_.after(n))
            n->wait->runner->loop->wake(*n->wait);
    }

private:
    friend struct Condition;
    template <class>
    friend class Future;
    friend class ConditionAwaiter;
    bool done_ = false;
    mutable detail::WaiterList waiters_;
};

/// A value that some task sets and any number of tasks await (loop-local: set it from
/// tasks of the same loop, or before the loop runs). Neither copyable nor movable.
template <class T = void>
class Future : public FutureBase {
    static_assert(std::is_void_v<T> || std::is_copy_constructible_v<T>,
                  "Future<T> requires a copyable T: every waiter gets a copy");

public:
    Future() = default;

    template <class U = T>
        requires(!std::is_void_v<U>)
    void set_result(U value) {
        if (done())
            throw std::logic_error("xiio::Future: result already set");
        value_.emplace(std::move(value));
        finish();
    }
    template <class U = T>
        requires(std::is_void_v<U>)
    void set_result() {
        finish();
    }
    void set_exception(std::exception_ptr e) {
        if (done())
            throw std::logic_error("xiio::Future: result already set");
        error_ = std::move(e);
        finish();
    }

    /// Waits until the future is done; a copy of its value, or rethrows its exception.
    struct [[nodiscard]] Awaiter {
        const Future* f_;
        detail::FutureNode node_;
        detail::Wait w_;

        explicit Awaiter(const Future* f) noexcept : f_(f) {}
        Awaiter(Awaiter&&) = delete;
        ~Awaiter() { detail::drop_wait(w_); }
        bool await_ready() const noexcept { return false; }
        template <detail::XiioPromise P>
        bool await_suspend(std::coroutine_handle<P> h) noexcept {
            return detail::wait_in_list(w_, node_, f_->waiters_, f_->done(), h);
        }
        T await_resume() {
            detail::end_wait(w_);
            if (f_->error_)
                std::rethrow_exception(f_->error_);
            if constexpr (!std::is_void_v<T>)
                return *f_->value_;
        }
    };
    Awaiter operator co_await() const noexcept { return Awaiter(this); }

private:
    struct Empty {};
    std::optional<std::conditional_t<std::is_void_v<T>, Empty, T>> value_;
    std::exception_ptr error_;
};

inline bool Condition::fulfilled(const Files& ready) const {
    if (time <= Clock::now())
        return true;
    for (const FutureBase* f : futures)
        if (f->done())
            return true;
    for (auto [fd, events] : files)
        if (auto it = ready.find(fd); it != ready.end() && (it->second & events))
            return true;
    return false;
}

/// Waits for a Condition; owns a copy (or the moved) condition and one node per part.
class [[nodiscard]] ConditionAwaiter : public detail::Leaf<ConditionAwaiter, Files> {
public:
    explicit ConditionAwaiter(Condition c) : c_(std::move(c)) {}
    ConditionAwaiter(ConditionAwaiter&& o) noexcept : c_(std::move(o.c_)) {}
    ~ConditionAwaiter() { detail::drop_wait(w_); }

    bool await_ready() const noexcept { return false; }
    template <detail::XiioPromise P>
    bool await_suspend(std::coroutine_handle<P> h) {
        if (!detail::begin_wait(w_, h))
            return false;
        detail::Loop& loop = *w_.runner->loop;
        bool now = c_.time <= Clock::now();
        fds_.reserve(c_.files.size());
        futures_.reserve(c_.futures.size());
        w_.fds = {fds_.data(), 0};
        // Every step that can fail (attach, the timer heap) comes before anything that
        // cannot be undone, and a failure undoes what was registered.
        try {
            for (auto [fd, events] : c_.files) {
                if (!events)
                    continue;
                detail::FdNode& n = fds_.emplace_back();
                n.wait = &w_;
                n.fd = fd;
                n.events = events;
                w_.fds = {fds_.data(), fds_.size()};
                if (!loop.attach(n, 0)) { // a regular file: always ready
                    n.ready = events;
                    now = true;
                }
            }
            for (const FutureBase* f : c_.futures)
                now = now || f->done();
            if (!now && c_.time != Clock::time_point::max()) {
                w_.deadline = c_.time;
                loop.add_timer(w_);
            }
        } catch (...) {
            loop.detach(w_);
            w_.runner = nullptr;
            throw;
        }
        for (const FutureBase* f : c_.futures) {
            detail::FutureNode& n = futures_.emplace_back(); // reserved: cannot throw
            n.wait = &w_;
            f->waiters_.push(n);
        }
        w_.futures = {futures_.data(), futures_.size()};
        loop.suspend(*w_.runner, w_, h);
        if (now)
            loop.wake(w_); // already holds: resume after the other ready tasks, like yield
        return true;
    }
    Files await_resume() {
        detail::end_wait(w_);
        Files ready;
        for (const auto& n : fds_)
            if (n.ready)
                ready[n.fd] = n.ready;
        return ready;
    }

private:
    Condition c_;
    std::vector<detail::FdNode> fds_;
    std::vector<detail::FutureNode> futures_;
    detail::Wait w_;
};

inline ConditionAwaiter operator co_await(const Condition& c) {
    return ConditionAwaiter(c);
}
inline ConditionAwaiter operator co_await(Condition&& c) {
    return ConditionAwaiter(std::move(c));
}

namespace detail {

/// Resumes at a point in time (or, if that passed, after the other ready tasks).
class [[nodiscard]] SleepAwaiter : public Leaf<SleepAwaiter, void> {
public:
    explicit SleepAwaiter(Clock::time_point t) noexcept : t_(t) {}
    SleepAwaiter(SleepAwaiter&& o) noexcept : t_(o.t_) {}
    ~SleepAwaiter() { drop_wait(w_); }

    bool await_ready() const noexcept { return false; }
    template <XiioPromise P>
    bool await_suspend(std::coroutine_handle<P> h) {
        if (!begin_wait(w_, h))
            return false;
        Loop& loop = *w_.runner->loop;
        if (t_ == Clock::time_point::min() || t_ <= Clock::now()) { // yield(): no clock read
            loop.schedule(w_.runner);
        } else {
            w_.deadline = t_;
            try {
                loop.add_timer(w_); // may throw: nothing is registered yet
            } catch (...) {
                w_.runner = nullptr; // see begin_wait: nothing to undo at destruction
                throw;
            }
        }
        loop.suspend(*w_.runner, w_, h);
        return true;
    }
    void await_resume() { end_wait(w_); }

private:
    Clock::time_point t_;
    Wait w_;
};

/// Adds `d` to now, saturating at time_point::max() (sleep(hours::max()) sleeps forever).
template <class Rep, class Period>
Clock::time_point deadline_after(std::chrono::duration<Rep, Period> d) noexcept {
    auto now = Clock::now();
    if (d <= d.zero())
        return now;
    if (d >= std::chrono::duration<double>(Clock::time_point::max() - now))
        return Clock::time_point::max();
    return now + std::chrono::ceil<Clock::duration>(d);
}

} // namespace detail

/// Resumes no earlier than now + d; d <= 0 behaves like yield().
template <class Rep, class Period>
detail::SleepAwaiter sleep(std::chrono::duration<Rep, Period> d) {
    return detail::SleepAwaiter(detail::deadline_after(d));
}

/// Resumes no earlier than t; a t in the past behaves like yield().
inline detail::SleepAwaiter sleep_until(Clock::time_point t) {
    return detail::SleepAwaiter(t);
}

/// Lets every other task that is ready now run once (FIFO), then resumes.
inline detail::SleepAwaiter yield() {
    return detail::SleepAwaiter(Clock::time_point::min());
}

namespace detail {
template <class = OnlyWhereUsed>
Task<Files> wait_for(Condition c) {
    co_return co_await std::move(c);
}
} // namespace detail

template <std::same_as<Files> F>
Condition::operator Task<F>() const& {
    return detail::wait_for(*this);
}
template <std::same_as<Files> F>
Condition::operator Task<F>() && {
    return detail::wait_for(std::move(*this));
}

} // namespace xiio
