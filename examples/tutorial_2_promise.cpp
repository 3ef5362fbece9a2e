// Tutorial, step 2 (docs/tutorial.md): the promise type. Every hook the compiler calls
// prints a line, so the output is the life of two coroutine frames: one that returns a
// value and one that throws. No xiio here: only <coroutine>.
#include <coroutine>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <new>
#include <optional>
#include <stdexcept>
#include <utility>

// A lazy coroutine returning T: nothing runs until someone resumes it.
template <class T>
class Lazy {
public:
    struct promise_type {
        // The frame (parameters, locals, the promise, the suspension point) is allocated
        // with operator new, by the promise's if it has one.
        static void* operator new(std::size_t n) {
            std::printf("  operator new: the frame\n");
            return ::operator new(n);
        }
        static void operator delete(void* frame) noexcept {
            std::printf("  operator delete: the frame\n");
            ::operator delete(frame);
        }

        promise_type() { std::printf("  promise constructed\n"); }
        ~promise_type() { std::printf("  promise destroyed\n"); }

        Lazy get_return_object() {
            std::printf("  get_return_object\n");
            return Lazy(std::coroutine_handle<promise_type>::from_promise(*this));
        }
        std::suspend_always initial_suspend() noexcept {
            std::printf("  initial_suspend: suspend before the body runs\n");
            return {};
        }
        void return_value(T v) {
            std::printf("  return_value\n");
            value.emplace(std::move(v));
        }
        void unhandled_exception() noexcept {
            std::printf("  unhandled_exception: keep it for the caller\n");
            error = std::current_exception();
        }
        std::suspend_always final_suspend() noexcept {
            std::printf("  final_suspend: suspend, so the owner can read the result\n");
            return {};
        }

        std::optional<T> value;
        std::exception_ptr error;
    };

    explicit Lazy(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
    Lazy(Lazy&& o) noexcept : h_(std::exchange(o.h_, {})) {}
    Lazy& operator=(Lazy&&) = delete;
    ~Lazy() {
        if (h_)
            h_.destroy(); // runs the destructors of the frame's locals, then operator delete
    }

    // The owner drives the frame: resume() returns when the body suspends or finishes.
    T get() {
        std::printf("  resume\n");
        h_.resume();
        std::printf("  back from resume; done: %s\n", h_.done() ? "yes" : "no");
        if (h_.promise().error)
            std::rethrow_exception(h_.promise().error);
        return std::move(*h_.promise().value);
    }

private:
    std::coroutine_handle<promise_type> h_;
};

Lazy<int> answer() {
    std::printf("  body of answer()\n");
    co_return 42;
}

Lazy<int> fail() {
    std::printf("  body of fail()\n");
    throw std::runtime_error("no answer");
    co_return 0; // a coroutine needs a co_ keyword somewhere
}

int main() {
    std::printf("call answer()\n");
    {
        Lazy<int> task = answer();
        std::printf("get()\n");
        int v = task.get();
        std::printf("answer: %d\n", v);
        std::printf("end of scope\n");
    }
    std::printf("call fail()\n");
    Lazy<int> task = fail();
    try {
        task.get();
    } catch (const std::exception& e) {
        std::printf("caught: %s\n", e.what());
    }
}
