#pragma once
// Many cores: loops on several threads, and structured calls between them.
//
// Each loop stays single-threaded: nothing of a loop (a Future, a Queue, an Fd's
// registration) is touched from another thread. What crosses is a call: on_loop(handle,
// task) runs `task` on the loop that `handle` names and awaits it here, as if it were a
// child; its value or exception comes back, and a cancellation of the awaiting task is
// forwarded to it and waited for. A LoopThread is a thread that runs a loop for calls
// until it is destroyed. The plumbing (who owns what, which thread resumes whom) is in
// xiio/detail/loop_call.hpp.
//
// Errors: std::logic_error for a loop that is gone (or takes no calls) and for this_loop()
// outside a task; std::system_error if a thread or its loop cannot be made.
// Thread safety: LoopHandle is safe to copy and use from any thread; a LoopThread object
// is used by one thread at a time (like any object).

#include <xiio/detail/loop_call.hpp>
#include <xiio/multiplex.hpp>
#include <xiio/task.hpp>

#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>

#include <pthread.h>
#include <signal.h>

namespace xiio {

class LoopHandle;
LoopHandle this_loop();

/// Names a loop (a LoopThread's, or the one this_loop() was called in). Copyable, usable
/// from any thread; it does not keep the loop alive. Default-constructed: names no loop.
class LoopHandle {
public:
    LoopHandle() noexcept = default;
    /// Whether the loop still runs (a snapshot: it may stop right after). Never throws.
    bool running() const noexcept { return port_ && port_->running(); }

    /// Plumbing for this_loop() and LoopThread.
    explicit LoopHandle(std::shared_ptr<detail::LoopPort> p) noexcept : port_(std::move(p)) {}

private:
    template <class T>
    friend Task<T> on_loop(LoopHandle loop, Task<T> task);
    std::shared_ptr<detail::LoopPort> port_;
};

/// The loop the calling task runs on. Throws std::logic_error outside a task (no loop runs
/// on this thread). Not a cancellation point.
inline LoopHandle this_loop() {
    detail::Loop* loop = detail::current_loop();
    if (!loop)
        throw std::logic_error("xiio::this_loop: called outside a task (no loop runs here)");
    if (detail::LoopPort* p = detail::hosting_port(); p && p->loop_id == loop->id())
        return LoopHandle(p->shared_from_this());
    auto port = std::make_shared<detail::LoopPort>();
    port->loop_id = loop->id();
    port->queue = loop->remote();
    return LoopHandle(std::move(port));
}

/// Runs `task` on the loop `loop` names and awaits it here: returns its value or rethrows
/// its exception. A cancellation point: a cancellation of the awaiting task is forwarded
/// to `task` over there (a CancelledError at its current co_await), and on_loop returns
/// (rethrowing the cancellation) only once `task` finished there, cleanup included. While
/// it waits, this loop does not count as deadlocked.
///
/// Only a LoopThread's loop takes calls. On the current loop itself, on_loop just awaits
/// `task`. Throws std::logic_error if `loop` names no loop, a loop that is gone, another
/// loop that is not a LoopThread's, or if that LoopThread is destroyed before `task`
/// finished there (the task was cancelled there). Throws std::bad_alloc.
///
/// `task` runs on the other thread: what it references must be safe to use from there
/// (nothing of this loop: no Future, Queue, Event or Fd of it).
template <class T>
Task<T> on_loop(LoopHandle loop, Task<T> task) {
    const std::shared_ptr<detail::LoopPort>& port = loop.port_;
    if (!port)
        throw std::logic_error("xiio::on_loop: the LoopHandle names no loop");
    if (detail::Loop* here = detail::current_loop(); here && here->id() == port->loop_id) {
        if constexpr (std::is_void_v<T>) {
            co_await std::move(task);
            co_return;
        } else {
            co_return co_await std::move(task);
        }
    }
    if (!port->hosts)
        throw std::logic_error("xiio::on_loop: that loop takes no calls (only a LoopThread's "
                               "loop does)");
    if (!port->running())
        throw std::logic_error("xiio::on_loop: the loop is gone");
    auto call = std::make_shared<detail::LoopCall<T>>();
    call->host = port;
    call->guest = detail::guest_task<T>(detail::GuestTicket(call), call.get(), std::move(task));
    if constexpr (std::is_void_v<T>)
        co_await detail::CallAwaiter<T>(std::move(call));
    else
        co_return co_await detail::CallAwaiter<T>(std::move(call));
}

/// on_loop() for a light awaitable (`on_loop(h, sleep(1s))`), wrapped into a task here.
template <detail::Wrappable A>
    requires(!detail::is_task<std::remove_cvref_t<A>>::value)
auto on_loop(LoopHandle loop, A&& a) {
    return on_loop(std::move(loop), detail::as_task(std::forward<A>(a)));
}

namespace detail {

/// A LoopThread's port, shared by the LoopThread and its thread (which never touches the
/// LoopThread object itself: a LoopThread destroyed by a task of its own loop lets its
/// thread run on, detached).
struct ThreadPort final : LoopPort {
    /// Posted by ~LoopThread: the loop stops taking calls and cancels those it runs.
    struct Stop final : RemoteNode {
        ThreadPort* port = nullptr;
        void remote_done(bool ran) noexcept override {
            if (!ran || !port->group)
                return;
            port->stopping = true;
            std::exchange(port->group, nullptr)->cancel();
        }
    };
    Stop stop;
    // The start-up handshake: the constructor waits until the loop takes calls.
    std::mutex mutex;
    std::condition_variable ready_cv;
    bool ready = false;
    std::exception_ptr failure; // the loop could not start

    void set_ready(std::exception_ptr e) noexcept {
        {
            std::unique_lock lock(mutex);
            if (ready)
                return;
            ready = true;
            failure = std::move(e);
        }
        ready_cv.notify_one();
    }
};

/// The main task of a LoopThread's loop: a group whose body waits (forever) to be
/// cancelled by Stop; calls are added to it as they arrive (LoopCallBase::started). Keeps
/// the loop alive: waiting for calls is not a deadlock.
template <class = OnlyWhereUsed>
Task<void> serve_calls(ThreadPort& port) {
    Loop& loop = *current_loop();
    port.queue = loop.remote();
    port.loop_id = loop.id();
    port.loop = &loop;
    hosting_port() = &port;
    loop.keepalive(+1);
    Future<void> never;
    auto body = [&](TaskGroup& tg) -> Task<void> {
        port.group = &tg;
        port.set_ready(nullptr);
        co_await never;
    };
    std::exception_ptr error;
    try {
        co_await task_group(std::ref(body));
    } catch (...) { // a failure of the loop itself
        error = std::current_exception();
    }
    port.group = nullptr;
    loop.keepalive(-1);
    hosting_port() = nullptr;
    if (error)
        std::rethrow_exception(error);
}

/// The thread of a LoopThread.
inline void run_loop_thread(std::shared_ptr<ThreadPort> port) noexcept {
    try {
        run(serve_calls(*port));
    } catch (...) { // before it took calls: the constructor rethrows it; after: dropped
        port->set_ready(std::current_exception());
    }
}

} // namespace detail

/// A thread running an xiio loop that takes calls (on_loop) until the LoopThread is
/// destroyed. The thread starts with every asynchronous signal blocked, as a ThreadPool's
/// workers do (so a process-directed SIGINT goes to a thread that subscribed to it).
class LoopThread {
public:
    /// Starts the thread and returns once its loop takes calls. Throws std::system_error
    /// if the thread or its loop cannot be made.
    LoopThread() : port_(std::make_shared<detail::ThreadPort>()) {
        port_->hosts = true;
        port_->stop.port = port_.get();
        sigset_t async, old;
        sigfillset(&async);
        for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS})
            sigdelset(&async, sig);
        pthread_sigmask(SIG_SETMASK, &async, &old);
        try {
            thread_ = std::thread(detail::run_loop_thread, port_);
        } catch (...) {
            pthread_sigmask(SIG_SETMASK, &old, nullptr);
            throw;
        }
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
        std::unique_lock lock(port_->mutex);
        port_->ready_cv.wait(lock, [&] { return port_->ready; });
        if (port_->failure) {
            lock.unlock();
            thread_.join();
            std::rethrow_exception(port_->failure);
        }
    }
    LoopThread(const LoopThread&) = delete;
    LoopThread& operator=(const LoopThread&) = delete;

    /// Cancels the tasks that on_loop calls run there (each gets CancelledError at its
    /// current co_await; their callers then get std::logic_error), waits for them to
    /// finish, and joins the thread. Blocks the calling thread meanwhile: a task there
    /// must not wait for the destroying thread's loop.
    ~LoopThread() {
        port_->queue->post(port_->stop); // fails only if the loop is gone already
        if (thread_.get_id() == std::this_thread::get_id())
            thread_.detach(); // destroyed by a task of its own loop: it ends by itself
        else
            thread_.join();
    }

    /// Names this thread's loop; running() until the LoopThread is destroyed. Throws
    /// nothing; not a cancellation point.
    LoopHandle handle() const noexcept { return LoopHandle(port_); }

private:
    std::shared_ptr<detail::ThreadPort> port_;
    std::thread thread_;
};

} // namespace xiio
