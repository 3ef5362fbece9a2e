// W1 spawn: n children in one group, each returning at once (or yielding once first).
// xiio: task_group + add_task; raw: queued callbacks; Asio: co_spawn + a counter.
// Prints ns per child (median, min-max of the runs) and heap bytes per child.
#include "common.hpp"

#include <xiio.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <malloc.h>
#include <string>
#include <vector>

#ifdef XIIO_BENCH_ASIO
#include <asio.hpp>
#endif

namespace {

using Clock = std::chrono::steady_clock;

struct Result {
    double ns_per_child;
    double bytes_per_child;
};

std::size_t heap_in_use() {
    return mallinfo2().uordblks;
}

// ---- xiio --------------------------------------------------------------------------------

xiio::Task<void> child(long& count) {
    ++count;
    co_return;
}
xiio::Task<void> yielding_child(long& count) {
    co_await xiio::yield();
    ++count;
}

Result run_xiio(long n, bool yield) {
    long count = 0;
    std::size_t bytes = 0;
    auto start = Clock::now();
    xiio::run([&]() -> xiio::Task<void> {
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
            auto before = heap_in_use();
            for (long i = 0; i < n; ++i)
                tg.add_task(yield ? yielding_child(count) : child(count));
            bytes = heap_in_use() - before; // every child queued, none started
            co_return;
        });
    }());
    double ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count();
    if (count != n)
        throw std::runtime_error("xiio: not every child ran");
    return {ns / static_cast<double>(n), static_cast<double>(bytes) / static_cast<double>(n)};
}

// ---- raw: a queue of callbacks -------------------------------------------------------------

struct RawLoop {
    struct Callback {
        void (*fn)(RawLoop&, void*);
        void* ctx;
    };
    std::deque<Callback> ready;
    void run() {
        while (!ready.empty()) {
            Callback c = ready.front();
            ready.pop_front();
            c.fn(*this, c.ctx);
        }
    }
};

struct RawChild {
    long* count;
    bool yielded = false;
};

Result run_raw(long n, bool yield) {
    long count = 0;
    std::size_t bytes = 0;
    auto start = Clock::now();
    {
        RawLoop loop;
        auto before = heap_in_use();
        std::vector<RawChild> children(static_cast<std::size_t>(n), RawChild{&count});
        for (auto& c : children)
            loop.ready.push_back({yield
                                      ? +[](RawLoop& l, void* p) {
                                            auto* c = static_cast<RawChild*>(p);
                                            if (!c->yielded) {
                                                c->yielded = true;
                                                l.ready.push_back({nullptr, p});
                                                l.ready.back().fn = [](RawLoop&, void* q) {
                                                    ++*static_cast<RawChild*>(q)->count;
                                                };
                                                return;
                                            }
                                        }
                                      : +[](RawLoop&, void* p) { ++*static_cast<RawChild*>(p)->count; },
                                  &c});
        bytes = heap_in_use() - before;
        loop.run();
    }
    double ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count();
    if (count != n)
        throw std::runtime_error("raw: not every child ran");
    return {ns / static_cast<double>(n), static_cast<double>(bytes) / static_cast<double>(n)};
}

// ---- Asio ----------------------------------------------------------------------------------

#ifdef XIIO_BENCH_ASIO
asio::awaitable<void> asio_child(long& count, bool yield) {
    if (yield)
        co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    ++count;
}

Result run_asio(long n, bool yield) {
    long count = 0;
    std::size_t bytes = 0;
    auto start = Clock::now();
    {
        asio::io_context ctx(1);
        auto before = heap_in_use();
        for (long i = 0; i < n; ++i)
            asio::co_spawn(ctx, asio_child(count, yield), asio::detached);
        bytes = heap_in_use() - before;
        ctx.run();
    }
    double ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count();
    if (count != n)
        throw std::runtime_error("asio: not every child ran");
    return {ns / static_cast<double>(n), static_cast<double>(bytes) / static_cast<double>(n)};
}
#endif

} // namespace

int main(int argc, char** argv) {
    auto [n, runs] = bench::parse(argc, argv, 1'000'000);
    fmt::print("W1 spawn: {} children in one group, median (min-max) of {} runs\n", n, runs);
    for (bool yield : {false, true}) {
        fmt::print("{}\n", yield ? "each yields once, then returns" : "each returns at once");
        // Each run reports ns per child; the heap bytes per child are the same every run.
        double bytes[3] = {};
        auto timed = [&](int i, auto run) {
            return [&, i, run] {
                Result r = run(n, yield);
                bytes[i] = r.bytes_per_child;
                return r.ns_per_child;
            };
        };
        auto raw = bench::measure(runs, timed(0, run_raw));
        auto x = bench::measure(runs, timed(1, run_xiio));
        bench::row("raw", raw, raw, nullptr, fmt::format("{:>5.0f} B/child", bytes[0]));
        bench::row("xiio", x, raw, nullptr, fmt::format("{:>5.0f} B/child", bytes[1]));
#ifdef XIIO_BENCH_ASIO
        auto a = bench::measure(runs, timed(2, run_asio));
        bench::row("asio", a, raw, &x, fmt::format("{:>5.0f} B/child", bytes[2]));
#endif
    }
}
