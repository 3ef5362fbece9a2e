// Blocking work off the loop: in_thread for one blocking call (hashing a file with plain
// std::ifstream reads), a ThreadPool of 2 workers for a batch of CPU jobs whose results
// are gathered in order, and what a timeout does to a job that is already running.
//
//   ./threads [file]      (hashes the given file; this program's own binary by default)
#include <xiio.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

// How many jobs run at this moment, and the most that ever did: statics, so they outlive
// the pool (a job may reference only what outlives its pool).
std::atomic<int> running{0};
std::atomic<int> most_running{0};

struct Digest {
    std::uintmax_t size = 0;
    std::uint64_t fnv1a = 0xcbf29ce484222325; // 64-bit FNV-1a of the contents
};

// Blocking: std::ifstream reads would stall every task of the loop if run on it.
Digest hash_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw std::runtime_error("cannot open " + path);
    Digest d;
    std::vector<char> buf(64 * 1024);
    while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
        for (std::streamsize i = 0; i < in.gcount(); ++i)
            d.fnv1a = (d.fnv1a ^ static_cast<unsigned char>(buf[i])) * 0x100000001b3;
        d.size += static_cast<std::uintmax_t>(in.gcount());
    }
    return d;
}

// A CPU job: the primes below n, by trial division (slow on purpose).
long count_primes(long n) {
    int now = ++running;
    for (int m = most_running; now > m && !most_running.compare_exchange_weak(m, now);) {
    }
    long count = 0;
    for (long k = 2; k < n; ++k) {
        bool prime = true;
        for (long d = 2; d * d <= k && prime; ++d)
            prime = k % d != 0;
        count += prime;
    }
    --running;
    return count;
}

xiio::Task<void> main_task(std::string path) {
    // 1. One blocking call: in_thread runs it on the process-wide pool. The job gets its
    // own copy of path (an argument), never a reference into this frame.
    auto started = std::chrono::steady_clock::now();
    Digest d = co_await xiio::in_thread(hash_file, path);
    auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - started);
    fmt::print("in_thread: hashed {} bytes in {} ms, fnv1a {:016x}\n", d.size, took.count(),
               d.fnv1a);

    // 2. A batch on a pool of at most 2 workers: gather awaits them all, results in order.
    {
        xiio::ThreadPool pool(2);
        std::vector<long> limits{10'000, 20'000, 30'000, 40'000, 50'000, 60'000};
        std::vector<xiio::Task<long>> jobs;
        for (long n : limits)
            jobs.push_back(pool.run(count_primes, n));
        std::vector<long> counts = co_await xiio::gather(std::move(jobs));
        for (std::size_t i = 0; i < limits.size(); ++i)
            fmt::print("primes below {}: {}\n", limits[i], counts[i]);
        fmt::print("{} jobs on 2 workers, at most {} at once\n", limits.size(),
                   most_running.load());
    }

    // 3. A timeout cancels the awaiting task, not the thread: the job runs on, its result
    // is dropped, and ~ThreadPool waits for it. The job shares its flag through a
    // shared_ptr captured by value (and the lambda is named before the co_await: g++ 12).
    auto finished = std::make_shared<std::atomic<bool>>(false);
    {
        xiio::ThreadPool pool(1);
        auto slow = [finished] {
            std::this_thread::sleep_for(300ms);
            *finished = true;
            return 42;
        };
        auto got = co_await xiio::move_on_after(50ms, pool.run(slow));
        fmt::print("slow job: {} after 50 ms, finished: {}\n", got ? "answered" : "gave up waiting",
                   finished->load());
    } // ~ThreadPool waits for the slow job
    fmt::print("once the pool is gone, the slow job finished: {}\n", finished->load());
}

int main(int argc, char** argv) {
    std::string path = argc > 1 ? argv[1] : "/proc/self/exe";
    try {
        xiio::run(main_task(path));
    } catch (const std::exception& e) {
        fmt::print(stderr, "threads: {}\n", e.what());
        return 1;
    }
    return 0;
}
