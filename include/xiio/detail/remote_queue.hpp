#pragma once
// RemoteQueue: how other threads (a thread pool's workers) hand work to a loop's thread.

#include <xiio/detail/sys.hpp>
#include <xiio/errors.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <utility>
#include <vector>

#include <sys/eventfd.h>
#include <unistd.h>

namespace xiio::detail {

/// Callbacks other threads hand to a loop (a thread pool's completions). The loop owns
/// one while it lives; a poster keeps it alive through a shared_ptr, so a worker that
/// finishes after the loop is gone finds it closed and drops its callback.
///
/// Waking the loop costs an eventfd write here and an epoll wake-up there, so a poster
/// writes only when the loop may be asleep: `sleeping_` says so. A loop that drives its
/// own poll (Loop::poll) clears it while awake and sets it before it blocks
/// (prepare_sleep). Without a lock on the loop's side: the loop stores `sleeping_` then
/// loads `pending_`, a poster stores `pending_` then loads `sleeping_`, all sequentially
/// consistent, so at least one of them sees the other - the loop does not block, or the
/// poster writes. Under a host loop (Asio) `sleeping_` stays true and the first post of a
/// batch writes.
class RemoteQueue {
public:
    RemoteQueue() : fd_(sys::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
        if (fd_ < 0)
            throw_errno("eventfd");
    }
    ~RemoteQueue() {
        if (fd_ >= 0)
            ::close(fd_);
    }
    RemoteQueue(const RemoteQueue&) = delete;
    RemoteQueue& operator=(const RemoteQueue&) = delete;

    /// From any thread. False if the loop is gone (the callback was dropped).
    bool post(std::function<void()> fn) {
        std::unique_lock lock(mutex_);
        if (closed_)
            return false;
        items_.push_back(std::move(fn));
        pending_.store(true);
        if (sleeping_.load() && !signalled_) {
            signalled_ = true;
            std::uint64_t one = 1;
            // Fails only if the counter would overflow: it is then nonzero anyway.
            [[maybe_unused]] auto n = sys::write(fd_, &one, sizeof one);
        }
        return true;
    }

    // ---- the loop's thread ---------------------------------------------------------

    /// Something was posted and not taken yet (a hint: take() decides).
    bool pending() const noexcept { return pending_.load(std::memory_order_acquire); }

    /// Before blocking: false if something is queued (do not block), else posts from now
    /// on write the eventfd until awake().
    bool prepare_sleep() noexcept {
        sleeping_.store(true);
        if (!pending_.load())
            return true;
        sleeping_.store(false, std::memory_order_relaxed);
        return false;
    }
    /// After blocking: posts go unsignalled again until the next prepare_sleep().
    void awake() noexcept { sleeping_.store(false, std::memory_order_relaxed); }

    /// Swaps everything posted so far into `batch` (empty, its capacity kept from earlier
    /// batches, so steady traffic allocates no vectors). The eventfd is read back only if
    /// it is registered level-triggered (`drain`).
    void take(std::vector<std::function<void()>>& batch, bool drain) {
        if (drain) {
            std::uint64_t count;
            [[maybe_unused]] auto n = sys::read(fd_, &count, sizeof count);
        }
        std::unique_lock lock(mutex_);
        items_.swap(batch);
        pending_.store(false, std::memory_order_relaxed);
        signalled_ = false;
    }
    /// The loop is going away: later posts are dropped, and the eventfd is closed now, on
    /// the loop's thread (not by whichever worker drops the last reference, later).
    std::vector<std::function<void()>> close() {
        std::unique_lock lock(mutex_);
        closed_ = true;
        ::close(std::exchange(fd_, -1));
        return std::exchange(items_, {});
    }
    int fd() const noexcept { return fd_; }

private:
    int fd_;
    std::mutex mutex_;
    std::vector<std::function<void()>> items_;
    std::atomic<bool> pending_{false}; // items_ is not empty (set and cleared under mutex_)
    std::atomic<bool> sleeping_{true}; // the loop may be blocked: a post must write the eventfd
    bool signalled_ = false;           // written since the last take(): no need to write again
    bool closed_ = false;
};

} // namespace xiio::detail
