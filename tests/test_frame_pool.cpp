// Tests of xiio/detail/frame_pool.hpp, the per-thread allocator of task frames, and of what
// lives in front of a frame (a group member, kept by its TaskHandles: task.hpp's FrameRoom).
//
// Under ASan the pool is bypassed (XIIO_FRAME_POOL == 0, so that ASan sees every use after
// free of a frame): the tests then check only what holds without it (values, handles, no
// overlap); what is about the pool itself (its chunks, RSS) is compiled only with the pool.
//
// No Catch assertion runs on a thread of a test's own: Catch 2 is not thread-safe there.
// Those threads record what they saw and the test's thread checks it after join().
#include "helpers.hpp"

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <fstream>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <unistd.h>

using namespace test;
using xiio::Task;
using xiio::TaskGroup;
using xiio::TaskHandle;

namespace {

/// Under the sanitizers everything is several times slower: smaller bursts there.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr bool sanitized = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
constexpr bool sanitized = true;
#else
constexpr bool sanitized = false;
#endif
#else
constexpr bool sanitized = false;
#endif

#if XIIO_FRAME_POOL
using xiio::detail::FramePool;
using xiio::detail::PoolChunk;

/// What all pools may keep once no frame is alive: the emptied chunks of this thread's
/// pool (a parked pool keeps none, and no other thread's pool is alive in these tests):
/// `keep_empty`, plus one per size class that keeps one.
std::size_t kept_bytes() {
    return FramePool::mine().kept_bound_bytes();
}

/// Bytes of chunks of all pools, once this thread's pool took back the blocks that other
/// threads freed (until it needs room it leaves them in its chunks' remote lists).
std::size_t settled_pool_bytes() {
    FramePool::mine().collect_remote();
    return xiio::detail::frame_pool_bytes().load();
}

/// Resident memory of this process, in bytes.
std::size_t rss_bytes() {
    std::ifstream statm("/proc/self/statm");
    std::size_t size = 0, resident = 0;
    statm >> size >> resident;
    REQUIRE(statm);
    return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

Task<void> tick(long& n) {
    ++n;
    co_return;
}
#endif

long live_frames() {
    return xiio::detail::live_counts().frames;
}

/// 3 * i; every other one suspends once, so that it is resumed by the loop.
Task<int> triple(int i) {
    if (i % 2)
        co_await xiio::yield();
    co_return 3 * i;
}

long triple_sum(int n) {
    return 3L * n * (n - 1) / 2;
}

std::vector<Task<int>> make_triples(int n) {
    std::vector<Task<int>> ts;
    ts.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i)
        ts.push_back(triple(i));
    return ts;
}

/// The value of a byte of a block or buffer: different blocks, different contents.
unsigned char pattern(std::size_t owner, std::size_t at) {
    return static_cast<unsigned char>((owner * 2654435761u + at * 40503u) >> 7);
}

} // namespace

// ---- memory given back -----------------------------------------------------------------

TEST_CASE("the frame pool gives memory back: RSS after a million short tasks returns within 2x "
          "of the baseline",
          "[frame_pool][no-valgrind]") {
#if !XIIO_FRAME_POOL
    WARN("the frame pool is off in this build (ASan): nothing to measure");
#else
    // [no-valgrind]: a million tasks take minutes there, and its own heap is in the RSS.
    // 5 bursts of 200,000 tasks that all exist at once (some 40 MB of frames at the peak).
    const int rounds = 5;
    const int burst = sanitized ? 40'000 : 200'000;
    long n = 0;
    xiio::run(tick(n)); // the baseline includes the runtime: a loop, a frame, the pool

    const std::size_t pool_before = settled_pool_bytes();
    const std::size_t baseline = rss_bytes();
    std::size_t peak_rss = 0, peak_pool = 0;
    run([&]() -> Task<void> {
        for (int r = 0; r < rounds; ++r) {
            co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
                for (int i = 0; i < burst; ++i)
                    tg.add_task(tick(n)); // queued: none has run yet
                peak_rss = std::max(peak_rss, rss_bytes());
                peak_pool = std::max(peak_pool, xiio::detail::frame_pool_bytes().load());
                co_return;
            });
        }
    });
    const std::size_t after = rss_bytes();
    const std::size_t pool_after = settled_pool_bytes();

    CHECK(n == 1 + static_cast<long>(rounds) * burst);
    // The bursts went through the pool (a burst of blocks of 16 bytes at least).
    CHECK(peak_pool >= pool_before + static_cast<std::size_t>(burst) * 16 * 8);
    // Slack over 2x the baseline: the <= 4 emptied chunks the pool keeps per thread (256
    // KiB), glibc's arenas and trim threshold, Catch's and the kernel's bookkeeping.
    // Under a sanitizer the RSS is mostly the sanitizer's own (TSan: 24 MB at the baseline,
    // 8 MB more after bursts of 6 MB of chunks, in its shadow and allocator caches): it says
    // nothing about the pool and is not checked there (the chunks are, below).
    const std::size_t slack = 8u << 20;
    INFO("RSS baseline " << baseline / 1024 << " KiB, peak " << peak_rss / 1024 << " KiB, after "
                         << after / 1024 << " KiB; pool before " << pool_before / 1024
                         << " KiB, peak " << peak_pool / 1024 << " KiB, after " << pool_after / 1024
                         << " KiB");
    if (!sanitized) {
        CHECK(peak_rss > 2 * baseline + slack); // else this test could not fail
        CHECK(after <= 2 * baseline + slack);
    }
    // The pool unmapped every chunk but the few it keeps.
    CHECK(pool_after <= pool_before + kept_bytes());
    CHECK(pool_after <= kept_bytes());
#endif
}

// ---- frames that change threads --------------------------------------------------------

TEST_CASE("frames made on one thread and freed on another are safe", "[frame_pool]") {
    const int n = sanitized ? 2'000 : 10'000;
    const int rounds = 4;
    for (int round = 0; round < rounds; ++round) {
        INFO("round " << round);
        // Made here, run and destroyed on another thread, which then ends: the blocks go
        // back to this thread's pool through its chunks' remote lists.
        {
            auto ts = make_triples(n);
            long sum = -1;
            std::exception_ptr error;
            std::thread b([&] {
                try {
                    long s = 0;
                    for (int v : xiio::run(xiio::gather(std::move(ts))))
                        s += v;
                    sum = s;
                } catch (...) {
                    error = std::current_exception();
                }
            });
            b.join();
            if (error)
                std::rethrow_exception(error);
            CHECK(ts.empty());
            CHECK(sum == triple_sum(n));
            CHECK(live_frames() == 0);
        }
        // Made on another thread, which ends (its pool is parked with every block still
        // out); half run here, half destroyed here without ever running. The parked pool
        // takes each block back as it comes (the freer collects under the mutex) and
        // unmaps each chunk that empties.
        {
#if XIIO_FRAME_POOL
            const std::size_t before = xiio::detail::frame_pool_bytes().load();
#endif
            std::vector<Task<int>> made;
            std::thread b([&] { made = make_triples(n); });
            b.join();
            REQUIRE(made.size() == static_cast<std::size_t>(n));
#if XIIO_FRAME_POOL
            CHECK(xiio::detail::frame_pool_bytes().load() > before); // the parked pool's
#endif
            std::vector<Task<int>> first(std::make_move_iterator(made.begin()),
                                         std::make_move_iterator(made.begin() + n / 2));
            auto values = xiio::run(xiio::gather(std::move(first)));
            long sum = std::accumulate(values.begin(), values.end(), 0L);
            CHECK(sum == triple_sum(n / 2));
            std::shuffle(made.begin(), made.end(), std::mt19937(round));
            made.clear(); // the moved-from half is empty; the rest never ran
            CHECK(live_frames() == 0);
#if XIIO_FRAME_POOL
            // Every chunk of the parked pool emptied and was unmapped, and this thread's
            // pool kept no more than it may: no round leaves chunks behind.
            CHECK(settled_pool_bytes() <= kept_bytes());
#endif
        }
    }
}

TEST_CASE("frames freed on another thread while their owner keeps allocating are safe",
          "[frame_pool]") {
    // The owner makes batches of tasks and hands each to a consumer thread, which runs
    // half of each batch and destroys the rest unrun: its frees race with the owner's
    // allocations, which take the freed blocks back (collect_remote) when they need room.
    const int batches = sanitized ? 100 : 400;
    const int per_batch = 256;
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::vector<Task<int>>> queue; // an empty batch: the end
    long consumed = 0, ran_sum = 0;
    std::exception_ptr error;
    std::thread consumer([&] {
        try {
            for (;;) {
                std::vector<Task<int>> batch;
                {
                    std::unique_lock lock(m);
                    cv.wait(lock, [&] { return !queue.empty(); });
                    batch = std::move(queue.front());
                    queue.pop_front();
                }
                cv.notify_all();
                if (batch.empty())
                    return;
                std::vector<Task<int>> run_here;
                for (std::size_t i = 0; i < batch.size(); i += 2)
                    run_here.push_back(std::move(batch[i]));
                for (int v : xiio::run(xiio::gather(std::move(run_here))))
                    ran_sum += v;
                consumed += static_cast<long>(batch.size());
                batch.clear(); // the odd ones: never run
            }
        } catch (...) {
            {
                std::lock_guard lock(m);
                error = std::current_exception();
            }
            cv.notify_all();
        }
    });
    long expected = 0;
    for (int b = 0; b < batches; ++b) {
        std::vector<Task<int>> batch;
        batch.reserve(per_batch);
        for (int i = 0; i < per_batch; ++i) {
            batch.push_back(triple(b * per_batch + i));
            if (i % 2 == 0)
                expected += 3L * (b * per_batch + i);
        }
        // Frames made and destroyed here as well, so that the owner's own frees interleave.
        for (int i = 0; i < 16; ++i)
            Task<int> t = triple(i);
        std::unique_lock lock(m);
        cv.wait(lock, [&] { return queue.size() < 8 || error; });
        if (error)
            break;
        queue.push_back(std::move(batch));
        lock.unlock();
        cv.notify_all();
    }
    {
        std::lock_guard lock(m);
        queue.emplace_back();
    }
    cv.notify_all();
    consumer.join();
    if (error)
        std::rethrow_exception(error);
    CHECK(consumed == static_cast<long>(batches) * per_batch);
    CHECK(ran_sum == expected);
    CHECK(live_frames() == 0);
#if XIIO_FRAME_POOL
    CHECK(settled_pool_bytes() <= kept_bytes());
#endif
}

namespace {

/// Hands `t`, made on the loop's thread, to a worker of `pool`, which runs it in a loop of
/// its own and destroys it there.
Task<int> run_on_worker(xiio::ThreadPool& pool, Task<int> t) {
    auto job = [](Task<int>& task) { return xiio::run(std::move(task)); };
    co_return co_await pool.run(job, std::move(t));
}

} // namespace

TEST_CASE("a Task made on the loop's thread runs and is freed on a ThreadPool worker",
          "[frame_pool]") {
    // xiio has no loop thread to submit a task to: the cross-thread facility is ThreadPool,
    // whose job here is xiio::run() of a task this thread made. Its frame is freed on the
    // worker while this thread's loop goes on allocating frames from the same pool.
    const int n = sanitized ? 200 : 1'000;
    std::vector<long> sums;
    {
        xiio::ThreadPool pool(4);
        for (int round = 0; round < 3; ++round) {
            auto sum = run([&]() -> Task<long> {
                std::vector<Task<int>> ts;
                for (int i = 0; i < n; ++i)
                    ts.push_back(run_on_worker(pool, triple(i)));
                auto values = co_await xiio::gather(std::move(ts));
                co_return std::accumulate(values.begin(), values.end(), 0L);
            });
            sums.push_back(sum);
        }
    } // the workers end: their pools are parked
    CHECK(sums == std::vector<long>(3, triple_sum(n)));
    CHECK(live_frames() == 0);
#if XIIO_FRAME_POOL
    CHECK(settled_pool_bytes() <= kept_bytes());
#endif
}

// ---- what lives in front of a frame ----------------------------------------------------

namespace {

Task<int> value_now(int v) {
    co_return v;
}

Task<std::string> string_after_yield(std::string s) {
    co_await xiio::yield();
    co_return s;
}

Task<void> void_after_yield(int& done) {
    co_await xiio::yield();
    ++done;
}

Task<int> sleep_long() {
    co_await xiio::sleep(std::chrono::seconds(30));
    co_return -1;
}

/// Cancels `tg` once the other two finished.
Task<void> cancel_after(TaskGroup& tg, TaskHandle<std::string> a, TaskHandle<void> b) {
    co_await a;
    co_await b;
    tg.cancel();
}

Task<int> throw_after_yield() {
    co_await xiio::yield();
    throw std::runtime_error("boom");
}

long live_runners() {
    return xiio::detail::live_counts().runners;
}

} // namespace

TEST_CASE("a TaskHandle outlives its group and its frame", "[frame_pool]") {
    const std::string long_text(300, 'x'); // on the heap: a stale block would show
    const long runners_before = live_runners();
    TaskHandle<int> hi(nullptr), hc(nullptr), he(nullptr);
    TaskHandle<std::string> hs(nullptr);
    TaskHandle<void> hv(nullptr);
    int void_done = 0;
    std::string caught;
    run([&]() -> Task<void> {
        co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
            hi = tg.add_task(value_now(42));
            hs = tg.add_task(string_after_yield(long_text + "!"));
            hv = tg.add_task(void_after_yield(void_done));
            hc = tg.add_task(sleep_long());
            tg.add_task(cancel_after(tg, hs, hv));
            co_return;
        });
        try {
            co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
                he = tg.add_task(throw_after_yield());
                co_return;
            });
        } catch (const std::runtime_error& e) {
            caught = e.what();
        }
    });
    CHECK(caught == "boom");
    // Every frame is gone (the loop too); the five members stay, one block each.
    CHECK(live_frames() == 0);
    CHECK(live_runners() == runners_before + 5);

    // Blocks given back too early would be handed out again now, and overwritten.
    run([]() -> Task<void> {
        for (int round = 0; round < 3; ++round) {
            std::vector<Task<std::string>> ss;
            std::vector<Task<int>> is;
            for (int i = 0; i < 500; ++i) {
                ss.push_back(string_after_yield(std::string(300, 'y')));
                is.push_back(value_now(-i));
            }
            co_await xiio::gather(std::move(ss));
            co_await xiio::gather(std::move(is));
        }
    });

    CHECK(hi.done());
    CHECK(hs.done());
    CHECK(hv.done());
    CHECK(hc.done());
    CHECK(he.done());
    CHECK(hi.result() == 42);
    CHECK(hs.result() == long_text + "!");
    CHECK_NOTHROW(hv.result());
    CHECK(void_done == 1);
    CHECK_THROWS_AS(hc.result(), xiio::CancelledError);
    CHECK_THROWS_WITH(he.result(), "boom");

    // Awaited in another loop, after its own is gone.
    auto awaited = run([&]() -> Task<std::string> {
        auto h = hs;
        int v = co_await hi;
        co_return co_await h + std::to_string(v);
    });
    CHECK(awaited == long_text + "!42");

    // Copies let go in different orders: the member goes with the last one, no sooner.
    {
        auto hi2 = hi;
        hi = TaskHandle<int>(nullptr); // the original first
        CHECK(live_runners() == runners_before + 5);
        CHECK(hi2.result() == 42);
        {
            auto hi3 = hi2;
            hi2 = std::move(hi3);
        }
        CHECK(hi2.result() == 42);
    } // the last copy
    CHECK(live_runners() == runners_before + 4);

    std::vector<TaskHandle<std::string>> copies(6, hs);
    hs = TaskHandle<std::string>(nullptr);
    std::shuffle(copies.begin(), copies.end(), std::mt19937(7));
    while (copies.size() > 1) {
        copies.pop_back();
        CHECK(copies.front().result() == long_text + "!");
        CHECK(live_runners() == runners_before + 4);
    }
    copies.clear();
    CHECK(live_runners() == runners_before + 3);

    {
        std::vector<TaskHandle<int>> errs{he, hc, he, hc};
        hc = TaskHandle<int>(nullptr);
        he = TaskHandle<int>(nullptr);
        CHECK_THROWS_WITH(errs[0].result(), "boom");
        CHECK_THROWS_AS(errs[1].result(), xiio::CancelledError);
        CHECK(live_runners() == runners_before + 3);
        errs.erase(errs.begin()); // keep the later copies
        CHECK_THROWS_WITH(errs[1].result(), "boom");
    }
    CHECK(live_runners() == runners_before + 1);
    hv = TaskHandle<void>(nullptr);
    CHECK(live_runners() == runners_before);
}

// ---- sizes -----------------------------------------------------------------------------

namespace {

/// A frame with N bytes of locals kept across a suspension; returns how many of them
/// changed meanwhile (0), plus `seed` * 1000 (whose frame it was).
template <std::size_t N>
Task<std::size_t> with_locals(std::size_t seed) {
    std::array<unsigned char, N> buf;
    for (std::size_t i = 0; i < N; ++i)
        buf[i] = pattern(seed, i);
    co_await xiio::yield();
    co_await xiio::yield();
    std::size_t bad = 0;
    for (std::size_t i = 0; i < N; ++i)
        bad += buf[i] != pattern(seed, i);
    co_return bad + seed * 1000;
}

/// A value so large that the room for the member in front of the frame exceeds the
/// pool's largest block by itself.
template <std::size_t N>
Task<std::array<unsigned char, N>> big_value(std::size_t seed) {
    std::array<unsigned char, N> v;
    for (std::size_t i = 0; i < N; ++i)
        v[i] = pattern(seed, i);
    co_await xiio::yield();
    co_return v;
}

template <std::size_t N>
bool is_pattern(const std::array<unsigned char, N>& v, std::size_t seed) {
    for (std::size_t i = 0; i < N; ++i)
        if (v[i] != pattern(seed, i))
            return false;
    return true;
}

} // namespace

TEST_CASE("frames of every size class and larger than the pool's largest block work",
          "[frame_pool]") {
    constexpr std::size_t per_size = 40;
    std::vector<TaskHandle<std::size_t>> handles;
    std::vector<std::size_t> seeds;
    TaskHandle<std::array<unsigned char, 150>> mid(nullptr);
    TaskHandle<std::array<unsigned char, 1200>> big(nullptr);
    std::size_t direct = 0;
    run([&]() -> Task<void> {
        co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
            // Interleaved, so that blocks of each class are taken and given back while
            // those of the others live.
            std::size_t seed = 1;
            for (std::size_t k = 0; k < per_size; ++k) {
                auto add = [&](auto task) {
                    handles.push_back(tg.add_task(std::move(task)));
                    seeds.push_back(seed++);
                };
                add(with_locals<0>(seed));
                add(with_locals<1>(seed));
                add(with_locals<16>(seed));
                add(with_locals<100>(seed));
                add(with_locals<250>(seed));
                add(with_locals<500>(seed));
                add(with_locals<700>(seed));
                add(with_locals<900>(seed));
                add(with_locals<1000>(seed));
                add(with_locals<1100>(seed));
                add(with_locals<2000>(seed));
                add(with_locals<8000>(seed));
            }
            mid = tg.add_task(big_value<150>(1));
            big = tg.add_task(big_value<1200>(2));
            co_return;
        });
        // Awaited directly too (not a member: the room in front stays unused).
        direct = co_await with_locals<1000>(7) + co_await with_locals<4000>(8) +
                 co_await with_locals<0>(9);
    });
    REQUIRE(handles.size() == seeds.size());
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < handles.size(); ++i)
        wrong += handles[i].result() != seeds[i] * 1000;
    CHECK(wrong == 0);
    CHECK(handles.size() == 12 * per_size);
    CHECK(direct == (7 + 8 + 9) * 1000);
    CHECK(is_pattern(mid.result(), 1));
    CHECK(is_pattern(big.result(), 2));
}

// ---- the pool itself -------------------------------------------------------------------

#if XIIO_FRAME_POOL
// A request of a TLS echo server makes and ends frames of several size classes at once:
// each class's only chunk empties at the end of every request. With one cap of
// `keep_empty` chunks for all classes, the pool unmapped the chunks of the classes beyond
// it and mapped new ones at the next request (two munmaps per request in W7). Each class
// now keeps its last chunk: the same chunks serve every round.
TEST_CASE("the pool keeps each size class's last chunk when requests empty many classes",
          "[frame_pool]") {
    constexpr std::size_t sizes[] = {64, 160, 256, 384, 512, 640, 768, 896};
    static_assert(std::size(sizes) > FramePool::keep_empty);
    settled_pool_bytes(); // take back what earlier tests freed on other threads
    // Chunks that earlier tests left empty beyond what a class keeps are unmapped one per
    // round (each round empties only the chunk it used): warm up first, then compare.
    constexpr int warm_up = 100, rounds = 50;
    std::vector<PoolChunk*> first;
    for (int round = 0; round < warm_up + rounds; ++round) {
        std::vector<void*> blocks;
        for (std::size_t n : sizes)
            blocks.push_back(xiio::detail::frame_allocate(n));
        std::vector<PoolChunk*> chunks;
        for (void* b : blocks)
            chunks.push_back(PoolChunk::of(b));
        for (std::size_t i = 0; i < blocks.size(); ++i)
            xiio::detail::frame_deallocate(blocks[i], sizes[i]);
        if (round == warm_up)
            first = chunks;
        else if (round > warm_up)
            REQUIRE(chunks == first); // no class's chunk was unmapped and replaced
    }
    CHECK(settled_pool_bytes() <= kept_bytes());
}
#endif

TEST_CASE("frame_allocate gives distinct aligned blocks of every size, and frees them",
          "[frame_pool]") {
    struct Block {
        unsigned char* p;
        std::size_t n;
        std::size_t id;
    };
    constexpr std::size_t max_size = 1100, copies = 3;
#if XIIO_FRAME_POOL
    const std::size_t before = settled_pool_bytes();
#endif
    std::mt19937 rng(12345);
    std::size_t next_id = 0;
    auto fill = [](const Block& b) {
        for (std::size_t i = 0; i < b.n; ++i)
            b.p[i] = pattern(b.id, i);
    };
    auto intact = [](const Block& b) {
        for (std::size_t i = 0; i < b.n; ++i)
            if (b.p[i] != pattern(b.id, i))
                return false;
        return true;
    };
    auto allocate = [&](std::size_t n) {
        Block b{static_cast<unsigned char*>(xiio::detail::frame_allocate(n)), n, next_id++};
        fill(b);
        return b;
    };

    for (int round = 0; round < 2; ++round) {
        INFO("round " << round);
        std::vector<Block> blocks;
        for (std::size_t c = 0; c < copies; ++c)
            for (std::size_t n = 0; n <= max_size; ++n)
                blocks.push_back(allocate(n));
        // Every block holds what was written to it: no two overlap.
        std::size_t misaligned = 0, damaged = 0, overlapping = 0, wrong_chunk = 0;
        for (const Block& b : blocks) {
            misaligned += reinterpret_cast<std::uintptr_t>(b.p) % 16 != 0;
            damaged += !intact(b);
        }
        auto sorted = blocks;
        std::sort(sorted.begin(), sorted.end(),
                  [](const Block& a, const Block& b) { return a.p < b.p; });
        for (std::size_t i = 1; i < sorted.size(); ++i)
            overlapping +=
                sorted[i - 1].p + std::max<std::size_t>(sorted[i - 1].n, 1) > sorted[i].p;
#if XIIO_FRAME_POOL
        // Up to the largest block they come from this thread's chunks, one size class each.
        for (const Block& b : blocks) {
            if (b.n > FramePool::max_block)
                continue;
            PoolChunk* c = PoolChunk::of(b.p);
            std::size_t want = std::max<std::size_t>((b.n + FramePool::granule - 1) /
                                                         FramePool::granule * FramePool::granule,
                                                     FramePool::granule);
            wrong_chunk += c->owner != &FramePool::mine() || c->block != want;
        }
        CHECK(xiio::detail::frame_pool_bytes().load() > before);
#endif
        CHECK(misaligned == 0);
        CHECK(damaged == 0);
        CHECK(overlapping == 0);
        CHECK(wrong_chunk == 0);

        // Random churn: free some, allocate others, check each block as it goes.
        std::uniform_int_distribution<std::size_t> size(0, max_size);
        for (int i = 0; i < 20'000; ++i) {
            std::size_t k = std::uniform_int_distribution<std::size_t>(0, blocks.size() - 1)(rng);
            damaged += !intact(blocks[k]);
            xiio::detail::frame_deallocate(blocks[k].p, blocks[k].n);
            blocks[k] = allocate(size(rng));
        }
        CHECK(damaged == 0);

        // Freed in random order.
        std::shuffle(blocks.begin(), blocks.end(), rng);
        for (const Block& b : blocks) {
            damaged += !intact(b);
            xiio::detail::frame_deallocate(b.p, b.n);
        }
        CHECK(damaged == 0);
#if XIIO_FRAME_POOL
        // Every chunk emptied: all but the few kept for reuse are unmapped.
        CHECK(settled_pool_bytes() <= before + kept_bytes());
        CHECK(settled_pool_bytes() <= kept_bytes());
#endif
    }
}

TEST_CASE("blocks of a pool whose thread ended are freed on the others, also while it is "
          "adopted again",
          "[frame_pool]") {
    // Thread B allocates blocks and ends: its pool is parked with them out. Half are freed
    // here (the parked pool takes them back under the mutex); then thread C starts, adopts
    // that pool, and allocates while the other half is freed here (remote frees to a pool
    // that has an owner again). C checks its blocks, frees them and ends.
    const std::size_t count = sanitized ? 4'000 : 20'000;
    struct Block {
        unsigned char* p;
        std::size_t n;
    };
    auto intact = [](const Block& b, std::size_t id) {
        for (std::size_t i = 0; i < b.n; ++i)
            if (b.p[i] != pattern(id, i))
                return false;
        return true;
    };
    std::vector<Block> blocks;
    std::thread b([&] {
        for (std::size_t i = 0; i < count; ++i) {
            // The first half in chunks of their own: freeing it empties whole chunks.
            std::size_t n = i < count / 2 ? 200 : 8 + i % 600;
            auto* p = static_cast<unsigned char*>(xiio::detail::frame_allocate(n));
            for (std::size_t j = 0; j < n; ++j)
                p[j] = pattern(i, j);
            blocks.push_back({p, n});
        }
    });
    b.join();
#if XIIO_FRAME_POOL
    const std::size_t parked = xiio::detail::frame_pool_bytes().load();
#endif
    std::size_t damaged = 0;
    for (std::size_t i = 0; i < count / 2; ++i) {
        damaged += !intact(blocks[i], i);
        xiio::detail::frame_deallocate(blocks[i].p, blocks[i].n);
    }
#if XIIO_FRAME_POOL
    CHECK(xiio::detail::frame_pool_bytes().load() < parked); // emptied chunks were unmapped
#endif

    std::atomic<bool> adopted{false}, go{false};
    std::size_t c_damaged = 0;
    std::thread c([&] {
        std::vector<Block> mine;
        auto free_all = [&] {
            for (const Block& x : mine) {
                c_damaged += std::count(x.p, x.p + x.n, 0xa5) != static_cast<std::ptrdiff_t>(x.n);
                xiio::detail::frame_deallocate(x.p, x.n);
            }
            mine.clear();
        };
        do {
            for (std::size_t i = 0; i < 64; ++i) {
                std::size_t n = 8 + (i * 37) % 600;
                auto* p = static_cast<unsigned char*>(xiio::detail::frame_allocate(n));
                std::memset(p, 0xa5, n);
                mine.push_back({p, n});
            }
            adopted.store(true); // the pool was adopted at the first allocation
            if (mine.size() >= 4096)
                free_all();
            std::this_thread::yield();
        } while (!go.load());
        free_all();
    });
    while (!adopted.load())
        std::this_thread::yield();
    for (std::size_t i = count / 2; i < count; ++i) {
        damaged += !intact(blocks[i], i);
        xiio::detail::frame_deallocate(blocks[i].p, blocks[i].n);
    }
    go.store(true);
    c.join();
    CHECK(damaged == 0);
    CHECK(c_damaged == 0);
#if XIIO_FRAME_POOL
    CHECK(settled_pool_bytes() <= kept_bytes());
#endif
}
