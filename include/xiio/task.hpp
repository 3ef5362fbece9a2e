#pragma once
// Task<T>: the lazy coroutine type, and run(), which drives a loop until a task finished.
//
// Who resumes whom: `co_await child` binds the child to the awaiting task's Runner,
// suspends the parent and hands the child to the loop's trampoline (Loop::resume), which
// resumes it as soon as the parent's frame has returned. When the child finishes, its
// final_suspend hands the parent back to the trampoline the same way. No frame is ever
// resumed from inside another frame's await_suspend, so neither a loop over a million
// synchronously completing tasks nor a task that awaits itself 100,000 levels deep builds
// up stack, even where symmetric transfer is not a tail call (g++ 12 at -O0/-O1 and under
// sanitizers). If the child suspends at a leaf, the trampoline has nothing left and
// returns to the loop, which later resumes the leaf's frame through the trampoline again.

#include <xiio/detail/frame_pool.hpp>
#include <xiio/detail/std_parts.hpp>
#include <xiio/loop.hpp>

#include <atomic>
#include <concepts>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <optional>
#include <source_location>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

namespace xiio {

template <class T = void>
class Task;

namespace detail {

/// The default template argument of the coroutines a header defines outside a template
/// (`template <class = detail::OnlyWhereUsed> Task<Socket> connect_tcp(...)`), called as
/// before. g++ 12 compiles the coroutine of every inline non-template function in every
/// translation unit that includes it, used or not, with everything it calls: as plain
/// inline functions, run_process, connect_tcp and their helpers cost each TU that includes
/// <xiio.hpp> about half of its g++ -O0 time. A function template is compiled only where
/// it is called.
struct OnlyWhereUsed;

struct PromiseBase {
    explicit PromiseBase(std::source_location where) noexcept : where_(where) {
        count(Counter::frames, 1);
    }
    ~PromiseBase() { count(Counter::frames, -1); }
    PromiseBase(const PromiseBase&) = delete;
    PromiseBase& operator=(const PromiseBase&) = delete;

    // Set when the task starts and never cleared: a task that has a runner was started
    // (it may have finished). Nothing else is kept: four words, part of every frame.
    Runner* runner_ = nullptr;
    std::coroutine_handle<> continuation_; // the awaiting frame; null for a runner's root
    std::exception_ptr exception_;
    // The coroutine this frame runs, for xiio::dump_tasks(): a pointer to static data the
    // compiler made (see Promise's constructor). Written once, when the frame is made.
    std::source_location where_;

    struct FinalAwaiter {
        bool await_ready() const noexcept { return false; }
        template <class P>
        void await_suspend(std::coroutine_handle<P> h) const noexcept {
            PromiseBase& p = h.promise();
            if (p.continuation_)
                p.runner_->loop->resume_next(p.continuation_); // once this frame returned
            else
                p.runner_->finished();
        }
        void await_resume() const noexcept {}
    };

    std::suspend_always initial_suspend() const noexcept { return {}; }
    FinalAwaiter final_suspend() const noexcept { return {}; }
    void unhandled_exception() noexcept { exception_ = std::current_exception(); }
};

/// What the block of a frame keeps in the 8 bytes in front of the frame: how many of the
/// frame and the group member made in front of it (see FrameRoom) are alive, and the
/// frame's size. The block is freed when both are gone: a TaskHandle keeps the member,
/// and with it the block, after the frame was destroyed (its parameters and locals are
/// gone at once: only the memory stays).
struct FrameCell {
    std::atomic<std::uint32_t> lives;
    std::uint32_t size;

    static FrameCell& of(void* frame) noexcept {
        return *reinterpret_cast<FrameCell*>(static_cast<char*>(frame) - sizeof(FrameCell));
    }
    /// One of the two is gone; the last frees the block, whose frame starts `room` in.
    static void drop(void* frame, std::size_t room) noexcept {
        FrameCell& c = of(frame);
        if (c.lives.fetch_sub(1, std::memory_order_acq_rel) == 1)
            frame_deallocate(static_cast<char*>(frame) - room, room + c.size);
    }
};

/// Bytes a group member takes apart from its value (multiplex.hpp asserts that it fits).
inline constexpr std::size_t member_base_size = 88;

/// Every frame of a Task<T> is allocated with room in front of it for the group member it
/// may become (the runner, the outcome, the waiters of its handles), so that add_task()
/// allocates nothing beyond the frame. A frame that never becomes a member wastes the
/// room; its cost is memory only (nothing is constructed in it).
template <class T>
struct FrameRoom {
    using Value = std::conditional_t<std::is_void_v<T>, std::monostate, std::optional<T>>;
    static constexpr std::size_t value_size = std::is_void_v<T> ? 0 : sizeof(Value);
    static constexpr std::size_t value_align = alignof(Value);
    static constexpr std::size_t up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }
    static constexpr std::size_t member_size =
        up(up(member_base_size, value_align) + value_size, std::max(alignof(void*), value_align));
    /// A multiple of 16, so the frame keeps operator new's alignment.
    static constexpr std::size_t size = up(member_size + sizeof(FrameCell), 16);

    /// A frame of `n` bytes, `size` bytes into its block; its cell counts the frame.
    /// Throws std::bad_alloc.
    static void* allocate(std::size_t n) {
        char* frame = static_cast<char*>(frame_allocate(size + n)) + size;
        new (frame - sizeof(FrameCell)) FrameCell{{1}, static_cast<std::uint32_t>(n)};
        return frame;
    }
    /// The frame is gone (its member, if any, may still be alive).
    static void deallocate(void* frame) noexcept { FrameCell::drop(frame, size); }
};

// Where a frame is made: the compiler constructs the promise inside the coroutine, with
// no arguments where no constructor takes the coroutine's parameters, so the default
// argument std::source_location::current() is evaluated in the coroutine itself. g++ 12
// and clang++ 16 both report its name (function_name()) and file; the line is that of the
// function's closing brace with g++ 12 and that of its name with clang++ 16. (A default
// argument of operator new would not do: clang++ 16 then takes the coroutine's parameters
// for the location and rejects the program.) A coroutine whose only parameter is a
// std::source_location gets that one instead.
template <class T>
struct Promise : PromiseBase {
    // dump.hpp finds PromiseBase at the same place in every frame (see promise_of there).
    static_assert(alignof(T) <= 16, "xiio::Task<T>: over-aligned T are not supported");
    explicit Promise(std::source_location where = std::source_location::current()) noexcept
        : PromiseBase(where) {}

    // Frames come from the thread's frame pool (detail/frame_pool.hpp), with FrameRoom in
    // front; the compiler passes the frame's size back to the sized delete.
    static void* operator new(std::size_t n) { return FrameRoom<T>::allocate(n); }
    static void operator delete(void* frame, std::size_t) noexcept {
        FrameRoom<T>::deallocate(frame);
    }

    std::optional<T> value_;
    Task<T> get_return_object() noexcept;
    template <class U = T>
        requires(std::convertible_to<U &&, T>)
    void return_value(U&& v) {
        value_.emplace(std::forward<U>(v));
    }
    T take() {
        if (exception_)
            std::rethrow_exception(exception_);
        return std::move(*value_);
    }
};

template <>
struct Promise<void> : PromiseBase {
    explicit Promise(std::source_location where = std::source_location::current()) noexcept
        : PromiseBase(where) {}

    static void* operator new(std::size_t n) { return FrameRoom<void>::allocate(n); }
    static void operator delete(void* frame, std::size_t) noexcept {
        FrameRoom<void>::deallocate(frame);
    }

    Task<void> get_return_object() noexcept;
    void return_void() noexcept {}
    void take() {
        if (exception_)
            std::rethrow_exception(exception_);
    }
};

/// Every leaf awaitable finds the task it suspends through the awaiting frame's promise,
/// so leaves can only be awaited from an xiio Task.
template <class P>
concept XiioPromise = std::derived_from<P, PromiseBase>;

} // namespace detail

/// A lazy coroutine: nothing runs until it is awaited or given to run() (or a group).
/// Move-only; owns its frame.
template <class T>
class [[nodiscard]] Task {
public:
    using promise_type = detail::Promise<T>;
    using value_type = T;

    Task() noexcept = default;
    explicit Task(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
    Task(Task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
    Task& operator=(Task&& o) noexcept {
        if (this != &o) {
            reset();
            h_ = std::exchange(o.h_, {});
        }
        return *this;
    }
    ~Task() { reset(); }

    /// False for a default-constructed or moved-from task.
    explicit operator bool() const noexcept { return static_cast<bool>(h_); }

    struct [[nodiscard]] Awaiter {
        std::coroutine_handle<promise_type> h_;
        bool await_ready() const {
            if (!h_)
                throw std::logic_error("xiio: awaiting an empty Task (moved from?)");
            if (h_.promise().runner_) // started, maybe finished
                throw std::logic_error("xiio: a Task can be awaited only once");
            return false;
        }
        template <detail::XiioPromise P>
        void await_suspend(std::coroutine_handle<P> parent) noexcept {
            promise_type& child = h_.promise();
            child.runner_ = parent.promise().runner_;
            child.continuation_ = parent;
            child.runner_->loop->resume_next(h_); // runs once the parent's frame returned
        }
        T await_resume() { return h_.promise().take(); }
    };
    Awaiter operator co_await() & noexcept { return Awaiter{h_}; }
    Awaiter operator co_await() && noexcept { return Awaiter{h_}; }

    // Plumbing for run() and task groups, which start a task as the root of a runner.
    std::coroutine_handle<promise_type> handle() const noexcept { return h_; }
    std::coroutine_handle<promise_type> release() noexcept { return std::exchange(h_, {}); }

private:
    void reset() noexcept {
        if (h_)
            std::exchange(h_, {}).destroy();
    }
    std::coroutine_handle<promise_type> h_;
};

namespace detail {

template <class T>
Task<T> Promise<T>::get_return_object() noexcept {
    return Task<T>(std::coroutine_handle<Promise<T>>::from_promise(*this));
}
inline Task<void> Promise<void>::get_return_object() noexcept {
    return Task<void>(std::coroutine_handle<Promise<void>>::from_promise(*this));
}

template <class A>
struct is_task : std::false_type {};
template <class T>
struct is_task<Task<T>> : std::true_type {};

/// Wraps a light awaitable into a Task (one frame), for APIs that take tasks.
template <class R, class A>
Task<R> wrap(A a) {
    if constexpr (std::is_void_v<R>)
        co_await std::move(a);
    else
        co_return co_await std::move(a);
}

/// Base of light awaitables: they convert to Task<R> where a Task is needed
/// (`add_task(sleep(1s))`, `run(read(fd, 10))`).
template <class Derived, class R>
struct Leaf {
    using value_type = R;
    operator Task<R>() && { return wrap<R>(std::move(static_cast<Derived&>(*this))); }
};

template <class A>
concept Wrappable = requires { typename std::remove_cvref_t<A>::value_type; } &&
                    std::convertible_to<std::remove_cvref_t<A>&&,
                                        Task<typename std::remove_cvref_t<A>::value_type>>;

/// g++ 12 destroys twice a temporary closure with by-copy captures, or a braced aggregate,
/// that is part of a co_await expression (it builds the closure, passes a bitwise copy
/// and destroys both: a double free at run time, with no diagnostic). Nothing the callee
/// does can help (it never sees the original), so the APIs that take a callable
/// (task_group, timeout, move_on_after, in_thread, ThreadPool::run) refuse, on g++ 12, an
/// rvalue callable that is not trivially destructible: name it first (it is then copied)
/// or pass std::ref(it). Captures by reference are trivially destructible and stay
/// allowed; other compilers accept every form.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
template <class F, class... Args>
inline constexpr bool safe_temporary_v =
    std::is_lvalue_reference_v<F> || std::is_trivially_destructible_v<std::decay_t<F>> ||
    !std::is_invocable_v<std::decay_t<F>&, Args...>;
#else
template <class F, class... Args>
inline constexpr bool safe_temporary_v = true;
#endif
#define XIIO_DETAIL_TEMPORARY_LAMBDA_MESSAGE(api)                                                  \
    "xiio::" api " (g++ 12): a temporary lambda with by-copy captures inside a co_await is "       \
    "destroyed twice by g++ 12 (a double free). Name the lambda first and pass the name "          \
    "(`auto body = [s](...) {...};`, then `body`), or pass std::ref(body)"

/// What the APIs that take tasks accept: a Task<T> or a light awaitable of xiio.
template <class A>
inline constexpr bool is_task_like_v = is_task<std::remove_cvref_t<A>>::value || Wrappable<A>;

/// Task<T> as is; a light awaitable wrapped into a Task (a Condition lvalue is copied).
template <class A>
auto as_task(A&& a) {
    static_assert(is_task_like_v<A>,
                  "xiio: expected a xiio::Task<T> (what calling a coroutine returns) or an "
                  "awaitable of xiio (sleep, read, ...); see the type in is_task_like_v<...>");
    using D = std::remove_cvref_t<A>;
    if constexpr (is_task<D>::value) {
        return D(std::move(a));
    } else if constexpr (is_task_like_v<A>) { // (else: only the assertion above, no cascade)
        using V = Task<typename D::value_type>;
        if constexpr (std::is_convertible_v<A&&, V>)
            return V(std::forward<A>(a));
        else
            return V(std::move(a));
    }
}

template <class A>
using task_value_t = typename std::remove_cvref_t<A>::value_type; // (no as_task instantiated)

/// The root runner of run(): done when the task finished.
/// The outermost runner of a loop (of run(), on_asio() or another host): takes `task`
/// over (it must not have started; `who` names the caller in the error), binds its frame
/// and queues it. Declared after the loop, so the frame dies before the loop does.
template <class T>
struct RootRunner final : Runner {
    RootRunner(Loop& l, Task<T> task, const char* who) : Runner(l), task_(std::move(task)) {
        if (!task_)
            throw std::logic_error(std::string(who) + ": empty Task");
        auto& p = task_.handle().promise();
        if (p.runner_) // started, maybe finished
            throw std::logic_error(std::string(who) + ": the Task was already started");
        p.runner_ = this;
        resume_ = task_.handle();
        l.add_root(*this);
        l.schedule(this);
    }
    void finished() noexcept override { done_ = true; }
    /// After done_: the task's value, or rethrows (the loop's failure first).
    T result() {
        if (loop->failure_)
            std::rethrow_exception(loop->failure_);
        return task_.handle().promise().take();
    }
    Task<T> task_;
    bool done_ = false;
};

struct CurrentLoop {
    explicit CurrentLoop(Loop& l) noexcept { set_current_loop(&l); }
    ~CurrentLoop() { set_current_loop(nullptr); }
    CurrentLoop(const CurrentLoop&) = delete;
    CurrentLoop& operator=(const CurrentLoop&) = delete;
};

} // namespace detail

/// How run() drives its loop.
struct RunOptions {
    Backend backend = Backend::automatic;
};

/// Drives a new loop on this thread until `task` finished; returns its value or rethrows
/// its exception. If the loop's waiting step failed, that error is rethrown (after every
/// task was unwound), even if tasks caught it. Throws std::logic_error inside a running
/// loop of the same thread (co_await the task instead); std::system_error if
/// Backend::io_uring (or XIIO_BACKEND=io_uring) is asked for where the kernel refuses it,
/// std::invalid_argument for another value of XIIO_BACKEND.
template <class T>
T run(Task<T> task, RunOptions options = {}) {
    if (detail::current_loop())
        throw std::logic_error("xiio::run: a loop is already running on this thread");
    detail::Loop loop(options.backend);
    detail::CurrentLoop current(loop);
    detail::SigpipeGuard sigpipe(loop);
    detail::RootRunner<T> root(loop, std::move(task), "xiio::run");
    loop.run_until(root.done_);
    return root.result();
}

/// run() for a light awaitable (`run(sleep(1s))`).
template <detail::Wrappable A>
    requires(!detail::is_task<std::remove_cvref_t<A>>::value)
auto run(A&& a, RunOptions options = {}) {
    return run(detail::as_task(std::forward<A>(a)), options);
}

} // namespace xiio
