// W10 cross-loop call: n round trips of a trivial task to a loop on another thread and
// back, one after the other (the latency of one call, not the throughput of many).
// xiio: co_await on_loop(other.handle(), task) from a task, the other loop a LoopThread;
// Asio: co_await co_spawn(other_ctx, f, use_awaitable) from a coroutine on a first
// io_context, the other io_context run by its own thread; raw: two threads that hand a
// number to each other through two eventfds, each blocking in read() (what a call does,
// without coroutines or queues). ns per round trip.
#include "common.hpp"

#include <xiio.hpp>

#include <fmt/core.h>

#include <cstdint>
#include <stdexcept>
#include <thread>

#include <sys/eventfd.h>
#include <unistd.h>

#ifdef XIIO_BENCH_ASIO
#include <asio.hpp>
#endif

namespace {

long expected_sum(long n) {
    return n * (n + 1) / 2; // sum of i + 1 for i in [0, n)
}

// ---- xiio --------------------------------------------------------------------------------

xiio::Task<long> trivial(long i) {
    co_return i + 1;
}

xiio::Task<void> calls(xiio::LoopHandle other, long n, long& sum) {
    for (long i = 0; i < n; ++i)
        sum += co_await xiio::on_loop(other, trivial(i));
}

double run_xiio(long n) {
    xiio::LoopThread other; // started outside the measured region, as Asio's thread
    long sum = 0;
    bench::Region region;
    xiio::run(calls(other.handle(), n, sum));
    double ns = region.stop() / static_cast<double>(n);
    if (sum != expected_sum(n))
        throw std::runtime_error("xiio: wrong sum");
    return ns;
}

// ---- raw: two threads, two eventfds ------------------------------------------------------

double run_raw(long n) {
    int there = ::eventfd(0, EFD_CLOEXEC), back = ::eventfd(0, EFD_CLOEXEC);
    if (there < 0 || back < 0)
        throw std::runtime_error("eventfd failed");
    // The value travels in the counter itself: arg + 1 there, result + 1 back (never 0).
    std::thread other([&] {
        for (;;) {
            std::uint64_t v;
            if (::read(there, &v, sizeof v) != sizeof v)
                std::abort();
            if (v == UINT64_MAX - 1) // stop
                return;
            std::uint64_t r = (v - 1) + 1 + 1; // trivial(arg), + 1
            if (::write(back, &r, sizeof r) != sizeof r)
                std::abort();
        }
    });
    long sum = 0;
    bench::Region region;
    for (long i = 0; i < n; ++i) {
        std::uint64_t v = static_cast<std::uint64_t>(i) + 1;
        if (::write(there, &v, sizeof v) != sizeof v || ::read(back, &v, sizeof v) != sizeof v)
            throw std::runtime_error("raw: eventfd failed");
        sum += static_cast<long>(v - 1);
    }
    double ns = region.stop() / static_cast<double>(n);
    std::uint64_t stop = UINT64_MAX - 1;
    if (::write(there, &stop, sizeof stop) != sizeof stop)
        std::abort();
    other.join();
    ::close(there);
    ::close(back);
    if (sum != expected_sum(n))
        throw std::runtime_error("raw: wrong sum");
    return ns;
}

// ---- Asio ----------------------------------------------------------------------------------

#ifdef XIIO_BENCH_ASIO
asio::awaitable<void> asio_calls(asio::io_context& other, long n, long& sum) {
    for (long i = 0; i < n; ++i) {
        // Named: g++ 12 destroys a lambda temporary inside co_await twice.
        auto f = [i]() -> asio::awaitable<long> { co_return i + 1; };
        sum += co_await asio::co_spawn(other, f, asio::use_awaitable);
    }
}

double run_asio(long n) {
    asio::io_context ctx(1), other(1);
    auto guard = asio::make_work_guard(other);
    std::thread thread([&] { other.run(); });
    long sum = 0;
    bench::Region region;
    asio::co_spawn(ctx, asio_calls(other, n, sum), asio::detached);
    ctx.run();
    double ns = region.stop() / static_cast<double>(n);
    guard.reset();
    thread.join();
    if (sum != expected_sum(n))
        throw std::runtime_error("asio: wrong sum");
    return ns;
}
#endif

} // namespace

int main(int argc, char** argv) {
    auto a = bench::parse(argc, argv, 100'000);
    fmt::print("W10 cross-loop call: {} sequential round trips of a trivial task to a loop on "
               "another thread; ns per round trip\n",
               a.n);
    if (a.wants_impl("raw"))
        bench::measure(a, "W10", "call", "raw", a.n, [&] { return bench::Sample{run_raw(a.n)}; });
    if (a.wants_impl("xiio"))
        bench::measure(a, "W10", "call", "xiio", a.n, [&] { return bench::Sample{run_xiio(a.n)}; });
#ifdef XIIO_BENCH_ASIO
    if (a.wants_impl("asio"))
        bench::measure(a, "W10", "call", "asio", a.n, [&] { return bench::Sample{run_asio(a.n)}; });
#endif
}
