#pragma once
// RemoteQueue: how other threads (a thread pool's workers) hand work to a loop's thread.

#include <xiio/detail/sys.hpp>
#include <xiio/errors.hpp>

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
/// finishes after the loop is gone finds it closed and drops its callback. Posting the
/// first callback of a batch writes the eventfd that wakes the loop: no polling.
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
        bool first = items_.empty();
        items_.push_back(std::move(fn));
        if (first) {
            std::uint64_t one = 1;
            // Fails only if the counter would overflow: it is then nonzero anyway.
            [[maybe_unused]] auto n = sys::write(fd_, &one, sizeof one);
        }
        return true;
    }
    /// On the loop's thread: swaps everything posted so far into `batch` (empty, its
    /// capacity kept from earlier batches, so steady traffic allocates no vectors). The
    /// eventfd is read back only if it is registered level-triggered (`drain`).
    void take(std::vector<std::function<void()>>& batch, bool drain) {
        if (drain) {
            std::uint64_t count;
            [[maybe_unused]] auto n = sys::read(fd_, &count, sizeof count);
        }
        std::unique_lock lock(mutex_);
        items_.swap(batch);
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
    bool closed_ = false;
};

} // namespace xiio::detail
