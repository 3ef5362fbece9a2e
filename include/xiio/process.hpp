#pragma once
// run_process(): the original's subprocess.run(), async. Linux-specific: the exit is awaited
// through a pidfd, so no SIGCHLD handler and no thread is involved.
//
// Hazard (from the original): pidfd_open() is safe only as long as nobody reaps the child
// first. xiio reaps it itself (waitid(P_PIDFD)); a process that sets SIGCHLD to SIG_IGN
// (automatic reaping) breaks that, and run_process then throws std::system_error (ESRCH
// or ECHILD).

#include <xiio/detail/sys.hpp>
#include <xiio/io.hpp>
#include <xiio/multiplex.hpp>

#include <cstdlib>
#include <new>
#include <optional>
#include <spawn.h>
#include <stdexcept>
#include <string>
#include <vector>

#include <csignal>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace xiio {

/// How run_process() starts the command.
struct ProcessOptions {
    bool capture_output = false;           // collect stdout/stderr (else inherited)
    bool check = false;                    // throw CalledProcessError on non-zero exit
    std::optional<std::string> input = {}; // written to stdin, then closed (else inherited)
    std::optional<std::string> cwd = {};   // working directory of the child
    std::optional<std::vector<std::string>> env = {}; // "KEY=VALUE"; replaces the environment
};

/// Thrown by check_returncode() (and run_process with `check`) for a non-zero exit.
class CalledProcessError : public std::runtime_error {
public:
    CalledProcessError(int code, std::vector<std::string> command, std::string stdout_data,
                       std::string stderr_data)
        : std::runtime_error(describe(code, command)), returncode(code), cmd(std::move(command)),
          out(std::move(stdout_data)), err(std::move(stderr_data)) {}
    int returncode;
    std::vector<std::string> cmd;
    std::string out, err;

private:
    static std::string describe(int code, const std::vector<std::string>& cmd) {
        std::string s = "xiio: command '" + (cmd.empty() ? std::string() : cmd.front());
        if (code < 0)
            return s + "' died with signal " + std::to_string(-code);
        return s + "' returned non-zero exit status " + std::to_string(code);
    }
};

/// What a finished process left.
struct CompletedProcess {
    std::vector<std::string> args;
    int returncode = 0; // -N when killed by signal N
    std::string out, err;

    /// Throws CalledProcessError if returncode is not 0.
    void check_returncode() const {
        if (returncode != 0)
            throw CalledProcessError(returncode, args, out, err);
    }
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

/// A started child: its pid and a pidfd (the only handle xiio waits on).
struct Child {
    pid_t pid = -1;
    Fd pidfd;
    bool reaped = false;
    int returncode = 0;

    Child() = default;
    Child(Child&&) noexcept = default;
    Child& operator=(Child&&) = delete;
    /// The last resort: a child whose caller could not wait for it (an exception where
    /// run_process could not even start stopping it: a failed allocation of the frame of
    /// terminate(), or of the result; the frame destroyed with the loop) is killed and
    /// reaped here, never left running or a zombie. Blocks only until a SIGKILLed child is
    /// gone.
    ~Child() {
        if (!pidfd || reaped)
            return;
        signal(SIGKILL);
        siginfo_t info{};
        // By pid, not pidfd: the pidfd is non-blocking once the loop watched it, and a
        // blocking waitid on it answers EAGAIN instead of waiting (a zombie was left).
        retry_eintr([&] { return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED); });
    }

    /// Reaps the child, which must have exited (pidfd readable); fills returncode.
    void reap(int options = WEXITED | WNOHANG) {
        siginfo_t info{};
        // A blocking reap goes by pid: on a non-blocking pidfd it would answer EAGAIN.
        bool block = !(options & WNOHANG);
        if (retry_eintr([&] {
                return block ? ::waitid(P_PID, static_cast<id_t>(pid), &info, options)
                             : ::waitid(P_PIDFD, static_cast<id_t>(pidfd.get()), &info, options);
            }) != 0)
            throw_errno("waitid");
        if (info.si_pid == 0)
            return; // WNOHANG: not yet
        reaped = true;
        returncode = info.si_code == CLD_EXITED ? info.si_status : -info.si_status;
    }
    void signal(int sig) noexcept {
        ::syscall(SYS_pidfd_send_signal, pidfd.get(), sig, nullptr, 0);
    }
};

/// Starts `cmd`; the child gets `in`, `out`, `err` (or inherits where -1) as 0, 1, 2 and no
/// other fd of ours (closefrom 3), a clean signal mask and default SIGPIPE.
inline Child spawn(const std::vector<std::string>& cmd, const ProcessOptions& opts, int in, int out,
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
    if (err >= 0)
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
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

    Child child;
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
        ::kill(child.pid, SIGKILL);
        ::waitpid(child.pid, nullptr, 0);
        throw_errno("pidfd_open", e);
    }
    child.pidfd = Fd(pidfd);
    return child;
}

/// Reads `fd` to its end into `into`.
template <class = detail::OnlyWhereUsed>
Task<void> read_all(Fd& fd, std::string& into) {
    char buf[65536];
    for (;;) {
        std::size_t n = co_await read(fd, buf);
        if (n == 0)
            co_return;
        into.append(buf, n);
    }
}

/// Writes `data` to the child's stdin and closes it; a child that exits without reading
/// everything is not an error (EPIPE), as in Python's communicate().
template <class = detail::OnlyWhereUsed>
Task<void> feed(Fd& fd, const std::string& data) {
    try {
        co_await writeall(fd, data);
    } catch (const std::system_error& e) {
        if (e.code() != std::errc::broken_pipe)
            throw;
    }
    fd.close();
}

template <class = detail::OnlyWhereUsed>
Task<void> wait_exit(Child& child) {
    while (!child.reaped) {
        co_await wait_readable(child.pidfd);
        child.reap();
    }
}

/// Stops a child whose caller gave up: SIGTERM, SIGKILL after `grace`, always reaped.
template <class = detail::OnlyWhereUsed>
Task<void> terminate(Child& child, Clock::duration grace) {
    std::exception_ptr error; // a cancellation during the grace period: kill at once
    try {
        // wait_exit may have reaped it already, before a sibling failed: waiting for it
        // again would be ECHILD, which would replace the error that brought us here.
        if (!child.reaped)
            child.reap();
        if (!child.reaped) {
            child.signal(SIGTERM);
            co_await move_on_after(grace, wait_exit(child));
        }
    } catch (...) {
        error = std::current_exception();
    }
    if (!child.reaped) {
        child.signal(SIGKILL);
        try {
            co_await wait_exit(child);
        } catch (...) {
            if (!error)
                error = std::current_exception();
        }
    }
    if (!child.reaped)
        child.reap(WEXITED); // blocks only for a SIGKILLed child that is about to die
    if (error)
        std::rethrow_exception(error);
}

} // namespace detail

/// Runs `cmd` and waits for it; its output is read (and `input` written) while it runs, so
/// megabytes on both stdout and stderr do not deadlock. A command without '/' is searched
/// on the PATH of `opts.env` if given, else of the caller, for a regular executable file
/// (directories and files we may not execute are skipped, as execvp does; if only such
/// entries exist, the error is EACCES). Throws std::invalid_argument for an empty cmd,
/// std::system_error naming the command if it cannot start, and CalledProcessError with
/// `check`. Cancelled: SIGTERM, SIGKILL after 1 s, always reaped.
template <class = detail::OnlyWhereUsed>
Task<CompletedProcess> run_process(std::vector<std::string> cmd, ProcessOptions opts = {}) {
    if (cmd.empty())
        throw std::invalid_argument("xiio::run_process: empty command");
    // Everything that allocates comes before the child starts or inside the try below,
    // which stops the child on any failure (and ~Child is the last resort).
    CompletedProcess result{cmd, 0, {}, {}};
    Fd in_r, in_w, out_r, out_w, err_r, err_w;
    if (opts.input)
        std::tie(in_r, in_w) = detail::make_pipe();
    if (opts.capture_output) {
        std::tie(out_r, out_w) = detail::make_pipe();
        std::tie(err_r, err_w) = detail::make_pipe();
    }
    detail::Child child = detail::spawn(cmd, opts, in_r ? in_r.get() : -1, out_w ? out_w.get() : -1,
                                        err_w ? err_w.get() : -1);
    in_r.close(); // the child's ends: EOF and EPIPE must reach us when the child is done
    out_w.close();
    err_w.close();

    std::exception_ptr error;
    try {
        auto io = [&](TaskGroup& tg) -> Task<void> {
            if (opts.input)
                tg.add_task(detail::feed(in_w, *opts.input));
            if (opts.capture_output) {
                tg.add_task(detail::read_all(out_r, result.out));
                tg.add_task(detail::read_all(err_r, result.err));
            }
            co_await detail::wait_exit(child);
        };
        co_await task_group(std::ref(io));
    } catch (...) {
        error = std::current_exception(); // no co_await in a catch block
    }
    if (error) {
        co_await detail::terminate(child, std::chrono::seconds(1));
        std::rethrow_exception(error);
    }
    result.returncode = child.returncode;
    if (opts.check)
        result.check_returncode();
    co_return result;
}

} // namespace xiio
