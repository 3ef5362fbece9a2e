#pragma once
// A minimal io_uring ring on the kernel ABI (no liburing), for the raw io_uring baselines
// of W3 and W4 (`--impl uring`): setup, SQE allocation, one io_uring_enter that submits
// everything queued and waits, CQE iteration.
//
// The rings are shared memory with the kernel: we write SQEs and publish them by storing
// the SQ tail, the kernel consumes them and advances the SQ head; the kernel writes CQEs
// and publishes them by storing the CQ tail, we consume them and advance the CQ head.
// Each side's store of its index is a release (what it wrote before is visible to whoever
// sees the new index) and each side's load of the other's index an acquire.
#include <xiio.hpp>

#include <linux/io_uring.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>

#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace bench::uring {

[[noreturn]] inline void fail(int err, const char* what) {
    throw std::system_error(err, std::system_category(), std::string("uring: ") + what);
}

inline unsigned load_acquire(const unsigned* p) noexcept {
    return std::atomic_ref<const unsigned>(*p).load(std::memory_order_acquire);
}
inline void store_release(unsigned* p, unsigned v) noexcept {
    std::atomic_ref<unsigned>(*p).store(v, std::memory_order_release);
}

/// 0 if this process may use io_uring, else the errno of a trial io_uring_setup: ENOSYS
/// (an old kernel, valgrind), EPERM (io_uring_disabled, a seccomp filter such as
/// Docker's default). The benchmarks skip the uring implementation then, not fail.
inline int unavailable() noexcept {
    io_uring_params p{};
    int fd = static_cast<int>(::syscall(__NR_io_uring_setup, 1, &p));
    if (fd < 0)
        return errno;
    ::close(fd);
    return 0;
}

/// Whether xiio's io_uring backend is refused here (where io_uring is, or the kernel lacks
/// what the backend needs): the xiio-uring implementation is skipped then, not failed.
/// Says why, once.
inline bool xiio_refused() {
    static const bool refused = [] {
        try {
            xiio::run([]() -> xiio::Task<void> { co_return; }(),
                      {.backend = xiio::Backend::io_uring});
            return false;
        } catch (const std::system_error& e) {
            std::fprintf(stderr, "  xiio-uring: %s: skipped\n", e.what());
            return true;
        }
    }();
    return refused;
}

class Ring {
public:
    /// A ring with room for `sq_entries` queued SQEs and `cq_entries` CQEs (both rounded up
    /// to powers of two by the kernel). The caller keeps fewer than cq_entries operations in
    /// flight, so the CQ never overflows. Create it on the thread that uses it: with
    /// IORING_SETUP_SINGLE_ISSUER only that thread may submit.
    Ring(unsigned sq_entries, unsigned cq_entries) {
        // The fastest setup the kernel takes: task work (the completion of an operation that
        // had to wait) deferred to our io_uring_enter(GETEVENTS) instead of interrupting us
        // (DEFER_TASKRUN, 6.1, needs SINGLE_ISSUER); else cooperative task work (5.19); else
        // none. EINVAL means the kernel does not know a flag.
        constexpr unsigned tries[] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                                      IORING_SETUP_COOP_TASKRUN, 0};
        constexpr const char* names[] = {"single_issuer+defer_taskrun", "coop_taskrun", "plain"};
        io_uring_params p{};
        for (int i = 0; i < 3; ++i) {
            p = {};
            p.flags = tries[i] | IORING_SETUP_CQSIZE;
            p.cq_entries = cq_entries;
            fd_ = static_cast<int>(::syscall(__NR_io_uring_setup, sq_entries, &p));
            if (fd_ >= 0) {
                mode_ = names[i];
                break;
            }
            if (errno != EINVAL)
                fail(errno, "io_uring_setup");
        }
        if (fd_ < 0)
            fail(errno, "io_uring_setup");
        skip_success_ = p.features & IORING_FEAT_CQE_SKIP;
        if (!(p.features & IORING_FEAT_SINGLE_MMAP) || !(p.features & IORING_FEAT_EXT_ARG)) {
            ::close(fd_);
            throw std::runtime_error("uring: the kernel is older than 5.11 (no EXT_ARG)");
        }
        // One mapping holds both rings (FEAT_SINGLE_MMAP); the SQEs are a second one.
        ring_size_ = std::max<std::size_t>(p.sq_off.array + p.sq_entries * sizeof(unsigned),
                                           p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe));
        ring_ = ::mmap(nullptr, ring_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_,
                       IORING_OFF_SQ_RING);
        sqes_size_ = p.sq_entries * sizeof(io_uring_sqe);
        void* sqes = ::mmap(nullptr, sqes_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                            fd_, IORING_OFF_SQES);
        if (ring_ == MAP_FAILED || sqes == MAP_FAILED) {
            int err = errno;
            if (ring_ != MAP_FAILED)
                ::munmap(ring_, ring_size_);
            ::close(fd_);
            fail(err, "mmap");
        }
        sqes_ = static_cast<io_uring_sqe*>(sqes);
        auto* base = static_cast<char*>(ring_);
        auto at = [base](std::uint32_t off) { return reinterpret_cast<unsigned*>(base + off); };
        sq_head_ = at(p.sq_off.head);
        sq_tail_ = at(p.sq_off.tail);
        sq_mask_ = *at(p.sq_off.ring_mask);
        sq_entries_ = p.sq_entries;
        cq_head_ = at(p.cq_off.head);
        cq_tail_ = at(p.cq_off.tail);
        cq_mask_ = *at(p.cq_off.ring_mask);
        cqes_ = reinterpret_cast<io_uring_cqe*>(base + p.cq_off.cqes);
        // The SQ array maps ring slots to SQE indexes: identity, set once (as liburing does).
        unsigned* array = at(p.sq_off.array);
        for (unsigned i = 0; i < p.sq_entries; ++i)
            array[i] = i;
        tail_ = *sq_tail_;
    }
    ~Ring() {
        // Closing the ring cancels whatever is still in flight; the caller's buffers must
        // outlive it (they do: every Ring is destroyed before the state its SQEs point to).
        ::munmap(sqes_, sqes_size_);
        ::munmap(ring_, ring_size_);
        ::close(fd_);
    }
    Ring(const Ring&) = delete;
    Ring& operator=(const Ring&) = delete;

    /// A zeroed SQE to fill in, queued for the next submit_and_wait(). If the SQ is full,
    /// submits what is queued first (one io_uring_enter without waiting).
    io_uring_sqe* get_sqe() {
        if (tail_ - load_acquire(sq_head_) >= sq_entries_)
            enter(0, nullptr);
        io_uring_sqe* sqe = &sqes_[tail_ & sq_mask_];
        ++tail_;
        std::memset(sqe, 0, sizeof *sqe);
        return sqe;
    }

    /// Makes room for `n` SQEs that must go in one submission (a linked chain: a chain cut
    /// at the end of a submission would be submitted without its tail).
    void reserve(unsigned n) {
        if (tail_ - load_acquire(sq_head_) + n > sq_entries_)
            enter(0, nullptr);
    }

    /// Whether the kernel has IOSQE_CQE_SKIP_SUCCESS (5.17): an op that succeeds posts no CQE.
    bool skip_success() const noexcept { return skip_success_; }

    /// One io_uring_enter: submits every queued SQE and waits until at least `wait_nr` CQEs
    /// are there (running the deferred task work) or `timeout` passed. Returns false on the
    /// timeout, true otherwise. Throws std::system_error on other errors.
    bool submit_and_wait(unsigned wait_nr, const __kernel_timespec* timeout) {
        return enter(wait_nr, timeout);
    }

    /// Calls f(const io_uring_cqe&) for every CQE there, then hands their slots back.
    /// f may queue SQEs (get_sqe) but not submit. Returns how many there were.
    template <class F>
    unsigned for_each_cqe(F&& f) {
        unsigned head = *cq_head_; // only we write it
        unsigned tail = load_acquire(cq_tail_);
        for (unsigned i = head; i != tail; ++i)
            f(cqes_[i & cq_mask_]);
        store_release(cq_head_, tail); // the kernel may reuse the slots
        return tail - head;
    }

    /// Which setup the kernel took (for the benchmark's banner).
    const char* mode() const noexcept { return mode_; }

private:
    bool enter(unsigned wait_nr, const __kernel_timespec* timeout) {
        store_release(sq_tail_, tail_); // publish the SQEs written since the last enter
        for (;;) {
            unsigned to_submit = tail_ - load_acquire(sq_head_);
            unsigned flags = wait_nr ? IORING_ENTER_GETEVENTS : 0;
            io_uring_getevents_arg arg{};
            arg.sigmask_sz = _NSIG / 8;
            arg.ts = reinterpret_cast<std::uintptr_t>(timeout);
            const void* argp = nullptr;
            std::size_t argsz = 0;
            if (timeout) {
                flags |= IORING_ENTER_EXT_ARG;
                argp = &arg;
                argsz = sizeof arg;
            }
            long r = ::syscall(__NR_io_uring_enter, fd_, to_submit, wait_nr, flags, argp, argsz);
            if (r >= 0)
                return true;
            if (errno == ETIME)
                return false;
            if (errno == EINTR)
                continue;
            // EBUSY/EAGAIN: completions the CQ had no room for wait to be reaped first;
            // the caller keeps the ring sized so that this does not happen.
            fail(errno, "io_uring_enter");
        }
    }

    int fd_ = -1;
    const char* mode_ = "";
    bool skip_success_ = false;
    void* ring_ = nullptr;
    std::size_t ring_size_ = 0, sqes_size_ = 0;
    io_uring_sqe* sqes_ = nullptr;
    unsigned *sq_head_ = nullptr, *sq_tail_ = nullptr;
    unsigned *cq_head_ = nullptr, *cq_tail_ = nullptr;
    io_uring_cqe* cqes_ = nullptr;
    unsigned sq_mask_ = 0, sq_entries_ = 0, cq_mask_ = 0;
    unsigned tail_ = 0; // our SQ tail: SQEs queued, published to the kernel on enter
};

/// Fills `sqe` for a send/recv-like op on `fd` of `len` bytes at `buf`, tagged `user`.
inline void prep_rw(io_uring_sqe* sqe, std::uint8_t op, int fd, const void* buf, std::size_t len,
                    std::uint64_t user) noexcept {
    sqe->opcode = op;
    sqe->fd = fd;
    sqe->addr = reinterpret_cast<std::uintptr_t>(buf);
    sqe->len = static_cast<std::uint32_t>(len);
    sqe->user_data = user;
}

/// Queues "send all of [buf, buf + len), then receive into [in, in + in_len)" on `fd`: the
/// send (MSG_WAITALL: the kernel retries a short send itself, so a result below `len` is an
/// error) linked to the receive, which starts only once the send is over, so `in` may be
/// `buf` and a peer that sends early waits in the socket. A send that succeeds posts no CQE
/// where the kernel can skip it (otherwise one with `send_user`, len as its result); a
/// failed one posts its CQE (`send_user`) and the receive then completes with -ECANCELED.
/// `recv_flags`: MSG_WAITALL to receive exactly in_len bytes (or fail), 0 for what is there.
inline void send_then_recv(Ring& ring, int fd, const void* buf, std::size_t len,
                           std::uint64_t send_user, void* in, std::size_t in_len,
                           std::uint32_t recv_flags, std::uint64_t recv_user) {
    ring.reserve(2);
    io_uring_sqe* s = ring.get_sqe();
    prep_rw(s, IORING_OP_SEND, fd, buf, len, send_user);
    s->msg_flags = MSG_WAITALL | MSG_NOSIGNAL;
    s->flags = IOSQE_IO_LINK | (ring.skip_success() ? IOSQE_CQE_SKIP_SUCCESS : 0);
    io_uring_sqe* r = ring.get_sqe();
    prep_rw(r, IORING_OP_RECV, fd, in, in_len, recv_user);
    r->msg_flags = recv_flags;
}

} // namespace bench::uring
