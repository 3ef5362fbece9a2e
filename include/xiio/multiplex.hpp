#pragma once
// Structured concurrency: TaskGroup / task_group, TaskHandle, gather, timeout.
//
// How the group adopts its parent (see docs/design.md for the long version):
// `co_await task_group(body)` runs a coroutine that owns the TaskGroup. It turns
// `body(tg)` into the first member, a Runner of its own, and then suspends the parent
// in the group's join, a Wait that only the group completes. The body is started inline
// from the join's await_suspend, so it runs at once, exactly as the block of the original's
// `async with TaskGroup()` does; tasks it adds are queued behind it and start when it
// suspends. Each member's outermost frame reports to the group when it reaches its final
// suspend point (Member::finished); the last one to finish wakes the parent.
//
// Cancelling is throwing a CancelledError into every member (Loop::throw_in): a suspended
// one resumes with it, a running one gets it at its next co_await, and one that never
// started is destroyed unrun (Member::abandon). A cancellation from outside reaches the
// parent while it sits in the join: the join forwards it to the members instead of
// resuming the parent, and rethrows it once they all finished.

#include <xiio/core.hpp>
#include <xiio/detail/std_parts.hpp>

#include <memory>
#include <optional>
#include <tuple>
#include <variant>
#include <vector>

namespace xiio {

class TaskGroup;

namespace detail {

/// A group member: its runner, its outcome, and the waiters of its TaskHandles. Made in
/// the room in front of its task's frame (FrameRoom in task.hpp): adding a task allocates
/// nothing. Counted references (Runner::refs_): one while it runs, one per TaskHandle;
/// the last one destroys it, and the frame's block is freed once the frame is gone too,
/// so a handle stays valid after the group is gone.
struct MemberBase : Runner {
    explicit MemberBase(Loop& l) noexcept : Runner(l) {}
    TaskGroup* group_ = nullptr;
    WaiterList waiters_; // tasks awaiting a TaskHandle of it (woken when it is done)

    /// Once done: the task's exception (other than CancelledError), if any. Kept in the
    /// runner's pending_, which a finished task no longer needs: what was thrown in after
    /// its last co_await is dropped, as it always was (one word less in every frame).
    const std::exception_ptr& error() const noexcept { return pending_; }

    void finished() noexcept override;
    void abandon() noexcept override;
    void buried() noexcept override;
    virtual void collect() noexcept = 0; // moves the outcome out of the frame
    /// The frame, which the caller destroys (or buries); null once released.
    virtual std::coroutine_handle<> release_frame() noexcept = 0;
    /// Ends the member (and, if its frame is gone, the block): the last reference is gone.
    virtual void destroy() noexcept = 0;
    /// Leaves the loop and the group, wakes the handles' waiters; the caller then lets
    /// go of the running reference.
    void complete() noexcept;

    void retain() noexcept { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1)
            destroy();
    }
};
static_assert(sizeof(MemberBase) <= member_base_size, "FrameRoom: a member does not fit");

template <class T>
struct Member final : MemberBase {
    using Frame = std::coroutine_handle<Promise<T>>;

    /// Makes the member of `task` in front of its frame and takes the frame over (the
    /// Task is empty afterwards), with one reference: the running one. Allocates nothing.
    static Member* make(Loop& l, Task<T>& task) noexcept {
        static_assert(sizeof(Member) <= FrameRoom<T>::member_size && alignof(Member) <= 16,
                      "FrameRoom: this member does not fit in front of its frame");
        void* frame = task.handle().address();
        auto* m = new (static_cast<char*>(frame) - FrameRoom<T>::size) Member(l);
        task.release();
        FrameCell::of(frame).lives.fetch_add(1, std::memory_order_relaxed); // the member's
        m->member_has_frame_ = true;
        m->refs_.store(1, std::memory_order_relaxed);
        m->frame().promise().runner_ = m;
        m->resume_ = m->frame();
        return m;
    }

    [[no_unique_address]] typename FrameRoom<T>::Value value_; // monostate for void
    Frame frame() noexcept {
        return Frame::from_address(reinterpret_cast<char*>(this) + FrameRoom<T>::size);
    }

    void collect() noexcept override {
        pending_ = nullptr; // never delivered: from now on it holds the error (see error())
        try {
            if constexpr (std::is_void_v<T>)
                frame().promise().take(); // rethrows the task's exception
            else
                value_.emplace(frame().promise().take());
        } catch (const CancelledError&) {
            member_cancelled_ = true;
        } catch (...) {
            pending_ = std::current_exception();
        }
    }
    std::coroutine_handle<> release_frame() noexcept override {
        if (!member_has_frame_)
            return nullptr;
        member_has_frame_ = false;
        return frame();
    }
    void destroy() noexcept override {
        void* block_frame = reinterpret_cast<char*>(this) + FrameRoom<T>::size;
        if (auto f = release_frame()) // a member that never got to its end (teardown)
            f.destroy();
        this->~Member();
        FrameCell::drop(block_frame, FrameRoom<T>::size);
    }

    /// The outcome: a copy of the value (moved if T is move-only), or rethrows.
    T result() {
        if (!member_done_)
            throw std::logic_error("xiio::TaskHandle::result: the task has not finished");
        if (error())
            std::rethrow_exception(error());
        if (member_cancelled_)
            throw CancelledError{};
        if constexpr (!std::is_void_v<T>) {
            if constexpr (std::is_copy_constructible_v<T>)
                return *value_;
            else
                return std::move(*value_);
        }
    }

private:
    explicit Member(Loop& l) : MemberBase(l) {}
};

} // namespace detail

/// Refers to a task added to a group: copyable and cheap, valid after the group is gone.
template <class T>
class TaskHandle {
public:
    /// Plumbing (TaskGroup::add_task): takes over one reference of `m`, which may be null.
    explicit TaskHandle(detail::Member<T>* m) noexcept : m_(m) {}
    TaskHandle(const TaskHandle& o) noexcept : m_(o.m_) {
        if (m_)
            m_->retain();
    }
    TaskHandle(TaskHandle&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
    TaskHandle& operator=(TaskHandle o) noexcept {
        std::swap(m_, o.m_);
        return *this;
    }
    ~TaskHandle() {
        if (m_)
            m_->release();
    }

    /// Finished by value, exception or cancellation. A moved-from handle refers to no
    /// task: every use but assignment and destruction is std::logic_error.
    bool done() const { return member("done")->member_done_; }
    /// A copy of the value (a move-only value is moved out: take it once); rethrows the
    /// task's exception; CancelledError if it was cancelled; std::logic_error if not done.
    T result() const { return member("result")->result(); }

    /// `co_await handle`: waits until the task finished, then as result(). A cancellation
    /// point.
    struct [[nodiscard]] Awaiter {
        TaskHandle h_; // keeps the member while the awaiter is registered with it
        detail::FutureNode node_;
        detail::Wait w_;

        explicit Awaiter(const TaskHandle& h) noexcept : h_(h) {}
        Awaiter(Awaiter&&) = delete;
        ~Awaiter() { detail::drop_wait(w_); }
        bool await_ready() const noexcept { return false; }
        template <detail::XiioPromise P>
        bool await_suspend(std::coroutine_handle<P> h) noexcept {
            return detail::wait_in_list(w_, node_, h_.m_->waiters_, h_.m_->member_done_, h);
        }
        T await_resume() {
            detail::end_wait(w_);
            return h_.m_->result();
        }
    };
    Awaiter operator co_await() const {
        (void)member("co_await");
        return Awaiter(*this);
    }

    detail::Member<T>* member() const noexcept { return m_; } // plumbing

private:
    detail::Member<T>* member(const char* op) const {
        if (!m_)
            throw std::logic_error(std::string("TaskHandle::") + op +
                                   ": the handle was moved from");
        return m_;
    }

    detail::Member<T>* m_;
};

/// A scope of tasks; see task_group(). Only ever used by reference.
class TaskGroup {
public:
    TaskGroup() : loop_(detail::current_loop()) {
        if (!loop_)
            throw std::logic_error("xiio::TaskGroup: no loop runs on this thread");
        loop_->add_members(members_);
    }
    TaskGroup(const TaskGroup&) = delete;
    TaskGroup& operator=(const TaskGroup&) = delete;
    /// Normally every member has finished. A group destroyed with members left is a loop
    /// torn down while tasks were suspended (a host such as Asio destroyed its io_context):
    /// the parent's frame is being destroyed, so the members' frames are destroyed too
    /// (their awaiters unregister, nested groups tear down the same way, a run_process
    /// kills and reaps its child), and they leave the loop's queues. A member still
    /// referred to by a TaskHandle stays, as cancelled and never done.
    ~TaskGroup() {
        if (joined_ && join_.runner && join_.runner->wait_ == &join_)
            join_.runner->wait_ = nullptr;
        while (members_.head) {
            auto* m = static_cast<detail::MemberBase*>(members_.head);
            members_.erase(*m);
            m->group_ = nullptr;
            m->member_cancelled_ = true;
            m->pending_ = nullptr; // see error()
            if (auto frame = m->release_frame())
                frame.destroy();
            m->retire();
            m->release(); // the running reference: may destroy m
        }
        loop_->remove_members(members_);
    }

    /// Queues `task` as a member; it starts once the adding task suspends (or finishes).
    template <class T>
    TaskHandle<T> add_task(Task<T> task) {
        if (closed_)
            throw std::logic_error("xiio::TaskGroup::add_task: the group has finished");
        if (!task)
            throw std::logic_error("xiio::TaskGroup::add_task: empty Task");
        auto* m = detail::Member<T>::make(*loop_, task);
        enter(*m);
        m->started_ = false;
        loop_->schedule(m);
        // The group is being torn down by a cancellation from outside, which cancels
        // everything the cancelled task runs, members it adds from now on included (they
        // never start). Only the group's own cancel() lets later members run.
        if (outside_)
            loop_->throw_in(*m, std::make_exception_ptr(CancelledError{}));
        m->retain();
        return TaskHandle<T>(m);
    }
    /// add_task() for a light awaitable (`tg.add_task(sleep(1s))`).
    template <detail::Wrappable A>
        requires(!detail::is_task<std::remove_cvref_t<A>>::value)
    auto add_task(A&& a) {
        return add_task(detail::as_task(std::forward<A>(a)));
    }

    /// Cancels every member, the body included; the group then ends without error.
    /// Tasks added afterwards run normally.
    void cancel() noexcept {
        if (cancelled_)
            return;
        cancelled_ = true;
        cancel_members();
    }

    /// Unfinished members: the body and tasks not started yet count.
    std::size_t size() const noexcept { return size_; }

    // ---- plumbing for task_group() ----------------------------------------------------

    template <class T>
    TaskHandle<T> add_body(Task<T> task) {
        auto* m = detail::Member<T>::make(*loop_, task);
        enter(*m);
        body_ = m;
        m->retain();
        return TaskHandle<T>(m);
    }

    /// The parent's wait for the group: starts the body, then suspends until every
    /// member finished. Cancellation of the parent is forwarded to the members.
    struct [[nodiscard]] Join {
        TaskGroup* g;
        bool await_ready() const noexcept { return false; }
        template <detail::XiioPromise P>
        bool await_suspend(std::coroutine_handle<P> h) {
            detail::Runner& parent = *h.promise().runner_;
            if (parent.pending_) // the parent was cancelled before it got here
                g->interrupted(std::exchange(parent.pending_, nullptr));
            if (auto* body = std::exchange(g->body_, nullptr)) {
                if (body->pending_)
                    body->abandon(); // cancelled before it started: it never runs
                else
                    g->loop_->resume(body->resume_); // until the body first suspends or ends
                g->loop_->flush_graveyard();
            }
            if (parent.pending_) // cancelled from outside while the body ran
                g->interrupted(std::exchange(parent.pending_, nullptr));
            if (g->size_ == 0)
                return false;
            g->join_.runner = &parent;
            g->join_.woken = false;
            g->join_.interrupt = &TaskGroup::on_interrupt;
            g->join_.describe = &TaskGroup::describe_join;
            g->loop_->suspend(parent, g->join_, h);
            g->joined_ = true;
            return true;
        }
        void await_resume() noexcept {
            g->joined_ = false;
            g->closed_ = true;
        }
    };
    Join join() noexcept { return Join{this}; }

    /// After join: the first exception of a member, or what the parent was cancelled
    /// with from outside (which wins: it is never swallowed).
    void rethrow() const {
        if (outside_)
            std::rethrow_exception(outside_);
        if (error_)
            std::rethrow_exception(error_);
    }

private:
    friend struct detail::MemberBase;

    struct JoinWait : detail::Wait {
        TaskGroup* group;
    };

    void enter(detail::MemberBase& m) noexcept {
        // Appended: members are cancelled in the order they were added.
        m.group_ = this;
        members_.push_back(m);
        ++size_;
    }

    void leave(detail::MemberBase& m) noexcept {
        members_.erase(m);
        m.group_ = nullptr;
        if (m.error() && !cancelled_) { // the first exception wins, later ones are dropped
            error_ = m.error();
            cancelled_ = true;
            cancel_members();
        }
        // The last member is gone: the group is over even before the parent resumes (a
        // task outside the group may still hold it and must not add to it any more).
        if (--size_ == 0) {
            closed_ = true;
            if (joined_)
                loop_->wake(join_);
        }
    }

    void cancel_members() noexcept {
        auto e = std::make_exception_ptr(CancelledError{});
        for (detail::Runner* m = members_.head; m; m = m->next_sibling_)
            loop_->throw_in(*m, e);
    }

    /// The parent was cancelled from outside: a new cancellation for every member, even
    /// if the group was cancel()ed before (its members may be cleaning up from that one).
    void interrupted(std::exception_ptr e) noexcept {
        if (outside_)
            return;
        outside_ = std::move(e);
        cancelled_ = true;
        cancel_members();
    }

    static void on_interrupt(detail::Wait* w, std::exception_ptr e) {
        static_cast<JoinWait*>(w)->group->interrupted(std::move(e));
    }
    static void describe_join(const detail::Wait& w, std::string& out) { // for dump_tasks()
        std::size_t n = static_cast<const JoinWait&>(w).group->size_;
        out += "a task group of " + std::to_string(n) +
               (n == 1 ? " unfinished task" : " unfinished tasks");
    }

    detail::Loop* loop_;
    detail::RunnerList members_;         // unfinished members, in the order added
    detail::MemberBase* body_ = nullptr; // until the join started it
    std::size_t size_ = 0;
    std::exception_ptr error_;
    std::exception_ptr outside_;
    bool cancelled_ = false;
    bool joined_ = false;
    bool closed_ = false;
    JoinWait join_{{}, this};
};

namespace detail {

inline void MemberBase::finished() noexcept {
    // Inside the member's own final_suspend: take the outcome, report to the group (which
    // may wake the parent), and leave the frame to the loop's graveyard, which keeps the
    // running reference until it destroyed the frame (buried).
    collect();
    Loop* l = loop;
    complete();
    l->bury(*this);
}

inline void MemberBase::buried() noexcept {
    if (auto f = release_frame())
        f.destroy();
    release(); // the running reference: may destroy this member
}

inline void MemberBase::abandon() noexcept {
    member_cancelled_ = true;
    pending_ = nullptr;        // the cancellation that stopped it: not an error (see error())
    release_frame().destroy(); // never started: no frame of it is running
    complete();
    release();
}

inline void MemberBase::complete() noexcept {
    retire();
    if (group_)
        group_->leave(*this);
    member_done_ = true;
    for (FutureNode* n = waiters_.first(); n; n = waiters_.after(n))
        n->wait->runner->loop->wake(*n->wait); // retire() cleared loop
}

template <class Body>
using body_task_t = Task<task_value_t<std::invoke_result_t<Body&, TaskGroup&>>>;

template <class Body, class R = typename body_task_t<Body>::value_type>
Task<R> run_group(Body body) {
    TaskGroup tg;
    TaskHandle<R> b(nullptr);
    std::exception_ptr setup_error;
    try {
        b = tg.add_body(as_task(detail::invoke(body, tg)));
    } catch (...) { // the body could not even be created: cancel what it added
        setup_error = std::current_exception();
        tg.cancel();
    }
    co_await tg.join();
    if (setup_error)
        std::rethrow_exception(setup_error);
    tg.rethrow();
    if constexpr (std::is_void_v<R>) {
        co_return;
    } else {
        // An error of the body that got here was raised after cancel() and dropped: like a
        // cancelled body, it has no value.
        if (b.member()->error())
            throw CancelledError{};
        co_return b.result(); // CancelledError if the body was cancelled (no value)
    }
}

} // namespace detail

/// Runs `body(tg)` as the first member of a new group and returns its value once every
/// member finished. The first exception of any member cancels all others and is rethrown
/// after they finished; a cancel() ends the group without error (a cancelled body has no
/// value: task_group<R> then throws CancelledError). `body` is kept alive until the end.
namespace detail {
/// A body task_group accepts: callable as body(TaskGroup&), returning a task.
template <class B>
concept GroupBody = is_task_like_v<std::invoke_result_t<std::decay_t<B>&, TaskGroup&>>;
} // namespace detail

// Each API that takes a body comes as two overloads. The accepted form has an explicit
// return type: an `auto` one would be deduced, instantiating the whole group (coroutines
// included) wherever a template merely names a call. The refused form is `auto`: deducing
// it runs its static_asserts at the call, so they are the first error the user reads.
template <class Body>
    requires detail::GroupBody<Body>
detail::body_task_t<std::decay_t<Body>> task_group(Body&& body) {
    static_assert(detail::safe_temporary_v<Body, TaskGroup&>,
                  XIIO_DETAIL_TEMPORARY_LAMBDA_MESSAGE("task_group"));
    return detail::run_group(std::decay_t<Body>(std::forward<Body>(body)));
}
template <class Body>
    requires(!detail::GroupBody<Body>)
auto task_group(Body&&) { // refused: says why
    using B = std::decay_t<Body>;
    static_assert(std::is_invocable_v<B&, TaskGroup&>,
                  "xiio::task_group: the body must be callable as body(xiio::TaskGroup&)");
    if constexpr (std::is_invocable_v<B&, TaskGroup&>)
        static_assert(detail::is_task_like_v<std::invoke_result_t<B&, TaskGroup&>>,
                      "xiio::task_group: the body must be a coroutine: declare it "
                      "`-> xiio::Task<T>` and co_await or co_return in it");
}

/// Runs all tasks concurrently; a tuple of their values (void: std::monostate). The first
/// exception cancels the others and is rethrown after they finished.
template <class... A>
auto gather(A&&... tasks) {
    static_assert((detail::is_task_like_v<A> && ...),
                  "xiio::gather: every argument must be a xiio::Task<T> (what calling a "
                  "coroutine returns) or an awaitable of xiio (sleep, read, ...)");
    if constexpr ((detail::is_task_like_v<A> && ...)) {
        using Result = std::tuple<std::conditional_t<std::is_void_v<detail::task_value_t<A>>,
                                                     std::monostate, detail::task_value_t<A>>...>;
        return [](auto... ts) -> Task<Result> {
            std::tuple<TaskHandle<typename decltype(ts)::value_type>...> handles{
                TaskHandle<typename decltype(ts)::value_type>(nullptr)...};
            auto body = [&](TaskGroup& tg) -> Task<void> {
                handles = {tg.add_task(std::move(ts))...};
                co_return;
            };
            co_await task_group(std::ref(body));
            co_return std::apply(
                [](auto&... h) {
                    return Result{[&] {
                        if constexpr (std::is_void_v<decltype(h.result())>) {
                            h.result();
                            return std::monostate{};
                        } else {
                            return h.result();
                        }
                    }()...};
                },
                handles);
        }(detail::as_task(std::forward<A>(tasks))...);
    }
}

/// Runs all tasks concurrently; their values in input order (T = void: nothing).
template <class T>
Task<std::conditional_t<std::is_void_v<T>, void, std::vector<T>>>
gather(std::vector<Task<T>> tasks) {
    std::vector<TaskHandle<T>> handles;
    handles.reserve(tasks.size());
    auto body = [&](TaskGroup& tg) -> Task<void> {
        for (auto& t : tasks)
            handles.push_back(tg.add_task(std::move(t)));
        co_return;
    };
    co_await task_group(std::ref(body));
    if constexpr (std::is_void_v<T>) {
        co_return;
    } else {
        std::vector<T> values;
        values.reserve(handles.size());
        for (auto& h : handles)
            values.push_back(h.result());
        co_return values;
    }
}

namespace detail {

/// A timeout's body: a Task (or light awaitable) or a callable returning one.
template <class B>
auto make_body(B& b) {
    if constexpr (std::is_invocable_v<B&>)
        return as_task(detail::invoke(b));
    else
        return as_task(std::move(b));
}
template <class B>
using timeout_value_t = typename std::conditional_t<std::is_invocable_v<B&>, std::invoke_result<B&>,
                                                    std::type_identity<B>>::type::value_type;

/// `co_await cancellation_pending()`: whether an exception thrown into this task waits for
/// its next co_await (it was not delivered yet). Never suspends, takes nothing.
struct cancellation_pending {
    bool pending = false;
    bool await_ready() const noexcept { return false; }
    template <XiioPromise P>
    bool await_suspend(std::coroutine_handle<P> h) noexcept {
        pending = h.promise().runner_->pending_ != nullptr;
        return false;
    }
    bool await_resume() const noexcept { return pending; }
};

/// Runs `body` in a group with a timer member that cancels the group at `deadline`.
/// Returns the body's value, or nullopt if the deadline passed first.
template <class R, class B>
Task<std::optional<std::conditional_t<std::is_void_v<R>, std::monostate, R>>>
run_with_deadline(Clock::time_point deadline, B body) {
    using V = std::conditional_t<std::is_void_v<R>, std::monostate, R>;
    // `finished` decides races: a timer woken in the same iteration in which the body
    // finished must not report a timeout, and a body that swallows the cancellation and
    // returns a value after the deadline still timed out.
    bool expired = false;
    bool finished = false;
    std::optional<V> value;
    auto group_body = [&](TaskGroup& tg) -> Task<void> {
        auto timer = [](TaskGroup& g, Clock::time_point t, bool& exp,
                        const bool& fin) -> Task<void> {
            co_await sleep_until(t);
            if (!fin) {
                exp = true;
                g.cancel();
            }
        };
        tg.add_task(timer(tg, deadline, expired, finished));
        try {
            if constexpr (std::is_void_v<R>) {
                co_await make_body(body);
                value.emplace();
            } else {
                value.emplace(co_await make_body(body));
            }
        } catch (const CancelledError&) {
            // Not an error of the group, so it would not stop the timer: a body that ends
            // with a CancelledError of its own must not wait for the deadline.
            finished = true;
            tg.cancel();
            throw;
        }
        finished = true;
        // The deadline passed in the very iteration in which a hand-off (a put, a release,
        // bytes, a connection) had woken the body: the timer's cancellation found it woken
        // and stayed pending, and the body completed without ever seeing it. It was not
        // cancelled, and what it was handed must not be lost: its value stands.
        if (expired && co_await cancellation_pending())
            expired = false;
        tg.cancel(); // stops the timer; the body gets no cancellation: it awaits no more
    };
    co_await task_group(std::ref(group_body));
    if (expired)
        co_return std::nullopt; // even if the body swallowed the cancellation
    if (!value)
        throw CancelledError{}; // not ours: some other cancellation ended the body
    co_return value;
}

} // namespace detail

namespace detail {

/// Whether `B` is a timeout's body: a task, a light awaitable, or a callable returning one.
template <class B>
constexpr bool is_timeout_body() {
    if constexpr (is_task_like_v<B>)
        return true;
    else if constexpr (std::is_invocable_v<std::decay_t<B>&>)
        return is_task_like_v<std::invoke_result_t<std::decay_t<B>&>>;
    else
        return false;
}

template <class B>
inline constexpr bool is_timeout_body_v = is_timeout_body<B>();

/// A body timeout and move_on_after accept.
template <class B>
concept TimeoutBody = is_timeout_body_v<B>;

template <class R, class B>
Task<R> timeout_task(std::optional<Clock::duration> d, B body) {
    if (!d) {
        co_return co_await make_body(body);
    } else {
        auto r = co_await run_with_deadline<R>(deadline_after(*d), std::move(body));
        if (!r)
            throw TimeoutError();
        if constexpr (!std::is_void_v<R>)
            co_return std::move(*r);
    }
}

template <class R, class B>
Task<std::conditional_t<std::is_void_v<R>, bool, std::optional<R>>> move_on_task(Clock::duration d,
                                                                                 B body) {
    auto r = co_await run_with_deadline<R>(deadline_after(d), std::move(body));
    if constexpr (std::is_void_v<R>)
        co_return r.has_value();
    else
        co_return r ? std::optional<R>(std::move(*r)) : std::nullopt;
}

/// A duration as the clock's, rounded up and saturated (hours::max() is forever).
template <class Rep, class Period>
Clock::duration clock_duration(std::chrono::duration<Rep, Period> d) noexcept {
    if (d >= std::chrono::duration<double>(Clock::duration::max()))
        return Clock::duration::max();
    if (d <= std::chrono::duration<double>(Clock::duration::min()))
        return Clock::duration::min();
    return std::chrono::ceil<Clock::duration>(d);
}

} // namespace detail

#define XIIO_DETAIL_TIMEOUT_BODY_MESSAGE(api)                                                      \
    "xiio::" api ": the body must be a xiio::Task<T>, an awaitable of xiio, or a callable "        \
    "taking no arguments that returns one (a coroutine lambda `[&]() -> xiio::Task<T> {...}`)"

/// Runs `body` (a Task, or a callable returning one, kept alive until it ends) and returns
/// its value; if `d` passes first, the body gets CancelledError, is waited for, and
/// TimeoutError is thrown. std::nullopt: no limit. With nested timeouts only the one whose
/// deadline passed reports a timeout; the others see a plain cancellation.
template <class Rep, class Period, class B>
    requires detail::TimeoutBody<B>
Task<detail::timeout_value_t<std::decay_t<B>>>
timeout(std::optional<std::chrono::duration<Rep, Period>> d, B&& body) {
    static_assert(detail::safe_temporary_v<B>, XIIO_DETAIL_TEMPORARY_LAMBDA_MESSAGE("timeout"));
    std::optional<Clock::duration> limit;
    if (d)
        limit = detail::clock_duration(*d);
    return detail::timeout_task<detail::timeout_value_t<std::decay_t<B>>>(
        limit, std::decay_t<B>(std::forward<B>(body)));
}
template <class Rep, class Period, class B>
    requires(!detail::TimeoutBody<B>)
auto timeout(std::optional<std::chrono::duration<Rep, Period>>, B&&) { // refused: says why
    static_assert(detail::is_timeout_body_v<B>, XIIO_DETAIL_TIMEOUT_BODY_MESSAGE("timeout"));
}
template <class Rep, class Period, class B>
auto timeout(std::chrono::duration<Rep, Period> d, B&& body) {
    return timeout(std::optional<std::chrono::duration<Rep, Period>>(d), std::forward<B>(body));
}
template <class B>
auto timeout(std::nullopt_t, B&& body) {
    return timeout(std::optional<Clock::duration>(), std::forward<B>(body));
}

/// Like timeout(), but the deadline is not an error: std::optional<R> (R = void: bool),
/// empty (false) when the deadline passed first.
template <class Rep, class Period, class B>
    requires detail::TimeoutBody<B>
Task<std::conditional_t<std::is_void_v<detail::timeout_value_t<std::decay_t<B>>>, bool,
                        std::optional<detail::timeout_value_t<std::decay_t<B>>>>>
move_on_after(std::chrono::duration<Rep, Period> d, B&& body) {
    static_assert(detail::safe_temporary_v<B>,
                  XIIO_DETAIL_TEMPORARY_LAMBDA_MESSAGE("move_on_after"));
    return detail::move_on_task<detail::timeout_value_t<std::decay_t<B>>>(
        detail::clock_duration(d), std::decay_t<B>(std::forward<B>(body)));
}
template <class Rep, class Period, class B>
    requires(!detail::TimeoutBody<B>)
auto move_on_after(std::chrono::duration<Rep, Period>, B&&) { // refused: says why
    static_assert(detail::is_timeout_body_v<B>, XIIO_DETAIL_TIMEOUT_BODY_MESSAGE("move_on_after"));
}

} // namespace xiio

#undef XIIO_DETAIL_TIMEOUT_BODY_MESSAGE
