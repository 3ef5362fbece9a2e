#pragma once
// The frame pool: a per-thread recycling allocator for coroutine frames (task.hpp's
// promise operator new/delete). A task that returns at once costs one frame allocation and
// one free; glibc spends some 300 instructions on that pair, the pool about 30.
//
// Layout: memory comes from mmap in 64 KiB chunks aligned to their size, so the chunk of a
// block is its address rounded down (no per-block header: the frame size is passed back to
// operator delete). A chunk serves one size class (16-byte steps up to 1 KiB; larger frames
// go to ::operator new) and hands out blocks from its free list, else by bumping a pointer.
// Each thread has its own FramePool: its chunks, per class a list of those with room, and
// no locks on the way.
//
// Who frees what:
// - On the owner's thread a block goes back to its chunk's free list. A chunk that becomes
//   empty is kept if its size class keeps no other empty chunk, or if fewer than
//   `keep_empty` are kept in all, else unmapped: a burst of a million tasks gives its memory
//   back once they are gone, while a steady spawn-and-finish rhythm never maps and unmaps.
//   (With the one cap alone, a request that empties the chunks of several classes at once,
//   as a TLS echo does with 100 clients, unmapped and mapped two chunks per request.)
// - On another thread (a task made on one thread and finished on a LoopThread) the block is
//   pushed onto the chunk's atomic `remote` list, and the first such push since the owner
//   last looked announces the chunk on the owner's atomic stack. The owner takes both over
//   (one exchange each, never a pop of one node, so no ABA) when it runs out of room.
// - A thread that ends parks its pool: empty chunks are unmapped, the rest wait for their
//   blocks; frees that arrive meanwhile are collected by the freeing thread under a mutex.
//   The next new thread adopts a parked pool rather than making one. Allocations made on a
//   thread after its pool was parked (destructors of other thread_locals) go to a shared
//   pool under the same mutex.
//
// ASan: the pool is bypassed (plain ::operator new/delete), so ASan keeps seeing every
// use-after-free of a frame; reused blocks would hide it. XIIO_FRAME_POOL=0 bypasses it
// everywhere (for valgrind hunts).

#include <xiio/detail/accounting.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <utility>

#include <sys/mman.h>

#ifndef XIIO_FRAME_POOL
#if defined(__SANITIZE_ADDRESS__)
#define XIIO_FRAME_POOL 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define XIIO_FRAME_POOL 0
#endif
#endif
#endif
#ifndef XIIO_FRAME_POOL
#define XIIO_FRAME_POOL 1
#endif

namespace xiio::detail {

class FramePool;

/// The header at the start of every chunk.
struct PoolChunk {
    static constexpr std::size_t size = 64 * 1024;
    static constexpr std::size_t header = 192; // the owner's line, then the remote line

    static PoolChunk* of(void* block) noexcept {
        return reinterpret_cast<PoolChunk*>(reinterpret_cast<std::uintptr_t>(block) &
                                            ~std::uintptr_t(size - 1));
    }

    // Written by the owner's thread only.
    FramePool* owner;
    PoolChunk* prev = nullptr; // the owner's list of chunks of this class with room
    PoolChunk* next = nullptr;
    void* free = nullptr; // blocks given back on the owner's thread
    char* bump;           // blocks never handed out start here
    char* end;
    std::uint32_t used = 0; // blocks out (remote frees count once the owner took them)
    std::uint32_t block;    // bytes per block
    std::uint32_t cls;
    bool listed = false;
    PoolChunk* next_remote = nullptr; // in the owner's stack of announced chunks
    // Written by other threads: on a line of its own.
    alignas(64) std::atomic<void*> remote{nullptr};
};
static_assert(sizeof(PoolChunk) <= PoolChunk::header);

/// Bytes of chunks that serve a size class, over all pools (what the pool holds for
/// frames, counted where a benchmark counts the heap).
inline std::atomic<std::size_t>& frame_pool_bytes() noexcept {
    static std::atomic<std::size_t> bytes{0};
    return bytes;
}

#ifdef XIIO_LEAK_ACCOUNTING
/// Test builds: called on every pool allocation, so a test that makes allocations fail can
/// fail a frame's too (the pool otherwise asks the system once per chunk).
inline void (*&frame_allocation_probe() noexcept)() {
    static void (*probe)() = nullptr;
    return probe;
}
#endif

class FramePool {
public:
    static constexpr std::size_t granule = 16;
    static constexpr std::size_t max_block = 1024;
    static constexpr std::size_t classes = max_block / granule + 1; // 1..64 used
    static constexpr unsigned keep_empty = 4;                       // emptied chunks kept for reuse
    static constexpr std::size_t batch = 16;                        // chunks mapped at once

    FramePool() = default;
    FramePool(const FramePool&) = delete;
    FramePool& operator=(const FramePool&) = delete;

    /// A block of class `cls` (cls * granule bytes). Throws std::bad_alloc.
    void* allocate(std::size_t cls) {
        if (PoolChunk* c = avail_[cls]) [[likely]] {
            void* b = c->free;
            if (b) {
                c->free = *static_cast<void**>(b);
            } else if (c->bump != c->end) {
                b = c->bump;
                c->bump += c->block;
            } else {
                return refill(cls);
            }
            if (c->used++ == 0) [[unlikely]] {
                --empty_;
                --empty_in_[cls];
            }
            return b;
        }
        return refill(cls);
    }

    /// Gives back a block of chunk `c`, which this pool owns, on the owner's thread.
    void free_local(PoolChunk* c, void* b) noexcept {
        *static_cast<void**>(b) = c->free;
        c->free = b;
        if (!c->listed) [[unlikely]]
            list_front(*c); // it was full
        if (--c->used == 0) [[unlikely]]
            emptied(*c);
    }

    /// Gives back a block of a chunk owned by another thread's pool (or a parked one).
    static void free_remote(PoolChunk* c, void* b) noexcept {
        FramePool* owner = c->owner; // pools are never freed; c may be, see below
        void* head = c->remote.load(std::memory_order_relaxed);
        do {
            *static_cast<void**>(b) = head;
        } while (!c->remote.compare_exchange_weak(head, b, std::memory_order_seq_cst,
                                                  std::memory_order_relaxed));
        if (!head)              // the first since the owner last looked: tell it which chunk
            owner->announce(c); // c stays mapped until then: b is still counted in use
        // Not c->owner from here on: once b is in the list, the owner may unmap c.
        if (owner->parked_.load(std::memory_order_seq_cst)) // nobody looks: do it here
            owner->collect_parked();
    }

    /// The pool of this thread, made or adopted at first use; the shared one once this
    /// thread's pool was parked (its thread is ending). Throws std::bad_alloc.
    static FramePool& mine() {
        if (FramePool* p = current()) [[likely]]
            return *p;
        return adopt();
    }
    static FramePool*& current() noexcept {
        thread_local FramePool* pool = nullptr;
        return pool;
    }

    /// The shared pool: used under the mutex by threads whose own pool is gone.
    static FramePool& shared() noexcept {
        static FramePool* s = [] {
            auto* p = new FramePool; // never destroyed: frees may reach it until exit
            p->shared_ = true;
            p->parked_.store(true);
            return p;
        }();
        return *s;
    }
    static std::mutex& mutex() noexcept {
        static std::mutex m;
        return m;
    }

    bool parked() const noexcept { return parked_.load(std::memory_order_relaxed); }

    /// The most this pool keeps mapped once no block is out: `keep_empty` chunks, plus one
    /// per size class that keeps one (for tests of the memory bound).
    std::size_t kept_bound_bytes() const noexcept {
        std::size_t n = keep_empty;
        for (unsigned k : empty_in_)
            n += k != 0;
        return n * PoolChunk::size;
    }

    /// Takes over what other threads gave back (owner's thread, or under the mutex).
    void collect_remote() noexcept {
        PoolChunk* c = remote_chunks_.exchange(nullptr, std::memory_order_seq_cst);
        while (c) {
            // Read before the exchange below: from then on a freer may announce c again.
            PoolChunk* next = c->next_remote;
            void* list = c->remote.exchange(nullptr, std::memory_order_seq_cst);
            std::uint32_t k = 0;
            void* last = nullptr;
            for (void* b = list; b; b = *static_cast<void**>(b)) {
                ++k;
                last = b;
            }
            if (last) {
                *static_cast<void**>(last) = c->free;
                c->free = list;
                if (!c->listed)
                    list_front(*c);
                c->used -= k;
                if (c->used == 0)
                    emptied(*c);
            }
            c = next;
        }
    }

    /// The thread ends: unmaps empty chunks; the rest waits for frees, or a new thread.
    void park() noexcept {
        std::lock_guard lock(mutex());
        parked_.store(true, std::memory_order_seq_cst);
        collect_remote();
        release_empty();
        next_parked_ = parked_pools();
        parked_pools() = this;
    }

private:
    struct Guard {
        FramePool* pool = nullptr;
        ~Guard() {
            if (pool) {
                current() = nullptr;
                gone() = true;
                pool->park();
            }
        }
    };
    static bool& gone() noexcept {
        thread_local bool g = false;
        return g;
    }
    static FramePool*& parked_pools() noexcept {
        static FramePool* head = nullptr;
        return head;
    }

    [[gnu::noinline]] static FramePool& adopt() {
        if (gone())
            return shared();
        thread_local Guard guard; // parks the pool when this thread ends
        FramePool* p = nullptr;
        {
            std::lock_guard lock(mutex());
            if ((p = parked_pools())) {
                parked_pools() = p->next_parked_;
                p->parked_.store(false, std::memory_order_seq_cst);
            }
        }
        if (!p)
            p = new FramePool; // throws std::bad_alloc
        guard.pool = p;
        current() = p;
        return *p;
    }

    void announce(PoolChunk* c) noexcept {
        PoolChunk* top = remote_chunks_.load(std::memory_order_relaxed);
        do {
            c->next_remote = top;
        } while (!remote_chunks_.compare_exchange_weak(top, c, std::memory_order_seq_cst,
                                                       std::memory_order_relaxed));
    }

    void collect_parked() noexcept {
        std::lock_guard lock(mutex());
        if (!parked_.load(std::memory_order_seq_cst))
            return; // adopted meanwhile: its new thread collects
        collect_remote();
        if (!shared_) // (asking shared() here could allocate: this is a noexcept path)
            release_empty();
    }

    [[gnu::noinline]] void* refill(std::size_t cls) {
        collect_remote();
        PoolChunk* c = avail_[cls];
        while (c && !c->free && c->bump == c->end) { // full: off the list until a free
            PoolChunk* next = c->next;
            unlist(*c);
            c = next;
        }
        if (!c) {
            c = new_chunk(cls);
            ++empty_;
            ++empty_in_[cls];
            list_front(*c);
        } else if (c != avail_[cls]) {
            unlist(*c);
            list_front(*c);
        }
        return allocate(cls); // from c, which has room
    }

    PoolChunk* new_chunk(std::size_t cls) {
        if (fresh_ == fresh_end_)
            map_batch();
        char* at = fresh_;
        fresh_ += PoolChunk::size;
        auto* c = new (at) PoolChunk;
        c->owner = this;
        c->block = static_cast<std::uint32_t>((cls ? cls : 1) * granule); // class 0: n = 0
        c->cls = static_cast<std::uint32_t>(cls);
        c->bump = at + PoolChunk::header;
        c->end = c->bump + (PoolChunk::size - PoolChunk::header) / c->block * c->block;
        frame_pool_bytes().fetch_add(PoolChunk::size, std::memory_order_relaxed);
        return c;
    }

    /// Maps `batch` chunks aligned to their size. Untouched pages cost no memory, so the
    /// rest of a batch is kept as is until needed.
    void map_batch() {
        const std::size_t len = (batch + 1) * PoolChunk::size;
        void* m = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            throw std::bad_alloc();
        auto base = reinterpret_cast<std::uintptr_t>(m);
        auto start = (base + PoolChunk::size - 1) & ~std::uintptr_t(PoolChunk::size - 1);
        std::size_t head = start - base, tail = PoolChunk::size - head;
        if (head)
            ::munmap(m, head);
        if (tail)
            ::munmap(reinterpret_cast<char*>(start + batch * PoolChunk::size), tail);
        fresh_ = reinterpret_cast<char*>(start);
        fresh_end_ = fresh_ + batch * PoolChunk::size;
    }

    void list_front(PoolChunk& c) noexcept {
        PoolChunk*& head = avail_[c.cls];
        c.prev = nullptr;
        c.next = head;
        if (head)
            head->prev = &c;
        head = &c;
        c.listed = true;
    }
    void unlist(PoolChunk& c) noexcept {
        (c.prev ? c.prev->next : avail_[c.cls]) = c.next;
        if (c.next)
            c.next->prev = c.prev;
        c.prev = c.next = nullptr;
        c.listed = false;
    }

    /// `c` has no block out any more: keep a few such chunks, unmap the others.
    void emptied(PoolChunk& c) noexcept {
        if ((empty_in_[c.cls] == 0 || empty_ < keep_empty) && !parked()) {
            ++empty_;
            ++empty_in_[c.cls];
            return;
        }
        release(c);
    }
    void release(PoolChunk& c) noexcept {
        unlist(c);
        frame_pool_bytes().fetch_sub(PoolChunk::size, std::memory_order_relaxed);
        ::munmap(&c, PoolChunk::size);
    }
    void release_empty() noexcept {
        for (PoolChunk* head : avail_)
            for (PoolChunk* c = head; c;) {
                PoolChunk* next = c->next;
                if (c->used == 0) {
                    --empty_in_[c->cls];
                    release(*c);
                    --empty_;
                }
                c = next;
            }
    }

    PoolChunk* avail_[classes] = {};
    unsigned empty_ = 0;              // listed chunks with no block out
    unsigned empty_in_[classes] = {}; // of them, per class
    char* fresh_ = nullptr;
    char* fresh_end_ = nullptr;
    std::atomic<PoolChunk*> remote_chunks_{nullptr};
    std::atomic<bool> parked_{false};
    FramePool* next_parked_ = nullptr;
    bool shared_ = false;
};

/// operator new of a coroutine frame. Throws std::bad_alloc.
inline void* frame_allocate(std::size_t n) {
#if XIIO_FRAME_POOL
#ifdef XIIO_LEAK_ACCOUNTING
    if (auto probe = frame_allocation_probe())
        probe();
#endif
    const std::size_t cls = (n + FramePool::granule - 1) / FramePool::granule;
    if (cls < FramePool::classes) [[likely]] {
        FramePool& p = FramePool::mine();
        if (!p.parked()) [[likely]]
            return p.allocate(cls);
        std::lock_guard lock(FramePool::mutex()); // the shared pool
        return p.allocate(cls);
    }
#endif
    return ::operator new(n);
}

/// operator delete of a coroutine frame of `n` bytes (the size it was allocated with).
inline void frame_deallocate(void* b, std::size_t n) noexcept {
#if XIIO_FRAME_POOL
    if ((n + FramePool::granule - 1) / FramePool::granule < FramePool::classes) [[likely]] {
        PoolChunk* c = PoolChunk::of(b);
        if (c->owner == FramePool::current()) [[likely]]
            c->owner->free_local(c, b);
        else
            FramePool::free_remote(c, b);
        return;
    }
#endif
    (void)n;
    ::operator delete(b); // unsized: clang declares the sized one only with -fsized-deallocation
}

} // namespace xiio::detail
