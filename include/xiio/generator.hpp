#pragma once
// Generator<T>: an async generator. Its body `co_yield`s values and may `co_await` anything
// a Task may; the consumer takes them one by one with `co_await gen.next()`.
//
// Who runs the body: nobody of its own. A generator is not a task and has no Runner: each
// `co_await gen.next()` binds the generator's frame to the awaiting task's Runner (as a
// Task awaited by a Task is bound) and hands it to the loop's trampoline (Loop::resume),
// which resumes it once the consumer's frame has returned. The body is then the innermost
// frame of the consumer's chain: a leaf it awaits (a sleep, a read, a Task, a group)
// suspends the consumer's task, the loop resumes the generator's frame when the leaf
// fires, and a cancellation thrown into the task is thrown at the body's current
// co_await. `co_yield v` (and the end of the body) hands the consumer's frame back to the
// trampoline the same way, so a consumer draining a generator that never suspends runs on
// constant stack, and neither frame is ever resumed from inside the other's await_suspend.
//
// Who owns what: the Generator owns the frame and destroys it (an unfinished body is
// unwound: its destructors run, it awaits nothing more). While a next() is pending, the
// promise points to the next()'s awaitable, which lives in the consumer's frame: a
// co_yield constructs the value right there (no copy through the promise), and an
// exception that ends the body is moved there too. Once the value or the error is handed
// over, the link is cut and the consumer never touches the generator again in that
// await. Each side clears the link if it dies first (a loop torn down), and a generator
// destroyed by another task while a next() is pending resumes that consumer with
// std::logic_error.

#include <xiio/core.hpp>
#include <xiio/detail/frame_pool.hpp>
#include <xiio/task.hpp>

#include <concepts>
#include <coroutine>
#include <exception>
#include <optional>
#include <source_location>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace xiio {

template <class T>
class Generator;

namespace detail {

template <class T>
struct NextAwaiter;

template <class T>
struct GeneratorPromise : PromiseBase {
    // A generator's frame becomes part of its consumer's chain, so dump_tasks() names it
    // like a Task's frame (see Promise's constructor in task.hpp).
    explicit GeneratorPromise(std::source_location where = std::source_location::current()) noexcept
        : PromiseBase(where) {}

    // From the thread's frame pool, like a Task's frame (without a Task's room in front:
    // a generator never becomes a group member).
    static void* operator new(std::size_t n) { return frame_allocate(n); }
    static void operator delete(void* frame, std::size_t n) noexcept { frame_deallocate(frame, n); }

    NextAwaiter<T>* waiter_ = nullptr; // the next() the body runs for; null between them

    Generator<T> get_return_object() noexcept;

    /// Hands the consumer's frame back to the trampoline; the body stays where it is. A
    /// consumer that keeps getting values without the body ever suspending gives the loop
    /// back every Runner::budget of them (as a leaf that completes at once does).
    void hand_back() noexcept {
        waiter_->linked_ = false;
        waiter_ = nullptr;
        Runner& r = *runner_;
        if (!out_of_budget(r, continuation_))
            r.loop->resume_next(continuation_);
    }

    struct YieldAwaiter {
        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<GeneratorPromise> h) const noexcept {
            h.promise().hand_back();
        }
        void await_resume() const noexcept {}
    };
    /// `co_yield v`: T made from `v` (a copy of an lvalue, a move of an rvalue) in the
    /// consumer's next(); what that construction throws is thrown in the body.
    template <class U = T>
        requires std::constructible_from<T, U&&>
    YieldAwaiter yield_value(U&& v) {
        waiter_->result_.emplace(std::forward<U>(v));
        return {};
    }

    void return_void() noexcept {}

    struct FinalAwaiter {
        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<GeneratorPromise> h) const noexcept {
            GeneratorPromise& p = h.promise();
            p.waiter_->error_ = std::exchange(p.exception_, nullptr);
            p.hand_back();
        }
        void await_resume() const noexcept {}
    };
    FinalAwaiter final_suspend() const noexcept { return {}; }
};

/// What `gen.next()` returns: runs the body up to its next co_yield (or its end) inside
/// the awaiting task. A light awaitable: it converts to Task<std::optional<T>> where a
/// task is expected (`timeout(1s, gen.next())`), as long as the generator lives.
template <class T>
struct [[nodiscard]] NextAwaiter : Leaf<NextAwaiter<T>, std::optional<T>> {
    using Handle = std::coroutine_handle<GeneratorPromise<T>>;

    explicit NextAwaiter(Handle h) noexcept : gen_(h) {}
    /// Only before it is awaited (converting to a Task moves it).
    NextAwaiter(NextAwaiter&& o) noexcept : gen_(o.gen_) {}
    NextAwaiter& operator=(NextAwaiter&&) = delete;
    /// Destroyed while the body runs for it: only with its frame (a loop torn down).
    ~NextAwaiter() {
        if (linked_)
            gen_.promise().waiter_ = nullptr;
    }

    bool await_ready() const {
        if (!gen_)
            throw std::logic_error("xiio: next() of an empty Generator (moved from?)");
        if (gen_.promise().waiter_)
            throw std::logic_error("xiio::Generator::next: a previous next() is still pending");
        return gen_.done(); // finished: std::nullopt at once
    }
    template <XiioPromise P>
    void await_suspend(std::coroutine_handle<P> consumer) noexcept {
        GeneratorPromise<T>& g = gen_.promise();
        g.runner_ = consumer.promise().runner_; // rebound at every next(): any task may ask
        g.continuation_ = consumer;
        g.waiter_ = this;
        linked_ = true;
        g.runner_->loop->resume_next(gen_); // runs once the consumer's frame returned
    }
    std::optional<T> await_resume() {
        if (orphaned_)
            throw std::logic_error("xiio::Generator: destroyed while a next() was pending");
        if (error_)
            std::rethrow_exception(std::exchange(error_, nullptr));
        std::optional<T> value = std::move(result_);
        result_.reset(); // the moved-from T goes now, not with the consumer's expression
        return value;
    }

    Handle gen_;
    std::optional<T> result_;  // what the body yielded for this next()
    std::exception_ptr error_; // what ended the body, if it ended in this next()
    bool linked_ = false;      // the promise's waiter_ points here
    bool orphaned_ = false;    // the generator was destroyed while the body ran for it
};

} // namespace detail

/// An async generator: a coroutine that `co_yield`s values of type T and may `co_await`
/// anything a Task may. Lazy: the body runs only inside `co_await next()`, in the awaiting
/// task. Move-only; owns its frame and destroys it (an unfinished body is unwound).
template <class T>
class [[nodiscard]] Generator {
    static_assert(!std::is_reference_v<T> && !std::is_void_v<T> && std::is_object_v<T>,
                  "xiio::Generator<T>: T must be an object type (not void, not a reference)");

public:
    using promise_type = detail::GeneratorPromise<T>;
    using value_type = T;

    Generator() noexcept = default;
    explicit Generator(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
    Generator(Generator&& o) noexcept : h_(std::exchange(o.h_, {})) {}
    Generator& operator=(Generator&& o) noexcept {
        if (this != &o) {
            reset();
            h_ = std::exchange(o.h_, {});
        }
        return *this;
    }
    ~Generator() { reset(); }

    /// False for a default-constructed or moved-from generator.
    explicit operator bool() const noexcept { return static_cast<bool>(h_); }

    /// `co_await gen.next()`: runs the body inside the awaiting task up to its next
    /// `co_yield`, and returns that value; std::nullopt once the body returned (at every
    /// call after that too). Rethrows what the body throws, once: the generator is then
    /// finished (std::nullopt from then on), as a Python async generator is. Throws
    /// std::logic_error if a previous next() is still pending (two tasks sharing the
    /// generator) or the generator is empty. A cancellation point only where the body
    /// awaits: the consumer's CancelledError (a timeout) is thrown at the body's current
    /// co_await, unwinds the body, and comes out of next(); a body that reaches its
    /// co_yield without awaiting leaves a pending cancellation for the consumer's next
    /// co_await. The generator must outlive the awaitable.
    detail::NextAwaiter<T> next() noexcept { return detail::NextAwaiter<T>(h_); }

private:
    void reset() noexcept {
        if (!h_)
            return;
        auto h = std::exchange(h_, {});
        promise_type& p = h.promise();
        detail::NextAwaiter<T>* pending = std::exchange(p.waiter_, nullptr);
        detail::Runner* runner = p.runner_;
        std::coroutine_handle<> consumer = p.continuation_;
        h.destroy(); // unwinds the body; the leaf it waits in (if any) unregisters
        if (!pending)
            return;
        // Destroyed by another task while a consumer's task waits inside the body: resume
        // that consumer with a logic_error rather than leave it suspended in a dead frame.
        // (In a loop's teardown the consumer's runner is retired right after, which takes
        // it out of the ready queue again.)
        pending->linked_ = false;
        pending->orphaned_ = true;
        if (runner->loop) {
            runner->resume_ = consumer;
            runner->loop->schedule(runner);
        }
    }

    std::coroutine_handle<promise_type> h_;
};

namespace detail {

template <class T>
Generator<T> GeneratorPromise<T>::get_return_object() noexcept {
    return Generator<T>(std::coroutine_handle<GeneratorPromise<T>>::from_promise(*this));
}

} // namespace detail

} // namespace xiio
