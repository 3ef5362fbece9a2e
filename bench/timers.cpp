// W2 timers: n concurrent sleepers with pseudo-random durations in [0, 100 ms] (fixed seed,
// the same durations for every implementation). Each sleeper takes its intended deadline
// as now + d when it starts sleeping and, once woken, adds (wake time - deadline) to the
// lateness; waking early fails the benchmark.
// xiio: n tasks of one task_group, each co_await xiio::sleep(d); Asio: a coroutine per
// sleeper with its own steady_timer; raw: a binary heap of deadlines and epoll_pwait2 with
// a nanosecond timeout (no fds at all: epoll is only the clock here, as in a real loop).
//
// ns_per_op is CPU time (user + system) per timer: the wall time is ~100 ms whatever the
// implementation. Extras: wall_ms, mean lateness in µs, and peak RSS growth in KiB.
// All sleepers start in one burst, before any timer can fire, so the lateness of the
// short ones includes the time the loop takes to start all the others (raw: a heap push
// each; xiio and Asio: a coroutine each): that start-up cost is part of what W2 measures.
// RSS: the process's peak (getrusage ru_maxrss) minus its resident size when main()
// started (/proc/self/statm), i.e. what the workload added at its peak. ru_maxrss never
// goes down, so this is honest only for the first run of the first implementation of a
// process: bench/run starts a fresh process per implementation.
#include "common.hpp"

#include <xiio.hpp>

#include <chrono>
#include <cstdint>
#include <queue>
#include <vector>

#include <sys/epoll.h>
#include <unistd.h>

#ifdef XIIO_BENCH_ASIO
#include <asio.hpp>
#endif

namespace {

using namespace std::chrono_literals;
using bench::Clock;

long rss_at_start = 0;

/// The durations, in ns: a fixed-seed xorshift, so every implementation and every run
/// sleeps exactly the same set.
std::vector<Clock::duration> durations(long n) {
    std::vector<Clock::duration> d;
    d.reserve(static_cast<std::size_t>(n));
    std::uint64_t x = 0x9e3779b97f4a7c15ull;
    for (long i = 0; i < n; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        d.push_back(std::chrono::nanoseconds(x % 100'000'001)); // [0, 100 ms]
    }
    return d;
}

/// Lateness of one wake-up; throws if it came early.
struct Lateness {
    double sum_ns = 0;
    long woken = 0;
    void add(Clock::time_point deadline, const char* impl) {
        auto late = Clock::now() - deadline;
        if (late < Clock::duration::zero())
            throw std::runtime_error(std::string(impl) + ": woke early");
        sum_ns += std::chrono::duration<double, std::nano>(late).count();
        ++woken;
    }
};

bench::Sample sample(const bench::Region& region, double wall_ns, const Lateness& l, long n,
                     const char* impl) {
    if (l.woken != n)
        throw std::runtime_error(std::string(impl) + ": not every sleeper woke");
    double per = static_cast<double>(n);
    return {region.cpu() / per,
            {{"wall_ms", wall_ns / 1e6},
             {"lateness_us", l.sum_ns / per / 1e3},
             {"rss_kib", static_cast<double>(bench::peak_rss_kib() - rss_at_start)}}};
}

// ---- xiio --------------------------------------------------------------------------------

xiio::Task<void> xiio_sleeper(Clock::duration d, Lateness& l) {
    auto deadline = Clock::now() + d;
    co_await xiio::sleep(d);
    l.add(deadline, "xiio");
}

bench::Sample run_xiio(const std::vector<Clock::duration>& ds) {
    Lateness l;
    bench::Region region;
    xiio::run([&]() -> xiio::Task<void> {
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
            for (auto d : ds)
                tg.add_task(xiio_sleeper(d, l));
            co_return;
        });
    }());
    double wall = region.stop();
    return sample(region, wall, l, static_cast<long>(ds.size()), "xiio");
}

// ---- raw: a heap of deadlines, epoll_pwait2 until the earliest ------------------------------

struct RawTimer {
    Clock::time_point deadline;
    std::uint32_t sleeper;
    bool operator>(const RawTimer& o) const noexcept { return deadline > o.deadline; }
};

bench::Sample run_raw(const std::vector<Clock::duration>& ds) {
    Lateness l;
    bench::Region region;
    {
        int ep = ::epoll_create1(EPOLL_CLOEXEC);
        std::vector<RawTimer> storage;
        storage.reserve(ds.size());
        std::priority_queue<RawTimer, std::vector<RawTimer>, std::greater<>> heap(
            std::greater<>{}, std::move(storage));
        for (std::size_t i = 0; i < ds.size(); ++i) // each sleeper starts: now + d
            heap.push({Clock::now() + ds[i], static_cast<std::uint32_t>(i)});
        epoll_event ev[16];
        while (!heap.empty()) {
            auto now = Clock::now();
            while (!heap.empty() && heap.top().deadline <= now) {
                l.add(heap.top().deadline, "raw"); // the sleeper's callback
                heap.pop();
            }
            if (heap.empty())
                break;
            auto ns = std::chrono::ceil<std::chrono::nanoseconds>(heap.top().deadline - now);
            timespec ts{static_cast<time_t>(ns.count() / 1'000'000'000),
                        static_cast<long>(ns.count() % 1'000'000'000)};
            if (bench::epoll_wait_ns(ep, ev, 16, &ts) < 0 && errno != EINTR)
                throw std::runtime_error("raw: epoll_pwait2 failed");
        }
        ::close(ep);
    }
    double wall = region.stop();
    return sample(region, wall, l, static_cast<long>(ds.size()), "raw");
}

// ---- Asio ----------------------------------------------------------------------------------

#ifdef XIIO_BENCH_ASIO
asio::awaitable<void> asio_sleeper(Clock::duration d, Lateness& l) {
    asio::steady_timer t(co_await asio::this_coro::executor);
    auto deadline = Clock::now() + d;
    t.expires_after(d);
    co_await t.async_wait(asio::use_awaitable);
    l.add(deadline, "asio");
}

bench::Sample run_asio(const std::vector<Clock::duration>& ds) {
    Lateness l;
    bench::Region region;
    {
        asio::io_context ctx(1);
        for (auto d : ds)
            asio::co_spawn(ctx, asio_sleeper(d, l), [](std::exception_ptr e) {
                if (e)
                    std::rethrow_exception(e);
            });
        ctx.run();
    }
    double wall = region.stop();
    return sample(region, wall, l, static_cast<long>(ds.size()), "asio");
}
#endif

} // namespace

int main(int argc, char** argv) {
    rss_at_start = bench::rss_kib();
    auto a = bench::parse(argc, argv, 100'000);
    auto ds = durations(a.n);
    fmt::print("W2 timers: {} concurrent sleepers of [0, 100 ms]; CPU ns per timer\n", a.n);
    if (a.wants_impl("raw"))
        bench::measure(a, "W2", "timers", "raw", a.n, [&] { return run_raw(ds); });
    if (a.wants_impl("xiio"))
        bench::measure(a, "W2", "timers", "xiio", a.n, [&] { return run_xiio(ds); });
#ifdef XIIO_BENCH_ASIO
    if (a.wants_impl("asio"))
        bench::measure(a, "W2", "timers", "asio", a.n, [&] { return run_asio(ds); });
#endif
}
