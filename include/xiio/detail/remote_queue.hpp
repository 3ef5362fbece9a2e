#pragma once
// RemoteQueue: how other threads (a thread pool's workers) hand work to a loop's thread.

#include <xiio/detail/sys.hpp>
#include <xiio/errors.hpp>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include <sys/eventfd.h>
#include <unistd.h>

namespace xiio::detail {

/// An Fd closed (or released) on another thread than the one of the loop that registered
/// it: the loop drops the registration and, for a close, closes the number itself, so
/// the number cannot be reused before the loop forgot it.
struct Orphan {
    int fd;
    bool close;
    std::uint64_t serial; // the registration it was (see Loop::claim)
};

/// What another thread hands to a loop (a thread pool job's completion): linked into
/// the queue, so posting allocates nothing (a worker must not fail to report a job).
struct RemoteNode {
    RemoteNode* next_remote = nullptr;
    /// On the loop's thread, once: the loop takes it (ran = true) or is gone (false).
    /// May destroy the node.
    virtual void remote_done(bool ran) noexcept = 0;

protected:
    ~RemoteNode() = default;
};

/// Completions other threads hand to a loop (RemoteNodes), and Orphans. The loop owns
/// one while it lives; a poster keeps it alive through a shared_ptr, so a worker that
/// finishes after the loop is gone finds it closed and keeps its node.
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

    /// From any thread. False if the loop is gone (the node was not queued). Once it
    /// returns true the node belongs to the loop's thread (which may destroy it at once).
    bool post(RemoteNode& n) noexcept {
        std::unique_lock lock(mutex_);
        if (closed_)
            return false;
        n.next_remote = nullptr;
        (tail_ ? tail_->next_remote : head_) = &n;
        tail_ = &n;
        signal_locked();
        return true;
    }

    /// From any thread, without allocating: room was reserved when the registration
    /// was made (reserve_orphans). False if the loop is gone.
    bool post_orphan(Orphan o) noexcept {
        std::unique_lock lock(mutex_);
        if (closed_ || orphans_.size() == orphans_.capacity()) // the second: never
            return false;
        orphans_.push_back(o);
        orphaned_.store(true, std::memory_order_relaxed);
        signal_locked();
        return true;
    }

    // ---- the loop's thread ---------------------------------------------------------

    /// Takes back `n`, posted and not taken yet: its owner dies before the loop ran it (a
    /// waiting frame destroyed). False if it is not queued. Walks the queue: rare paths only.
    bool withdraw(RemoteNode& n) noexcept {
        std::unique_lock lock(mutex_);
        for (RemoteNode *prev = nullptr, *x = head_; x; prev = x, x = x->next_remote) {
            if (x != &n)
                continue;
            (prev ? prev->next_remote : head_) = n.next_remote;
            if (tail_ == &n)
                tail_ = prev;
            return true;
        }
        return false;
    }

    /// Room for `n` orphans: one per registration the loop owns, so that post_orphan()
    /// (from a noexcept close) never needs memory. Throws std::bad_alloc.
    void reserve_orphans(std::size_t n) {
        std::unique_lock lock(mutex_);
        orphans_.reserve(n);
    }
    /// Some orphan was posted and not taken yet (a hint).
    bool orphaned() const noexcept { return orphaned_.load(std::memory_order_relaxed); }
    /// Hands every posted orphan to `fn` (under the lock, which keeps the reserved room:
    /// fn must not post). pending() stays as it is: callbacks may be queued too.
    template <class F>
    void take_orphans(F&& fn) noexcept {
        std::unique_lock lock(mutex_);
        for (const Orphan& o : orphans_)
            fn(o);
        orphans_.clear();
        orphaned_.store(false, std::memory_order_relaxed);
    }

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

    /// Takes everything posted so far: the first of a list linked by next_remote, in
    /// posting order. The eventfd is read back only if it is registered level-triggered
    /// (`drain`).
    RemoteNode* take(bool drain) noexcept {
        if (drain) {
            std::uint64_t count;
            [[maybe_unused]] auto n = sys::read(fd_, &count, sizeof count);
        }
        std::unique_lock lock(mutex_);
        pending_.store(!orphans_.empty(), std::memory_order_relaxed); // see take_orphans
        signalled_ = false;
        tail_ = nullptr;
        return std::exchange(head_, nullptr);
    }
    /// The loop is going away: later posts fail, and the eventfd is closed now, on the
    /// loop's thread (not by whichever worker drops the last reference, later). Returns
    /// what was posted and not taken.
    RemoteNode* close() noexcept {
        std::unique_lock lock(mutex_);
        closed_ = true;
        gone_.store(true, std::memory_order_release);
        ::close(std::exchange(fd_, -1));
        tail_ = nullptr;
        return std::exchange(head_, nullptr);
    }
    int fd() const noexcept { return fd_; }
    /// From any thread: the loop is gone (close() ran), posts fail. Without the lock: a
    /// LoopHandle asks on every call, and the loop's thread takes that lock on every wake-up.
    bool closed() const noexcept { return gone_.load(std::memory_order_acquire); }

private:
    /// Under mutex_, after queueing something: marks it pending and, if the loop may be
    /// asleep, writes the eventfd (once until the loop takes what was posted).
    void signal_locked() noexcept {
        pending_.store(true);
        if (sleeping_.load() && !signalled_) {
            signalled_ = true;
            std::uint64_t one = 1;
            // Fails only if the counter would overflow: it is then nonzero anyway.
            [[maybe_unused]] auto written = sys::write(fd_, &one, sizeof one);
        }
    }

    int fd_;
    std::mutex mutex_;
    RemoteNode* head_ = nullptr; // posted, not taken yet
    RemoteNode* tail_ = nullptr;
    std::vector<Orphan> orphans_;
    std::atomic<bool> orphaned_{false}; // orphans_ is not empty (set and cleared under mutex_)
    std::atomic<bool> pending_{false};  // something is posted (set and cleared under mutex_)
    std::atomic<bool> sleeping_{true};  // the loop may be blocked: a post must write the eventfd
    bool signalled_ = false;            // written since the last take(): no need to write again
    bool closed_ = false;
    std::atomic<bool> gone_{false}; // closed_, for closed() (set under mutex_)
};

} // namespace xiio::detail
