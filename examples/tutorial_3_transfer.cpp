// Tutorial, step 3 (docs/tutorial.md): the three forms of await_suspend, and what each
// costs in stack when a task awaits many child tasks that complete at once.
//   void                    suspend; someone else resumes the frame later
//   bool                    false: do not suspend after all (the operation completed)
//   std::coroutine_handle<> suspend, and resume that frame instead (symmetric transfer)
// No xiio here: only <coroutine>.
#include <coroutine>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <type_traits>
#include <utility>

// Where the stack is now: the frame address of a function that is never inlined.
[[gnu::noinline]] std::intptr_t stack_address() {
    return reinterpret_cast<std::intptr_t>(__builtin_frame_address(0));
}

// The frames to resume next, in order: the heart of every event loop.
std::deque<std::coroutine_handle<>> ready_queue;

void run_ready_queue() {
    while (!ready_queue.empty()) {
        std::coroutine_handle<> h = ready_queue.front();
        ready_queue.pop_front();
        h.resume(); // returns when h suspends or finishes: the stack is back here
    }
}

// How an awaiting frame and the child task it awaits resume each other.
enum class Resume { by_transfer, by_queue };

template <Resume How>
class Task {
public:
    struct promise_type;
    using Handle = std::coroutine_handle<promise_type>;

    // by_transfer: the child finishes and hands the parent over directly.
    struct FinalTransfer {
        bool await_ready() const noexcept { return false; }
        std::coroutine_handle<> await_suspend(Handle h) noexcept {
            std::coroutine_handle<> parent = h.promise().continuation;
            return parent ? parent : std::noop_coroutine(); // noop: return to resume()'s caller
        }
        void await_resume() const noexcept {}
    };
    // by_queue: the child finishes and queues the parent.
    struct FinalQueue {
        bool await_ready() const noexcept { return false; }
        void await_suspend(Handle h) noexcept {
            if (std::coroutine_handle<> parent = h.promise().continuation)
                ready_queue.push_back(parent);
        }
        void await_resume() const noexcept {}
    };

    struct promise_type {
        int value = 0;
        std::coroutine_handle<> continuation; // who awaits this task (null for a root)

        Task get_return_object() { return Task(Handle::from_promise(*this)); }
        std::suspend_always initial_suspend() noexcept { return {}; }
        auto final_suspend() noexcept {
            if constexpr (How == Resume::by_transfer)
                return FinalTransfer{};
            else
                return FinalQueue{};
        }
        void return_value(int v) noexcept { value = v; }
        void unhandled_exception() noexcept { std::terminate(); }
    };

    // co_await child, by_transfer: symmetric transfer to the child.
    struct AwaitTransfer {
        Handle child;
        bool await_ready() const noexcept { return false; }
        std::coroutine_handle<> await_suspend(std::coroutine_handle<> parent) noexcept {
            child.promise().continuation = parent;
            return child; // resume the child now, instead of returning to our resumer
        }
        int await_resume() const noexcept { return child.promise().value; }
    };
    // co_await child, by_queue: queue the child, suspend, return to the queue's loop.
    struct AwaitQueue {
        Handle child;
        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<> parent) noexcept {
            child.promise().continuation = parent;
            ready_queue.push_back(child);
        }
        int await_resume() const noexcept { return child.promise().value; }
    };
    auto operator co_await() const noexcept {
        if constexpr (How == Resume::by_transfer)
            return AwaitTransfer{h_};
        else
            return AwaitQueue{h_};
    }

    explicit Task(Handle h) noexcept : h_(h) {}
    Task(Task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
    Task& operator=(Task&&) = delete;
    ~Task() {
        if (h_)
            h_.destroy();
    }

    // Runs a root task to completion.
    int run() {
        ready_queue.push_back(h_);
        run_ready_queue();
        return h_.promise().value;
    }

private:
    Handle h_;
};

// bool: completes at once, without suspending, while its budget lasts; then it queues
// its frame and suspends, so that other frames in the queue get their turn.
struct Budgeted {
    static inline int budget = 100;
    static inline int suspensions = 0;

    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) {
        if (--budget > 0)
            return false; // done: the coroutine goes on as if it never suspended
        budget = 100;
        ++suspensions;
        ready_queue.push_back(h);
        return true; // suspended: back to the loop, which resumes h in its turn
    }
    void await_resume() const noexcept {}
};

template <Resume How>
Task<How> one() {
    co_return 1;
}

template <Resume How>
Task<How> sum_of_ones(int n, const char* how) {
    std::intptr_t base = stack_address();
    int sum = 0;
    for (int i = 0; i < n; ++i)
        sum += co_await one<How>();
    std::printf("%s: %d awaits of a child task, stack grew by %ld bytes\n", how, n,
                static_cast<long>(base - stack_address()));
    co_return sum;
}

Task<Resume::by_queue> budgeted(int n) {
    std::intptr_t base = stack_address();
    for (int i = 0; i < n; ++i)
        co_await Budgeted{};
    std::printf("bool: %d awaits, %d suspensions, stack grew by %ld bytes\n", n,
                Budgeted::suspensions, static_cast<long>(base - stack_address()));
    co_return n;
}

int main() {
    // Symmetric transfer: constant stack only if the compiler makes the resumption of the
    // returned handle a tail call (clang, or g++ at -O2 without sanitizers). Kept short:
    // with g++ -O0 each await leaves a few hundred bytes behind; 100,000 overflow 8 MiB.
    sum_of_ones<Resume::by_transfer>(1000, "transfer").run();
    // Through the ready queue: every frame is resumed from run_ready_queue(), at the same
    // depth, on every compiler and at every optimization level.
    sum_of_ones<Resume::by_queue>(100000, "queue").run();
    budgeted(100000).run();
}
