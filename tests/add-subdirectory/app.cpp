// Smallest xiio program: exits 0 only if a coroutine that sleeps returns 42.
#include <xiio.hpp>

#include <chrono>

static xiio::Task<int> answer() {
    co_await xiio::sleep(std::chrono::milliseconds(1));
    co_return 42;
}

int main() {
    return xiio::run(answer()) == 42 ? 0 : 1;
}
