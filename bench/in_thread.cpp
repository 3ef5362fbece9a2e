// W6 offload: n round trips of a trivial function to a worker thread and back, one after
// the other (the latency of one offload, not the throughput of many).
// xiio: co_await in_thread(f) in a task; raw: a std::thread with a mutex/condvar queue that
// wakes the caller through an eventfd (what in_thread does, without coroutines); Asio:
// co_await co_spawn(thread_pool, f, use_awaitable) from a coroutine on an io_context.
// ns per round trip.
#include "common.hpp"

#include <xiio.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <sys/eventfd.h>
#include <unistd.h>

#ifdef XIIO_BENCH_ASIO
#include <asio.hpp>
#endif

namespace {

long trivial(long i) {
    return i + 1;
}

long expected_sum(long n) {
    return n * (n + 1) / 2; // sum of trivial(i) for i in [0, n)
}

// ---- xiio --------------------------------------------------------------------------------

double run_xiio(long n, bool counted = true) {
    long sum = 0;
    bench::Region region(counted);
    xiio::run([&]() -> xiio::Task<void> {
        for (long i = 0; i < n; ++i) {
            long r = co_await xiio::in_thread(trivial, i);
            sum += r;
        }
    }());
    double ns = region.stop() / static_cast<double>(n);
    if (sum != expected_sum(n))
        throw std::runtime_error("xiio: wrong sum");
    return ns;
}

// ---- raw: one worker thread, a locked queue, an eventfd back -----------------------------

class RawWorker {
public:
    RawWorker() : efd_(::eventfd(0, EFD_CLOEXEC)), thread_([this] { work(); }) {}
    ~RawWorker() {
        {
            std::lock_guard lock(m_);
            stop_ = true;
        }
        cv_.notify_one();
        thread_.join();
        ::close(efd_);
    }
    /// Runs trivial(arg) on the worker; blocks in read(eventfd) until it is done.
    long call(long arg) {
        {
            std::lock_guard lock(m_);
            jobs_.push_back(arg);
        }
        cv_.notify_one();
        std::uint64_t v;
        if (::read(efd_, &v, sizeof v) != sizeof v)
            throw std::runtime_error("raw: eventfd read failed");
        std::lock_guard lock(m_);
        return result_;
    }

private:
    void work() {
        std::unique_lock lock(m_);
        for (;;) {
            cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
            if (stop_)
                return;
            long arg = jobs_.front();
            jobs_.pop_front();
            lock.unlock();
            long r = trivial(arg);
            lock.lock();
            result_ = r;
            std::uint64_t one = 1;
            if (::write(efd_, &one, sizeof one) != sizeof one)
                std::abort();
        }
    }

    int efd_;
    std::mutex m_;
    std::condition_variable cv_;
    std::deque<long> jobs_;
    long result_ = 0;
    bool stop_ = false;
    std::thread thread_; // last: starts once the rest is built
};

double run_raw(long n) {
    RawWorker w;
    long sum = 0;
    bench::Region region;
    for (long i = 0; i < n; ++i)
        sum += w.call(i);
    double ns = region.stop() / static_cast<double>(n);
    if (sum != expected_sum(n))
        throw std::runtime_error("raw: wrong sum");
    return ns;
}

// ---- Asio ----------------------------------------------------------------------------------

#ifdef XIIO_BENCH_ASIO
asio::awaitable<void> asio_loop(asio::thread_pool& pool, long n, long& sum) {
    for (long i = 0; i < n; ++i) {
        // Named: g++ 12 destroys a lambda temporary inside co_await twice.
        auto job = [i]() -> asio::awaitable<long> { co_return trivial(i); };
        sum += co_await asio::co_spawn(pool, job, asio::use_awaitable);
    }
}

double run_asio(long n) {
    asio::io_context ctx(1);
    asio::thread_pool pool(xiio::ThreadPool::default_max_workers());
    long sum = 0;
    bench::Region region;
    asio::co_spawn(ctx, asio_loop(pool, n, sum), asio::detached);
    ctx.run();
    double ns = region.stop() / static_cast<double>(n);
    pool.join();
    if (sum != expected_sum(n))
        throw std::runtime_error("asio: wrong sum");
    return ns;
}
#endif

} // namespace

int main(int argc, char** argv) {
    auto a = bench::parse(argc, argv, 100'000);
    fmt::print("W6 offload: {} sequential round trips of a trivial function to a worker "
               "thread; ns per round trip\n",
               a.n);
    if (a.wants_impl("raw"))
        bench::measure(a, "W6", "offload", "raw", a.n, [&] { return bench::Sample{run_raw(a.n)}; });
    if (a.wants_impl("xiio")) {
        // Start the default pool's worker outside the timing (and the instruction count).
        run_xiio(std::min(a.n, 1000L), false);
        bench::measure(a, "W6", "offload", "xiio", a.n,
                       [&] { return bench::Sample{run_xiio(a.n)}; });
    }
#ifdef XIIO_BENCH_ASIO
    if (a.wants_impl("asio"))
        bench::measure(a, "W6", "offload", "asio", a.n,
                       [&] { return bench::Sample{run_asio(a.n)}; });
#endif
}
