#pragma once
// shield: runs a task to its end even if the awaiting task is cancelled meanwhile; the
// cancellation is held back and thrown at the awaiting task's next co_await.
//
// How a cancellation is held, at no cost when shield is unused: a cancellation is an
// exception thrown into a Runner (Loop::throw_in). If the runner is suspended, its Wait
// gets it and is woken; if it runs, it is kept in Runner::pending_ for its next co_await.
// A Wait may instead carry an `interrupt` hook, which throw_in calls rather than waking it
// (a group's join uses it to forward the cancellation to its members). shield uses the
// same hook: the shielded task runs as its own runner, the member of a private group, and
// the awaiting task waits for it in a ShieldWait whose hook only stores the exception.
// Nothing reaches the shielded runner, so it runs to its end; its own timeouts and groups
// work as usual (they cancel runners of their own). When it ended, the held exception is
// put back into the awaiting runner's pending_: its next co_await throws it. A
// cancellation pending on the awaiting task before the shield began is held the same way
// (the task still runs). A loop failure (the waiting step failed) still reaches the
// shielded task, which is a member of the loop like any other.
//
// Who owns what: the shield's coroutine frame owns the group and a TaskHandle of the
// member; the member's frame is the shielded task's. If the awaiting task is destroyed
// while suspended in the shield (a loop torn down), the group's destructor destroys the
// member's frame, as for any group.

#include <xiio/multiplex.hpp>

#include <exception>
#include <utility>

namespace xiio {

namespace detail {

/// The awaiting task's wait for the shielded member. Not a cancellation point: a
/// cancellation is held in `held` (the first one) until the member is done, and so is
/// one pending before the wait began. await_resume puts it back into the runner's
/// pending_, for its next co_await; it returns nothing and never throws.
template <class T>
struct [[nodiscard]] ShieldWait {
    struct HoldingWait : Wait {
        std::exception_ptr held;
    };
    MemberBase* member;
    FutureNode node_{};
    HoldingWait w_{};

    explicit ShieldWait(MemberBase* m) noexcept : member(m) {}
    ShieldWait(ShieldWait&&) = delete;
    ~ShieldWait() { drop_wait(w_); }

    static void hold(Wait* w, std::exception_ptr e) {
        auto* hw = static_cast<HoldingWait*>(w);
        if (!hw->held)
            hw->held = std::move(e);
    }

    bool await_ready() const noexcept { return false; }
    template <XiioPromise P>
    bool await_suspend(std::coroutine_handle<P> h) noexcept {
        Runner& r = *h.promise().runner_;
        w_.held = std::exchange(r.pending_, nullptr);
        w_.runner = &r;
        w_.woken = false;
        if (member->member_done_)
            return false;
        w_.interrupt = &ShieldWait::hold;
        node_.wait = &w_;
        w_.futures = {&node_, 1};
        member->waiters_.push(node_);
        r.loop->suspend(r, w_, h);
        return true;
    }
    void await_resume() noexcept {
        Runner& r = *w_.runner;
        r.loop->detach(w_);
        w_.runner = nullptr;
        // Woken, but not yet resumed, when a cancellation came: it went to pending_.
        if (!w_.held)
            w_.held = std::exchange(r.pending_, nullptr);
        r.pending_ = std::move(w_.held);
    }
};

template <class T>
Task<T> shield_task(Task<T> task) {
    TaskGroup tg;
    TaskHandle<T> h = tg.add_task(std::move(task));
    co_await ShieldWait<T>(h.member());
    // The member is done and the group is empty: no join is needed, and none is made (it
    // would take the held cancellation). The group's destructor only leaves the loop.
    co_return h.result();
}

} // namespace detail

/// Runs `task` to its end and returns its value (or rethrows its exception), even if the
/// awaiting task is cancelled meanwhile: such a cancellation (a group's, a timeout's) is
/// held back and thrown at the awaiting task's next co_await. Timeouts and groups inside
/// `task` work as usual. Not a cancellation point itself (cancellation can only be
/// delivered after it). std::logic_error for an empty Task (at the call).
template <class T>
Task<T> shield(Task<T> task) {
    if (!task)
        throw std::logic_error("xiio::shield: empty Task");
    return detail::shield_task(std::move(task));
}

/// shield() for a light awaitable (`shield(sleep(1s))`).
template <detail::Wrappable A>
    requires(!detail::is_task<std::remove_cvref_t<A>>::value)
auto shield(A&& a) {
    return shield(detail::as_task(std::forward<A>(a)));
}

} // namespace xiio
