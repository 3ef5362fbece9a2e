// W1 spawn: n children in one group, each returning at once (case "return") or yielding
// once first (case "yield").
// xiio: task_group + add_task; raw: a FIFO of callbacks; Asio: co_spawn + a counter.
// ns per child (whole run: creating, running and destroying every child) and heap bytes
// per child (malloc's bytes in use once every child is queued and none has run).
#include "common.hpp"

#include <xiio.hpp>

#include <malloc.h>
#include <vector>

#ifdef XIIO_BENCH_ASIO
#include <asio.hpp>
#endif

namespace {

/// malloc's bytes in use: small chunks plus mmap()ed big ones (a million-entry vector).
/// The heap in use, and the chunks of xiio's frame pool (mapped outside malloc).
std::size_t heap_in_use() {
    auto m = mallinfo2();
    return m.uordblks + m.hblkhd + xiio::detail::frame_pool_bytes().load();
}

bench::Sample sample(double ns, std::size_t bytes, long n) {
    auto per = [n](double x) { return x / static_cast<double>(n); };
    return {per(ns), {{"bytes_per_op", per(static_cast<double>(bytes))}}};
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

bench::Sample run_xiio(long n, bool yield) {
    long count = 0;
    std::size_t bytes = 0;
    bench::Region region;
    xiio::run([&]() -> xiio::Task<void> {
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
            auto before = heap_in_use();
            for (long i = 0; i < n; ++i)
                tg.add_task(yield ? yielding_child(count) : child(count));
            bytes = heap_in_use() - before; // every child queued, none started
            co_return;
        });
    }());
    double ns = region.stop();
    bench::check(count == n, "xiio: not every child ran");
    return sample(ns, bytes, n);
}

// ---- raw: a FIFO of callbacks --------------------------------------------------------------

// What a hand-written loop does: a child is a context and a function pointer. The loop
// runs the callbacks that are ready now; one that yields queues itself for the next round.
struct RawLoop {
    struct Callback {
        void (*fn)(RawLoop&, void*);
        void* ctx;
    };
    std::vector<Callback> ready, running;
    void run() {
        while (!ready.empty()) {
            running.swap(ready);
            for (Callback c : running)
                c.fn(*this, c.ctx);
            running.clear();
        }
    }
};

struct RawChild {
    long* count;
};

void raw_finish(RawLoop&, void* p) {
    ++*static_cast<RawChild*>(p)->count;
}
void raw_yield(RawLoop& l, void* p) {
    l.ready.push_back({raw_finish, p}); // the yield: run again after the others
}

bench::Sample run_raw(long n, bool yield) {
    long count = 0;
    std::size_t bytes = 0;
    bench::Region region;
    {
        RawLoop loop;
        auto before = heap_in_use();
        // A long-lived loop's queue has grown to its working size long before: no regrowth.
        loop.ready.reserve(static_cast<std::size_t>(n));
        loop.running.reserve(static_cast<std::size_t>(n));
        std::vector<RawChild> children(static_cast<std::size_t>(n), RawChild{&count});
        for (auto& c : children)
            loop.ready.push_back({yield ? raw_yield : raw_finish, &c});
        bytes = heap_in_use() - before;
        loop.run();
    }
    double ns = region.stop();
    bench::check(count == n, "raw: not every child ran");
    return sample(ns, bytes, n);
}

// ---- Asio ----------------------------------------------------------------------------------

#ifdef XIIO_BENCH_ASIO
asio::awaitable<void> asio_child(long& count, bool yield) {
    if (yield)
        co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    ++count;
}

bench::Sample run_asio(long n, bool yield) {
    long count = 0;
    std::size_t bytes = 0;
    bench::Region region;
    {
        asio::io_context ctx(1);
        auto before = heap_in_use();
        for (long i = 0; i < n; ++i)
            asio::co_spawn(ctx, asio_child(count, yield), asio::detached);
        bytes = heap_in_use() - before;
        ctx.run();
    }
    double ns = region.stop();
    bench::check(count == n, "asio: not every child ran");
    return sample(ns, bytes, n);
}
#endif

} // namespace

int main(int argc, char** argv) {
    auto a = bench::parse(argc, argv, 1'000'000);
    fmt::print("W1 spawn: {} children in one group; ns per child, heap bytes per child\n", a.n);
    for (bool yield : {false, true}) {
        const char* c = yield ? "yield" : "return";
        if (!a.wants_case(c))
            continue;
        if (a.wants_impl("raw"))
            bench::measure(a, "W1", c, "raw", a.n, [&] { return run_raw(a.n, yield); });
        if (a.wants_impl("xiio"))
            bench::measure(a, "W1", c, "xiio", a.n, [&] { return run_xiio(a.n, yield); });
#ifdef XIIO_BENCH_ASIO
        if (a.wants_impl("asio"))
            bench::measure(a, "W1", c, "asio", a.n, [&] { return run_asio(a.n, yield); });
#endif
    }
}
