// Cleanup that awaits: when one member of a group fails, the others are cancelled, and
// each still says goodbye (an await) before it lets the cancellation go. Cleanup that must
// finish even if a deadline passes meanwhile runs under shield(), bounded by its own timeout.
#include <xiio.hpp>

#include <fmt/core.h>

#include <stdexcept>

using namespace std::chrono_literals;

xiio::Task<void> say_goodbye(int id) {
    co_await xiio::sleep(10ms);
    fmt::print("worker {} cleaned up\n", id);
}

xiio::Task<void> worker(int id) {
    std::exception_ptr error;
    try {
        co_await xiio::sleep(10s);
    } catch (...) {
        error = std::current_exception(); // e.g. CancelledError: store it
    }
    co_await say_goodbye(id); // may await: we are out of the catch block
    if (error)
        std::rethrow_exception(error);
}

xiio::Task<void> failing() {
    co_await xiio::sleep(50ms);
    throw std::runtime_error("worker 3 failed");
}

xiio::Task<int> fetch(int n) {
    co_await xiio::sleep(10ms * n);
    fmt::print("fetched {}\n", n);
    co_return n;
}

xiio::Task<void> save_state() {
    co_await xiio::sleep(30ms);
    fmt::print("state saved\n");
}

xiio::Task<void> session() {
    co_await xiio::sleep(10ms); // the session's work
    // The deadline below passes while the state is being saved: shield() holds its
    // cancellation back until save_state() ended (or its own 1 s limit passed), and the
    // next co_await throws it.
    co_await xiio::shield(xiio::timeout(1s, save_state()));
    co_await xiio::sleep(10ms);
    fmt::print("not printed: the session was cancelled\n");
}

xiio::Task<void> main_task() {
    // A group's body is a member too: the group ends when it and both fetches are done.
    co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
        auto a = tg.add_task(fetch(1));
        tg.add_task(fetch(2));
        co_await xiio::sleep(1s); // the body is a member of the group
    });

    auto start = xiio::Clock::now();
    try {
        co_await xiio::gather(worker(1), worker(2), failing());
    } catch (const std::runtime_error& e) {
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(xiio::Clock::now() - start);
        fmt::print("{} after {} ms; both workers cleaned up first\n", e.what(), ms.count());
    }

    bool finished = co_await xiio::move_on_after(20ms, session());
    fmt::print("session {}, its state saved anyway\n", finished ? "finished" : "timed out");
}

int main() {
    xiio::run(main_task());
}
