#pragma once
// The loop: a ready queue, a timer heap and runners in front of a backend that owns the
// fds (detail/epoll.hpp, detail/io_uring.hpp). Users never touch it; awaitables register
// `Wait`s with it.
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
#include <xiio/detail/epoll.hpp>
#include <xiio/detail/io_uring.hpp>
#include <xiio/detail/loop_registry.hpp>
#include <xiio/detail/remote_queue.hpp>
#include <xiio/detail/std_parts.hpp>
#include <xiio/errors.hpp>

#include <atomic>
#include <cassert>
#include <coroutine>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <limits>
#include <map>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
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

/// How a loop talks to the kernel (RunOptions::backend). `automatic`: the XIIO_BACKEND
/// environment variable (`epoll` or `io_uring`) if set, else epoll (io_uring is not yet
/// faster on every workload; see the README).
enum class Backend { automatic, epoll, io_uring };

namespace detail {

/// Whether `automatic` tries io_uring first (and falls back to epoll where the kernel or
/// a sandbox refuses it). Off until io_uring is faster everywhere; tests turn it on.
inline std::atomic<bool>& automatic_prefers_io_uring() noexcept {
    static std::atomic<bool> prefer{false};
    return prefer;
}

/// The backend `b` stands for: `automatic` resolved through XIIO_BACKEND. Throws
/// std::invalid_argument for another value of XIIO_BACKEND.
inline Backend resolve_backend(Backend b) {
    if (b != Backend::automatic)
        return b;
    const char* env = std::getenv("XIIO_BACKEND");
    if (!env || !*env)
        return Backend::automatic;
    std::string_view v = env;
    if (v == "epoll")
        return Backend::epoll;
    if (v == "io_uring")
        return Backend::io_uring;
    throw std::invalid_argument("XIIO_BACKEND: \"" + std::string(v) +
                                "\" is neither epoll nor io_uring");
}

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
    /// A loop on the readiness backend over `poller` (epoll, a host's, a test's double).
    explicit Loop(std::unique_ptr<Poller> poller) {
        prebuilt_errors(); // before any noexcept path needs one
        auto b = std::make_unique<EpollBackend>(*this, std::move(poller));
        epoll_ = b.get();
        backend_ = std::move(b);
    }
    /// A loop on backend `b` (see Backend; a test's poller_factory() wins). Throws
    /// std::system_error where io_uring was asked for (explicitly or by XIIO_BACKEND) and
    /// is refused, std::invalid_argument for a bad XIIO_BACKEND.
    explicit Loop(Backend b, IoUringParams params = {}) {
        prebuilt_errors();
        b = poller_factory() ? Backend::epoll : resolve_backend(b);
        if (b == Backend::automatic && automatic_prefers_io_uring()) {
            try {
                backend_ = std::make_unique<IoUringBackend>(*this, params);
                return;
            } catch (const std::system_error&) { // ENOSYS, EPERM (seccomp), EACCES, ...
            }
        }
        if (b == Backend::io_uring) {
            backend_ = std::make_unique<IoUringBackend>(*this, params);
            return;
        }
        auto e = std::make_unique<EpollBackend>(*this, make_poller());
        epoll_ = e.get();
        backend_ = std::move(e);
    }
    Loop(const Loop&) = delete;
    Loop& operator=(const Loop&) = delete;
    ~Loop() {
        if (record_.loop) { // from now on an Fd closed elsewhere finds no loop: closes itself
            std::lock_guard lock(LoopRegistry::mutex());
            LoopRegistry::remove(record_);
        }
        if (remote_) {
            backend_->remove_wakeup(); // before its eventfd is closed
            take_orphans();
            for (RemoteNode* n = remote_->close(); n;) // dropped here, on the loop's thread
                std::exchange(n, n->next_remote)->remote_done(false);
            count(Counter::registrations, -1);
        }
        flush_graveyard();
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
        if (w.in_flight) [[unlikely]]   // the kernel may still write its buffer: stop it first
            return backend_->cancel(w); // and wake it when that completes
        w.woken = true;
        if (w.transient_fds) [[unlikely]]
            epoll_->count_woken(w);
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
                epoll_ ? epoll_->detach(n) : backend_->detach(n);
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
        take_orphans_if_any(); // a number closed elsewhere may be reused now
        if (backend_->claimed(fd))
            throw std::logic_error("xiio: two Fds own fd " + std::to_string(fd));
        enlist();
        remote_->reserve_orphans(owned_ + 1);
        const std::uint64_t serial = next_serial();
        backend_->claim(fd, serial);
        ++owned_;
        s.loop = id_;
        s.serial = serial;
    }

    /// Whether an Fd of this loop claimed number `fd`: it is O_NONBLOCK (claim made it so),
    /// even where a plain int names it (`read_exactly(socket.fd(), buf)`).
    bool claimed(int fd) noexcept {
        take_orphans_if_any(); // closed elsewhere: the number may be reused
        return backend_->claimed(fd);
    }

    /// Starts `n`: a wait for its fd's readiness, or its operation (io_uring). `serial`
    /// (from FdRef, 0 for a plain int) names an Fd's registration claimed here: it lasts
    /// as long as the Fd. Returns false if the fd cannot be watched (a regular file under
    /// epoll): it counts as ready at once, `n` is not attached. Throws std::system_error.
    bool attach(FdNode& n, std::uint64_t serial) {
        return epoll_ ? epoll_->attach(n, serial) : backend_->attach(n, serial);
    }

    /// Whether the backend performs operations itself (io_uring: every backend but the
    /// readiness one): an awaitable then hands them over whole instead of trying the
    /// syscall first.
    bool completes_io() const noexcept { return !epoll_; }

    /// The Fd that claimed registration `serial` of `fd` is closed or released: drop the
    /// registration, fail its waiters. Nothing if that registration is gone already.
    void forget(int fd, std::uint64_t serial) noexcept {
        if (backend_->forget(fd, serial))
            --owned_;
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
        if (!ready_size_ && heap_.empty() && backend_->fd_waiters == 0 && keepalive_ == 0)
            report_deadlock();
        if (ready_size_)
            return Clock::time_point::min();
        return heap_.empty() ? Clock::time_point::max() : heap_.front()->deadline;
    }

    /// Wakes the waiters of the fds a host reported ready (readiness backend only), then
    /// fires the due timers.
    void deliver(const std::vector<PollEvent>& events) noexcept {
        epoll_->deliver(events);
        fire_timers();
    }

    /// Wakes the waits whose deadline passed.
    void fire_timers() noexcept {
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
    friend void run_remote(Loop&) noexcept;
    friend void take_orphans(Loop&) noexcept;

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
        try {
            epoll_ ? epoll_->wait(deadline) : backend_->wait(deadline);
        } catch (...) {
            if (may_sleep)
                remote_->awake();
            return fail_all(std::current_exception());
        }
        if (may_sleep)
            remote_->awake();
        if (remote_ && remote_->pending()) // posted while awake: nothing was written
            run_remote();
        epoll_ ? epoll_->deliver() : backend_->deliver();
        fire_timers();
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

    /// take_orphans() if some were posted.
    void take_orphans_if_any() noexcept {
        if (remote_ && remote_->orphaned())
            take_orphans();
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
        remote_edge_ = backend_->add_wakeup(q->fd());
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

    std::unique_ptr<IoBackend> backend_;
    EpollBackend* epoll_ = nullptr; // backend_, if it is the readiness one (calls inlined)
    std::coroutine_handle<> next_;  // the trampoline's slot (resume/resume_next)
    Runner* ready_head_ = nullptr;
    Runner* ready_tail_ = nullptr;
    std::size_t ready_size_ = 0;
    std::vector<Wait*> heap_;
    std::uint64_t timer_seq_ = 0;
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

inline void wake(Loop& loop, Wait& w) noexcept {
    loop.wake(w);
}
inline void run_remote(Loop& loop) noexcept {
    loop.run_remote();
}
inline void take_orphans(Loop& loop) noexcept {
    loop.take_orphans_if_any();
}

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
