// Loops on three threads talking through a Channel: two threads each run a loop whose
// task puts squares; the main thread's loop sums them. A waiting task is woken through
// its own loop (an eventfd write if that loop sleeps): nothing polls.
//
//   ./channel
#include <xiio.hpp>

#include <fmt/core.h>

#include <atomic>
#include <thread>

xiio::Task<void> produce(xiio::Channel<long>& ch, long from, long to, std::atomic<int>& left) {
    for (long i = from; i <= to; ++i)
        co_await ch.put(i * i); // waits while the channel is full
    if (--left == 0)
        ch.close(); // the last producer closes: the consumer drains, then gets nullopt
}

xiio::Task<long> consume(xiio::Channel<long>& ch) {
    long sum = 0;
    while (auto v = co_await ch.get()) // waits while the channel is empty
        sum += *v;
    co_return sum;
}

int main() {
    xiio::Channel<long> ch(64);
    std::atomic<int> left{2};
    std::thread a([&] { xiio::run(produce(ch, 1, 500, left)); });
    std::thread b([&] { xiio::run(produce(ch, 501, 1000, left)); });
    long sum = xiio::run(consume(ch));
    a.join();
    b.join();
    fmt::print("sum of the squares of 1..1000: {}\n", sum);
}
