#pragma once
// Leak accounting: how many task frames, runners, fd registrations and timers are alive,
// summed over every loop of the process. A test ends by checking that all are back to
// zero (libuv checks that each test's loop closes cleanly; this is the same idea at the
// level of what a task can leak: a frame nobody destroys, a registration that outlives
// its waiter, a timer left in a heap).
//
// Off by default: without XIIO_LEAK_ACCOUNTING `count` is empty and users pay nothing.
// Counters are process-wide atomics because frames may be created on one thread and
// destroyed on another (a task handed to run() in a worker thread).

#ifdef XIIO_LEAK_ACCOUNTING
#include <atomic>
#endif

namespace xiio::detail {

struct LiveCounts {
    long frames = 0;        // Task coroutine frames not yet destroyed
    long runners = 0;       // units the loop schedules (run()'s root, group members)
    long registrations = 0; // fds in a poller's interest list that somebody still needs
    long timers = 0;        // waits in a timer heap
    bool operator==(const LiveCounts&) const = default;
};

enum class Counter { frames, runners, registrations, timers };

#ifdef XIIO_LEAK_ACCOUNTING
inline constexpr bool leak_accounting = true;

inline std::atomic<long>* live_counters() noexcept {
    static std::atomic<long> counters[4];
    return counters;
}

inline void count(Counter c, long delta) noexcept {
    live_counters()[static_cast<int>(c)].fetch_add(delta, std::memory_order_relaxed);
}

/// What is alive now.
inline LiveCounts live_counts() noexcept {
    auto* c = live_counters();
    return {c[0].load(), c[1].load(), c[2].load(), c[3].load()};
}
#else
inline constexpr bool leak_accounting = false;

constexpr void count(Counter, long) noexcept {}

inline LiveCounts live_counts() noexcept {
    return {};
}
#endif

} // namespace xiio::detail
