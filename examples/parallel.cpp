// Runs shell commands N at a time, like `xargs -P N`, each under a timeout, and prints each
// result as it finishes.
//
//   ./parallel -P 4 -t 2 'sleep 1; echo a' 'echo b' 'sleep 5'   (commands as arguments)
//   printf 'echo x\nsleep 3\n' | ./parallel -P 2 -t 1         (or one per line on stdin)
#include <xiio.hpp>
#include <xiio/process.hpp>

#include <fmt/core.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

using namespace std::chrono_literals;

struct Job {
    std::string command;
    std::string outcome;
};

// One of N workers: takes the next job until none is left (one thread, so no lock).
xiio::Task<void> worker(std::vector<Job>& jobs, std::size_t& next, std::chrono::seconds limit) {
    while (next < jobs.size()) {
        Job& job = jobs[next++];
        std::vector<std::string> cmd{"sh", "-c", job.command};
        xiio::ProcessOptions opts;
        opts.capture_output = true;
        try {
            auto r = co_await xiio::timeout(limit, xiio::run_process(cmd, opts));
            job.outcome = fmt::format("exit {}: {}", r.returncode, r.out.substr(0, 60));
        } catch (const xiio::TimeoutError&) {
            job.outcome = fmt::format("timed out after {} s", limit.count());
        } catch (const std::system_error& e) {
            job.outcome = fmt::format("failed: {}", e.what());
        }
        while (!job.outcome.empty() && job.outcome.back() == '\n')
            job.outcome.pop_back();
        fmt::print("[{}] {}\n", job.command, job.outcome);
        std::fflush(stdout);
    }
}

int main(int argc, char** argv) {
    std::size_t parallel = 4;
    std::chrono::seconds limit(10);
    std::vector<Job> jobs;
    for (int i = 1; i < argc; ++i) {
        if (!std::strcmp(argv[i], "-P") && i + 1 < argc)
            parallel = std::strtoul(argv[++i], nullptr, 10);
        else if (!std::strcmp(argv[i], "-t") && i + 1 < argc)
            limit = std::chrono::seconds(std::strtol(argv[++i], nullptr, 10));
        else
            jobs.push_back({argv[i], {}});
    }
    if (jobs.empty())
        for (std::string line; std::getline(std::cin, line);)
            jobs.push_back({line, {}});
    std::size_t next = 0;
    std::vector<xiio::Task<void>> workers;
    for (std::size_t i = 0; i < std::max<std::size_t>(parallel, 1); ++i)
        workers.push_back(worker(jobs, next, limit));
    xiio::run(xiio::gather(std::move(workers)));
}
