// The synchronization primitives, between tasks of one loop: an Event as a start signal,
// a Semaphore whose guard() bounds how many downloads run at once, a Lock whose Guard
// keeps a read-modify-write that awaits in the middle from losing updates, and a Queue
// between a producer and two consumers.
//
//   ./sync
#include <xiio.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <vector>

using namespace std::chrono_literals;

// Waits for the start signal, then "downloads" while holding one of the semaphore's
// permits: the guard returns the permit at scope exit, also if the download throws or the
// task is cancelled.
xiio::Task<void> download(int id, xiio::Event& start, xiio::Semaphore& slots, int& in_flight,
                          int& most) {
    co_await start.wait();
    auto permit = co_await slots.guard();
    most = std::max(most, ++in_flight);
    co_await xiio::sleep(5ms * (1 + id % 3));
    --in_flight;
}

// Reads the balance, awaits (a network call, say), writes it back: without the lock, two
// tasks would read the same balance and one deposit would be lost.
xiio::Task<void> deposit(xiio::Lock& lock, int& balance, int amount) {
    auto guard = co_await lock.lock();
    int read = balance;
    co_await xiio::yield(); // the others run here, and wait for the lock
    balance = read + amount;
}

xiio::Task<void> produce(xiio::Queue<int>& queue, int n) {
    for (int i = 1; i <= n; ++i)
        co_await queue.put(i); // waits while the queue is full
    queue.close();             // the consumers drain it, then get std::nullopt
}

xiio::Task<void> consume(xiio::Queue<int>& queue, int& sum, int& count) {
    while (std::optional<int> item = co_await queue.get()) {
        sum += *item;
        ++count;
    }
}

xiio::Task<void> main_task() {
    // Event + Semaphore: 10 downloads start together, at most 3 run at once.
    xiio::Event start;
    xiio::Semaphore slots(3);
    int in_flight = 0, most = 0;
    co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
        for (int id = 0; id < 10; ++id)
            tg.add_task(download(id, start, slots, in_flight, most));
        co_await xiio::sleep(10ms);
        fmt::print("10 downloads waiting for the start signal; in flight: {}\n", in_flight);
        start.set();
    });
    fmt::print("10 downloads done, at most {} in flight (3 permits), {} permits free\n", most,
               slots.available());

    // Lock: 20 concurrent deposits of 5, each awaiting between its read and its write.
    xiio::Lock lock;
    int balance = 0;
    std::vector<xiio::Task<void>> deposits;
    for (int i = 0; i < 20; ++i)
        deposits.push_back(deposit(lock, balance, 5));
    co_await xiio::gather(std::move(deposits));
    fmt::print("balance after 20 deposits of 5: {}\n", balance);

    // Queue: one producer, two consumers, at most 4 items queued.
    xiio::Queue<int> queue(4);
    int sum = 0, count_a = 0, count_b = 0;
    co_await xiio::gather(produce(queue, 100), consume(queue, sum, count_a),
                          consume(queue, sum, count_b));
    fmt::print("consumed {} items summing to {}\n", count_a + count_b, sum);
}

int main() {
    xiio::run(main_task());
    return 0;
}
