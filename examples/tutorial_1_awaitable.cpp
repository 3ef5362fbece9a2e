// Tutorial, step 1 (docs/tutorial.md): `co_await` on a hand-written awaitable, in a
// coroutine whose return type is hand-written too. No xiio here: only <coroutine>.
//
// A reader coroutine takes letters out of a mailbox. When the mailbox is empty it
// suspends, and main() resumes it after posting a letter.
#include <coroutine>
#include <cstdio>
#include <exception>
#include <string>
#include <utility>

// The return type of a coroutine: the compiler looks up Job::promise_type.
struct Job {
    struct promise_type {
        Job get_return_object() {
            return Job{std::coroutine_handle<promise_type>::from_promise(*this)};
        }
        std::suspend_never initial_suspend() noexcept { return {}; } // run at once
        std::suspend_always final_suspend() noexcept { return {}; }  // keep the frame
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); }
    };

    explicit Job(std::coroutine_handle<promise_type> h) : handle(h) {}
    Job(Job&& o) noexcept : handle(std::exchange(o.handle, {})) {}
    Job& operator=(Job&&) = delete;
    ~Job() {
        if (handle)
            handle.destroy(); // the Job owns the frame
    }

    std::coroutine_handle<promise_type> handle;
};

struct Mailbox {
    std::string letter;             // empty: nothing to read
    std::coroutine_handle<> reader; // who waits for the next letter
};

// The awaitable: three member functions, called by the code the compiler generates.
struct NextLetter {
    Mailbox& box;

    bool await_ready() const noexcept { return !box.letter.empty(); }
    void await_suspend(std::coroutine_handle<> h) noexcept {
        std::printf("  await_suspend: the reader parks itself in the mailbox\n");
        box.reader = h;
    }
    std::string await_resume() { return std::exchange(box.letter, {}); }
};

Job reader(Mailbox& box) {
    for (int i = 0; i < 3; ++i) {
        std::string letter = co_await NextLetter{box};
        std::printf("reader: got \"%s\"\n", letter.c_str());
    }
    std::printf("reader: done\n");
}

int main() {
    Mailbox box;
    box.letter = "first";
    std::printf("main: calling reader()\n");
    Job job = reader(box);
    std::printf("main: reader() returned; suspended: %s\n", job.handle.done() ? "no" : "yes");
    for (const char* letter : {"second", "third"}) {
        box.letter = letter;
        std::printf("main: posted \"%s\", resuming the reader\n", letter);
        std::exchange(box.reader, {}).resume();
    }
    std::printf("main: at its final suspend point: %s\n", job.handle.done() ? "yes" : "no");
} // ~Job destroys the frame
