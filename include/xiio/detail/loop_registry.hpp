#pragma once
// Which loops are alive, and on which thread: how an Fd closed away from the loop that
// registered it (in a thread pool's job, after run() returned) learns whether that loop
// still exists and how to tell it, without touching a loop from another thread.

#include <xiio/detail/std_parts.hpp>

#include <atomic>
#include <cstdint>
#include <mutex>

namespace xiio::detail {

class Loop;

/// A number never handed out twice in the process: names loops and Fd registrations, so
/// that a stale name (a loop gone, a registration dropped, an address reused) never
/// matches a live one.
inline std::uint64_t next_serial() noexcept {
    static std::atomic<std::uint64_t> last{0};
    return last.fetch_add(1, std::memory_order_relaxed) + 1;
}

/// A live loop that owns Fd registrations, linked into the registry while it exists.
struct LoopRecord {
    std::uint64_t id = 0;
    std::thread::id thread;
    Loop* loop = nullptr;
    LoopRecord* prev = nullptr;
    LoopRecord* next = nullptr;
};

/// The process-wide list of LoopRecords. Intrusive: enlisting allocates nothing, so a
/// lookup from a noexcept close() cannot fail. Lookups are rare (an Fd closed while its
/// loop is not the current one); the common close finds its loop in current_loop().
class LoopRegistry {
public:
    static std::mutex& mutex() noexcept {
        static std::mutex m;
        return m;
    }
    /// Caller holds mutex().
    static void add(LoopRecord& r) noexcept {
        r.prev = nullptr;
        r.next = head();
        if (r.next)
            r.next->prev = &r;
        head() = &r;
    }
    /// Caller holds mutex().
    static void remove(LoopRecord& r) noexcept {
        (r.prev ? r.prev->next : head()) = r.next;
        if (r.next)
            r.next->prev = r.prev;
        r.prev = r.next = nullptr;
    }
    /// Caller holds mutex(). Null if no live loop has that id.
    static LoopRecord* find(std::uint64_t id) noexcept {
        for (LoopRecord* r = head(); r; r = r->next)
            if (r->id == id)
                return r;
        return nullptr;
    }

private:
    static LoopRecord*& head() noexcept {
        static LoopRecord* h = nullptr;
        return h;
    }
};

} // namespace xiio::detail
