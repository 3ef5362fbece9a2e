// W1 spawn: n children in one group, each returning at once (or yielding once first).
// xiio: task_group + add_task; raw: queued callbacks; Asio: co_spawn + a counter.
// Prints ns per child (median, min-max of the runs) and heap bytes per child.
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

struct Stats {
    double median, min, max, bytes;
};

template <class F>
Stats measure(int runs, F f) {
    std::vector<double> ns;
    double bytes = 0;
    for (int i = 0; i < runs; ++i) {
        auto r = f();
        ns.push_back(r.ns_per_child);
        bytes = r.bytes_per_child;
    }
    std::sort(ns.begin(), ns.end());
    return {ns[ns.size() / 2], ns.front(), ns.back(), bytes};
}

void row(const char* name, const Stats& s, const Stats& raw, const Stats* xiio) {
    fmt::print("  {:<6} {:>8.1f} ns ({:.1f}-{:.1f})  {:>6.0f} B/child   raw x{:.2f}", name,
               s.median, s.min, s.max, s.bytes, s.median / raw.median);
    if (xiio)
        fmt::print("   xiio/this {:.2f}", xiio->median / s.median);
    fmt::print("\n");
}

} // namespace

int main(int argc, char** argv) {
    long n = 1'000'000;
    int runs = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--n"))
            n = std::stol(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--runs"))
            runs = std::stoi(argv[i + 1]);
    }
    fmt::print("W1 spawn: {} children in one group, median (min-max) of {} runs\n", n, runs);
    for (bool yield : {false, true}) {
        fmt::print("{}\n", yield ? "each yields once, then returns" : "each returns at once");
        auto raw = measure(runs, [&] { return run_raw(n, yield); });
        auto x = measure(runs, [&] { return run_xiio(n, yield); });
        row("raw", raw, raw, nullptr);
        row("xiio", x, raw, nullptr);
#ifdef XIIO_BENCH_ASIO
        auto a = measure(runs, [&] { return run_asio(n, yield); });
        row("asio", a, raw, &x);
#endif
    }
}
