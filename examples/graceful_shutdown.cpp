// A server-like loop that takes a job every 50 ms and, on SIGINT or SIGTERM, stops taking
// new ones, lets the jobs in flight finish, and exits cleanly.
//
//   ./graceful_shutdown & sleep 1; kill -INT $!
#include <xiio.hpp>

#include <fmt/core.h>

#include <csignal>

using namespace std::chrono_literals;

// This job cannot fail. One that can catches its own errors (as echo_server.cpp's serve()
// does): an exception that leaves a job cancels the group, every job in flight with it.
xiio::Task<void> job(int id, int& done) {
    co_await xiio::sleep(200ms); // the work in flight, e.g. a request being answered
    ++done;
    fmt::print("job {} done\n", id);
}

xiio::Task<int> serve(xiio::SignalSubscription& signals) {
    int started = 0, done = 0;
    co_await xiio::task_group([&](xiio::TaskGroup& jobs) -> xiio::Task<void> {
        for (;;) {
            auto sig = co_await xiio::move_on_after(50ms, signals.next());
            if (sig) { // stop taking work; the group waits for the jobs in flight
                fmt::print("signal {}: finishing {} jobs in flight\n", *sig, jobs.size() - 1);
                co_return;
            }
            jobs.add_task(job(++started, done));
        }
    });
    if (done != started) {
        fmt::print("lost {} jobs\n", started - done);
        co_return 1;
    }
    fmt::print("all {} jobs finished, clean exit\n", done);
    co_return 0;
}

int main() {
    // Before any other thread starts: threads inherit the mask, so no thread of this
    // process can receive SIGINT/SIGTERM with its default action (which would kill it).
    auto signals = xiio::subscribe_signals({SIGINT, SIGTERM});
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    return xiio::run(serve(signals));
}
