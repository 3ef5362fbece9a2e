#pragma once
// dump_tasks(): what every task of this thread's loop is doing, as text, for debugging a
// program that hangs (and for the deadlock error, which carries the same text).
//
// It costs nothing until it is called: everything is read from what the loop keeps anyway.
// - The tasks: the loop's lists of runners (its roots, and the members of each group).
// - The frames of a task: a suspended runner's `resume_` is its innermost frame (the one
//   suspended at a leaf); each frame's promise links to the frame awaiting it
//   (`continuation_`), up to the runner's root. The chain is read innermost first and
//   printed outermost first. Each promise holds a std::source_location captured when the
//   frame was made (see Promise in task.hpp): the coroutine's name and file.
// - What the innermost frame waits for: the runner's pending `Wait` (its fd nodes, its
//   place in the timer heap, its future nodes), plus `Wait::describe`, which the waits
//   that register nothing the loop could name set when they suspend (a group's join, a
//   sync primitive, a job on a thread). An fd is named by what /proc/self/fd says it is;
//   a pidfd (a child process that run_process waits for) by the pid in its fdinfo.
//
// A task that is running has no frame to start from (its innermost frame may have ended
// since it was resumed: the loop does not track frames while a task runs): its frames are
// not shown. That is the task calling dump_tasks(), and, while a group starts its body,
// the task that entered the group.

#include <xiio/detail/poller.hpp>
#include <xiio/loop.hpp>
#include <xiio/task.hpp>

#include <chrono>
#include <coroutine>
#include <cstddef>
#include <source_location>
#include <string>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace xiio {
namespace detail {

/// The promise of a frame of a Task, from a handle that does not know the promise's type.
/// Every frame of a runner's chain is a Task's (Task's awaiter and the leaves accept only
/// xiio promises), PromiseBase starts every Promise<T>, and the promise sits at the same
/// place in the frame whatever T (its alignment is at most 16, see Promise).
inline const PromiseBase& promise_of(std::coroutine_handle<> h) noexcept {
    return std::coroutine_handle<PromiseBase>::from_address(h.address()).promise();
}

/// Reads a small text file of /proc into `out`; false if it cannot.
inline bool read_proc(const std::string& path, std::string& out) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    char buf[512];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0)
        out.append(buf, static_cast<std::size_t>(n));
    ::close(fd);
    return n == 0;
}

/// What fd `fd` is: "child process pid N" for a pidfd, else what /proc/self/fd shows
/// ("socket:[123]", "pipe:[45]", a path); empty if /proc cannot tell.
inline std::string fd_kind(int fd) {
    const std::string n = std::to_string(fd);
    char target[256];
    ssize_t len = ::readlink(("/proc/self/fd/" + n).c_str(), target, sizeof target - 1);
    if (len <= 0)
        return {};
    std::string kind(target, static_cast<std::size_t>(len));
    std::string info;
    if (kind == "anon_inode:[pidfd]" && read_proc("/proc/self/fdinfo/" + n, info)) {
        if (auto at = info.find("\nPid:"); at != std::string::npos) {
            std::size_t b = info.find_first_not_of(" \t", at + 5);
            std::size_t e = info.find('\n', b);
            if (b != std::string::npos)
                return "child process pid " + info.substr(b, e - b);
        }
    }
    return kind;
}

/// Appends what `w` waits for: "fd 5 readable (socket:[123]), a deadline in 1999 ms".
inline void describe_wait(const Wait& w, std::string& out) {
    const std::size_t start = out.size();
    auto part = [&]() -> std::string& {
        if (out.size() != start)
            out += ", ";
        return out;
    };
    for (const FdNode& n : w.fds) {
        if (!n.attached)
            continue;
        part() += "fd " + std::to_string(n.fd);
        if (n.events & READ)
            out += " readable";
        if ((n.events & READ) && (n.events & WRITE))
            out += " and";
        if (n.events & WRITE)
            out += " writable";
        if (std::string kind = fd_kind(n.fd); !kind.empty())
            out += " (" + kind + ")";
    }
    std::size_t futures = 0;
    for (const FutureNode& n : w.futures)
        futures += n.list != nullptr;
    if (futures == 1)
        part() += "a future";
    else if (futures > 1)
        part() += std::to_string(futures) + " futures";
    if (w.describe)
        w.describe(w, part());
    if (w.heap_index != Wait::npos) {
        auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(w.deadline - Clock::now());
        part() += "a deadline in " + std::to_string(left.count()) + " ms";
    }
    if (out.size() == start)
        out += "nothing (only a cancellation can end it)";
}

/// Appends the frames of the chain whose innermost frame is `innermost`, outermost first,
/// one a line: "    <function>  <file>:<line>". A chain deeper than `shown` frames is
/// cut in the middle.
inline void describe_frames(std::coroutine_handle<> innermost, std::string& out) {
    std::vector<const PromiseBase*> chain; // innermost first
    for (auto h = innermost; h; h = promise_of(h).continuation_)
        chain.push_back(&promise_of(h));
    constexpr std::size_t shown = 64;
    const std::size_t n = chain.size();
    for (std::size_t i = 0; i < n; ++i) {
        if (n > shown && i == shown / 2) {
            out += "    ... " + std::to_string(n - shown) + " frames ...\n";
            i = n - shown / 2;
        }
        const std::source_location& where = chain[n - 1 - i]->where_;
        out += "    ";
        out += *where.function_name() ? where.function_name() : "(a coroutine)";
        if (*where.file_name())
            out += "  " + std::string(where.file_name()) + ":" + std::to_string(where.line());
        out += '\n';
    }
}

/// Appends one task: its state, then its frames where it has a frame to start from.
inline void describe_runner(const Runner& r, std::size_t number, const char* kind,
                            std::string& out) {
    out += "task " + std::to_string(number) + kind + ": ";
    if (r.queued_) {
        out += r.started_ ? "ready to run\n" : "not started yet\n";
    } else if (r.wait_) {
        out += "waits for ";
        describe_wait(*r.wait_, out);
        out += '\n';
    } else {
        out += "running (its frames are not shown while it runs)\n";
        return;
    }
    describe_frames(r.resume_, out);
}

/// The text of dump_tasks() for loop `l`; what the deadlock error appends (task_dumper).
inline std::string describe_tasks(const Loop& l) {
    std::string out;
    std::size_t number = 0;
    for (const Runner* r = l.roots().head; r; r = r->next_sibling_)
        describe_runner(*r, ++number, "", out);
    for (const RunnerList* g = l.member_lists(); g; g = g->next)
        for (const Runner* r = g->head; r; r = r->next_sibling_)
            describe_runner(*r, ++number, " (in a group)", out);
    return "xiio: " + std::to_string(number) + (number == 1 ? " task\n" : " tasks\n") + out;
}

/// Installs describe_tasks for the deadlock error when the program starts.
inline const bool task_dumper_installed = (task_dumper() = &describe_tasks, true);

} // namespace detail

/// Every live task of the loop running on this thread, as text: one entry per task (a
/// root, or a group's member), with what it does (running, ready to run, or waiting: for
/// "fd N readable" / "writable" (and what the fd is: a socket, a pipe, a "child process
/// pid N"), "a deadline in N ms", a future, "a task group of N unfinished tasks",
/// Queue::get / Queue::put / Lock::lock / Event::wait / Semaphore::acquire, "a job on a
/// worker thread"), then its chain of coroutine frames, outermost first, as
/// "function  file:line" (see the reference for what each compiler reports). Outside a
/// running loop: the one line "xiio: no loop runs on this thread". Reads /proc for the
/// fds. Throws std::bad_alloc. Not a cancellation point; safe to call from any task.
inline std::string dump_tasks() {
    if (const detail::Loop* l = detail::current_loop())
        return detail::describe_tasks(*l);
    return "xiio: no loop runs on this thread\n";
}

} // namespace xiio
