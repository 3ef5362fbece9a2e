// Mistakes that must not compile, one per MISTAKE value (tests/compile_fail/CMakeLists.txt
// compiles this file once per value and expects the diagnostic it names). MISTAKE=0 is the
// control: every call written correctly, which must compile, so that a failure of the other
// cases comes from the mistake and not from the harness.
#include <xiio.hpp>

#include <string>
#include <utility>

using namespace std::chrono_literals;

[[maybe_unused]] static xiio::Task<void> misuse([[maybe_unused]] xiio::Socket& s,
                                                [[maybe_unused]] xiio::Listener& l,
                                                [[maybe_unused]] xiio::SignalSubscription& sub) {
    [[maybe_unused]] char buf[16];
    [[maybe_unused]] std::string text(100, 'x');
#if MISTAKE == 0
    co_await xiio::sleep(1ms);
    co_await xiio::yield();
    co_await xiio::read(0, buf);
    co_await xiio::write(1, "x");
    co_await xiio::wait_readable(0);
    co_await s.recv(buf);
    co_await s.send("x");
    co_await s.send_all("x");
    (void)co_await l.accept();
    auto job = [text] { return text.size(); };
    co_await xiio::in_thread(job);
    co_await sub.next();
    auto body = [text](xiio::TaskGroup&) -> xiio::Task<void> { co_return; };
    co_await xiio::task_group(body);
    auto timed = [text]() -> xiio::Task<void> { co_return; };
    co_await xiio::timeout(1s, timed);
    co_await xiio::move_on_after(1s, std::ref(timed));
    co_await xiio::gather(xiio::sleep(1ms), timed());
    xiio::Channel<std::string> ch(1);
    co_await ch.put("x");
    (void)co_await ch.get();
#elif MISTAKE == 1
    // Every awaitable dropped without co_await: one diagnostic per line, each echoed with
    // its marker (the test expects all of them, in order).
    xiio::sleep(1ms);                  // dropped: sleep
    xiio::yield();                     // dropped: yield
    xiio::read(0, buf);                // dropped: read
    xiio::write(1, "x");               // dropped: write
    xiio::wait_readable(0);            // dropped: wait_readable
    s.recv(buf);                       // dropped: recv
    s.send("x");                       // dropped: send
    s.send_all("x");                   // dropped: send_all
    l.accept();                        // dropped: accept
    xiio::in_thread([] { return 1; }); // dropped: in_thread
    sub.next();                        // dropped: next
    xiio::Lock lock;
    lock.lock(); // dropped: lock
    xiio::Semaphore sem(1);
    sem.acquire(); // dropped: acquire
    sem.guard();   // dropped: guard
    xiio::Event event;
    event.wait(); // dropped: wait
    xiio::Channel<int> ch(1);
    ch.put(1); // dropped: put
    ch.get();  // dropped: get
#elif MISTAKE == 12
    // A group body that is not a coroutine.
    co_await xiio::task_group([](xiio::TaskGroup&) {});
#elif MISTAKE == 13
    // A group body of the wrong signature.
    co_await xiio::task_group([]() -> xiio::Task<void> { co_return; });
#elif MISTAKE == 14
    // Not a task given to gather.
    co_await xiio::gather(xiio::sleep(1ms), 42);
#elif MISTAKE == 15
    // Not a task given to timeout.
    co_await xiio::timeout(1s, 42);
#elif MISTAKE == 16
    // A timeout body that takes arguments.
    co_await xiio::timeout(1s, [](int) -> xiio::Task<void> { co_return; });
#elif MISTAKE == 17
    // g++ 12 destroys this closure twice (double free): refused there, fine elsewhere.
    co_await xiio::timeout(1s, [text]() -> xiio::Task<void> { co_return; });
#elif MISTAKE == 18
    co_await xiio::task_group([text](xiio::TaskGroup&) -> xiio::Task<void> { co_return; });
#elif MISTAKE == 19
    co_await xiio::in_thread([text] { return text.size(); });
#elif MISTAKE == 20
    // A job that cannot be called with the arguments given.
    co_await xiio::in_thread([](int) { return 1; }, std::string("x"));
#elif MISTAKE == 21
    co_await xiio::move_on_after(1s, [text]() -> xiio::Task<void> { co_return; });
#elif MISTAKE == 22
    // A Channel of a type whose move may throw: values move under the channel's lock.
    struct Throwing {
        Throwing() = default;
        Throwing(Throwing&&) noexcept(false) {}
    };
    xiio::Channel<Throwing> ch(1);
#endif
    co_return;
}

int main() {}
