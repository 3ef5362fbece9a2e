#pragma once
// Randomized task trees: a generator, an interpreter that runs a tree on xiio, and a model
// that predicts its outcome from the same tree, per the documented API (README.md). Used by
// tests/test_torture.cpp (Catch) and fuzz/fuzz_schedule.cpp (libFuzzer): nothing here
// depends on Catch. check_tree() returns "" or a description of what went wrong.
//
// How timing is made deterministic: virtual ticks.
// - Every "event" (a leaf that throws, a tg.cancel(), a timeout expiring, a future set
//   with an exception) first waits for its own tick, an xiio::Event that nobody else
//   waits for. Ticks are numbered in program order, so a node's tick is always later than
//   the tick in which it starts.
// - Everything else (small sleeps, pipes, threads, processes, queues, cleanup) is "busy"
//   work that finishes by itself within the tick in which it started. One kind of busy
//   leaf crosses loops: on_loop to a second loop (a LoopThread made for the tree), which
//   runs a short sleep there; a cancellation in its tick is forwarded across threads and
//   waited for, so the model predicts it as any busy leaf.
// - A driver task sets tick k+1 only once the tree is quiet: no busy work in flight and
//   no progress for several yield()s. So exactly one event happens per tick and all its
//   consequences (cancellations, cleanups, propagation) are over before the next one:
//   "first error wins" is decided by tick order, whatever the speed of the machine.
// - A timeout that expires starts at its own tick, with a tiny real deadline, around a
//   body that must wait for a later tick: it always expires (during its tick). Other
//   timeouts get an hour: they never expire. What runs inside an expiring body before
//   the deadline depends on wall-clock time, so the model predicts only the timeout's
//   result there (cleanups are still checked: exactly once per node that started).
// - A handoff node races a hand-off (Queue::put, Semaphore::release, Event::set) against
//   the deadline of a timeout/move_on_after whose body is the one wait for it. It is busy
//   work too, but its order is set by timers and one loop pass, not by ticks; see
//   exec_handoff() for why each order is certain, including "both in one iteration".
// - A race node runs its children under xiio::race; each member then waits for a tick of
//   its own, allocated right after the child's ticks. So the child generated first always
//   ends first (its ticks and its member tick come before any tick of the others) and
//   decides the race, by value or error; the others are cancelled in that tick. The steps
//   are shuffled after generation, so the winner's index varies. Only the second child
//   generated keeps its cleanup_throws (and those of its subtree): two losers failing in
//   the same tick would make the error race throws depend on the order of their cleanups.
// - A shield node awaits xiio::shield(child): the child runs as a runner of its own, which
//   no cancellation from outside reaches; one that reaches the awaiting runner meanwhile is
//   held and becomes pending when the child ended. An expiring timeout never has a shield in
//   its body: it stays busy until it returns, and a shield there could wait for a later tick.
//
// The model (class Model) mirrors the interpreter function by function. Its primitive is
// `cancelled(runner, now, until)`: does a co_await that would end at tick `until` throw
// CancelledError instead (a cancellation pending on the runner, or one arriving from its
// group at a tick before `until`)? Groups are evaluated as a fixpoint on the tick `g` at
// which the group cancels itself (first error or cancel() call): evaluate every member
// with that tick, look for the earliest event, repeat until it does not move.

#include <xiio.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace torture {

using Tick = int;
inline constexpr Tick never = INT_MAX;

// ---- trees -------------------------------------------------------------------------------

enum class Kind {
    leaf,
    group,
    gather,
    timeout,
    cancel,
    pipe_pair,
    future_pair,
    queue_pair,
    handoff,
    race,
    shield
};
enum class Action { none, sleep, yield, thread, process, remote };

// handoff nodes: what is handed over, in which order against the deadline, in which form
// the body is given to timeout/move_on_after.
enum class Prim { queue, semaphore, event };
enum class Order {
    before,         // the hand-off comes one pass after the wait began; the deadline is 1 s
    handoff_first,  // in the iteration in which the deadline fires, just before it
    deadline_first, // in the iteration in which the deadline fires, just after it
    tie,            // both timers due in one iteration, within ~2 us: either order
    after,          // the hand-off comes once timeout/move_on_after has returned
};
enum class Form { awaitable, task, callable };

struct Step {
    bool add; // tg.add_task(child) or co_await child in the body
    int child;
};

struct Node {
    int id = 0;
    Kind kind = Kind::leaf;
    Tick tick = 0; // 0: none. leaf/cancel/future setter: waits for it; timeout: expires in it
    Action action = Action::none; // leaf: busy work after its tick
    int us = 0;         // sleep, writer delay, setter delay, timeout deadline (microseconds)
    bool fails = false; // leaf, future_pair: throws Err{id} in its tick
    bool cleanup_awaits = false; // the node's cleanup awaits a sleep of cleanup_us
    int cleanup_us = 0;
    bool cleanup_throws = false; // a cancelled node throws Err{cleanup_code} from its cleanup
    bool variant = false;        // gather: variadic; timeout: move_on_after; future: setter first;
                                 // leaf: its awaits run inside a generator that its task drains
    bool callable = false;       // timeout: body given as a callable
    int size = 0;                // pipe: bytes; queue, handoff: items
    int capacity = 1;            // queue, handoff
    int parent_group = -1;       // cancel: the group it cancels (its direct parent)
    Prim prim = Prim::queue;     // handoff: what is handed over (size items or permits)
    Order order = Order::before; // handoff: when, against its deadline (us: D)
    Form form = Form::awaitable; // handoff: the body: q.get() itself, a Task, a callable
    int handoff_ns = 0;          // handoff, tie: the hand-off is due at t0 + D + this
    bool again = false;          // handoff: the body awaits once more after it was handed
    std::vector<Step> steps;     // group body; gather, race children (add); timeout, shield body
    std::vector<Tick> member_ticks; // race: what member i waits for after its child (steps[i])
};

struct Tree {
    std::vector<Node> nodes;
    int root = 0;
    Tick ticks = 0; // highest tick used
};

inline int error_code(int id) {
    return id;
}
inline int cleanup_code(int id) {
    return 10000 + id;
}
inline int timeout_code(int id) {
    return 20000 + id;
}
/// What a handoff node returns when its timeout/move_on_after timed out (else id + 1).
inline int handoff_timed_out_value(int id) {
    return 30000 + id;
}

/// What a node throws: its code tells which node and why.
struct Err : std::exception {
    explicit Err(int c) : code(c) {}
    int code;
    const char* what() const noexcept override { return "torture::Err"; }
};

// ---- random choices ----------------------------------------------------------------------

/// Where the generator's choices come from: a seeded PRNG or the fuzzer's bytes.
class Chooser {
public:
    virtual ~Chooser() = default;
    /// A number in [0, n).
    virtual std::uint64_t below(std::uint64_t n) = 0;
    bool chance(int percent) { return below(100) < static_cast<std::uint64_t>(percent); }
};

class RngChooser final : public Chooser {
public:
    explicit RngChooser(std::uint64_t seed) : rng_(seed) {}
    std::uint64_t below(std::uint64_t n) override { return n ? rng_() % n : 0; }

private:
    std::mt19937_64 rng_;
};

/// Reads choices from bytes; once they run out every choice is 0 (the smallest tree).
class BytesChooser final : public Chooser {
public:
    BytesChooser(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
    std::uint64_t below(std::uint64_t n) override {
        if (n <= 1)
            return 0;
        std::uint64_t v = 0;
        for (std::uint64_t range = 1; range < n && range < (1ull << 56); range <<= 8)
            v = (v << 8) | (pos_ < size_ ? data_[pos_++] : 0);
        return v % n;
    }

private:
    const std::uint8_t* data_;
    std::size_t size_;
    std::size_t pos_ = 0;
};

struct Config {
    int max_nodes = 24;
    int max_depth = 4;
    int max_sleep_us = 3000;
    bool threads = true;     // in_thread leaves
    bool remotes = true;     // every other thread leaf awaits on_loop to a second LoopThread
    int thread_percent = 10; // of busy leaf actions
    bool processes = true;   // run_process leaves (slow: rare)
    bool pipes = true;
    bool inject = true;      // EINTR / EAGAIN / short reads and writes on the trees' pipes
    int watchdog_ms = 20000; // a tree that does not settle is reported as a hang
    bool handoffs = true;    // handoff nodes (a hand-off racing a deadline)
    bool races = true;       // race nodes
    bool shields = true;     // shield nodes
    // Was an xiio bug (test "task_group<R> drops an error the body raised after cancel()"):
    // a body whose awaited step turns its cancellation into an error after tg.cancel()
    // made task_group<R> throw that error instead of CancelledError. While true, groups
    // with a cancel node do not generate such steps. Fixed: false.
    bool avoid_body_error_after_cancel = false;
    // Was an xiio bug (test "timeout and move_on_after rethrow at once a CancelledError the
    // body threw itself"): the timer member was not stopped, so the timeout waited for its
    // deadline and then reported a timeout. While true, cancel nodes under a timeout that
    // does not expire become plain leaves. Fixed: false.
    bool avoid_timeout_body_cancelled = false;
    // Was an xiio bug (test "a member added after the group was cancelled from outside never
    // starts"): a group body that is woken but not yet resumed when an outside
    // cancellation comes added members that were never cancelled, and the outside
    // cancellation waited for them (a hang if they waited for a later tick). While true,
    // the groups under an expiring timeout add all their members before their first
    // co_await. Fixed: false.
    bool avoid_late_member_after_outside_cancel = false;
};

// ---- the generator -----------------------------------------------------------------------

class Generator {
public:
    Generator(Chooser& ch, const Config& cfg) : ch_(ch), cfg_(cfg) {}

    Tree make() {
        t_.root = ch_.chance(70) ? make_group(0) : ch_.chance(50) ? make_gather(0) : gen(0, -1);
        t_.ticks = next_tick_ - 1;
        return std::move(t_);
    }

private:
    int new_node(Kind k) {
        Node n;
        n.id = static_cast<int>(t_.nodes.size());
        n.kind = k;
        if (ch_.chance(40)) {
            n.cleanup_awaits = true;
            n.cleanup_us = ch_.chance(50) ? 0 : static_cast<int>(ch_.below(1000));
        }
        n.cleanup_throws = ch_.chance(25);
        t_.nodes.push_back(n);
        return n.id;
    }
    Node& at(int id) { return t_.nodes[static_cast<std::size_t>(id)]; }
    bool full() const { return static_cast<int>(t_.nodes.size()) >= cfg_.max_nodes; }

    Action busy_action() {
        if (cfg_.processes && ch_.below(60) == 0)
            return Action::process;
        // A cross-loop leaf replaces every other in_thread leaf without a choice of its
        // own: the trees of a seed keep their shape with remotes on or off.
        if (cfg_.threads && ch_.chance(cfg_.thread_percent))
            return cfg_.remotes && threads_made_++ % 2 ? Action::remote : Action::thread;
        return ch_.chance(20) ? Action::yield : Action::sleep;
    }
    int sleep_us() {
        // Mostly very short, sometimes up to the maximum; 0 behaves like yield().
        return ch_.chance(60)
                   ? static_cast<int>(ch_.below(200))
                   : static_cast<int>(ch_.below(static_cast<std::uint64_t>(cfg_.max_sleep_us) + 1));
    }

    /// A node started in program order after everything generated so far; `group` is the
    /// group whose direct child it is (-1: none), which a cancel node may cancel.
    int gen(int depth, int group) {
        bool leafy = depth >= cfg_.max_depth || full();
        // weights: leaf, group, gather, timeout, cancel, pipe, future, queue, handoff, race,
        // shield
        std::array<int, 11> w{35,
                              16,
                              12,
                              12,
                              group >= 0 ? 10 : 0,
                              cfg_.pipes ? 5 : 0,
                              6,
                              4,
                              cfg_.handoffs ? 7 : 0,
                              cfg_.races ? 8 : 0,
                              cfg_.shields ? 7 : 0};
        if (leafy)
            w[1] = w[2] = w[3] = w[9] = w[10] = 0;
        int total = 0;
        for (int x : w)
            total += x;
        int r = static_cast<int>(ch_.below(static_cast<std::uint64_t>(total)));
        int k = 0;
        while (r >= w[static_cast<std::size_t>(k)])
            r -= w[static_cast<std::size_t>(k++)];
        switch (static_cast<Kind>(k)) {
        case Kind::leaf:
            return leaf();
        case Kind::group:
            return make_group(depth);
        case Kind::gather:
            return make_gather(depth);
        case Kind::timeout:
            return make_timeout(depth);
        case Kind::cancel: {
            int id = new_node(Kind::cancel);
            at(id).tick = next_tick_++;
            at(id).parent_group = group;
            return id;
        }
        case Kind::pipe_pair: {
            int id = new_node(Kind::pipe_pair);
            at(id).size = ch_.chance(20) ? 1 + static_cast<int>(ch_.below(200000))
                                         : 1 + static_cast<int>(ch_.below(100));
            at(id).us = sleep_us();
            return id;
        }
        case Kind::future_pair: {
            int id = new_node(Kind::future_pair);
            if (ch_.chance(70)) {
                at(id).tick = next_tick_++;
                at(id).fails = ch_.chance(40);
            }
            at(id).us = sleep_us();
            at(id).variant = ch_.chance(50);
            return id;
        }
        case Kind::queue_pair: {
            int id = new_node(Kind::queue_pair);
            at(id).capacity = 1 + static_cast<int>(ch_.below(3));
            at(id).size = static_cast<int>(ch_.below(7));
            return id;
        }
        case Kind::handoff:
            return make_handoff();
        case Kind::race:
            return make_race(depth);
        case Kind::shield: {
            int id = new_node(Kind::shield);
            int c = gen(depth + 1, -1); // no cancel node: its runner is in no group of ours
            at(id).steps.push_back({false, c});
            return id;
        }
        }
        return leaf();
    }

    int make_race(int depth) {
        int id = new_node(Kind::race);
        int n = 1 + static_cast<int>(ch_.below(3));
        std::vector<std::pair<int, Tick>> members;
        for (int i = 0; i < n; ++i) {
            int c = gen(depth + 1, -1); // first: it may reallocate the nodes
            if (i >= 2)
                strip_cleanup_throws(c);
            members.push_back({c, next_tick_++});
        }
        for (int i = n - 1; i > 0; --i) // shuffled: the winner (generated first) at any index
            std::swap(members[static_cast<std::size_t>(i)],
                      members[ch_.below(static_cast<std::uint64_t>(i) + 1)]);
        for (auto [c, t] : members) {
            at(id).steps.push_back({true, c});
            at(id).member_ticks.push_back(t);
        }
        at(id).variant = n == 2 && ch_.chance(50);
        return id;
    }

    void strip_cleanup_throws(int id) {
        at(id).cleanup_throws = false;
        for (const Step& s : at(id).steps)
            strip_cleanup_throws(s.child);
    }

    bool has_shield(int id) {
        if (at(id).kind == Kind::shield)
            return true;
        for (const Step& s : at(id).steps)
            if (has_shield(s.child))
                return true;
        return false;
    }

    /// A hand-off against a deadline. Most of them fall due in one loop iteration: the case
    /// in which the deadline's cancellation finds the body already handed its item.
    int make_handoff() {
        int id = new_node(Kind::handoff);
        Node& n = at(id);
        auto pick = [this](int lo, int hi) { // in [lo, hi]
            return lo + static_cast<int>(ch_.below(static_cast<std::uint64_t>(hi - lo + 1)));
        };
        int p = static_cast<int>(ch_.below(100));
        n.prim = p < 45 ? Prim::queue : p < 85 ? Prim::semaphore : Prim::event;
        int o = static_cast<int>(ch_.below(100));
        n.order = o < 40   ? Order::handoff_first
                  : o < 60 ? Order::deadline_first
                  : o < 70 ? Order::tie
                  : o < 85 ? Order::before
                           : Order::after;
        n.form = static_cast<Form>(ch_.below(3));
        n.again = n.form != Form::awaitable && ch_.chance(25);
        n.variant = ch_.chance(50); // move_on_after
        n.size = pick(1, 2);
        n.capacity = n.size + pick(0, 1); // the giver's puts never wait
        switch (n.order) {
        case Order::before:
            n.us = 1000000;
            break;
        case Order::handoff_first:
            n.us = pick(0, 300);
            break;
        case Order::deadline_first:
            n.us = 0; // due when the timer task first runs
            break;
        case Order::tie: // at t0 + D + [0, 2 us): the deadline is t0 + D + (about 1 us)
            n.us = pick(100, 400);
            n.handoff_ns = pick(0, 1999);
            break;
        case Order::after:
            n.us = pick(0, 300);
            break;
        }
        return id;
    }

    int leaf() {
        int id = new_node(Kind::leaf);
        // Every other leaf is a generator's body: chosen by id, not by the chooser, so the
        // trees of existing seeds (and fuzz inputs) keep their shape.
        at(id).variant = id % 2 == 1;
        if (ch_.chance(55)) {
            at(id).tick = next_tick_++;
            at(id).fails = ch_.chance(45);
            if (ch_.chance(50))
                return id; // the tick wait is its only co_await
        }
        at(id).action = busy_action();
        at(id).us = sleep_us();
        return id;
    }

    int make_group(int depth) {
        int id = new_node(Kind::group);
        int n = static_cast<int>(ch_.below(6));
        for (int i = 0; i < n && !full(); ++i) {
            bool add = ch_.chance(50);
            int c = gen(depth + 1, id);
            at(id).steps.push_back({add, c});
        }
        bool cancels = false;
        for (const Step& s : at(id).steps)
            cancels = cancels || at(s.child).kind == Kind::cancel;
        if (cancels && cfg_.avoid_body_error_after_cancel)
            for (const Step& s : at(id).steps)
                if (!s.add)
                    at(s.child).cleanup_throws = false;
        return id;
    }

    int make_gather(int depth) {
        int id = new_node(Kind::gather);
        int n = static_cast<int>(ch_.below(5));
        for (int i = 0; i < n; ++i) {
            int c = gen(depth + 1, -1); // first: it may reallocate the nodes
            at(id).steps.push_back({true, c});
        }
        at(id).variant = n == 2 && ch_.chance(50);
        return id;
    }

    bool has_tick(int id) {
        const Node& n = at(id);
        if (n.tick)
            return true;
        for (const Step& s : n.steps)
            if (has_tick(s.child))
                return true;
        return false;
    }

    void strip_cancels(int id) {
        if (at(id).kind == Kind::cancel) {
            at(id).kind = Kind::leaf; // keeps its tick: the tree's timing does not change
            at(id).parent_group = -1;
        }
        for (const Step& s : at(id).steps)
            strip_cancels(s.child);
    }

    void adds_first(int id) {
        auto& steps = at(id).steps;
        if (at(id).kind == Kind::group)
            std::stable_partition(steps.begin(), steps.end(), [](const Step& s) { return s.add; });
        for (const Step& s : at(id).steps)
            adds_first(s.child);
    }

    int make_timeout(int depth) {
        int id = new_node(Kind::timeout);
        Tick mine = next_tick_++; // before the body's ticks; unused if it does not expire
        int body = gen(depth + 1, -1);
        at(id).steps.push_back({false, body});
        if (has_tick(body) && !has_shield(body) && ch_.chance(60)) {
            at(id).tick = mine;
            at(id).us = static_cast<int>(ch_.below(2000));
            if (cfg_.avoid_late_member_after_outside_cancel)
                adds_first(body);
        } else if (cfg_.avoid_timeout_body_cancelled) {
            strip_cancels(body);
        }
        at(id).variant = ch_.chance(50);
        at(id).callable = ch_.chance(50);
        return id;
    }

    Chooser& ch_;
    Config cfg_;
    int threads_made_ = 0; // thread leaves so far (see busy_action)
    Tree t_;
    Tick next_tick_ = 1;
};

inline Tree generate(Chooser& ch, const Config& cfg) {
    return Generator(ch, cfg).make();
}

/// One line per node, indented by depth: enough to read a failing tree.
inline std::string dump(const Tree& t) {
    std::ostringstream o;
    auto rec = [&](auto& self, int id, int depth, const char* how) -> void {
        const Node& n = t.nodes[static_cast<std::size_t>(id)];
        static const char* kinds[] = {"leaf",   "group", "gather",  "timeout", "cancel", "pipe",
                                      "future", "queue", "handoff", "race",    "shield"};
        static const char* actions[] = {"", " sleep", " yield", " thread", " process", " on_loop"};
        o << std::string(static_cast<std::size_t>(depth) * 2, ' ') << how << "#" << n.id << " "
          << kinds[static_cast<int>(n.kind)];
        if (n.tick)
            o << " @" << n.tick;
        if (n.kind == Kind::leaf)
            o << actions[static_cast<int>(n.action)] << (n.variant ? " generator" : "");
        if (n.us)
            o << " " << n.us << "us";
        if (n.fails)
            o << " fails";
        if (n.kind == Kind::timeout)
            o << (n.variant ? " move_on_after" : " timeout") << (n.tick ? " expiring" : " 1h")
              << (n.callable ? " callable" : "");
        if ((n.kind == Kind::gather || n.kind == Kind::race) && n.variant)
            o << " variadic";
        if (n.kind == Kind::race) {
            o << " member ticks";
            for (Tick t : n.member_ticks)
                o << " @" << t;
        }
        if (n.kind == Kind::handoff) {
            static const char* prims[] = {"queue", "semaphore", "event"};
            static const char* orders[] = {"before", "handoff-first", "deadline-first", "tie",
                                           "after"};
            static const char* forms[] = {"awaitable", "task", "callable"};
            o << " " << prims[static_cast<int>(n.prim)] << " " << orders[static_cast<int>(n.order)]
              << (n.order == Order::tie ? " +" + std::to_string(n.handoff_ns) + "ns " : " ")
              << (n.variant ? "move_on_after " : "timeout ") << forms[static_cast<int>(n.form)]
              << (n.again ? " again" : "");
        }
        if (n.kind == Kind::pipe_pair || n.kind == Kind::queue_pair || n.kind == Kind::handoff)
            o << " size " << n.size;
        if (n.kind == Kind::queue_pair || (n.kind == Kind::handoff && n.prim == Prim::queue))
            o << " cap " << n.capacity;
        if (n.kind == Kind::future_pair && n.variant)
            o << " setter-first";
        if (n.cleanup_awaits)
            o << " cleanup-await " << n.cleanup_us << "us";
        if (n.cleanup_throws)
            o << " cleanup-throws";
        o << "\n";
        for (const Step& s : n.steps)
            self(self, s.child, depth + 1,
                 n.kind == Kind::group ? (s.add ? "add " : "await ") : "");
    };
    rec(rec, t.root, 0, "");
    o << "ticks: " << t.ticks << "\n";
    return o.str();
}

// ---- outcomes ----------------------------------------------------------------------------

struct Outcome {
    enum Kind { value, error, cancelled, other } kind = value;
    long v = 0;       // value, or error code
    std::string what; // other: what was thrown
    bool operator==(const Outcome& o) const { return kind == o.kind && v == o.v && what == o.what; }
    std::string str() const {
        switch (kind) {
        case value:
            return "value " + std::to_string(v);
        case error:
            return "Err " + std::to_string(v);
        case cancelled:
            return "CancelledError";
        case other:
            return "unexpected exception: " + what;
        }
        return "?";
    }
    static Outcome val(long v) { return {value, v, {}}; }
    static Outcome err(int code) { return {error, code, {}}; }
    static Outcome cancel() { return {cancelled, 0, {}}; }
};

// ---- the model ---------------------------------------------------------------------------

class Model {
public:
    explicit Model(const Tree& t)
        : started(t.nodes.size(), false), unpredictable(t.nodes.size(), false), t_(t) {
        for (const Node& n : t.nodes)
            has_shield_ = has_shield_ || n.kind == Kind::shield;
    }

    Outcome run() {
        Rt rt;
        Tick now = 0;
        return node(t_.root, rt, now, nullptr);
    }

    std::vector<bool> started; // predicted: the node's wrapper ran
    std::vector<bool>
        unpredictable; // inside an expiring timeout's body: only cleanup==start is checked

private:
    struct Rt {               // a runner (a task the loop schedules)
        Tick c = never;       // when its group cancels it (consumed once delivered)
        bool pending = false; // cancelled while running: the next co_await throws
        bool hit = false;     // some cancellation was delivered to it
        Tick hit_at = never;  // the tick of c when it was delivered (or held by a shield)
    };
    struct GroupState {
        Tick g;             // the tick assumed for the group's own cancellation
        Tick first = never; // earliest cancel() call seen with effect
    };
    struct Member {
        Outcome o;
        Tick end;
        bool hit;
        Tick hit_at; // see Rt
    };

    const Node& at(int id) const { return t_.nodes[static_cast<std::size_t>(id)]; }

    [[noreturn]] static void fail(const std::string& s) { throw std::logic_error("model: " + s); }

    /// A co_await that would complete at tick `until` (== now: busy work). True if it
    /// throws CancelledError instead; `now` becomes the tick it ends in.
    static bool cancelled(Rt& rt, Tick& now, Tick until) {
        if (until < now)
            fail("a wait for a past tick");
        if (rt.pending) {
            rt.pending = false;
            rt.hit = true;
            return true;
        }
        if (rt.c < until) {
            if (rt.c < now)
                fail("a cancellation was not delivered in time");
            now = rt.c;
            rt.hit_at = rt.c;
            rt.c = never;
            rt.hit = true;
            return true;
        }
        now = until;
        return false;
    }

    void clear(int id) {
        for (const Step& s : at(id).steps) {
            started[static_cast<std::size_t>(s.child)] = false;
            unpredictable[static_cast<std::size_t>(s.child)] = false;
            clear(s.child);
        }
    }
    void mark_unpredictable(int id) {
        unpredictable[static_cast<std::size_t>(id)] = true;
        for (const Step& s : at(id).steps)
            mark_unpredictable(s.child);
    }

    /// run_node(): the wrapper with its cleanup.
    Outcome node(int id, Rt& rt, Tick& now, GroupState* gs) {
        const Node& n = at(id);
        started[static_cast<std::size_t>(id)] = true;
        Outcome o = exec(n, rt, now, gs);
        if (n.cleanup_awaits && cancelled(rt, now, now) && o.kind == Outcome::value)
            o = Outcome::cancel();
        if (o.kind == Outcome::cancelled && n.cleanup_throws)
            o = Outcome::err(cleanup_code(id));
        return o;
    }

    Outcome exec(const Node& n, Rt& rt, Tick& now, GroupState* gs) {
        switch (n.kind) {
        case Kind::leaf:
            if (n.tick && cancelled(rt, now, n.tick))
                return Outcome::cancel();
            if (n.action != Action::none && cancelled(rt, now, now))
                return Outcome::cancel();
            return n.fails ? Outcome::err(error_code(n.id)) : Outcome::val(n.id + 1);
        case Kind::cancel:
            if (cancelled(rt, now, n.tick))
                return Outcome::cancel();
            if (!gs)
                fail("cancel outside a group");
            if (n.tick <= gs->g) { // else the group was cancelled already: a no-op
                gs->first = std::min(gs->first, n.tick);
                rt.pending = true; // cancel() cancels the caller too
                if (rt.c == n.tick)
                    rt.c = never; // ... once
            }
            return Outcome::val(n.id + 1);
        case Kind::pipe_pair:
        case Kind::queue_pair:
            // A gather of two busy tasks: only a pending cancellation stops it (at its join).
            if (cancelled(rt, now, now))
                return Outcome::cancel();
            return Outcome::val(n.id + 1);
        case Kind::handoff:
            // Busy work too (its three tasks end within the tick it started in).
            if (cancelled(rt, now, now))
                return Outcome::cancel();
            return Outcome::val(handoff_returns_value(n) ? n.id + 1
                                                         : handoff_timed_out_value(n.id));
        case Kind::future_pair:
            if (cancelled(rt, now, now)) // pending: the gather never starts
                return Outcome::cancel();
            if (n.tick && cancelled(rt, now, n.tick))
                return Outcome::cancel();
            return n.fails ? Outcome::err(error_code(n.id)) : Outcome::val(n.id + 1);
        case Kind::group:
            return group(n, rt, now);
        case Kind::gather:
            return gather(n, rt, now);
        case Kind::timeout:
            return timeout(n, rt, now);
        case Kind::race:
            return race(n, rt, now);
        case Kind::shield:
            return shield(n, rt, now);
        }
        fail("unknown kind");
    }

    /// Whether a handoff node's timeout/move_on_after returns the body's value rather than
    /// time out. README ("a deadline never throws away what the body was handed"): a timeout
    /// is reported only if its CancelledError reached the body.
    static bool handoff_returns_value(const Node& n) {
        switch (n.order) {
        case Order::before: // handed over a pass after the wait began; the deadline is 1 s away
            return true;
        case Order::handoff_first:
            // In the iteration in which the deadline fires, the put/release/set runs just
            // before it and wakes the body: the cancellation finds it woken, stays pending.
            // A body that returns at once was never cancelled: its value. One that awaits
            // again gets the CancelledError there, gives the item back, and timed out.
            return !n.again;
        case Order::deadline_first: // the cancellation reaches the waiting body: it takes
        case Order::after:          // nothing, the items stay in the queue / permits free
            return false;
        case Order::tie:
            // Due within ~2 us of each other in the same iteration: which timer comes first
            // depends on the clock, so either outcome is right. The node returns id + 1 both
            // ways; what is checked is conservation (exec_handoff): nothing lost, nothing
            // handed out twice, a timeout only if the body holds nothing.
            return true;
        }
        fail("unknown order");
    }

    /// The tick of the group's first event among `ms` (and cancel() calls), given the
    /// members were evaluated assuming `g`; and the error it raised, if any.
    static Tick first_event(const std::vector<Member>& ms, Tick calls, const Member** error) {
        Tick ev = calls;
        *error = nullptr;
        for (const Member& m : ms) {
            if (m.o.kind != Outcome::error || m.hit)
                continue; // only spontaneous errors count: not those of a cancelled member
            if (m.end == ev)
                fail("two events in one tick");
            if (m.end < ev) {
                ev = m.end;
                *error = &m;
            }
        }
        return ev;
    }

    Outcome group(const Node& n, Rt& rt, Tick& now) {
        if (cancelled(rt, now, now)) // pending: the body is abandoned, nothing starts
            return Outcome::cancel();
        const Tick outer = rt.c;
        const Tick start = now;
        Tick g = never;
        for (;;) {
            clear(n.id);
            GroupState gs{g};
            std::vector<Member> ms;
            Rt body{std::min(outer, g)};
            Tick tb = start;
            long sum = n.id + 1;
            Outcome bo = Outcome::val(0);
            for (const Step& s : n.steps) {
                if (s.add) {
                    if (outer < tb) {
                        // The body held the outside cancellation (a shield) and adds after
                        // it: the member is cancelled at once and never starts.
                        ms.push_back({Outcome::cancel(), tb, true, outer});
                        continue;
                    }
                    // Added after the group cancelled itself: runs normally (but an
                    // outside cancellation still reaches it).
                    Rt m{tb >= g ? outer : std::min(outer, g)};
                    Tick tm = tb;
                    Outcome mo = node(s.child, m, tm, &gs);
                    ms.push_back({mo, tm, m.hit, m.hit_at});
                } else {
                    Outcome so = node(s.child, body, tb, &gs);
                    if (so.kind != Outcome::value) {
                        bo = so;
                        break;
                    }
                    sum += so.v;
                }
            }
            if (bo.kind == Outcome::value)
                bo.v = sum;
            ms.push_back({bo, tb, body.hit, body.hit_at});
            const Member* error = nullptr;
            Tick ev = first_event(ms, gs.first, &error);
            if (ev < g) {
                g = ev;
                continue;
            }
            if (ev != g)
                fail("group event moved later");
            return finish(ms, outer, g, rt, now, error, bo);
        }
    }

    /// Common end of group and gather: outside cancellation wins, then the first error,
    /// then the body's outcome (`bo`; for gather, computed by the caller).
    Outcome finish(const std::vector<Member>& ms, Tick outer, Tick g, Rt& rt, Tick& now,
                   const Member* error, const Outcome& bo) {
        if (interrupted(ms, outer, g, rt, now))
            return Outcome::cancel();
        if (error)
            return error->o;
        // The reference: after cancel(), errors are dropped; a body that was cancelled and has
        // no value makes task_group<R> throw CancelledError.
        if (bo.kind == Outcome::error)
            return Outcome::cancel();
        return bo;
    }

    /// The end of a group: `now` moves to its last member's end. True if the outer
    /// cancellation interrupted its join: a member was cancelled by it (not by the group's
    /// own event in the same tick, which then caused it), or outlived it (a shield held it).
    bool interrupted(const std::vector<Member>& ms, Tick outer, Tick g, Rt& rt, Tick& now) {
        Tick end = now;
        for (const Member& m : ms)
            end = std::max(end, m.end);
        if (outer != never && end > outer && !has_shield_)
            fail("a member outlived the outer cancellation");
        now = end;
        bool outside = false;
        for (const Member& m : ms)
            outside =
                outside || (outer != never && g != outer && (m.hit_at == outer || m.end > outer));
        if (outside) {
            rt.c = never;
            rt.hit = true;
            rt.hit_at = outer;
        }
        return outside;
    }

    /// race: see the top of this file. The first member to end by itself (not cancelled)
    /// decides at tick g; the others are cancelled then. Its value (plus 7 x its index), or
    /// its exception; if it returned a value, the first loser's error is thrown instead.
    Outcome race(const Node& n, Rt& rt, Tick& now) {
        if (cancelled(rt, now, now)) // pending: the group body is abandoned, nothing starts
            return Outcome::cancel();
        const Tick outer = rt.c;
        Tick g = never;
        for (;;) {
            clear(n.id);
            std::vector<Member> ms;
            for (std::size_t i = 0; i < n.steps.size(); ++i) {
                Rt m{std::min(outer, g)};
                Tick tm = now;
                Outcome mo = node(n.steps[i].child, m, tm, nullptr);
                if (mo.kind == Outcome::value && cancelled(m, tm, n.member_ticks.at(i)))
                    mo = Outcome::cancel();
                ms.push_back({mo, tm, m.hit, m.hit_at});
            }
            Tick ev = never;
            std::size_t w = ms.size();
            for (std::size_t i = 0; i < ms.size(); ++i) {
                if (ms[i].hit)
                    continue;
                if (ms[i].end == ev)
                    fail("two members of a race end in one tick");
                if (ms[i].end < ev) {
                    ev = ms[i].end;
                    w = i;
                }
            }
            if (ev < g) {
                g = ev;
                continue;
            }
            if (ev != g)
                fail("race event moved later");
            if (interrupted(ms, outer, g, rt, now))
                return Outcome::cancel();
            if (w == ms.size())
                fail("a race without a winner, not cancelled from outside");
            Outcome o = ms[w].o;
            if (o.kind != Outcome::value)
                return o;
            o.v += n.id + 1 + 7 * static_cast<long>(w);
            const Member* lost = nullptr;
            for (std::size_t i = 0; i < ms.size(); ++i) {
                if (i == w || ms[i].o.kind != Outcome::error)
                    continue;
                if (lost && lost->end == ms[i].end)
                    fail("two losers of a race fail in one tick");
                if (!lost || ms[i].end < lost->end)
                    lost = &ms[i];
            }
            return lost ? lost->o : o;
        }
    }

    /// shield: the child runs on a runner of its own; a cancellation that reaches `rt`
    /// meanwhile is held, and pending once the child ended.
    Outcome shield(const Node& n, Rt& rt, Tick& now) {
        Rt own;
        Tick ts = now;
        Outcome o = node(n.steps.at(0).child, own, ts, nullptr);
        if (rt.c < ts) {
            if (rt.c < now)
                fail("a cancellation was not delivered in time");
            rt.hit_at = rt.c;
            rt.c = never;
            rt.pending = true;
            rt.hit = true;
        }
        now = ts;
        if (o.kind == Outcome::value)
            o.v += n.id + 1;
        return o;
    }

    Outcome gather(const Node& n, Rt& rt, Tick& now) {
        if (cancelled(rt, now, now))
            return Outcome::cancel();
        const Tick outer = rt.c;
        Tick g = never;
        for (;;) {
            clear(n.id);
            std::vector<Member> ms;
            for (const Step& s : n.steps) {
                Rt m{std::min(outer, g)};
                Tick tm = now;
                Outcome mo = node(s.child, m, tm, nullptr);
                ms.push_back({mo, tm, m.hit, m.hit_at});
            }
            const Member* error = nullptr;
            Tick ev = first_event(ms, never, &error);
            if (ev < g) {
                g = ev;
                continue;
            }
            // No error: the values in input order; a member that ended with
            // CancelledError (its own group's cancel()) makes gather rethrow it.
            Outcome bo = Outcome::val(n.id + 1);
            for (const Member& m : ms) {
                if (bo.kind != Outcome::value)
                    break;
                if (m.o.kind == Outcome::value)
                    bo.v += m.o.v;
                else
                    bo = m.o;
            }
            return finish(ms, outer, g, rt, now, error, bo);
        }
    }

    Outcome timeout(const Node& n, Rt& rt, Tick& now) {
        int child = n.steps.at(0).child;
        if (n.tick) { // expiring: see the top of this file
            if (cancelled(rt, now, n.tick))
                return Outcome::cancel();
            mark_unpredictable(child);
            started[static_cast<std::size_t>(child)] = false; // may or may not start
            return n.variant ? Outcome::val(-(n.id + 1)) : Outcome::err(timeout_code(n.id));
        }
        if (cancelled(rt, now, now)) // pending: the group body is abandoned
            return Outcome::cancel();
        const Tick outer = rt.c;
        Rt b{outer};
        Tick tb = now;
        Outcome o = node(child, b, tb, nullptr);
        std::vector<Member> ms{{o, tb, b.hit, b.hit_at}};
        const Member* error = nullptr;
        Tick g = first_event(ms, never, &error);
        // The body's own CancelledError (not an outside one) leaves run_with_deadline
        // without a value: CancelledError as well.
        return finish(ms, outer, g, rt, now, error,
                      o.kind == Outcome::error ? Outcome::cancel() : o);
    }

    const Tree& t_;
    bool has_shield_ = false; // members may outlive an outer cancellation (held)
};

// ---- the interpreter ---------------------------------------------------------------------

/// EINTR, EAGAIN and short counts on the pipes of the tree being run (only those: the
/// loop's own eventfds are not expected to see them). Thread-safe lookup: the pool's
/// threads call the injector too, for their eventfds.
class Injector final : public xiio::detail::sys::Injector {
public:
    explicit Injector(std::uint64_t seed) : rng_(seed) {
        for (auto& f : fds_)
            f.store(-1);
    }
    void watch(int fd) {
        for (auto& f : fds_) {
            int none = -1;
            if (f.compare_exchange_strong(none, fd))
                return;
        }
    }
    void unwatch(int fd) {
        for (auto& f : fds_) {
            int mine = fd;
            if (f.compare_exchange_strong(mine, -1))
                return;
        }
    }
    int before(xiio::detail::sys::Call call, int fd, std::size_t& size) noexcept override {
        using xiio::detail::sys::Call;
        if (call != Call::read && call != Call::write)
            return 0;
        if (std::none_of(fds_.begin(), fds_.end(), [fd](const auto& f) { return f.load() == fd; }))
            return 0;
        std::lock_guard lock(mutex_);
        switch (rng_() % 10) {
        case 0:
            ++injected;
            return EINTR;
        case 1:
            ++injected;
            return EAGAIN;
        case 2:
        case 3:
            if (size > 1) {
                ++injected;
                size = 1 + rng_() % (size - 1);
            }
            return 0;
        default:
            return 0;
        }
    }
    std::atomic<long> injected{0};

private:
    std::array<std::atomic<int>, 64> fds_;
    std::mutex mutex_;
    std::mt19937_64 rng_;
};

/// Keeps a pipe's fds watched by the injector while it lives.
struct Watched {
    Injector* inj;
    int fds[2];
    Watched(Injector* i, int a, int b) : inj(i), fds{a, b} {
        if (inj) {
            inj->watch(a);
            inj->watch(b);
        }
    }
    ~Watched() {
        if (inj) {
            inj->unwatch(fds[0]);
            inj->unwatch(fds[1]);
        }
    }
    Watched(const Watched&) = delete;
    Watched& operator=(const Watched&) = delete;
};

struct Run {
    explicit Run(const Tree& tree, const Config& c) : t(tree), cfg(c) {
        for (Tick k = 0; k <= t.ticks; ++k)
            ticks.push_back(std::make_unique<xiio::Event>());
        started.assign(t.nodes.size(), 0);
        cleaned.assign(t.nodes.size(), 0);
        groups.assign(t.nodes.size(), nullptr);
    }
    const Tree& t;
    Config cfg;
    std::vector<std::unique_ptr<xiio::Event>> ticks;
    std::vector<int> started, cleaned;
    std::vector<xiio::TaskGroup*> groups; // while a group's body may run
    Injector* injector = nullptr;
    xiio::LoopHandle remote; // the second loop of on_loop leaves (a LoopThread's)
    int busy = 0;
    long progress = 0;
    bool root_done = false;
    std::string hang; // set by the driver when the tree does not settle
    Outcome outcome;
    Tick ticks_fired = 0;
    std::string violations; // broken invariants found while running (handoff conservation)
    long handoff_races = 0; // handoff nodes whose hand-off and deadline ran in one iteration
    long handoff_hits = 0;  // ... in which the body returned with the cancellation pending
    long shield_holds = 0;  // shields that returned with a held cancellation now pending

    const Node& at(int id) const { return t.nodes[static_cast<std::size_t>(id)]; }
};

/// Marks busy work: the driver does not fire the next tick while any is in flight.
struct Busy {
    explicit Busy(Run& r) : r_(r) { ++r_.busy; }
    ~Busy() {
        --r_.busy;
        ++r_.progress;
    }
    Busy(const Busy&) = delete;
    Busy& operator=(const Busy&) = delete;
    Run& r_;
};

xiio::Task<int> run_node(Run& r, int id);

/// The part of an on_loop leaf that runs on the second loop.
inline xiio::Task<int> remote_leaf(int id, int us) {
    co_await xiio::sleep(std::chrono::microseconds(us % 500));
    co_return id + 1;
}

inline xiio::Task<void> busy_action(Run& r, const Node& n) {
    Busy b(r);
    switch (n.action) {
    case Action::none:
        break;
    case Action::sleep:
        co_await xiio::sleep(std::chrono::microseconds(n.us));
        break;
    case Action::yield:
        co_await xiio::yield();
        break;
    case Action::thread: {
        auto job = [](int x) { return x + 1; };
        int v = co_await xiio::in_thread(job, n.id);
        if (v != n.id + 1)
            throw std::runtime_error("in_thread returned a wrong value");
        break;
    }
    case Action::remote: {
        // Busy work like a thread leaf, on another loop: a cancellation in this tick is
        // forwarded there and waited for, as the model predicts for any busy leaf.
        int v = co_await xiio::on_loop(r.remote, remote_leaf(n.id, n.us));
        if (v != n.id + 1)
            throw std::runtime_error("on_loop returned a wrong value");
        break;
    }
    case Action::process: {
        std::vector<std::string> cmd{"sh", "-c", n.us % 2 ? "true" : "sleep 0.002"};
        auto done = co_await xiio::run_process(std::move(cmd));
        if (done.returncode != 0)
            throw std::runtime_error("process failed: " + std::to_string(done.returncode));
        break;
    }
    }
}

inline xiio::Task<int> exec_leaf(Run& r, const Node& n) {
    if (n.tick)
        co_await r.ticks[static_cast<std::size_t>(n.tick)]->wait();
    if (n.action != Action::none)
        co_await busy_action(r, n);
    if (n.fails)
        throw Err(error_code(n.id));
    co_return n.id + 1;
}

/// A leaf's awaits as the body of a generator, with a value after each step: the body runs
/// inside the draining task's runner, so its tick wait, its busy work, its error and any
/// cancellation reach that task through next() exactly as they reach a plain leaf (the
/// model makes no difference between the two).
inline xiio::Generator<int> leaf_steps(Run& r, const Node& n) {
    co_yield 0;
    if (n.tick)
        co_await r.ticks[static_cast<std::size_t>(n.tick)]->wait();
    co_yield 1;
    if (n.action != Action::none)
        co_await busy_action(r, n);
    co_yield 2;
    if (n.fails)
        throw Err(error_code(n.id));
}

inline xiio::Task<int> exec_leaf_generator(Run& r, const Node& n) {
    auto steps = leaf_steps(r, n);
    int expected = 0;
    while (auto v = co_await steps.next())
        if (*v != expected++)
            throw std::runtime_error("generator: values out of order");
    if (expected != 3)
        throw std::runtime_error("generator: a value is missing");
    auto after = co_await steps.next();
    if (after)
        throw std::runtime_error("generator: a value after its end");
    co_return n.id + 1;
}

inline xiio::Task<int> exec_cancel(Run& r, const Node& n) {
    co_await r.ticks[static_cast<std::size_t>(n.tick)]->wait();
    r.groups[static_cast<std::size_t>(n.parent_group)]->cancel();
    ++r.progress;
    co_return n.id + 1;
}

inline xiio::Task<int> group_body(Run& r, const Node& n, xiio::TaskGroup& tg) {
    r.groups[static_cast<std::size_t>(n.id)] = &tg;
    int sum = n.id + 1;
    for (const Step& s : n.steps) {
        if (s.add)
            tg.add_task(run_node(r, s.child));
        else
            sum += co_await run_node(r, s.child);
    }
    co_return sum;
}

inline xiio::Task<int> exec_group(Run& r, const Node& n) {
    auto body = [&r, &n](xiio::TaskGroup& tg) { return group_body(r, n, tg); };
    co_return co_await xiio::task_group(body);
}

inline xiio::Task<int> exec_gather(Run& r, const Node& n) {
    int sum = n.id + 1;
    if (n.variant) { // exactly two children
        auto [a, b] =
            co_await xiio::gather(run_node(r, n.steps[0].child), run_node(r, n.steps[1].child));
        co_return sum + a + b;
    }
    std::vector<xiio::Task<int>> ts;
    for (const Step& s : n.steps)
        ts.push_back(run_node(r, s.child));
    auto values = co_await xiio::gather(std::move(ts));
    for (int v : values)
        sum += v;
    co_return sum;
}

inline xiio::Task<int> exec_timeout(Run& r, const Node& n) {
    using namespace std::chrono;
    int child = n.steps.at(0).child;
    std::unique_ptr<Busy> busy; // an expiring timeout is busy until it expires
    microseconds d = hours(1);
    if (n.tick) {
        co_await r.ticks[static_cast<std::size_t>(n.tick)]->wait();
        busy = std::make_unique<Busy>(r);
        d = microseconds(n.us);
    }
    auto make = [&r, child] { return run_node(r, child); };
    if (n.variant) {
        std::optional<int> v;
        if (n.callable)
            v = co_await xiio::move_on_after(d, make);
        else
            v = co_await xiio::move_on_after(d, run_node(r, child));
        co_return v ? *v : -(n.id + 1);
    }
    bool timed_out = false;
    int v = 0;
    try {
        if (n.callable)
            v = co_await xiio::timeout(d, make);
        else
            v = co_await xiio::timeout(d, run_node(r, child));
    } catch (const xiio::TimeoutError&) {
        timed_out = true;
    }
    if (timed_out)
        throw Err(timeout_code(n.id));
    co_return v;
}

inline xiio::Task<int> pipe_reader(Run& r, xiio::Fd& fd, std::size_t size) {
    Busy b(r);
    std::vector<char> buf(size);
    co_await xiio::read_exactly(fd, std::span<char>(buf));
    long sum = 0;
    for (std::size_t i = 0; i < size; ++i)
        sum += buf[i] == static_cast<char>('a' + i % 26);
    co_return static_cast<int>(sum);
}

inline xiio::Task<int> pipe_writer(Run& r, xiio::Fd& fd, const std::string& data, int us) {
    Busy b(r);
    co_await xiio::sleep(std::chrono::microseconds(us));
    co_await xiio::writeall(fd, data);
    co_return 0;
}

inline xiio::Task<int> exec_pipe(Run& r, const Node& n) {
    int p[2];
    if (::pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0)
        throw std::runtime_error("pipe2 failed");
    xiio::Fd rd(p[0]), wr(p[1]);
    Watched watched(r.injector, p[0], p[1]); // destroyed before the Fds close
    std::string data(static_cast<std::size_t>(n.size), ' ');
    for (std::size_t i = 0; i < data.size(); ++i)
        data[i] = static_cast<char>('a' + i % 26);
    auto [good, zero] =
        co_await xiio::gather(pipe_reader(r, rd, data.size()), pipe_writer(r, wr, data, n.us));
    if (good != n.size || zero != 0)
        throw std::runtime_error("pipe: corrupt data");
    co_return n.id + 1;
}

inline xiio::Task<int> future_waiter(Run& r, xiio::Future<int>& f) {
    int v = co_await f;
    ++r.progress;
    co_return v;
}

inline xiio::Task<int> future_setter(Run& r, const Node& n, xiio::Future<int>& f) {
    if (n.tick)
        co_await r.ticks[static_cast<std::size_t>(n.tick)]->wait();
    {
        Busy b(r);
        co_await xiio::sleep(std::chrono::microseconds(n.us));
    }
    if (n.fails)
        f.set_exception(std::make_exception_ptr(Err(error_code(n.id))));
    else
        f.set_result(n.id + 1);
    co_return 0;
}

inline xiio::Task<int> exec_future(Run& r, const Node& n) {
    xiio::Future<int> f;
    int v = 0;
    if (n.variant) {
        auto [zero, got] = co_await xiio::gather(future_setter(r, n, f), future_waiter(r, f));
        v = got + zero;
    } else {
        auto [got, zero] = co_await xiio::gather(future_waiter(r, f), future_setter(r, n, f));
        v = got + zero;
    }
    if (v != n.id + 1)
        throw std::runtime_error("future: wrong value");
    co_return v;
}

inline xiio::Task<int> queue_producer(Run& r, xiio::Queue<int>& q, int count) {
    Busy b(r);
    for (int i = 1; i <= count; ++i)
        co_await q.put(i);
    co_return 0;
}

inline xiio::Task<int> queue_consumer(Run& r, xiio::Queue<int>& q, int count) {
    Busy b(r);
    int sum = 0;
    for (int i = 1; i <= count; ++i) {
        auto v = co_await q.get();
        if (!v || *v != i)
            throw std::runtime_error("queue: wrong value");
        sum += *v;
    }
    co_return sum;
}

inline xiio::Task<int> exec_queue(Run& r, const Node& n) {
    xiio::Queue<int> q(static_cast<std::size_t>(n.capacity));
    auto [zero, sum] =
        co_await xiio::gather(queue_producer(r, q, n.size), queue_consumer(r, q, n.size));
    if (zero != 0 || sum != n.size * (n.size + 1) / 2)
        throw std::runtime_error("queue: wrong sum");
    co_return n.id + 1;
}

// ---- handoff: a hand-off against a deadline ----
//
// Three tasks in a variadic gather: the giver, the waiter, the blocker (deadline_first: the
// waiter first). They start in one pass of the loop (A):
// - the waiter takes t0 = now and runs timeout/move_on_after(D) around the body, the one
//   hand-off wait (q.get(), sem.acquire(), ev.wait(): itself, in a Task or a callable).
//   run_with_deadline starts the body inline, so it waits already, and queues its timer
//   task T. In the next pass (B) T sleeps until the deadline (now + D >= t0 + D), or, if
//   that has passed, is re-queued at once, as by yield();
// - the giver and the blocker yield: in pass B they run in their order, T in its place.
// A pass runs the tasks ready at its start, FIFO; then the loop polls, queues the tasks
// of the due timers (in the order of their times) behind those re-queued during the pass,
// and runs the next pass. So no clock reading decides these orders:
// - handoff_first: in pass B the giver yields again (queued ahead of T's wake-up, or of T
//   re-queued after it) and the blocker holds the loop (std::this_thread::sleep_until)
//   until the deadline passed. In pass C the giver hands off and wakes the body, then T
//   cancels it: already woken, its CancelledError stays pending (where bb28e1d's bug lost
//   the item). The body returns at once: its value; one that awaits again times out.
// - deadline_first: D = 0. In pass B, T (queued ahead of the giver) finds its deadline
//   passed and is re-queued, then the giver yields. In pass C, T cancels the waiting body
//   (woken with CancelledError, still in the primitive's list of waiters), then the giver
//   hands off: to nobody; the items stay queued, the permits free.
// - tie: the giver sleeps until t0 + D + [0, 2 us), the blocker holds the loop past that
//   and the deadline, t0 + D + (the time between two clock reads, about 1 us). The poll
//   after it wakes both, in the order of their times: either order, about as often.
// - before: the giver hands off in pass B (the deadline is 1 s away); after: once the
//   waiter's timeout/move_on_after returned.
// A slow machine only delays passes: the orders stay.

/// What a handoff node's tasks share.
struct Handoff {
    explicit Handoff(const Node& n) : q(static_cast<std::size_t>(n.capacity)) {}
    xiio::Queue<int> q;
    xiio::Semaphore sem{0};
    xiio::Event ev;
    xiio::Event waiter_done;
    xiio::Clock::time_point t0{}; // just before the deadline is computed
    xiio::Clock::time_point at{}; // tie: when the hand-off falls due
    int given = 0;                // items put, permits released, 1 once set
    int received = 0;             // hand-offs the body got (Task forms count them)
    int given_back = 0;           // ... and gave back when the deadline's cancellation came
    bool finished = false;        // timeout/move_on_after returned or timed out
    bool value = false;           // ... with the body's value
};

/// The body: the one hand-off wait; `again`: one more co_await after it.
inline xiio::Task<int> handoff_body(Run& r, const Node& n, Handoff& h) {
    int v = 1;
    switch (n.prim) {
    case Prim::queue: {
        auto got = co_await h.q.get();
        if (!got)
            throw std::logic_error("handoff: the queue was closed");
        v = *got;
        break;
    }
    case Prim::semaphore:
        co_await h.sem.acquire();
        break;
    case Prim::event:
        co_await h.ev.wait();
        break;
    }
    ++h.received;
    if (!n.again) {
        // Suspends nothing and takes nothing: counts the bodies that complete with the
        // deadline's cancellation still pending (the case bb28e1d fixed).
        if (co_await xiio::detail::cancellation_pending())
            ++r.handoff_hits;
        co_return v;
    }
    std::exception_ptr ep;
    try {
        co_await xiio::yield();
    } catch (const xiio::CancelledError&) {
        ep = std::current_exception();
    }
    if (!ep)
        co_return v;
    // It saw the cancellation: it timed out, and what it holds is its own to give back.
    if (n.prim == Prim::queue)
        co_await h.q.put(v); // there is room: the giver never fills the queue
    else if (n.prim == Prim::semaphore)
        h.sem.release();
    ++h.given_back;
    std::rethrow_exception(ep);
}

inline bool present(bool b) {
    return b;
}
template <class T>
bool present(const std::optional<T>& v) {
    return v.has_value();
}

/// timeout/move_on_after(D, body): true if it returned the body's value, false if it timed out.
template <class B>
xiio::Task<bool> handoff_within(const Node& n, B body) {
    std::chrono::microseconds d(n.us);
    if (n.variant)
        co_return present(co_await xiio::move_on_after(d, std::move(body)));
    bool timed_out = false;
    try {
        co_await xiio::timeout(d, std::move(body));
    } catch (const xiio::TimeoutError&) {
        timed_out = true;
    }
    co_return !timed_out;
}

inline xiio::Task<bool> handoff_deadline(Run& r, const Node& n, Handoff& h) {
    auto make = [&r, &n, &h] { return handoff_body(r, n, h); };
    h.t0 = xiio::Clock::now();
    switch (n.form) {
    case Form::callable:
        co_return co_await handoff_within(n, make);
    case Form::task:
        co_return co_await handoff_within(n, handoff_body(r, n, h));
    case Form::awaitable:
        break;
    }
    switch (n.prim) {
    case Prim::queue:
        co_return co_await handoff_within(n, h.q.get());
    case Prim::semaphore:
        co_return co_await handoff_within(n, h.sem.acquire());
    case Prim::event:
        break;
    }
    co_return co_await handoff_within(n, h.ev.wait());
}

inline xiio::Task<int> handoff_waiter(Run& r, const Node& n, Handoff& h) {
    Busy b(r);
    std::exception_ptr ep;
    try {
        h.value = co_await handoff_deadline(r, n, h);
        h.finished = true;
    } catch (...) {
        ep = std::current_exception();
    }
    h.waiter_done.set();
    if (ep)
        std::rethrow_exception(ep);
    co_return 0;
}

inline xiio::Task<int> handoff_giver(Run& r, const Node& n, Handoff& h) {
    using namespace std::chrono;
    Busy b(r);
    co_await xiio::yield(); // pass B
    switch (n.order) {
    case Order::before:
        break;
    case Order::after:
        co_await h.waiter_done.wait();
        break;
    case Order::handoff_first:  // pass C: ahead of the timer task
    case Order::deadline_first: // pass C: behind the timer task
        co_await xiio::yield();
        break;
    case Order::tie:
        h.at = h.t0 + microseconds(n.us) + nanoseconds(n.handoff_ns);
        co_await xiio::sleep_until(h.at);
        break;
    }
    for (int i = 1; i <= n.size; ++i) {
        if (n.prim == Prim::queue) {
            co_await h.q.put(i); // the first wakes the getter, if it still waits
        } else if (n.prim == Prim::semaphore) {
            h.sem.release();
        } else {
            h.ev.set();
            h.given = 1;
            break;
        }
        ++h.given;
    }
    co_return 0;
}

inline xiio::Task<int> handoff_blocker(Run& r, const Node& n, Handoff& h) {
    using namespace std::chrono;
    if (n.order != Order::handoff_first && n.order != Order::tie)
        co_return 0;
    Busy b(r);
    co_await xiio::yield(); // pass B: behind the giver and the timer task
    // The deadline is at most D after now; tie's hand-off time is set (the giver ran).
    auto until = std::max(h.at, xiio::Clock::now() + microseconds(n.us)) + microseconds(100);
    std::this_thread::sleep_until(until);
    co_return 0;
}

inline xiio::Task<int> exec_handoff(Run& r, const Node& n) {
    Handoff h(n);
    std::exception_ptr ep;
    try {
        if (n.order == Order::deadline_first)
            co_await xiio::gather(handoff_waiter(r, n, h), handoff_giver(r, n, h),
                                  handoff_blocker(r, n, h));
        else
            co_await xiio::gather(handoff_giver(r, n, h), handoff_waiter(r, n, h),
                                  handoff_blocker(r, n, h));
    } catch (...) {
        ep = std::current_exception();
    }
    // Conservation: every item put (permit released) is held by the body or still in the
    // queue (free), once. `held` is what the body took and kept: the Task forms count it
    // whatever ended the waiter; for the awaitable form it is what timeout/move_on_after
    // returned, so it is known only if the waiter was not cancelled from outside. An Event
    // is not consumed: only the second check applies to it.
    bool counted = n.form != Form::awaitable;
    int held = counted ? h.received - h.given_back : h.value ? 1 : 0;
    int left = n.prim == Prim::queue       ? static_cast<int>(h.q.size())
               : n.prim == Prim::semaphore ? static_cast<int>(h.sem.available())
                                           : 0;
    std::ostringstream o;
    if ((counted || h.finished) && n.prim != Prim::event && h.given != held + left)
        o << h.given << (n.prim == Prim::queue ? " items put, " : " permits released, ") << held
          << (counted ? " kept by the body, " : " returned by the body, ") << left
          << (n.prim == Prim::queue ? " left in the queue: " : " free: ")
          << (h.given > held + left ? "lost " : "duplicated ") << (h.given - held - left) << "; ";
    // A timeout is reported exactly when the body was cancelled and kept nothing.
    if (h.finished && counted && h.value != (held > 0))
        o << (h.value ? "returned a value the body gave back"
                      : "timed out while the body kept what it was handed");
    if (!o.str().empty())
        r.violations += "node #" + std::to_string(n.id) + ": " + o.str() + "\n";
    if (ep)
        std::rethrow_exception(ep);
    if (n.order == Order::handoff_first || n.order == Order::deadline_first ||
        n.order == Order::tie)
        ++r.handoff_races;
    if (n.order == Order::tie) // either order: checked by conservation only
        co_return n.id + 1;
    co_return h.value ? n.id + 1 : handoff_timed_out_value(n.id);
}

/// A race member: the child, then its own tick (see the top of this file).
inline xiio::Task<int> race_member(Run& r, const Node& n, std::size_t i) {
    int v = co_await run_node(r, n.steps[i].child);
    co_await r.ticks[static_cast<std::size_t>(n.member_ticks[i])]->wait();
    co_return v;
}

inline xiio::Task<int> exec_race(Run& r, const Node& n) {
    long sum = n.id + 1;
    if (n.variant) { // exactly two members
        auto v = co_await xiio::race(race_member(r, n, 0), race_member(r, n, 1));
        auto i = static_cast<long>(v.index());
        co_return static_cast<int>(sum + 7 * i + (i == 0 ? std::get<0>(v) : std::get<1>(v)));
    }
    std::vector<xiio::Task<int>> ts;
    for (std::size_t i = 0; i < n.steps.size(); ++i)
        ts.push_back(race_member(r, n, i));
    auto [i, v] = co_await xiio::race(std::move(ts));
    co_return static_cast<int>(sum + 7 * static_cast<long>(i) + v);
}

inline xiio::Task<int> exec_shield(Run& r, const Node& n) {
    int v = co_await xiio::shield(run_node(r, n.steps.at(0).child));
    // Suspends nothing and takes nothing: counts the shields that held a cancellation.
    if (co_await xiio::detail::cancellation_pending())
        ++r.shield_holds;
    co_return n.id + 1 + v;
}

inline xiio::Task<int> exec(Run& r, const Node& n) {
    switch (n.kind) {
    case Kind::leaf:
        return n.variant ? exec_leaf_generator(r, n) : exec_leaf(r, n);
    case Kind::group:
        return exec_group(r, n);
    case Kind::gather:
        return exec_gather(r, n);
    case Kind::timeout:
        return exec_timeout(r, n);
    case Kind::cancel:
        return exec_cancel(r, n);
    case Kind::pipe_pair:
        return exec_pipe(r, n);
    case Kind::future_pair:
        return exec_future(r, n);
    case Kind::queue_pair:
        return exec_queue(r, n);
    case Kind::handoff:
        return exec_handoff(r, n);
    case Kind::race:
        return exec_race(r, n);
    case Kind::shield:
        return exec_shield(r, n);
    }
    throw std::logic_error("unknown kind");
}

inline bool is_cancellation(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const xiio::CancelledError&) {
        return true;
    } catch (...) {
        return false;
    }
}

/// Every node runs in this wrapper: it counts starts and cleanups, and its cleanup may
/// await (catch, store, leave the handler, await, rethrow) and may throw instead of
/// rethrowing a cancellation.
inline xiio::Task<int> run_node(Run& r, int id) {
    const Node& n = r.at(id);
    ++r.started[static_cast<std::size_t>(id)];
    ++r.progress;
    int v = 0;
    std::exception_ptr ep;
    try {
        v = co_await exec(r, n);
    } catch (...) {
        ep = std::current_exception();
    }
    if (n.cleanup_awaits) {
        try {
            Busy b(r);
            co_await xiio::sleep(std::chrono::microseconds(n.cleanup_us));
        } catch (...) {
            if (!ep)
                ep = std::current_exception();
        }
    }
    ++r.cleaned[static_cast<std::size_t>(id)];
    ++r.progress;
    if (ep && n.cleanup_throws && is_cancellation(ep))
        throw Err(cleanup_code(id));
    if (ep)
        std::rethrow_exception(ep);
    co_return v;
}

/// Waits until nothing is busy and nothing made progress for several rounds of the loop.
inline xiio::Task<bool> quiesce(Run& r) {
    auto limit = xiio::Clock::now() + std::chrono::milliseconds(r.cfg.watchdog_ms);
    long seen = -1;
    int calm = 0;
    while (calm < 8) {
        if (xiio::Clock::now() > limit)
            co_return false;
        if (r.root_done)
            co_return true;
        if (r.busy > 0) {
            calm = 0;
            co_await xiio::sleep(std::chrono::microseconds(100));
            continue;
        }
        if (r.progress != seen) {
            seen = r.progress;
            calm = 0;
        } else {
            ++calm;
        }
        co_await xiio::yield();
    }
    co_return true;
}

/// Fires the ticks one by one, each once the tree is quiet.
inline xiio::Task<void> driver(Run& r, xiio::TaskGroup& tg) {
    for (Tick k = 1;; ++k) {
        bool quiet = co_await quiesce(r);
        if (r.root_done)
            co_return;
        if (!quiet || k > r.t.ticks) {
            r.hang = quiet ? "the tree did not finish after its last tick"
                           : "the tree was busy for longer than the watchdog allows";
            r.hang += " (tick " + std::to_string(k - 1) + " of " + std::to_string(r.t.ticks) + ")";
            tg.cancel();
            co_return;
        }
        r.ticks_fired = k;
        r.ticks[static_cast<std::size_t>(k)]->set();
    }
}

inline xiio::Task<void> top_body(Run& r, xiio::TaskGroup& tg) {
    tg.add_task(driver(r, tg));
    try {
        r.outcome = Outcome::val(co_await run_node(r, r.t.root));
    } catch (const Err& e) {
        r.outcome = Outcome::err(e.code);
    } catch (const xiio::CancelledError&) {
        r.outcome = Outcome::cancel();
    } catch (const std::exception& e) {
        r.outcome = {Outcome::other, 0, e.what()};
    } catch (...) {
        r.outcome = {Outcome::other, 0, "(not a std::exception)"};
    }
    r.root_done = true;
}

inline xiio::Task<void> run_tree(Run& r) {
    auto body = [&r](xiio::TaskGroup& tg) { return top_body(r, tg); };
    co_await xiio::task_group(body);
}

inline std::size_t count_fds() {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd"))
        ++n;
    return n;
}

struct Result {
    std::string error; // "" when the tree behaved as predicted
    Outcome outcome, predicted;
    long injected = 0;
    long handoff_races = 0; // see Run
    long handoff_hits = 0;
    long shield_holds = 0; // see Run
};

/// Runs `t` on a fresh loop and compares with the model; also checks that every node's
/// cleanup ran exactly once per start and that nothing of xiio or no fd is left over.
inline Result check_tree(const Tree& t, const Config& cfg, std::uint64_t inject_seed) {
    Result res;
    Model model(t);
    try {
        res.predicted = model.run();
    } catch (const std::logic_error& e) { // a tree the model cannot predict: a generator bug
        res.error = e.what();
        res.error += "\n";
        return res;
    }

    // Declared first, destroyed last: a LoopThread's syscalls may consult it until joined.
    std::unique_ptr<Injector> inj;
    // The second loop of on_loop leaves, made (and counted) before the leak check's counts.
    std::optional<xiio::LoopThread> remote;
    if (std::any_of(t.nodes.begin(), t.nodes.end(),
                    [](const Node& n) { return n.action == Action::remote; }))
        remote.emplace();
    const auto live_before = xiio::detail::live_counts();
    const auto fds_before = count_fds();
    Run r(t, cfg);
    if (remote)
        r.remote = remote->handle();
    if (cfg.inject) {
        inj = std::make_unique<Injector>(inject_seed);
        r.injector = inj.get();
        xiio::detail::sys::injector().store(inj.get());
    }
    std::string thrown;
    try {
        xiio::run(run_tree(r));
    } catch (const std::exception& e) {
        thrown = e.what();
    } catch (...) {
        thrown = "(not a std::exception)";
    }
    xiio::detail::sys::injector().store(nullptr);
    if (inj)
        res.injected = inj->injected.load();
    res.outcome = r.outcome;

    std::ostringstream o;
    if (!thrown.empty())
        o << "run() threw: " << thrown << "\n";
    if (!r.hang.empty())
        o << "hang: " << r.hang << "\n";
    if (!(r.outcome == res.predicted))
        o << "outcome: " << r.outcome.str() << ", predicted: " << res.predicted.str() << "\n";
    for (std::size_t i = 0; i < t.nodes.size(); ++i) {
        if (r.cleaned[i] != r.started[i] || r.started[i] > 1)
            o << "node #" << i << ": started " << r.started[i] << " times, cleaned up "
              << r.cleaned[i] << " times\n";
        else if (!model.unpredictable[i] && (r.started[i] == 1) != model.started[i])
            o << "node #" << i << ": started " << r.started[i] << " times, predicted "
              << (model.started[i] ? 1 : 0) << "\n";
    }
    if (r.busy != 0)
        o << "busy count " << r.busy << " at the end\n";
    o << r.violations;
    res.handoff_races = r.handoff_races;
    res.handoff_hits = r.handoff_hits;
    res.shield_holds = r.shield_holds;
    // in_thread jobs that were cancelled may still be finishing in the pool: give them a
    // moment before counting what is alive.
    auto live = xiio::detail::live_counts();
    for (int i = 0; i < 200 && !(live == live_before); ++i) {
        ::usleep(1000);
        live = xiio::detail::live_counts();
    }
    if (!(live == live_before))
        o << "leak: frames " << live.frames << ", runners " << live.runners << ", registrations "
          << live.registrations << ", timers " << live.timers << " (before: " << live_before.frames
          << ", " << live_before.runners << ", " << live_before.registrations << ", "
          << live_before.timers << ")\n";
    if (count_fds() != fds_before)
        o << "fd leak: " << count_fds() << " open, " << fds_before << " before\n";
    res.error = o.str();
    return res;
}

} // namespace torture
