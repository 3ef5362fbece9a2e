#pragma once
// Threads: ThreadPool and in_thread(), to run blocking or CPU-bound functions off the loop.
//
// One job is one heap block shared by three parties (detail::Job):
// - the awaiting leaf (detail::JobAwaiter), on the loop's thread: it submits the job from
//   await_suspend and reads the outcome in await_resume;
// - a worker thread: it runs f(args...), stores the value or the exception, destroys f and
//   its arguments, and posts the job's state (a RemoteNode) to the loop's RemoteQueue,
//   whose eventfd wakes the loop (no polling);
// - its completion, which the loop runs on its own thread: it wakes the leaf's Wait.
// The fields the loop's thread uses (loop_, wait_) are touched only on that thread; the
// outcome is handed over by the queue's mutex (the worker writes it before post(), the
// loop reads it after take()).
//
// The worker's side is noexcept (nobody could hear its exception), so it must not
// allocate: the queue is intrusive (the node is the job's state), and what the worker
// needs, a reference to the queue and the job's reference to itself, is copied on the
// loop's thread when the job is submitted. The loop closes the queue and its eventfd on
// its own thread when it goes, whoever still holds it, and a worker that posts after
// that finds it closed and lets the job go itself.
//
// Keepalive: while a leaf waits for a job, the loop's deadlock detection must not fire
// (nothing else may be pending: every other task may wait for a future that the job's
// task will set). The leaf adds 1 when it submits and exactly one of these removes it, all
// on the loop's thread, whichever comes first (each clears Job::wait_, so only one can):
// the completion callback (which wakes the leaf), the leaf's await_resume after a
// cancellation or a loop failure was thrown in, or the leaf's destructor (frame destroyed
// while suspended). After that the job can no longer wake anything: a job still running
// after its task was cancelled does not keep the loop from reporting a deadlock.

#include <xiio/core.hpp>
#include <xiio/detail/std_parts.hpp>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <pthread.h>
#include <sched.h>
#include <signal.h>

namespace xiio {

class ThreadPool;

namespace detail {

/// A job as the pool's workers see it.
struct JobBase {
    JobBase() = default;
    JobBase(const JobBase&) = delete;
    JobBase& operator=(const JobBase&) = delete;
    virtual ~JobBase() = default;
    /// On a worker: runs the function, keeps the outcome, posts the completion.
    virtual void execute() noexcept = 0;
};

/// The outcome of a job and its link to the awaiting leaf.
template <class R>
struct JobState : JobBase, RemoteNode, std::enable_shared_from_this<JobState<R>> {
    using Value = std::conditional_t<std::is_void_v<R>, std::monostate, R>;

    // Written by the worker before it posts the completion.
    std::optional<Value> value_;
    std::exception_ptr error_;
    // Written on the loop's thread before the job is submitted (prepare), taken by the
    // worker (post). From then until the loop took the completion the job holds itself
    // (self_): a submission that fails must clear both (unprepare).
    std::shared_ptr<RemoteQueue> queue_;
    std::shared_ptr<JobState> self_;
    // The loop's thread only.
    Loop* loop_ = nullptr;
    Wait* wait_ = nullptr; // the suspended leaf, until it was woken or went away

    /// On the loop's thread, before the job is submitted: what the worker needs to post
    /// the completion, so that it allocates nothing (copies of shared_ptrs).
    void prepare(std::shared_ptr<RemoteQueue> q) noexcept {
        self_ = this->shared_from_this();
        queue_ = std::move(q);
    }
    /// The submission failed: undo prepare().
    void unprepare() noexcept {
        queue_.reset();
        self_.reset(); // the awaiter still holds the job
    }
    /// On the worker, once the outcome is stored. The local keeps the queue alive while
    /// post() runs. Once post() released the queue's mutex the worker holds nothing of the
    /// loop's: the job belongs to the loop's thread, which may already be destroying it.
    void post() noexcept {
        std::shared_ptr<RemoteQueue> q = std::move(queue_);
        if (!q->post(*this)) // the loop is gone: nobody else will let the job go
            std::shared_ptr<JobState> last = std::move(self_);
    }
    /// On the loop's thread: the completion was taken (ran) or dropped with the loop.
    void remote_done(bool ran) noexcept override {
        std::shared_ptr<JobState> keep = std::move(self_); // may be the last reference
        if (ran)
            complete();
    }
    /// On the loop's thread: the job is done; wake the leaf if it still waits.
    void complete() noexcept {
        if (Wait* w = std::exchange(wait_, nullptr)) {
            loop_->keepalive(-1);
            loop_->wake(*w);
        }
    }
    /// On the loop's thread: the leaf stops waiting (cancelled, or destroyed).
    void detach() noexcept {
        if (std::exchange(wait_, nullptr))
            loop_->keepalive(-1);
    }
    R take() {
        if (error_)
            std::rethrow_exception(error_);
        if constexpr (!std::is_void_v<R>)
            return std::move(*value_);
    }
};

/// A job with its function and arguments (decayed copies, owned: nothing dangles).
template <class R, class F, class... Args>
struct Job final : JobState<R> {
    explicit Job(F f, Args... args) : call_(std::in_place, std::move(f), std::move(args)...) {}

    void execute() noexcept override {
        try {
            auto invoke = [](F& f, Args&... args) -> decltype(auto) {
                return detail::invoke(f, args...);
            };
            if constexpr (std::is_void_v<R>) {
                std::apply(invoke, *call_);
                this->value_.emplace();
            } else {
                this->value_.emplace(std::apply(invoke, *call_));
            }
        } catch (...) {
            this->error_ = std::current_exception();
        }
        call_.reset(); // f and its arguments die on the worker, once, as soon as it ran
        this->post();
    }

    std::optional<std::tuple<F, Args...>> call_;
};

template <class F, class... Args>
using job_result_t = std::decay_t<std::invoke_result_t<F&, Args&...>>;

/// A job ThreadPool::run and in_thread accept: callable with its arguments, as lvalues
/// of their decayed types (the job's own copies).
template <class F, class... Args>
concept JobCallable = std::is_invocable_v<std::decay_t<F>&, std::decay_t<Args>&...>;

inline void submit(ThreadPool& pool, std::shared_ptr<JobBase> job);

/// The leaf a task waits in while its job runs.
template <class R>
class [[nodiscard]] JobAwaiter : public Leaf<JobAwaiter<R>, R> {
public:
    JobAwaiter(ThreadPool& pool, std::shared_ptr<JobState<R>> job) noexcept
        : pool_(&pool), job_(std::move(job)) {}
    JobAwaiter(JobAwaiter&& o) noexcept : pool_(o.pool_), job_(std::move(o.job_)) {}
    ~JobAwaiter() {
        if (job_)
            job_->detach(); // destroyed while suspended: the job may no longer wake us
        drop_wait(w_);
    }

    bool await_ready() const noexcept { return false; }
    template <XiioPromise P>
    bool await_suspend(std::coroutine_handle<P> h) {
        if (!begin_wait(w_, h))
            return false; // cancelled before it was submitted: the job never runs
        Loop& loop = *w_.runner->loop;
        try {
            job_->prepare(loop.remote()); // what the worker would otherwise allocate
            submit(*pool_, job_);
        } catch (...) {
            job_->unprepare(); // it holds the job: break the cycle
            w_.runner = nullptr;
            throw;
        }
        // The completion can only run on this thread, once we are back in the loop.
        job_->loop_ = &loop;
        job_->wait_ = &w_;
        w_.describe = [](const Wait&, std::string& out) { out += "a job on a worker thread"; };
        loop.keepalive(+1);
        loop.expect_remote();
        loop.suspend(*w_.runner, w_, h);
        return true;
    }
    R await_resume() {
        job_->detach(); // still waiting: woken by a cancellation (or a loop failure)
        end_wait(w_);   // throws it; the job runs on and its result is discarded
        return job_->take();
    }

private:
    ThreadPool* pool_;
    std::shared_ptr<JobState<R>> job_;
    Wait w_;
};

} // namespace detail

/// Runs functions on worker threads; tasks await their results without blocking the loop.
///
/// At most `max_workers` threads exist. They are started on demand, when a job is submitted
/// and no idle worker can take it, and then persist until the pool is destroyed. Idle
/// workers are kept rather than timed out: on the machines this was measured on, starting
/// and joining a thread costs 10-45 us, about 1-5 times a whole round trip through an idle
/// worker (8-12 us), while an idle worker costs one blocked thread (its 8 MiB stack is
/// virtual memory, a few pages resident). Asio's thread_pool and Python's
/// ThreadPoolExecutor keep theirs too. Workers start with every asynchronous signal
/// blocked, so a process-directed signal is never delivered to them (see
/// subscribe_signals()); the synchronous ones (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT,
/// SIGTRAP, SIGSYS) stay unblocked, so a fault in a job reaches the process's handlers.
///
/// ~ThreadPool() waits for the running and the queued jobs, also when no loop runs (a job
/// whose task was cancelled still runs to its end); then it joins the workers. Destroy the
/// pool only once no task will await a Task it returned.
class ThreadPool {
public:
    /// The default size of a pool: min(32, hardware threads + 4), as Python's.
    static std::size_t default_max_workers() noexcept {
        return std::min<std::size_t>(32, std::size_t{std::thread::hardware_concurrency()} + 4);
    }

    /// Throws std::invalid_argument if max_workers is 0.
    explicit ThreadPool(std::size_t max_workers = default_max_workers()) : max_(max_workers) {
        if (max_workers == 0)
            throw std::invalid_argument("xiio::ThreadPool: max_workers must be at least 1");
    }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    ~ThreadPool() {
        {
            std::unique_lock lock(mutex_);
            stopping_ = true;
        }
        cv_.notify_all();
        for (auto& t : threads_) {
            if (t.get_id() == std::this_thread::get_id())
                t.detach(); // exit() from a job: a thread cannot join itself
            else
                t.join();
        }
    }

    /// Runs `f(args...)` on a worker (f and args are decayed copies that the job owns and
    /// destroys on the worker once it ran; f gets the arguments as lvalues) and returns its
    /// value, or rethrows its exception, in the awaiting task, on the loop's thread. Nothing
    /// is submitted until the task is awaited. Cancelling the awaiting task returns at once:
    /// the job runs on (a thread cannot be stopped) and its result is discarded.
    /// A light awaitable (no coroutine frame), which converts to Task<R>.
    ///
    /// So a job may outlive the task that awaits it, and the task's locals with it: a job
    /// must not capture them by reference (`[&]`), nor be given pointers to them, or a
    /// cancellation (a timeout, a failing sibling in a group) leaves it reading and writing
    /// a dead frame. Nothing can detect or prevent this. Give the job what it uses by value
    /// (captures or arguments, which the job owns), move buffers in
    /// (`run(job, std::move(buf))`: f gets the job's own copy as an lvalue), hand results
    /// back as the return value, and share state the task also needs through a
    /// std::shared_ptr captured by value. A reference is safe only to an object that
    /// outlives this pool (~ThreadPool waits for its jobs). The cancelled task cannot wait
    /// for the job in its cleanup either: the job is no longer awaitable once cancelled.
    template <class F, class... Args>
        requires detail::JobCallable<F, Args...>
    detail::JobAwaiter<detail::job_result_t<std::decay_t<F>, std::decay_t<Args>...>>
    run(F&& f, Args&&... args) {
        static_assert(detail::safe_temporary_v<F, std::decay_t<Args>&...>,
                      XIIO_DETAIL_TEMPORARY_LAMBDA_MESSAGE("ThreadPool::run"));
        using R = detail::job_result_t<std::decay_t<F>, std::decay_t<Args>...>;
        static_assert(std::is_void_v<R> || std::is_move_constructible_v<R>,
                      "xiio::ThreadPool::run: the result must be movable");
        auto job = std::make_shared<detail::Job<R, std::decay_t<F>, std::decay_t<Args>...>>(
            std::forward<F>(f), std::forward<Args>(args)...);
        return detail::JobAwaiter<R>(*this, std::move(job));
    }
    template <class F, class... Args>
        requires(!detail::JobCallable<F, Args...>)
    auto run(F&&, Args&&...) { // refused: says why (see task_group for the two overloads)
        static_assert(detail::JobCallable<F, Args...>,
                      "xiio::ThreadPool::run / xiio::in_thread: the job must be callable with "
                      "the arguments given, as lvalues of their decayed types (f(args&...))");
    }

private:
    friend void detail::submit(ThreadPool&, std::shared_ptr<detail::JobBase>);

    void submit(std::shared_ptr<detail::JobBase> job) {
        std::unique_lock lock(mutex_);
        queue_.push_back(std::move(job));
        // Every idle worker will take one queued job: start a thread only for the excess.
        if (queue_.size() > idle_ && threads_.size() < max_) {
            try {
                spawn();
            } catch (...) {
                if (threads_.empty()) { // nobody would ever run it
                    queue_.pop_back();
                    throw;
                }
            }
        }
        queued_.store(queue_.size(), std::memory_order_release);
        bool wake = sleeping_ > 0 && queue_.size() > idle_ - sleeping_; // spinners take it
        lock.unlock();
        // Notified unlocked: a worker woken while we still hold the mutex would only block
        // on it again (a futex round trip on the latency of every offload).
        if (wake)
            cv_.notify_one();
    }

    void spawn() {
        // The new thread inherits the mask: block the asynchronous signals while creating
        // it. Never the synchronous ones, which the thread raises itself (a fault, abort(),
        // a trap, a seccomp kill): a blocked SIGSEGV from a real fault makes the kernel
        // kill the process without running any handler (ASan's report, a crash handler's
        // backtrace), and a raise()d one stays pending, ignored.
        sigset_t async, old;
        sigfillset(&async);
        for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS})
            sigdelset(&async, sig);
        pthread_sigmask(SIG_SETMASK, &async, &old);
        try {
            threads_.emplace_back([this] { work(); });
        } catch (...) {
            pthread_sigmask(SIG_SETMASK, &old, nullptr);
            throw;
        }
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
    }

    void work() {
        std::unique_lock lock(mutex_);
        for (;;) {
            while (queue_.empty() && !stopping_) {
                ++idle_;
                if (!spin(lock)) {
                    ++sleeping_;
                    cv_.wait(lock);
                    --sleeping_;
                }
                --idle_;
            }
            if (queue_.empty())
                return; // stopping, and every queued job ran
            auto job = std::move(queue_.front());
            queue_.pop_front();
            queued_.store(queue_.size(), std::memory_order_relaxed);
            lock.unlock();
            job->execute();
            job.reset(); // may destroy the job here, unlocked
            lock.lock();
        }
    }

    /// An idle worker watches the queue for a moment before it sleeps: a task offloading
    /// one short job after another (the common pattern) then hands each over without a
    /// futex wake-up, which costs more than the job. Bounded by `spin_budget`, after each
    /// job only. True if a job (or the stop) came meanwhile; the lock is held again.
    bool spin(std::unique_lock<std::mutex>& lock) {
        constexpr auto spin_budget = std::chrono::microseconds(20);
        lock.unlock();
        auto until = std::chrono::steady_clock::now() + spin_budget;
        bool got = false;
        for (unsigned i = 1;; ++i) {
            if (queued_.load(std::memory_order_acquire) > 0) {
                got = true;
                break;
            }
            // Yield, not pause: on a busy machine the thread we wait for may need
            // this very CPU (a pause-spin would keep it off for the whole budget).
            ::sched_yield();
            if (i % 8 == 0 && std::chrono::steady_clock::now() >= until)
                break;
        }
        lock.lock();
        return got ? true : (!queue_.empty() || stopping_);
    }

    std::size_t max_;
    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<detail::JobBase>> queue_;
    std::vector<std::thread> threads_;
    std::size_t idle_ = 0;               // workers without a job: spinning or sleeping
    std::size_t sleeping_ = 0;           // of those, blocked on cv_ (only they need a notify)
    std::atomic<std::size_t> queued_{0}; // queue_.size(), for spinners to watch unlocked
    bool stopping_ = false;
};

namespace detail {

inline void submit(ThreadPool& pool, std::shared_ptr<JobBase> job) {
    pool.submit(std::move(job));
}

/// The process-wide pool of in_thread(): created on first use, destroyed at exit (which
/// therefore waits for the jobs still running).
inline ThreadPool& default_thread_pool() {
    static ThreadPool pool;
    return pool;
}

} // namespace detail

/// ThreadPool::run() on a process-wide pool of ThreadPool::default_max_workers() threads.
///
/// A cancelled awaiting task returns at once while the job runs on: never let the job
/// capture the task's locals by reference; give it copies, move ownership in, or share
/// state through a std::shared_ptr captured by value (see ThreadPool::run). The default
/// pool lives until exit, so only objects that live as long are safe to reference.
///
/// g++ 12 destroys twice a lambda with by-copy captures that is a temporary inside a
/// co_await expression: `co_await xiio::in_thread([s] { ... })` would be a double free, so
/// on g++ 12 it does not compile. Name the lambda first: `auto job = [s] { ... };
/// co_await xiio::in_thread(job);`.
template <class F, class... Args>
auto in_thread(F&& f, Args&&... args)
    -> decltype(detail::default_thread_pool().run(std::forward<F>(f),
                                                  std::forward<Args>(args)...)) {
    static_assert(detail::safe_temporary_v<F, std::decay_t<Args>&...>,
                  XIIO_DETAIL_TEMPORARY_LAMBDA_MESSAGE("in_thread"));
    return detail::default_thread_pool().run(std::forward<F>(f), std::forward<Args>(args)...);
}

} // namespace xiio
