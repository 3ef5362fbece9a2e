// Runs a shell command and prints each line of its output (stdout and stderr merged) as it
// comes, prefixed with the seconds since the start; after a timeout it stops the command and
// everything the command started (its process group).
//
//   ./watch -t 2 'for i in 1 2 3; do echo $i; sleep 1; done'
#include <xiio.hpp>

#include <fmt/core.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using namespace std::chrono_literals;

xiio::Task<int> watch(std::vector<std::string> cmd, std::chrono::milliseconds limit) {
    xiio::SpawnOptions opts;
    opts.pipe_stdout = true;
    opts.stderr_to_stdout = true;
    opts.new_session = true; // the command and all it starts: one process group
    xiio::Process child = xiio::spawn_process(cmd, opts);
    auto start = xiio::Clock::now();
    xiio::StreamReader reader(child.stdout_fd());
    auto print_lines = [&]() -> xiio::Task<void> {
        while (auto line = co_await reader.read_line()) {
            std::chrono::duration<double> t = xiio::Clock::now() - start;
            fmt::print("{:6.2f} {}\n", t.count(), *line);
            std::fflush(stdout);
        }
    };
    if (!co_await xiio::move_on_after(limit, print_lines)) {
        fmt::print("timed out after {} ms: stopping the command\n", limit.count());
        ::kill(-child.pid(), SIGTERM); // its group: the child is not waited for yet
    }
    int code = co_await child.wait(); // -N: killed by signal N
    fmt::print("exit {}\n", code);
    co_return code;
}

int main(int argc, char** argv) {
    std::chrono::milliseconds limit = 10s;
    int i = 1;
    if (i + 1 < argc && !std::strcmp(argv[i], "-t")) {
        limit = std::chrono::milliseconds(std::lround(std::atof(argv[i + 1]) * 1000));
        i += 2;
    }
    if (i + 1 != argc) {
        std::fprintf(stderr, "usage: watch [-t seconds] 'shell command'\n");
        return 2;
    }
    std::vector<std::string> cmd{"sh", "-c", argv[i]};
    try {
        int code = xiio::run(watch(cmd, limit));
        return code < 0 ? 128 - code : code;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "watch: %s\n", e.what());
        return 127;
    }
}
