#pragma once
// spawn_process(): a child that runs alongside the task, with pipes to stream through (the
// original's run_process waits for the end; this is Python's Popen). run_process
// (process.hpp) is built on it. Linux-specific: the exit is awaited through a pidfd, so no
// SIGCHLD handler and no thread is involved.
//
// Hazard (from the original): pidfd_open() is safe only as long as nobody reaps the child
// first. xiio reaps it itself (waitid(P_PIDFD)); a process that sets SIGCHLD to SIG_IGN
// (automatic reaping) breaks that, and the wait then throws std::system_error (ESRCH or
// ECHILD).
//
// Hazard: a process group is signalled as kill(-pgid) only while its leader (our child) is
// not reaped. Until then its pid, which is the group's id, cannot be reused; after that a
// stranger's group could have it.
//
// Errors: std::system_error naming the call or the command, std::logic_error for misuse.

#include <xiio/detail/sys.hpp>
#include <xiio/io.hpp>

#include <cstdlib>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <csignal>
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace xiio {

/// How spawn_process() starts the command. What is not piped is inherited.
struct SpawnOptions {
    bool pipe_stdin = false;             // Process::stdin_fd() writes to the child's stdin
    bool pipe_stdout = false;            // Process::stdout_fd() reads the child's stdout
    bool pipe_stderr = false;            // Process::stderr_fd() reads the child's stderr
    bool stderr_to_stdout = false;       // the child's stderr goes where its stdout goes
    bool new_session = false;            // the child leads a new session and process group (setsid)
    std::optional<std::string> cwd = {}; // working directory of the child
    std::optional<std::vector<std::string>> env = {}; // "KEY=VALUE"; replaces the environment
};

namespace detail {

/// An owned pipe: [0] read end, [1] write end; close-on-exec.
inline std::pair<Fd, Fd> make_pipe() {
    int p[2];
    if (sys::pipe2(p, O_CLOEXEC) != 0)
        throw_errno("pipe2");
    return {Fd(p[0]), Fd(p[1])};
}

/// The executable for `name`: itself if it contains a '/', else the first regular,
/// executable file of that name on `path` (the PATH of the child's environment). Empty and
/// `error` set (ENOENT, or EACCES if only unusable entries were found) if none.
inline std::string find_executable(const std::string& name, const char* path, int& error) {
    error = ENOENT;
    if (name.find('/') != std::string::npos)
        return name;
    if (!path)
        return {};
    std::string_view dirs(path);
    while (true) {
        auto colon = dirs.find(':');
        std::string dir(dirs.substr(0, colon));
        std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + name;
        // access(X_OK) alone accepts a directory (searchable means "executable"; for root,
        // any directory): a directory `true` early on PATH would then fail the spawn with
        // EACCES where execvp goes on to /usr/bin/true. Only a regular file is a command.
        struct stat st {};
        if (::stat(candidate.c_str(), &st) == 0) {
            if (S_ISREG(st.st_mode) && ::access(candidate.c_str(), X_OK) == 0)
                return candidate;
            error = EACCES; // reported if nothing else is found, as execvp does
        } else if (errno == EACCES) {
            error = EACCES;
        }
        if (colon == std::string_view::npos)
            return {};
        dirs.remove_prefix(colon + 1);
    }
}

inline int exit_code(const siginfo_t& info) noexcept {
    return info.si_code == CLD_EXITED ? info.si_status : -info.si_status;
}

/// A started child: its pid and a pidfd (the only handle xiio waits on). `exited` once its
/// exit status is known, `reaped` once it is waited for (a group leader may be exited and
/// unreaped: a zombie kept so that its group can still be signalled, see the top).
struct Child {
    pid_t pid = -1;
    Fd pidfd;
    bool group = false; // leads its own session and process group (new_session)
    bool exited = false;
    bool reaped = false;
    int returncode = 0;

    Child() = default;
    Child(Child&&) noexcept = default; // the moved-from Child has no pidfd: inert
    /// Stops the child this one owned, as the destructor does, then takes `o`'s.
    Child& operator=(Child&& o) noexcept {
        if (this != &o) {
            stop();
            pid = o.pid;
            pidfd = std::move(o.pidfd);
            group = o.group;
            exited = o.exited;
            reaped = o.reaped;
            returncode = o.returncode;
        }
        return *this;
    }
    /// The last resort, and what an unwaited Process does: a child nobody waits for any more
    /// (its Process destroyed, run_process's frame destroyed with the loop, or a failed
    /// allocation where run_process could not even start stopping it) is SIGKILLed (with its
    /// group) and reaped here, never left running or a zombie. Blocks only until a SIGKILLed
    /// child is gone.
    ~Child() { stop(); }
    void stop() noexcept {
        if (!pidfd || reaped)
            return;
        signal(SIGKILL);
        reap_blocking();
    }

    /// Whether the child has exited, without blocking. Reaps it unless `keep` (WNOWAIT: the
    /// leader of a group stays a zombie, so the group can still be signalled).
    bool poll(bool keep = false) {
        if (exited)
            return true;
        siginfo_t info{};
        int options = WEXITED | WNOHANG | (keep ? WNOWAIT : 0);
        if (retry_eintr([&] {
                return ::waitid(P_PIDFD, static_cast<id_t>(pidfd.get()), &info, options);
            }) != 0)
            throw_errno("waitid");
        if (info.si_pid == 0)
            return false; // still running
        exited = true;
        reaped = !keep;
        returncode = exit_code(info);
        return true;
    }
    /// Reaps the child, which has exited or was SIGKILLed; 0 or the errno of waitid. By pid,
    /// not pidfd: the pidfd is non-blocking once the loop watched it, and a blocking waitid
    /// on it answers EAGAIN instead of waiting (a zombie was left).
    int reap_blocking() noexcept {
        siginfo_t info{};
        int rc =
            retry_eintr([&] { return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED); });
        reaped = true; // also on error: nothing is left to wait for
        if (rc != 0)
            return errno;
        if (!exited)
            returncode = exit_code(info);
        exited = true;
        return 0;
    }
    /// Sends `sig` to the child, or to its whole group if it leads one and is unreaped.
    void signal(int sig) noexcept {
        if (reaped)
            return;
        if (group)
            ::kill(-pid, sig);
        else
            ::syscall(SYS_pidfd_send_signal, pidfd.get(), sig, nullptr, 0);
    }
};

/// Starts `cmd`; the child gets `in`, `out`, `err` (or inherits where -1) as 0, 1, 2 and no
/// other fd of ours (closefrom 3), a clean signal mask and default SIGPIPE.
inline Child spawn(const std::vector<std::string>& cmd, const SpawnOptions& opts, int in, int out,
                   int err) {
    std::vector<char*> argv;
    for (const auto& a : cmd)
        argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    std::vector<char*> envp;
    const char* path = std::getenv("PATH");
    if (opts.env) {
        path = nullptr;
        for (const auto& e : *opts.env) {
            envp.push_back(const_cast<char*>(e.c_str()));
            if (e.rfind("PATH=", 0) == 0)
                path = e.c_str() + 5;
        }
        envp.push_back(nullptr);
    }
    int search_error = 0;
    std::string exe = find_executable(cmd.front(), path, search_error);
    if (exe.empty())
        throw std::system_error(search_error, std::system_category(), "posix_spawn " + cmd.front());

    // The file actions allocate (glibc's malloc): one that fails must fail the spawn, not
    // start a child that writes to our stdout or runs in the wrong directory.
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int setup = posix_spawn_file_actions_init(&fa);
    if (setup != 0)
        throw std::bad_alloc(); // its only error is ENOMEM
    posix_spawnattr_init(&attr);
    auto step = [&setup](int rc) {
        if (setup == 0)
            setup = rc;
    };
    if (in >= 0)
        step(posix_spawn_file_actions_adddup2(&fa, in, 0));
    if (out >= 0)
        step(posix_spawn_file_actions_adddup2(&fa, out, 1));
    if (opts.stderr_to_stdout)
        step(posix_spawn_file_actions_adddup2(&fa, 1, 2)); // after 1 became the pipe
    else if (err >= 0)
        step(posix_spawn_file_actions_adddup2(&fa, err, 2));
    step(posix_spawn_file_actions_addclosefrom_np(&fa, 3));
    if (opts.cwd)
        step(posix_spawn_file_actions_addchdir_np(&fa, opts.cwd->c_str()));
    if (setup != 0) {
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
        if (setup == ENOMEM)
            throw std::bad_alloc();
        throw std::system_error(setup, std::system_category(),
                                "posix_spawn_file_actions " + cmd.front());
    }
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGPIPE); // the loop blocks it; the child must not inherit that
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    if (opts.new_session)
        flags |= POSIX_SPAWN_SETSID; // its pid is then its session's and group's id
    posix_spawnattr_setflags(&attr, flags);

    Child child;
    child.group = opts.new_session;
    int rc = sys::posix_spawn(&child.pid, exe.c_str(), &fa, &attr, argv.data(),
                              opts.env ? envp.data() : environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0)
        throw std::system_error(rc, std::system_category(), "posix_spawn " + cmd.front());
    // Safe as long as nobody else reaps the child (see the top of this file).
    int pidfd = sys::pidfd_open(child.pid);
    if (pidfd < 0) {
        int e = errno;
        ::kill(opts.new_session ? -child.pid : child.pid, SIGKILL);
        ::waitpid(child.pid, nullptr, 0);
        throw_errno("pidfd_open", e);
    }
    child.pidfd = Fd(pidfd);
    return child;
}

/// What a Process owns; on the heap, so a Process can move while a wait() is pending.
/// The Child is declared last and so destroyed first: killed and reaped, then the pipes
/// close.
struct ProcessState {
    Fd in, out, err;
    Child child;
};

/// Process::wait(): waits for the pidfd to be readable and reaps the child.
class [[nodiscard]] ExitOp : public FdOp<ExitOp, int, READ> {
public:
    ExitOp(FdRef pidfd, Child& child) noexcept : FdOp(pidfd), child_(&child) {}
    ExitOp(ExitOp&& o) noexcept : FdOp(std::move(o)), child_(o.child_) {}
    /// Reaps the child if it has exited (EAGAIN while it runs: the wait goes on). The exit
    /// status is kept in the Child: a wait cancelled after it reaped loses nothing, the
    /// next wait() returns it at once.
    ssize_t call() noexcept {
        if (child_->exited)
            return 0;
        siginfo_t info{};
        int fd = child_->pidfd.get();
        if (::waitid(P_PIDFD, static_cast<id_t>(fd), &info, WEXITED | WNOHANG) != 0)
            return -1;
        if (info.si_pid == 0)
            return sys::failed(EAGAIN);
        child_->exited = child_->reaped = true;
        child_->returncode = exit_code(info);
        return 0;
    }
    int await_resume() {
        finish("waitid");
        return child_->returncode;
    }

private:
    Child* child_;
};

struct ProcessAccess;

} // namespace detail

/// A running child started by spawn_process(); move-only (moving it while a wait() is
/// pending is fine). Destroyed before it was waited for, its child gets SIGKILL (with its
/// whole group under new_session) and is reaped at once, blocking until it is gone: never
/// left running or a zombie, also outside any loop.
class Process {
public:
    /// Empty: no child (a moved-from Process is empty too).
    Process() noexcept = default;
    Process(Process&&) noexcept = default;
    /// Kills and reaps the child this one owned, if it was not waited for, as ~Process.
    Process& operator=(Process&&) noexcept = default;
    ~Process() = default;

    /// The child's pid; under new_session also its session's and group's id. -1 if empty.
    int pid() const noexcept { return s_ ? s_->child.pid : -1; }

    /// The write end of the child's stdin (SpawnOptions::pipe_stdin). Close it (`close()`)
    /// to give the child end of file. std::logic_error unless piped.
    Fd& stdin_fd() { return pipe(&detail::ProcessState::in, "stdin_fd", "pipe_stdin"); }
    /// The read end of the child's stdout (SpawnOptions::pipe_stdout); under
    /// stderr_to_stdout its stderr too. std::logic_error unless piped.
    Fd& stdout_fd() { return pipe(&detail::ProcessState::out, "stdout_fd", "pipe_stdout"); }
    /// The read end of the child's stderr (SpawnOptions::pipe_stderr). std::logic_error
    /// unless piped.
    Fd& stderr_fd() { return pipe(&detail::ProcessState::err, "stderr_fd", "pipe_stderr"); }

    /// Sends `sig` to the child (only the child, also under new_session: for the group,
    /// `::kill(-pid(), sig)` before wait() returned). Does nothing once the child was
    /// waited for. Throws std::system_error for an invalid signal, std::logic_error if
    /// empty. Not a cancellation point.
    void send_signal(int sig) {
        detail::Child& c = state("send_signal").child;
        if (c.reaped)
            return;
        if (::syscall(SYS_pidfd_send_signal, c.pidfd.get(), sig, nullptr, 0) != 0 && errno != ESRCH)
            detail::throw_errno("pidfd_send_signal");
    }

    /// Awaitable: waits for the child to exit, reaps it and returns its exit status (-N when
    /// killed by signal N); at once if it was reaped already. A cancellation point:
    /// cancelling the wait leaves the child running, still owned by this Process. Throws
    /// std::system_error (waitid) if someone else reaped the child, std::logic_error if
    /// empty. The Process must outlive the await.
    detail::ExitOp wait() {
        detail::Child& c = state("wait").child;
        return detail::ExitOp(c.pidfd, c);
    }

private:
    friend struct detail::ProcessAccess;
    explicit Process(std::unique_ptr<detail::ProcessState> s) noexcept : s_(std::move(s)) {}

    detail::ProcessState& state(const char* call) const {
        if (!s_)
            throw std::logic_error(std::string("xiio::Process::") + call + ": empty Process");
        return *s_;
    }
    Fd& pipe(Fd detail::ProcessState::*which, const char* call, const char* option) {
        Fd& fd = state(call).*which;
        if (!fd)
            throw std::logic_error(std::string("xiio::Process::") + call + ": not piped (" +
                                   option + " was not set, or it was closed)");
        return fd;
    }

    std::unique_ptr<detail::ProcessState> s_;
};

namespace detail {
/// How spawn_process and run_process reach a Process's plumbing.
struct ProcessAccess {
    static Process make(std::unique_ptr<ProcessState> s) noexcept { return Process(std::move(s)); }
    static ProcessState& state(Process& p) noexcept { return *p.s_; }
};
} // namespace detail

/// Starts `cmd` and returns at once: the child runs alongside the task, which streams
/// through its pipes and awaits Process::wait(). A command without '/' is searched on the
/// PATH of `opts.env` if given, else of the caller, for a regular executable file
/// (directories and files we may not execute are skipped, as execvp does; if only such
/// entries exist, the error is EACCES). The child gets its pipes or our 0, 1, 2 and no other
/// fd of ours, an empty signal mask and the default SIGPIPE action. Throws, from
/// spawn_process itself: std::invalid_argument for an empty cmd or for both pipe_stderr
/// and stderr_to_stdout; std::system_error naming the command if it cannot start
/// ("posix_spawn xiio-nope: No such file or directory"). Not a cancellation point (it
/// never suspends).
inline Process spawn_process(std::vector<std::string> cmd, SpawnOptions opts = {}) {
    if (cmd.empty())
        throw std::invalid_argument("xiio::spawn_process: empty command");
    if (opts.pipe_stderr && opts.stderr_to_stdout)
        throw std::invalid_argument(
            "xiio::spawn_process: pipe_stderr and stderr_to_stdout exclude each other");
    // Everything that can fail before the child starts comes first; afterwards the state is
    // complete and only the Child (which kills on destruction) is moved into it.
    auto s = std::make_unique<detail::ProcessState>();
    Fd in_r, out_w, err_w; // the child's ends
    if (opts.pipe_stdin)
        std::tie(in_r, s->in) = detail::make_pipe();
    if (opts.pipe_stdout)
        std::tie(s->out, out_w) = detail::make_pipe();
    if (opts.pipe_stderr)
        std::tie(s->err, err_w) = detail::make_pipe();
    s->child = detail::spawn(cmd, opts, in_r ? in_r.get() : -1, out_w ? out_w.get() : -1,
                             err_w ? err_w.get() : -1);
    return detail::ProcessAccess::make(std::move(s));
}

} // namespace xiio
