#pragma once
// The loop: a ready queue, a timer heap and a table of fd waiters in front of a Poller
// (epoll by default). Users never touch it; awaitables register `Wait`s with it.
//
// Vocabulary (see docs/design.md for a walk through one iteration):
// - A Runner is what the original calls a Task: the unit the loop schedules. It runs one chain
//   of coroutine frames (a Task awaiting a Task awaiting ...); only the innermost frame is
//   ever suspended in the loop, at a leaf awaitable (sleep, read, a future, a Condition).
// - A Wait is that leaf's registration: a deadline, fd nodes and future nodes, all living
//   inside the awaitable, i.e. inside the suspended coroutine frame (no allocation).
//   Whatever part fires first wakes the Wait: its Runner goes to the ready queue. The
//   registrations are removed when the leaf resumes (`detach`), so several fds that are
//   ready in the same poll are all reported to a Condition.
// - Cancellation and loop failures are exceptions "thrown in" to a Runner: into its Wait
//   if it is suspended, else kept pending for its next co_await.

#include <xiio/detail/accounting.hpp>
#include <xiio/detail/loop_registry.hpp>
#include <xiio/detail/poller.hpp>
#include <xiio/detail/remote_queue.hpp>
#include <xiio/detail/std_parts.hpp>
#include <xiio/errors.hpp>

#include <atomic>
#include <cassert>
#include <coroutine>
#include <csignal>
#include <cstdint>
#include <exception>
#include <limits>
#include <map>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <unistd.h>

namespace xiio {

/// fd -> READ|WRITE mask.
using Files = std::map<int, unsigned>;

namespace detail {

class Loop;
struct Wait;

/// A unit of scheduling (the original's Task): runs one chain of awaiting coroutine frames.
struct Runner {
    explicit Runner(Loop& l) noexcept;
    Runner(const Runner&) = delete;
    Runner& operator=(const Runner&) = delete;
    virtual ~Runner() {
        retire();
        count(Counter::runners, -1);
    }
    /// Called once the outermost frame reached its final suspend point (from inside it:
    /// the frame must not be destroyed here, see Loop::bury).
    virtual void finished() noexcept {}
    /// Called instead of starting a runner that got an exception before it ever ran.
    virtual void abandon() noexcept {}
    /// After Loop::bury(): destroy the finished frame now. May destroy the runner.
    virtual void buried() noexcept {}
    /// Leaves the loop's list of live runners (a finished member may outlive the loop).
    void retire() noexcept;

    Loop* loop;
    std::coroutine_handle<> resume_; // where the loop continues this runner
    Wait* wait_ = nullptr;           // the leaf it is suspended in, while not yet woken
    std::exception_ptr pending_;     // thrown at its next co_await (thrown in while running)
    Runner* next_ready_ = nullptr;
    /// Awaits it may still complete without suspending before it must yield (see
    /// out_of_budget in core.hpp); refilled whenever the loop resumes it.
    static constexpr std::uint8_t budget = 128;
    std::uint8_t budget_ = budget;
    bool queued_ = false;
    bool started_ = true; // group members start false: never run if cancelled first
    // The next fields fill what would be padding: a group member lives in front of its
    // frame, in room every frame reserves (see task.hpp), so its size is every frame's.
    bool root_ : 1 = false;              // in the loop's roots (else a group's member)
    bool member_done_ : 1 = false;       // a member: finished by value, error or cancellation
    bool member_cancelled_ : 1 = false;  // a member: ended by a CancelledError
    bool member_has_frame_ : 1 = false;  // a member: its frame is not yet released
    std::atomic<std::uint32_t> refs_{0}; // a member: running (1) + its TaskHandles
    Runner* prev_sibling_ = nullptr;     // the loop's roots, or the group's members
    Runner* next_sibling_ = nullptr;
};

/// Runners linked through their sibling links: the loop's roots, the members of a group.
/// A group's list is known to the loop (Loop::add_members), so a failure reaches every
/// runner.
struct RunnerList {
    Runner* head = nullptr;
    Runner* tail = nullptr;
    RunnerList* prev = nullptr; // the loop's lists of members
    RunnerList* next = nullptr;

    void push_back(Runner& r) noexcept {
        r.prev_sibling_ = tail;
        r.next_sibling_ = nullptr;
        (tail ? tail->next_sibling_ : head) = &r;
        tail = &r;
    }
    void erase(Runner& r) noexcept {
        (r.prev_sibling_ ? r.prev_sibling_->next_sibling_ : head) = r.next_sibling_;
        (r.next_sibling_ ? r.next_sibling_->prev_sibling_ : tail) = r.prev_sibling_;
        r.prev_sibling_ = r.next_sibling_ = nullptr;
    }
};

/// A waiter on one fd, linked into that fd's entry in the loop.
struct FdNode {
    Wait* wait = nullptr;
    int fd = -1;
    unsigned events = 0; // wanted
    unsigned ready = 0;  // reported
    bool attached = false;
    bool tallied = false; // counted among the woken waiters of its entry
    /// Optional: tries the I/O once the fd is reported ready, so that spurious readiness
    /// (EAGAIN after all) keeps the task waiting instead of waking it. True = done.
    bool (*perform)(FdNode*) = nullptr;
    FdNode* prev = nullptr;
    FdNode* next = nullptr;
};

struct FutureNode;

/// The waiters of one future (intrusive, FIFO). Circular through the nodes, so the list
/// itself is one pointer (it is part of every group member, see FrameRoom).
struct WaiterList {
    FutureNode* last = nullptr; // last->next is the first
    FutureNode* first() const noexcept;
    FutureNode* after(const FutureNode* n) const noexcept; // null after the last
    void push(FutureNode& n) noexcept;
    void unlink(FutureNode& n) noexcept;
};

struct FutureNode {
    Wait* wait = nullptr;
    WaiterList* list = nullptr; // null once detached or once the future died
    bool reads_value = false;   // resumes reading the future (not just its doneness)
    FutureNode* prev = nullptr;
    FutureNode* next = nullptr;
};

/// A leaf's registration: deadline + fd nodes + future nodes, owned by the awaitable.
struct Wait {
    static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();

    Runner* runner = nullptr;
    std::exception_ptr error; // thrown at await_resume instead of the result
    bool woken = false;
    Clock::time_point deadline = Clock::time_point::max();
    std::uint64_t seq = 0;
    std::size_t heap_index = npos;
    bool transient_fds = false; // a node of it waits on an fd no Fd owns (see Loop::tally)
    std::span<FdNode> fds;
    std::span<FutureNode> futures;
    /// Set by waits that must not simply be woken when an exception is thrown in (a task
    /// group's join forwards it to its members instead).
    void (*interrupt)(Wait*, std::exception_ptr) = nullptr;
    /// Set, when they suspend, by waits that registered nothing the loop could name (a
    /// group's join, a sync primitive, a job on a thread): appends what the wait is for to
    /// the text of xiio::dump_tasks(). Only read by it.
    void (*describe)(const Wait&, std::string&) = nullptr;
};

/// What an Fd knows of its registration, which lives in the loop's table (Loop::claim).
/// Plain values, no pointers either way: an Fd can be moved, or outlive its loop, or be
/// closed on another thread, without the loop ever writing into it or it into the loop.
struct FdState {
    std::uint64_t loop = 0;   // id of the loop that owns a registration of it, 0 if none
    std::uint64_t serial = 0; // that registration (never reused: a stale one never matches)
    bool nonblocking = false; // known O_NONBLOCK (a socket, or claimed): no fcntl needed
};

inline bool disown(int fd, FdState& s, bool close) noexcept;

/// The loop of this thread while run() drives one.
inline Loop*& current_loop() noexcept {
    thread_local Loop* loop = nullptr;
    return loop;
}

/// The id of that loop (Loop::id), 0 if none: what an FdRef compares an Fd's claim with,
/// one thread-local load, without touching the loop. Set with set_current_loop().
inline std::uint64_t& current_loop_id() noexcept {
    thread_local std::uint64_t id = 0;
    return id;
}

/// Makes `l` (or none) the current loop of this thread; returns the previous one.
inline Loop* set_current_loop(Loop* l) noexcept;

/// What describes every task of a loop (xiio::dump_tasks()), for the deadlock error. It
/// walks coroutine frames, which this header knows nothing of: xiio/dump.hpp installs it
/// when the program starts (xiio.hpp includes it). Null where no translation unit of the
/// program includes xiio/dump.hpp: the deadlock error then names no task.
inline std::string (*&task_dumper() noexcept)(const Loop&) {
    static std::string (*dumper)(const Loop&) = nullptr;
    return dumper;
}

class Loop {
public:
    explicit Loop(std::unique_ptr<Poller> poller) : poller_(std::move(poller)) {
        prebuilt_errors(); // before any noexcept path needs one
    }
    Loop(const Loop&) = delete;
    Loop& operator=(const Loop&) = delete;
    ~Loop() {
        if (record_.loop) { // from now on an Fd closed elsewhere finds no loop: closes itself
            std::lock_guard lock(LoopRegistry::mutex());
            LoopRegistry::remove(record_);
        }
        if (remote_) {
            take_orphans();
            for (RemoteNode* n = remote_->close(); n;) // dropped here, on the loop's thread
                std::exchange(n, n->next_remote)->remote_done(false);
            count(Counter::registrations, -1);
        }
        flush_graveyard();
        for (auto& e : fds_) {
            // An Fd that outlives the loop loses its registration with the epoll fd; one
            // that still has waiters, or a transient one, stays counted: that is a leak.
            if (e.registered && e.serial && !e.head)
                count(Counter::registrations, -1);
        }
    }

    /// Never reused, unlike the address: what an Fd remembers of the loop it is
    /// registered with.
    std::uint64_t id() const noexcept { return id_; }

    // ---- scheduling ----------------------------------------------------------------

    /// Appends `r` to the ready queue (once).
    void schedule(Runner* r) noexcept {
        if (r->queued_)
            return;
        r->queued_ = true;
        r->next_ready_ = nullptr;
        (ready_tail_ ? ready_tail_->next_ready_ : ready_head_) = r;
        ready_tail_ = r;
        ++ready_size_;
    }

    /// Takes `r` out of the ready queue (a walk: only for teardown, see Runner::retire).
    void unschedule(Runner& r) noexcept {
        Runner* prev = nullptr;
        for (Runner* x = ready_head_; x; prev = x, x = x->next_ready_) {
            if (x != &r)
                continue;
            (prev ? prev->next_ready_ : ready_head_) = r.next_ready_;
            if (ready_tail_ == &r)
                ready_tail_ = prev;
            --ready_size_;
            r.queued_ = false;
            return;
        }
    }

    /// The first part of `w` that fired: make its runner ready.
    void wake(Wait& w) noexcept {
        if (w.woken)
            return;
        w.woken = true;
        if (w.transient_fds) [[unlikely]]
            count_woken(w);
        if (w.runner->wait_ == &w)
            w.runner->wait_ = nullptr;
        schedule(w.runner);
    }

    /// Throws `e` into `r`: at its current co_await if suspended, else at its next one.
    /// The first exception wins until it was delivered.
    void throw_in(Runner& r, std::exception_ptr e) noexcept {
        if (Wait* w = r.wait_) {
            if (w->interrupt)
                return w->interrupt(w, std::move(e));
            if (!w->error)
                w->error = std::move(e);
            wake(*w);
        } else if (!r.pending_) {
            r.pending_ = std::move(e);
        }
    }

    /// The trampoline: resumes `h`, then each frame handed over by resume_next() while it
    /// ran, until the chain suspends at a leaf or ends. A Task awaiting a Task and a Task
    /// resuming its awaiting frame go through here (see task.hpp), so a chain of any depth
    /// runs on constant stack. Nested calls (a group starting its body inline) are fine:
    /// each runs until nothing is handed over and leaves the slot empty.
    void resume(std::coroutine_handle<> h) {
        do {
            h.resume();
            h = std::exchange(next_, nullptr);
        } while (h);
    }
    /// Called from an await_suspend: `h` runs as soon as the suspending frame returned.
    void resume_next(std::coroutine_handle<> h) noexcept { next_ = h; }

    /// Suspends `r` in `w` (the leaf registered its parts already).
    void suspend(Runner& r, Wait& w, std::coroutine_handle<> h) noexcept {
        w.runner = &r;
        r.wait_ = &w;
        r.resume_ = h;
    }

    /// Removes every registration of `w`; called when the leaf resumes (or dies).
    void detach(Wait& w) noexcept {
        if (w.heap_index != Wait::npos)
            remove_timer(w);
        for (auto& n : w.fds)
            if (n.attached)
                detach_fd(n);
        for (auto& n : w.futures)
            if (n.list)
                n.list->unlink(n);
        if (w.runner && w.runner->wait_ == &w)
            w.runner->wait_ = nullptr;
    }

    // ---- timers ----------------------------------------------------------------------

    /// Throws std::bad_alloc if the heap cannot grow; `w` and the heap are then unchanged.
    void add_timer(Wait& w) {
        heap_.push_back(&w); // first: the only step that can fail
        w.seq = timer_seq_++;
        w.heap_index = heap_.size() - 1;
        sift_up(w.heap_index);
        count(Counter::timers, 1);
    }

    void remove_timer(Wait& w) noexcept {
        count(Counter::timers, -1);
        std::size_t i = w.heap_index;
        w.heap_index = Wait::npos;
        Wait* last = heap_.back();
        heap_.pop_back();
        if (last == &w)
            return;
        heap_[i] = last;
        last->heap_index = i;
        sift_down(i);
        sift_up(last->heap_index);
    }

    // ---- fds -------------------------------------------------------------------------

    /// Makes this loop the owner of the registration of Fd `fd` (whose state is `s`): an
    /// entry in the table, named by a fresh serial that `s` records. Called when an
    /// awaitable is made from the Fd inside a task, while the Fd is surely where it is,
    /// so the awaitable can carry plain values (FdRef) that survive moving the Fd. The
    /// fd is made O_NONBLOCK now, once (so no awaitable needs to ask); the poller
    /// registration itself is made by the first wait (attach). Throws std::system_error
    /// (fcntl: not an open fd), std::bad_alloc, std::logic_error if another Fd owns the
    /// same number here.
    [[gnu::noinline]] void claim(int fd, FdState& s) {
        if (s.loop == id_)
            return;
        if (!s.nonblocking) {
            int fl = ::fcntl(fd, F_GETFL);
            if (fl < 0 || (!(fl & O_NONBLOCK) && ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0))
                throw_errno("fcntl");
            s.nonblocking = true;
        }
        if (s.loop) { // registered with another loop before (an earlier run()): let go
            disown(fd, s, false);
            s.nonblocking = true; // made so above, or before; disown() cleared it
        }
        if (remote_ && remote_->orphaned()) // a number closed elsewhere may be reused now
            take_orphans();
        const auto i = static_cast<std::size_t>(fd);
        if (i >= fds_size_)
            grow_fds(i);
        if (fds_[i].serial)
            throw std::logic_error("xiio: two Fds own fd " + std::to_string(fd));
        enlist();
        remote_->reserve_orphans(owned_ + 1);
        FdEntry& e = fds_[i];
        e.serial = next_serial();
        ++owned_;
        s.loop = id_;
        s.serial = e.serial;
    }

    /// Whether an Fd of this loop claimed number `fd`: it is O_NONBLOCK (claim made it so),
    /// even where a plain int names it (`read_exactly(socket.fd(), buf)`).
    bool claimed(int fd) noexcept {
        if (fd < 0 || static_cast<std::size_t>(fd) >= fds_size_)
            return false;
        if (remote_ && remote_->orphaned()) // closed elsewhere: the number may be reused
            take_orphans();
        return fds_[static_cast<std::size_t>(fd)].serial != 0;
    }

    /// Adds `n` to the waiters of n.fd. `serial` (from FdRef, 0 for a plain int) names an
    /// Fd's registration claimed here: it lasts as long as the Fd. Any other serial (the
    /// Fd was closed meanwhile, or claimed by another loop) makes a transient wait, as
    /// for an int. Returns false if the fd cannot be watched (a regular file): it counts
    /// as ready at once, `n` is not attached. Throws std::system_error.
    bool attach(FdNode& n, std::uint64_t serial) {
        if (serial && static_cast<std::size_t>(n.fd) < fds_size_) { // the fast path
            FdEntry& e = fds_[static_cast<std::size_t>(n.fd)];
            if (e.serial == serial && (e.armed & n.events) == n.events) {
                link(e, n);
                return true;
            }
        }
        if (n.fd < 0)
            throw_errno("epoll_ctl", EBADF);
        if (remote_ && remote_->orphaned()) // before trusting an entry: see claim
            take_orphans();
        if (static_cast<std::size_t>(n.fd) >= fds_size_)
            grow_fds(static_cast<std::size_t>(n.fd));
        FdEntry& e = fds_[static_cast<std::size_t>(n.fd)];
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

    /// The Fd that claimed registration `serial` of `fd` is closed or released: drop the
    /// registration, fail its waiters. Nothing if that registration is gone already.
    void forget(int fd, std::uint64_t serial) noexcept {
        if (fd < 0 || static_cast<std::size_t>(fd) >= fds_size_)
            return;
        FdEntry& e = fds_[static_cast<std::size_t>(fd)];
        if (e.serial != serial)
            return;
        for (FdNode* n = e.head; n; n = n->next) {
            n->attached = false;
            --fd_waiters_;
            if (!n->wait->error)
                n->wait->error = prebuilt_errors().closed; // cannot fail: see PrebuiltErrors
            wake(*n->wait);
        }
        if (e.registered) {
            poller_->remove(fd);
            count(Counter::registrations, -1);
        }
        --owned_;
        e = FdEntry{};
    }

    /// An Fd closed on another thread than this loop's: the loop drops the registration
    /// (and closes the number) at its next iteration. False if it cannot.
    bool post_orphan(Orphan o) noexcept { return remote_ && remote_->post_orphan(o); }

    // ---- the loop ----------------------------------------------------------------------

    /// Runs until `done` becomes true: the phases of one iteration are run the ready
    /// runners, wait for fds until the next deadline, wake the fd waiters, fire timers.
    void run_until(const bool& done) {
        while (!done) {
            run_ready();
            if (done)
                break;
            poll();
        }
    }

    // ---- the phases, for a host loop that drives xiio (xiio/asio.hpp) -------------------
    //   while (!done) { run_ready(); wait as the host likes until next_deadline() or an fd
    //   event; deliver(events); }

    /// Runs the runners that are ready now (FIFO).
    void run_ready() {
        // Only the runners ready now: one that yields goes behind everything else and
        // runs in the next iteration, after the poll, so it cannot starve I/O.
        for (std::size_t n = ready_size_; n > 0 && ready_head_; --n) {
            Runner* r = ready_head_;
            ready_head_ = r->next_ready_;
            if (!ready_head_)
                ready_tail_ = nullptr;
            --ready_size_;
            r->queued_ = false;
            r->wait_ = nullptr; // a yield's wait ends here
            if (!r->started_) {
                r->started_ = true;
                if (r->pending_) {
                    r->abandon(); // cancelled before it started: it never runs
                    flush_graveyard();
                    continue;
                }
            }
            r->budget_ = Runner::budget;
            resume(r->resume_);
            flush_graveyard();
        }
    }

    /// When the next timer is due: min() if runners are ready, max() if nothing but fds
    /// can wake a task. Reports a deadlock (nothing can ever wake a task) as a failure,
    /// which makes runners ready.
    Clock::time_point next_deadline() noexcept {
        if (!ready_size_ && heap_.empty() && fd_waiters_ == 0 && keepalive_ == 0)
            report_deadlock();
        if (ready_size_)
            return Clock::time_point::min();
        return heap_.empty() ? Clock::time_point::max() : heap_.front()->deadline;
    }

    /// Wakes the waiters of the fds reported ready, then fires the due timers.
    void deliver(const std::vector<PollEvent>& events) noexcept {
        for (const auto& ev : events)
            dispatch(ev);
        if (!heap_.empty()) {
            auto now = Clock::now();
            while (!heap_.empty() && heap_.front()->deadline <= now) {
                Wait* w = heap_.front();
                remove_timer(*w);
                wake(*w);
            }
        }
    }

    /// Extra wake-up sources that are not waits (jobs running on other threads): while
    /// any exists, a loop in which every task waits for a future is not a deadlock.
    void keepalive(int delta) noexcept { keepalive_ += delta; }

    /// A job was handed to another thread now: its completion is worth watching for a
    /// moment before the loop sleeps (see spin_for_remote).
    void expect_remote() noexcept { spin_until_ = Clock::now() + remote_spin; }
    static constexpr auto remote_spin = std::chrono::microseconds(10);

    /// The queue through which a thread pool's workers complete jobs on this loop's
    /// thread; its eventfd is registered on first use. From then on every poll tells the
    /// queue when the loop may sleep (see RemoteQueue), which saves workers eventfd writes.
    std::shared_ptr<RemoteQueue> remote() {
        make_remote();
        remote_jobs_ = true;
        return remote_;
    }

    /// Has `r` destroy its finished frame (Runner::buried) once control is back in the
    /// loop: a frame cannot be destroyed from its own final_suspend without relying on what
    /// the compiler does after await_suspend returns. Linked through its ready link (it
    /// is running, so in no queue), so burying never needs memory.
    void bury(Runner& r) noexcept {
        r.next_ready_ = graveyard_;
        graveyard_ = &r;
    }
    void flush_graveyard() noexcept {
        while (Runner* r = graveyard_) {
            graveyard_ = std::exchange(r->next_ready_, nullptr);
            r->buried(); // may destroy r
        }
    }

    /// The first failure of the waiting step (or a deadlock); run() rethrows it.
    std::exception_ptr failure_;
    /// True while this loop blocks SIGPIPE in its thread (see SigpipeGuard).
    bool owns_sigpipe_ = false;

    /// What xiio/dump.hpp installs (see task_dumper()) reads the runners through these.
    const RunnerList& roots() const noexcept { return roots_; }
    const RunnerList* member_lists() const noexcept { return member_lists_; }

    void link(Runner&) noexcept { ++runner_count_; }
    void unlink(Runner& r) noexcept {
        --runner_count_;
        if (r.root_)
            roots_.erase(r);
    }
    /// A root runner (not a group's member): failures reach it through the loop's list.
    void add_root(Runner& r) noexcept {
        r.root_ = true;
        roots_.push_back(r);
    }
    /// A group's members: failures reach them through this list while it is added.
    void add_members(RunnerList& l) noexcept {
        l.prev = nullptr;
        l.next = member_lists_;
        if (member_lists_)
            member_lists_->prev = &l;
        member_lists_ = &l;
    }
    void remove_members(RunnerList& l) noexcept {
        (l.prev ? l.prev->next : member_lists_) = l.next;
        if (l.next)
            l.next->prev = l.prev;
        l.prev = l.next = nullptr;
    }

private:
    struct FdEntry {
        FdNode* head = nullptr;
        std::uint64_t serial = 0; // an Fd claimed it (Loop::claim): kept, level-triggered
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

    /// Room for entry `i`. Throws std::bad_alloc (then nothing changed).
    void grow_fds(std::size_t i) {
        fds_.resize(i + 1);
        fds_size_ = fds_.size();
    }

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

    // Transient registrations (plain int fds) are one-shot and removed when their last
    // waiter leaves: the user may close the fd and reuse its number at any time, and a
    // registration kept in epoll for a closed file (still open through a dup) would report
    // stale events for the new file. One-shot bounds that to one spurious wakeup.
    // An Fd's registration is level-triggered and kept; interest is only narrowed when an
    // event nobody waits for arrives (so a steady reader or writer costs no epoll_ctl).

    /// `w` was woken: its nodes on transient entries stop counting as wanted interest.
    [[gnu::noinline]] void count_woken(Wait& w) noexcept {
        for (auto& n : w.fds) {
            FdEntry& e = fds_[static_cast<std::size_t>(n.fd)];
            if (n.attached && !e.serial) {
                tally(e, n.events, 0, 1);
                n.tallied = true;
            }
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
        ++fd_waiters_;
    }

    void unlink(FdEntry& e, FdNode& n) noexcept {
        (n.prev ? n.prev->next : e.head) = n.next;
        if (n.next)
            n.next->prev = n.prev;
        n.prev = n.next = nullptr;
        n.attached = false;
        if (!e.serial)
            tally(e, n.events, -1, n.tallied ? -1 : 0);
        --fd_waiters_;
    }

    void detach_fd(FdNode& n) noexcept {
        FdEntry& e = fds_[static_cast<std::size_t>(n.fd)];
        unlink(e, n);
        if (e.serial)
            return;
        if (!e.head) {
            poller_->remove(n.fd);
            e.registered = false;
            e.armed = 0;
            count(Counter::registrations, -1);
        } else {
            rearm(n.fd, e);
        }
    }

    void rearm(int fd, FdEntry& e) noexcept {
        unsigned want = wanted(e);
        if (want != e.armed && poller_->modify(fd, want, true) == 0)
            e.armed = want;
    }

    void dispatch(const PollEvent& ev) noexcept { // remote callbacks must not throw
        FdEntry* ep = ev.fd >= 0 && static_cast<std::size_t>(ev.fd) < fds_size_
                          ? &fds_[static_cast<std::size_t>(ev.fd)]
                          : nullptr;
        if (!ep || !ep->registered) { // the wake-up eventfd is not in the table
            if (remote_ && ev.fd == remote_->fd())
                run_remote();
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
                wake(*n->wait);
        }
        if (!e.serial) {
            rearm(ev.fd, e);
        } else if (!e.head) {
            // Nobody waits: drop the registration rather than narrow it, since hang-ups
            // are reported whatever the interest and would spin the loop.
            poller_->remove(ev.fd);
            e.registered = false;
            e.armed = 0;
            count(Counter::registrations, -1);
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

    void poll() {
        Clock::time_point deadline = next_deadline();
        bool may_sleep = false; // told the remote queue so: posts write the eventfd
        if (remote_jobs_ && deadline != Clock::time_point::min()) {
            if (keepalive_ > 0 && spin_until_ != Clock::time_point{})
                spin_for_remote(deadline);
            may_sleep = remote_->prepare_sleep();
            if (!may_sleep)
                deadline = Clock::time_point::min(); // completions are queued: do not block
        }
        events_.clear();
        // Work is ready and no task waits for an fd: asking epoll could not wake anybody.
        if (deadline != Clock::time_point::min() || fd_waiters_ != 0) {
            try {
                poller_->wait(deadline, events_);
            } catch (...) {
                if (may_sleep)
                    remote_->awake();
                return fail_all(std::current_exception());
            }
        }
        if (may_sleep)
            remote_->awake();
        if (remote_ && remote_->pending()) // posted while awake: nothing was written
            run_remote();
        deliver(events_);
    }

    /// A job was just handed to another thread and nothing else is ready: a short job
    /// (the common offload) completes within microseconds, so watch the queue for a moment
    /// before paying for a sleep in epoll and the worker for an eventfd write. Once per job
    /// (expect_remote()): a long job costs at most `remote_spin` of watching, not that much
    /// per loop iteration. Bounded by the next deadline too; fds that become ready
    /// meanwhile wait that long at most. Yields while watching, not pause: on a busy
    /// machine the worker may need this very CPU.
    void spin_for_remote(Clock::time_point deadline) noexcept {
        auto until = std::min(deadline, std::exchange(spin_until_, Clock::time_point{}));
        for (unsigned i = 1; !remote_->pending(); ++i) {
            ::sched_yield();
            if (i % 8 == 0 && Clock::now() >= until)
                return;
        }
    }

    void run_remote() noexcept { // remote callbacks must not throw
        take_orphans();
        for (RemoteNode* n = remote_->take(!remote_edge_); n;)
            std::exchange(n, n->next_remote)->remote_done(true); // may destroy n
    }

    /// Fds closed or released on other threads: forget them, close those closed.
    void take_orphans() noexcept {
        remote_->take_orphans([this](const Orphan& o) {
            forget(o.fd, o.serial);
            if (o.close)
                ::close(o.fd);
        });
    }

    void make_remote() {
        if (remote_)
            return;
        auto q = std::make_shared<RemoteQueue>();
        remote_edge_ = poller_->add_wakeup(q->fd());
        if (!remote_edge_)
            if (int err = poller_->add(q->fd(), READ, false))
                throw_errno("epoll_ctl", err);
        count(Counter::registrations, 1);
        remote_ = std::move(q);
    }

    /// Joins the registry (once, at the first Fd claimed): from then on an Fd closed on
    /// another thread can find this loop and post to its remote queue.
    void enlist() {
        if (record_.loop)
            return;
        make_remote(); // orphans only: posts always write its eventfd (sleeping_ stays set)
        record_.id = id_;
        record_.thread = std::this_thread::get_id();
        std::lock_guard lock(LoopRegistry::mutex());
        record_.loop = this;
        LoopRegistry::add(record_);
    }

    /// Every task waits and nothing can wake one: fail them all with the deadlock error,
    /// which carries the dump of every task (xiio::dump_tasks()) where xiio/dump.hpp is
    /// part of the program. Making that text allocates: if it fails, the prebuilt error
    /// (without the dump) is thrown in instead, so this path cannot fail.
    [[gnu::noinline]] void report_deadlock() noexcept {
        std::exception_ptr e = prebuilt_errors().deadlock;
        if (auto dump = task_dumper()) {
            try {
                e = std::make_exception_ptr(std::logic_error(std::string(deadlock_message) +
                                                             "; the tasks:\n" + dump(*this)));
            } catch (...) { // no memory for the text: the prebuilt error says enough
            }
        }
        fail_all(std::move(e));
    }

    /// The waiting step failed: throw the error into every task (at its current co_await,
    /// or its next one if it is ready), so its cleanup runs; run() rethrows it at the end.
    void fail_all(std::exception_ptr e) noexcept {
        if (!failure_)
            failure_ = e;
        auto each = [&](const RunnerList& l) {
            for (Runner* r = l.head; r; r = r->next_sibling_)
                if (!r->wait_ || !r->wait_->interrupt) // a group's join hears it from members
                    throw_in(*r, e);
        };
        each(roots_);
        for (RunnerList* l = member_lists_; l; l = l->next)
            each(*l);
    }

    // The timer heap is 4-ary (half the depth of a binary one: fewer cache misses on the
    // back-indices, which every move updates) and sifts by moving a hole, writing each
    // moved wait once instead of swapping.
    static constexpr std::size_t arity = 4;

    static bool earlier(const Wait* x, const Wait* y) noexcept {
        return x->deadline < y->deadline || (x->deadline == y->deadline && x->seq < y->seq);
    }
    void place(std::size_t i, Wait* w) noexcept {
        heap_[i] = w;
        w->heap_index = i;
    }
    void sift_up(std::size_t i) noexcept {
        Wait* w = heap_[i];
        while (i > 0) {
            std::size_t parent = (i - 1) / arity;
            if (!earlier(w, heap_[parent]))
                break;
            place(i, heap_[parent]);
            i = parent;
        }
        place(i, w);
    }
    void sift_down(std::size_t i) noexcept {
        Wait* w = heap_[i];
        const std::size_t n = heap_.size();
        for (;;) {
            std::size_t first = i * arity + 1;
            if (first >= n)
                break;
            std::size_t best = first;
            std::size_t end = std::min(first + arity, n);
            for (std::size_t c = first + 1; c < end; ++c)
                if (earlier(heap_[c], heap_[best]))
                    best = c;
            if (!earlier(heap_[best], w))
                break;
            place(i, heap_[best]);
            i = best;
        }
        place(i, w);
    }

    std::unique_ptr<Poller> poller_;
    std::coroutine_handle<> next_; // the trampoline's slot (resume/resume_next)
    Runner* ready_head_ = nullptr;
    Runner* ready_tail_ = nullptr;
    std::size_t ready_size_ = 0;
    std::vector<Wait*> heap_;
    std::uint64_t timer_seq_ = 0;
    std::vector<FdEntry> fds_;
    std::size_t fds_size_ = 0; // fds_.size(), kept: computing it divides by sizeof(FdEntry)
    std::vector<PollEvent> events_;
    std::size_t fd_waiters_ = 0;
    int keepalive_ = 0;
    RunnerList roots_;                   // run()'s root, a host's
    RunnerList* member_lists_ = nullptr; // of the groups
    std::size_t runner_count_ = 0;       // live runners (roots and members)
    Runner* graveyard_ = nullptr;        // runners whose finished frame is to be destroyed
    std::shared_ptr<RemoteQueue> remote_;
    bool remote_edge_ = false;       // its eventfd is edge-triggered: never read back
    bool remote_jobs_ = false;       // jobs post to it: polls tell it when the loop may sleep
    Clock::time_point spin_until_{}; // watch remote_ until then (once), if it is set
    const std::uint64_t id_ = next_serial();
    LoopRecord record_;     // in the registry once an Fd was claimed (record_.loop set)
    std::size_t owned_ = 0; // entries claimed by Fds: the orphans the remote queue can hold
};

inline Loop* set_current_loop(Loop* l) noexcept {
    current_loop_id() = l ? l->id() : 0;
    return std::exchange(current_loop(), l);
}

/// An FdRef made from an Fd that the current loop has not claimed (the rare path).
[[gnu::noinline]] inline void claim_for_current_loop(int fd, FdState& s) {
    if (Loop* l = current_loop(); l && fd >= 0)
        l->claim(fd, s);
}

/// Tells the loop that owns registration `s` (if it still exists) that its Fd is closing
/// (`close`) or letting go of `fd`. The common case, the current loop, is told directly;
/// another one is found in the registry: on this thread it is idle (not running up the
/// stack: only the current loop runs) and is told directly too; on another thread it is
/// posted an orphan and closes the number itself. True if it does (the caller must not).
inline bool disown(int fd, FdState& s, bool close) noexcept {
    const FdState was = std::exchange(s, {});
    if (Loop* l = current_loop(); l && l->id() == was.loop) {
        l->forget(fd, was.serial);
        return false;
    }
    std::lock_guard lock(LoopRegistry::mutex());
    LoopRecord* r = LoopRegistry::find(was.loop);
    if (!r) // the loop is gone, and its registration with it
        return false;
    if (r->thread == std::this_thread::get_id()) {
        r->loop->forget(fd, was.serial);
        return false;
    }
    return r->loop->post_orphan(Orphan{fd, close, was.serial}) && close;
}

inline Runner::Runner(Loop& l) noexcept : loop(&l) {
    count(Counter::runners, 1);
    l.link(*this);
}
inline void Runner::retire() noexcept {
    if (!loop)
        return;
    if (queued_) // only when a loop is torn down with tasks still queued
        loop->unschedule(*this);
    std::exchange(loop, nullptr)->unlink(*this);
}

inline FutureNode* WaiterList::first() const noexcept {
    return last ? last->next : nullptr;
}
inline FutureNode* WaiterList::after(const FutureNode* n) const noexcept {
    return n == last ? nullptr : n->next;
}
inline void WaiterList::push(FutureNode& n) noexcept {
    n.list = this;
    if (!last) {
        n.prev = n.next = &n;
    } else {
        n.prev = last;
        n.next = last->next;
        last->next->prev = &n;
        last->next = &n;
    }
    last = &n;
}
inline void WaiterList::unlink(FutureNode& n) noexcept {
    if (n.next == &n) {
        last = nullptr;
    } else {
        n.prev->next = n.next;
        n.next->prev = n.prev;
        if (last == &n)
            last = n.prev;
    }
    n.prev = n.next = nullptr;
    n.list = nullptr;
}

/// Blocks SIGPIPE in the loop's thread while run() drives it, so that a write to a pipe
/// whose reader is gone fails with EPIPE instead of killing the process, whatever the
/// signal's disposition. SIGPIPE from write() is sent to the writing thread, so a thread
/// mask suffices; the pending signal is consumed after each EPIPE (drain_sigpipe) and once
/// more before the mask is restored.
class SigpipeGuard {
public:
    explicit SigpipeGuard(Loop& loop) : loop_(loop) {
        sigset_t set, old;
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &set, &old);
        loop_.owns_sigpipe_ = !sigismember(&old, SIGPIPE);
    }
    ~SigpipeGuard() {
        if (!loop_.owns_sigpipe_)
            return;
        drain();
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
    }
    SigpipeGuard(const SigpipeGuard&) = delete;
    SigpipeGuard& operator=(const SigpipeGuard&) = delete;

    static void drain() noexcept {
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        timespec zero{};
        while (::sigtimedwait(&set, nullptr, &zero) > 0) {
        }
    }

private:
    Loop& loop_;
};

/// After EPIPE: consume the SIGPIPE it raised, if the loop blocked it.
inline void drain_sigpipe() noexcept {
    if (Loop* l = current_loop(); l && l->owns_sigpipe_)
        SigpipeGuard::drain();
}

} // namespace detail
} // namespace xiio
