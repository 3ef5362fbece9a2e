#pragma once
// The io_uring instance of detail/io_uring.hpp: the rings the kernel shares with us
// (mmap'd), queuing a submission, entering the kernel and walking the completions. What
// the submissions are for is the backend's business.

#include <xiio/detail/std_parts.hpp>
#include <xiio/detail/sys.hpp>
#include <xiio/detail/wait.hpp>
#include <xiio/errors.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>

#include <linux/io_uring.h>
#include <sys/mman.h>
#include <unistd.h>

namespace xiio::detail {

class IoRing {
public:
    /// Sets up a ring of `entries` submissions (4 times as many completions). Throws
    /// std::system_error: io_uring_setup's errno where the kernel or a sandbox refuses it
    /// (ENOSYS, EPERM, ...), ENOSYS if the kernel lacks what the backend needs (5.11).
    explicit IoRing(unsigned entries) {
        io_uring_params p{};
        p.flags = IORING_SETUP_CQSIZE;
        p.cq_entries = entries * 4;
        // Fastest first: completions are only posted when the loop asks for them (no
        // interrupt of the running task), then cooperative task running, then plain.
        const unsigned tries[] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                                  IORING_SETUP_COOP_TASKRUN, 0};
        int fd = -1;
        for (unsigned extra : tries) {
            io_uring_params q = p;
            q.flags |= extra;
            fd = sys::io_uring_setup(entries, &q);
            if (fd >= 0) {
                p = q;
                break;
            }
            if (errno != EINVAL)
                break;
        }
        if (fd < 0)
            throw_errno("io_uring_setup");
        fd_ = fd;
        constexpr unsigned needed =
            IORING_FEAT_SINGLE_MMAP | IORING_FEAT_NODROP | IORING_FEAT_EXT_ARG;
        if ((p.features & needed) != needed) {
            ::close(fd_);
            throw_errno("io_uring_setup (kernel 5.11 or later needed)", ENOSYS);
        }
        rings_size_ = std::max<std::size_t>(p.sq_off.array + p.sq_entries * sizeof(unsigned),
                                            p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe));
        rings_ = ::mmap(nullptr, rings_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                        fd_, IORING_OFF_SQ_RING);
        if (rings_ == MAP_FAILED) {
            int err = errno;
            ::close(fd_);
            throw_errno("mmap", err);
        }
        sqes_size_ = p.sq_entries * sizeof(io_uring_sqe);
        void* sqes = ::mmap(nullptr, sqes_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                            fd_, IORING_OFF_SQES);
        if (sqes == MAP_FAILED) {
            int err = errno;
            ::munmap(rings_, rings_size_);
            ::close(fd_);
            throw_errno("mmap", err);
        }
        sqes_ = static_cast<io_uring_sqe*>(sqes);
        auto* base = static_cast<char*>(rings_);
        sq_head_ = reinterpret_cast<unsigned*>(base + p.sq_off.head);
        sq_tail_ = reinterpret_cast<unsigned*>(base + p.sq_off.tail);
        sq_flags_ = reinterpret_cast<unsigned*>(base + p.sq_off.flags);
        sq_array_ = reinterpret_cast<unsigned*>(base + p.sq_off.array);
        sq_entries_ = p.sq_entries;
        sq_mask_ = *reinterpret_cast<unsigned*>(base + p.sq_off.ring_mask);
        cq_head_ = reinterpret_cast<unsigned*>(base + p.cq_off.head);
        cq_tail_ = reinterpret_cast<unsigned*>(base + p.cq_off.tail);
        cq_mask_ = *reinterpret_cast<unsigned*>(base + p.cq_off.ring_mask);
        cqes_ = reinterpret_cast<io_uring_cqe*>(base + p.cq_off.cqes);
        tail_ = *sq_tail_;
    }

    ~IoRing() {
        ::munmap(sqes_, sqes_size_);
        ::munmap(rings_, rings_size_);
        ::close(fd_);
    }
    IoRing(const IoRing&) = delete;
    IoRing& operator=(const IoRing&) = delete;

    /// Whether the submission queued at `pos` was not consumed by the kernel yet; if so it
    /// is overwritten with a no-op whose completion carries `tag`.
    bool take_back(std::uint32_t pos, std::uint64_t tag) noexcept {
        if (static_cast<int>(pos - load_acquire(sq_head_)) < 0)
            return false;
        io_uring_sqe& sqe = sqes_[pos & sq_mask_];
        std::memset(&sqe, 0, sizeof sqe);
        sqe.opcode = IORING_OP_NOP;
        sqe.user_data = tag;
        return true;
    }

    static unsigned load_acquire(const unsigned* p) noexcept {
        return std::atomic_ref<const unsigned>(*p).load(std::memory_order_acquire);
    }
    static void store_release(unsigned* p, unsigned v) noexcept {
        std::atomic_ref<unsigned>(*p).store(v, std::memory_order_release);
    }

    /// Submissions queued and not yet consumed by the kernel.
    unsigned queued() const noexcept { return tail_ - load_acquire(sq_head_); }

    /// Room for one submission: when the ring is full, what it holds goes to the kernel
    /// first (which cannot fail for lack of room: the completion queue overflows into the
    /// kernel's memory rather than drop a completion, IORING_FEAT_NODROP).
    io_uring_sqe& next_sqe(std::uint32_t& pos) noexcept {
        for (int tries = 0; queued() >= sq_entries_; ++tries) {
            int r = sys::io_uring_enter(fd_, queued(), 0, 0, nullptr, 0);
            if (r < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY)
                fatal("io_uring_enter");
            if (tries > 1000000)
                fatal("io_uring_enter: the submission queue does not drain");
        }
        pos = tail_;
        io_uring_sqe& sqe = sqes_[tail_ & sq_mask_];
        sq_array_[tail_ & sq_mask_] = tail_ & sq_mask_;
        ++tail_;
        store_release(sq_tail_, tail_);
        std::memset(&sqe, 0, sizeof sqe);
        return sqe;
    }

    [[noreturn]] static void fatal(const char* what) noexcept {
        std::fprintf(stderr, "xiio: %s: %s\n", what, std::strerror(errno));
        std::terminate();
    }

    /// io_uring_enter: submits what is queued; with `block`, waits for one completion
    /// until `deadline`. Returns what the syscall returned (errno set).
    int enter(bool block, Clock::time_point deadline) noexcept {
        unsigned flags = IORING_ENTER_GETEVENTS; // runs deferred completions, even without waiting
        __kernel_timespec ts{};
        io_uring_getevents_arg arg{};
        const void* argp = nullptr;
        std::size_t argsz = 0;
        if (block && deadline != Clock::time_point::max()) {
            auto now = Clock::now();
            auto left = deadline > now
                            ? std::chrono::ceil<std::chrono::nanoseconds>(deadline - now).count()
                            : 0;
            ts.tv_sec = left / 1'000'000'000;
            ts.tv_nsec = left % 1'000'000'000;
            arg.ts = reinterpret_cast<std::uintptr_t>(&ts);
            flags |= IORING_ENTER_EXT_ARG;
            argp = &arg;
            argsz = sizeof arg;
        }
        return sys::io_uring_enter(fd_, queued(), block ? 1 : 0, flags, argp, argsz);
    }

    /// Calls `fn(user_data, res)` for every completion posted, also those the completion
    /// queue had no room for (which the kernel keeps: IORING_FEAT_NODROP).
    template <class F>
    void reap(F fn) noexcept {
        for (;;) {
            unsigned head = *cq_head_;
            unsigned tail = load_acquire(cq_tail_);
            if (head == tail) {
                if (!(load_acquire(sq_flags_) & IORING_SQ_CQ_OVERFLOW))
                    return;
                sys::io_uring_enter(fd_, 0, 0, IORING_ENTER_GETEVENTS, nullptr, 0);
                continue;
            }
            for (; head != tail; ++head) {
                const io_uring_cqe& cqe = cqes_[head & cq_mask_];
                std::uint64_t tag = cqe.user_data;
                int res = cqe.res;
                store_release(cq_head_, head + 1); // first: fn may queue and enter
                fn(tag, res);
            }
        }
    }

private:
    int fd_ = -1;
    void* rings_ = nullptr;
    std::size_t rings_size_ = 0;
    io_uring_sqe* sqes_ = nullptr;
    std::size_t sqes_size_ = 0;
    unsigned* sq_head_ = nullptr;
    unsigned* sq_tail_ = nullptr;
    unsigned* sq_flags_ = nullptr;
    unsigned* sq_array_ = nullptr;
    unsigned sq_entries_ = 0;
    unsigned sq_mask_ = 0;
    unsigned tail_ = 0; // ours: the kernel's copy is published with each submission
    unsigned* cq_head_ = nullptr;
    unsigned* cq_tail_ = nullptr;
    unsigned cq_mask_ = 0;
    io_uring_cqe* cqes_ = nullptr;
};

} // namespace xiio::detail
