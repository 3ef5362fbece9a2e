// An async generator: lines() yields the lines of an fd as they arrive (through a
// StreamReader), and a reader takes them one by one with `co_await gen.next()`, each under
// a timeout. The generator's body runs inside the reader's task, so the timeout that ends
// the reader's wait ends the generator's read too: no task of its own to cancel or join.
// Twice over a pipe: a writer that finishes (end of file), and one that stalls.
//
//   ./lines
#include <xiio.hpp>

#include <fmt/core.h>

#include <cerrno>
#include <chrono>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

using namespace std::chrono_literals;

xiio::Generator<std::string> lines(const xiio::Fd& fd) {
    xiio::StreamReader reader(fd);
    while (auto line = co_await reader.read_line())
        co_yield std::move(*line);
}

// Prints the lines of `in` until end of file, or until no line came within `idle`.
xiio::Task<void> reader(xiio::Fd in, std::chrono::milliseconds idle) {
    auto gen = lines(in);
    int n = 0;
    try {
        while (auto line = co_await xiio::timeout(idle, gen.next()))
            fmt::print("line {}: {}\n", ++n, *line);
        fmt::print("end of file after {} lines\n", n);
    } catch (const xiio::TimeoutError&) {
        fmt::print("no line within {} ms: gave up after {} lines\n", idle.count(), n);
    }
}

// Writes `text` a line at a time, 20 ms apart, then keeps the pipe open for `stall` (the
// Fd closes when the task ends: the reader then sees end of file).
xiio::Task<void> writer(xiio::Fd out, std::vector<std::string> text,
                        std::chrono::milliseconds stall) {
    for (const auto& line : text) {
        co_await xiio::writeall(out, line + "\n");
        co_await xiio::sleep(20ms);
    }
    co_await xiio::sleep(stall);
}

xiio::Task<void> demo(std::vector<std::string> text, std::chrono::milliseconds stall) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) < 0)
        throw std::system_error(errno, std::system_category(), "pipe2");
    xiio::Fd in(fds[0]), out(fds[1]);
    auto body = [&](xiio::TaskGroup& tg) -> xiio::Task<void> {
        tg.add_task(writer(std::move(out), std::move(text), stall));
        co_await reader(std::move(in), 200ms);
        tg.cancel(); // a stalled writer is not waited for
    };
    co_await xiio::task_group(body);
}

int main() {
    try {
        fmt::print("-- a writer that finishes\n");
        xiio::run(demo({"alpha", "beta", "gamma"}, 0ms));
        fmt::print("-- a writer that stalls\n");
        xiio::run(demo({"one", "two"}, 10s));
    } catch (const std::exception& e) {
        fmt::print(stderr, "lines: {}\n", e.what());
        return 1;
    }
    return 0;
}
