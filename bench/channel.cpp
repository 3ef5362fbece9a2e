// W9 channel: n ints from a producer on one thread to a consumer on another, through a
// bounded channel of capacity 64 (--capacity), one item per operation on both sides.
// xiio: Channel<int> between two loops (xiio::run on two std::threads); Asio:
// experimental::concurrent_channel<void(error_code, int)> between two io_contexts on two
// threads (producer and consumer co_spawned, one on each); raw: a mutex-protected ring
// whose consumer sleeps in epoll on an eventfd while it is empty and whose producer sleeps
// in epoll on another eventfd while it is full; each side writes the other's eventfd only
// if that one sleeps (what a loop-to-loop queue without coroutines does).
// ns per item (wall clock, threads started and joined inside the region) and items/s.
#include "common.hpp"

#include <xiio.hpp>
#include <xiio/channel.hpp>

#include <fmt/core.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#ifdef XIIO_BENCH_ASIO
#include <asio.hpp>
#include <asio/experimental/concurrent_channel.hpp>
#endif

namespace {

long expected_sum(long n) {
    return n * (n - 1) / 2;
}

bench::Sample sample(double ns, long n) {
    return bench::Sample{ns / static_cast<double>(n), {{"items_per_s", n * 1e9 / ns}}};
}

// ---- xiio --------------------------------------------------------------------------------

bench::Sample run_xiio(long n, std::size_t capacity) {
    xiio::Channel<int> ch(capacity);
    long sum = 0;
    bench::Region region;
    std::thread consumer([&] {
        xiio::run([&]() -> xiio::Task<void> {
            while (auto v = co_await ch.get())
                sum += *v;
        }());
    });
    std::thread producer([&] {
        xiio::run([&]() -> xiio::Task<void> {
            for (long i = 0; i < n; ++i)
                co_await ch.put(static_cast<int>(i));
            ch.close();
        }());
    });
    producer.join();
    consumer.join();
    double ns = region.stop();
    bench::check(sum == expected_sum(n), "xiio: wrong sum");
    return sample(ns, n);
}

// ---- raw: a locked ring, an eventfd per side, epoll to sleep -----------------------------

/// One side's way to sleep: an eventfd in an epoll set of its own, as in a loop.
class Sleeper {
public:
    Sleeper()
        : efd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)), ep_(::epoll_create1(EPOLL_CLOEXEC)) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = efd_;
        if (efd_ < 0 || ep_ < 0 || ::epoll_ctl(ep_, EPOLL_CTL_ADD, efd_, &ev) != 0)
            throw std::runtime_error("raw: eventfd/epoll failed");
    }
    ~Sleeper() {
        ::close(ep_);
        ::close(efd_);
    }
    Sleeper(const Sleeper&) = delete;
    Sleeper& operator=(const Sleeper&) = delete;
    void wait() {
        epoll_event ev;
        if (bench::epoll_wait_ns(ep_, &ev, 1, nullptr) == 1) {
            std::uint64_t v;
            [[maybe_unused]] auto r = ::read(efd_, &v, sizeof v);
        }
    }
    void wake() {
        std::uint64_t one = 1;
        [[maybe_unused]] auto r = ::write(efd_, &one, sizeof one);
    }

private:
    int efd_, ep_;
};

class RawRing {
public:
    explicit RawRing(std::size_t capacity) : ring_(capacity) {}
    void put(int v) {
        std::unique_lock lock(m_);
        while (size_ == ring_.size()) {
            producer_sleeps_ = true;
            lock.unlock();
            producer_.wait();
            lock.lock();
        }
        ring_[(head_ + size_) % ring_.size()] = v;
        ++size_;
        bool wake = std::exchange(consumer_sleeps_, false);
        lock.unlock();
        if (wake)
            consumer_.wake();
    }
    /// False once closed and drained.
    bool get(int& v) {
        std::unique_lock lock(m_);
        while (size_ == 0) {
            if (closed_)
                return false;
            consumer_sleeps_ = true;
            lock.unlock();
            consumer_.wait();
            lock.lock();
        }
        v = ring_[head_];
        head_ = (head_ + 1) % ring_.size();
        --size_;
        bool wake = std::exchange(producer_sleeps_, false);
        lock.unlock();
        if (wake)
            producer_.wake();
        return true;
    }
    void close() {
        std::unique_lock lock(m_);
        closed_ = true;
        bool wake = std::exchange(consumer_sleeps_, false);
        lock.unlock();
        if (wake)
            consumer_.wake();
    }

private:
    std::mutex m_;
    std::vector<int> ring_;
    std::size_t head_ = 0, size_ = 0;
    bool closed_ = false;
    bool consumer_sleeps_ = false, producer_sleeps_ = false; // under m_
    Sleeper consumer_, producer_;
};

bench::Sample run_raw(long n, std::size_t capacity) {
    RawRing ring(capacity);
    long sum = 0;
    bench::Region region;
    std::thread consumer([&] {
        int v;
        while (ring.get(v))
            sum += v;
    });
    std::thread producer([&] {
        for (long i = 0; i < n; ++i)
            ring.put(static_cast<int>(i));
        ring.close();
    });
    producer.join();
    consumer.join();
    double ns = region.stop();
    bench::check(sum == expected_sum(n), "raw: wrong sum");
    return sample(ns, n);
}

// ---- Asio ----------------------------------------------------------------------------------

#ifdef XIIO_BENCH_ASIO
using AsioChannel = asio::experimental::concurrent_channel<void(asio::error_code, int)>;

asio::awaitable<void> asio_produce(AsioChannel& ch, long n) {
    for (long i = 0; i < n; ++i)
        co_await ch.async_send(asio::error_code{}, static_cast<int>(i), asio::use_awaitable);
    co_await ch.async_send(asio::error_code{}, -1, asio::use_awaitable); // the end
}

asio::awaitable<void> asio_consume(AsioChannel& ch, long& sum) {
    for (;;) {
        int v = co_await ch.async_receive(asio::use_awaitable);
        if (v < 0)
            co_return;
        sum += v;
    }
}

bench::Sample run_asio(long n, std::size_t capacity) {
    asio::io_context producer_ctx(1), consumer_ctx(1);
    AsioChannel ch(consumer_ctx, capacity);
    long sum = 0;
    bench::Region region;
    asio::co_spawn(consumer_ctx, asio_consume(ch, sum), asio::detached);
    asio::co_spawn(producer_ctx, asio_produce(ch, n), asio::detached);
    std::thread consumer([&] { consumer_ctx.run(); });
    std::thread producer([&] { producer_ctx.run(); });
    producer.join();
    consumer.join();
    double ns = region.stop();
    bench::check(sum == expected_sum(n), "asio: wrong sum");
    return sample(ns, n);
}
#endif

} // namespace

int main(int argc, char** argv) {
    auto a = bench::parse(argc, argv, 1'000'000);
    auto capacity = static_cast<std::size_t>(a.get("capacity", 64));
    fmt::print("W9 channel: {} ints between two loops on two threads, capacity {}; ns per item\n",
               a.n, capacity);
    if (a.wants_impl("raw"))
        bench::measure(a, "W9", "channel", "raw", a.n, [&] { return run_raw(a.n, capacity); });
    if (a.wants_impl("xiio"))
        bench::measure(a, "W9", "channel", "xiio", a.n, [&] { return run_xiio(a.n, capacity); });
#ifdef XIIO_BENCH_ASIO
    if (a.wants_impl("asio"))
        bench::measure(a, "W9", "channel", "asio", a.n, [&] { return run_asio(a.n, capacity); });
#endif
}
