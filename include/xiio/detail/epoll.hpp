#pragma once
// The readiness backend: fd waits register interest with a Poller (epoll, or the Asio host's
// descriptors, or a test's double); when the fd is reported ready, an operation runs as a
// plain syscall (FdNode::perform) and a spurious report (EAGAIN after all) keeps it waiting.
//
// Registrations. An Fd claims its number (IoBackend::claim): its registration is
// level-triggered and kept for the Fd's life, and interest is only narrowed when an event
// nobody waits for arrives, so a steady reader or writer costs no epoll_ctl. A plain int fd
// gets a transient registration, one-shot and removed when its last waiter leaves: the
// user may close the fd and reuse its number at any time, and a registration kept for a
// closed file (still open through a dup) would report stale events for the new file.
// One-shot bounds that to one spurious wakeup.

#include <xiio/detail/backend.hpp>
#include <xiio/detail/poller.hpp>

#include <memory>
#include <vector>

namespace xiio::detail {

class EpollBackend final : public IoBackend {
public:
    EpollBackend(Loop& loop, std::unique_ptr<Poller> poller)
        : IoBackend(loop), poller_(std::move(poller)) {}
    ~EpollBackend() override {
        for (auto& e : fds_.entries()) {
            // An Fd that outlives the loop loses its registration with the epoll fd; one
            // that still has waiters, or a transient one, stays counted: that is a leak.
            if (e.registered && e.serial && !e.head)
                count(Counter::registrations, -1);
        }
    }

    void claim(int fd, std::uint64_t serial) override { fds_.claim(fd, serial); }
    bool claimed(int fd) const noexcept override { return fds_.claimed(fd); }

    /// Adds `n` to the waiters of n.fd. `serial` names an Fd's registration claimed here:
    /// it lasts as long as the Fd. Any other serial (the Fd was closed meanwhile, or
    /// claimed by another loop) makes a transient wait, as for an int.
    bool attach(FdNode& n, std::uint64_t serial) override {
        if (serial) { // the fast path, inlined into the awaitables
            if (FdEntry* e = fds_.find(n.fd);
                e && e->serial == serial && (e->armed & n.events) == n.events) {
                link(*e, n);
                return true;
            }
        }
        return register_node(n);
    }

    void detach(FdNode& n) noexcept override {
        FdEntry& e = *fds_.find(n.fd);
        unlink(e, n);
        if (e.serial)
            return;
        if (!e.head)
            unregister(n.fd, e);
        else
            rearm(n.fd, e);
    }

    bool forget(int fd, std::uint64_t serial) noexcept override {
        FdEntry* e = fds_.find(fd);
        if (!e || e->serial != serial)
            return false;
        fail_closed(loop_, e->head, fd_waiters, [](FdNode&) {});
        if (e->registered) {
            poller_->remove(fd);
            count(Counter::registrations, -1);
        }
        *e = FdEntry{};
        return true;
    }

    /// attach() when the fd's interest must change first, or the fd is an int's.
    [[gnu::noinline]] bool register_node(FdNode& n) {
        if (n.fd < 0)
            throw_errno("epoll_ctl", EBADF);
        take_orphans(loop_); // before trusting an entry: its number may be reused
        FdEntry& e = fds_.at(n.fd);
        const bool owned = e.serial != 0; // by this Fd, or by another: then shared
        // An owned registration is kept for the Fd's life; one made transiently before
        // the Fd's first wait (an int wait on the same number) turns level-triggered.
        const bool convert = owned && e.registered && e.oneshot;
        int err = 0;
        unsigned want = owned ? n.events : (wanted(e) | n.events);
        if (!e.registered) {
            err = poller_->add(n.fd, want, !owned);
            if (!err) {
                e.registered = true;
                e.oneshot = !owned;
                count(Counter::registrations, 1);
                e.armed = want;
            }
        } else if (convert || (owned ? (want & ~e.armed) != 0 : want != e.armed)) {
            // Converting: transient waiters attached before want what they wanted.
            unsigned arm = owned ? (e.armed | want | (convert ? wanted(e) : 0u)) : want;
            err = poller_->modify(n.fd, arm, !owned);
            if (!err) {
                e.armed = arm;
                e.oneshot = !owned;
            }
        }
        if (err == EPERM) // epoll refuses regular files: always ready
            return false;
        if (err)
            throw_errno("epoll_ctl", err);
        link(e, n); // last: nothing above is to be undone if it throws
        return true;
    }

    bool add_wakeup(int fd) override {
        wakeup_fd_ = fd;
        if (poller_->add_wakeup(fd))
            return true;
        if (int err = poller_->add(fd, READ, false))
            throw_errno("epoll_ctl", err);
        return false;
    }

    void wait(Clock::time_point deadline) override {
        events_.clear();
        // Work is ready and no task waits for an fd: asking epoll could not wake anybody.
        if (deadline != Clock::time_point::min() || fd_waiters != 0)
            poller_->wait(deadline, events_);
    }
    void deliver() noexcept override { deliver(events_); }

    /// Wakes the waiters of the fds reported ready (a host loop reports its own events).
    void deliver(const std::vector<PollEvent>& events) noexcept {
        for (const auto& ev : events)
            dispatch(ev);
    }

    /// `w` was woken: its nodes on transient entries stop counting as wanted interest.
    [[gnu::noinline]] void count_woken(Wait& w) noexcept {
        for (auto& n : w.fds) {
            FdEntry& e = *fds_.find(n.fd);
            if (n.attached && !e.serial) {
                tally(e, n.events, 0, 1);
                n.tallied = true;
            }
        }
    }

private:
    struct FdEntry {
        FdNode* head = nullptr;
        std::uint64_t serial = 0; // an Fd claimed it: kept, level-triggered
        unsigned armed = 0;       // events enabled in the poller
        bool registered = false;  // in the poller's interest list
        bool oneshot = false;     // registered one-shot (transient), not level-triggered
        // For a transient registration (no owner): attached waiters per direction, and how
        // many of them belong to woken waits. Its interest must then be recomputed on every
        // attach and detach, and must not cost a walk over its waiters, whose number the
        // user controls (n tasks each waiting on its own pipe and one shared "stop" pipe).
        // An owned entry needs no counts: its interest only widens on attach, and is
        // narrowed in dispatch, which walks the waiters it wakes anyway.
        std::uint32_t readers = 0, writers = 0;
        std::uint32_t woken_readers = 0, woken_writers = 0;
    };

    static void tally(FdEntry& e, unsigned events, int attached, int woken) noexcept {
        if (events & READ) {
            e.readers += static_cast<std::uint32_t>(attached);
            e.woken_readers += static_cast<std::uint32_t>(woken);
        }
        if (events & WRITE) {
            e.writers += static_cast<std::uint32_t>(attached);
            e.woken_writers += static_cast<std::uint32_t>(woken);
        }
    }

    /// What the waiters of `e` that were not woken yet want.
    static unsigned wanted(const FdEntry& e) noexcept {
        return (e.readers > e.woken_readers ? READ : 0u) |
               (e.writers > e.woken_writers ? WRITE : 0u);
    }

    /// What every attached waiter of `e` wants, woken or not (walks them: see dispatch).
    static unsigned attached_events(const FdEntry& e) noexcept {
        unsigned w = 0;
        for (FdNode* n = e.head; n; n = n->next)
            w |= n->events;
        return w;
    }

    void link(FdEntry& e, FdNode& n) noexcept {
        n.ready = 0;
        n.next = e.head;
        n.prev = nullptr;
        if (e.head)
            e.head->prev = &n;
        e.head = &n;
        n.attached = true;
        n.tallied = false; // a wait is attached before it can be woken
        if (!e.serial) {
            tally(e, n.events, 1, 0);
            n.wait->transient_fds = true;
        }
        ++fd_waiters;
    }

    void unlink(FdEntry& e, FdNode& n) noexcept {
        (n.prev ? n.prev->next : e.head) = n.next;
        if (n.next)
            n.next->prev = n.prev;
        n.prev = n.next = nullptr;
        n.attached = false;
        if (!e.serial)
            tally(e, n.events, -1, n.tallied ? -1 : 0);
        --fd_waiters;
    }

    void unregister(int fd, FdEntry& e) noexcept {
        poller_->remove(fd);
        e.registered = false;
        e.armed = 0;
        count(Counter::registrations, -1);
    }

    void rearm(int fd, FdEntry& e) noexcept {
        unsigned want = wanted(e);
        if (want != e.armed && poller_->modify(fd, want, true) == 0)
            e.armed = want;
    }

    void dispatch(const PollEvent& ev) noexcept { // remote callbacks must not throw
        FdEntry* ep = fds_.find(ev.fd);
        if (!ep || !ep->registered) { // the wake-up eventfd is not in the table
            if (ev.fd == wakeup_fd_ && ev.fd >= 0)
                run_remote(loop_);
            return; // else a stale one-shot report for a number we no longer watch
        }
        FdEntry& e = *ep;
        if (e.oneshot)
            e.armed = 0; // one-shot: disarmed by this report
        for (FdNode* n = e.head; n; n = n->next) {
            unsigned hit = n->events & ev.events;
            if (!hit)
                continue;
            if (n->wait->woken) { // e.g. a Condition: collect every fd ready in this poll
                if (!n->perform)
                    n->ready |= hit;
                continue;
            }
            n->ready |= hit;
            if (!n->perform || n->perform(n))
                wake(loop_, *n->wait);
        }
        if (!e.serial) {
            rearm(ev.fd, e);
        } else if (!e.head) {
            // Nobody waits: drop the registration rather than narrow it, since hang-ups
            // are reported whatever the interest and would spin the loop.
            unregister(ev.fd, e);
        } else if (unsigned want = attached_events(e); ev.events & ~want & e.armed) {
            // Narrow to what attached waiters want, including those this very event woke
            // (they detach when they resume): a lone reader woken here must not cost a
            // MOD now and another when it waits again.
            if (poller_->modify(ev.fd, want, false) == 0) {
                e.armed = want;
                e.oneshot = false;
            }
        }
    }

    std::unique_ptr<Poller> poller_;
    FdTable<FdEntry> fds_;
    std::vector<PollEvent> events_;
    int wakeup_fd_ = -1;
};

} // namespace xiio::detail
