#pragma once
// run_process(): the original's subprocess.run(), async, built on spawn_process()
// (spawn.hpp), whose header explains how the exit is awaited (a pidfd) and the hazards.
//
// Cancelled, or when the output exceeds max_output, the child is stopped: SIGTERM, SIGKILL
// after a grace period, always reaped. Under new_session the whole process group gets the
// signals; the leader is reaped only at the very end, so its group's id stays ours until
// then (see the top of spawn.hpp).

#include <xiio/io.hpp>
#include <xiio/multiplex.hpp>
#include <xiio/spawn.hpp>

#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <csignal>

namespace xiio {

/// How run_process() starts the command.
struct ProcessOptions {
    bool capture_output = false;           // collect stdout/stderr (else inherited)
    bool check = false;                    // throw CalledProcessError on non-zero exit
    std::optional<std::string> input = {}; // written to stdin, then closed (else inherited)
    std::optional<std::string> cwd = {};   // working directory of the child
    std::optional<std::vector<std::string>> env = {}; // "KEY=VALUE"; replaces the environment
    bool new_session = false;      // the child leads a new session (setsid): stopping it
                                   // signals its whole process group
    bool stderr_to_stdout = false; // stderr goes where stdout goes (captured: into `out`)
    std::optional<std::size_t> max_output = {}; // bound on `out` and on `err` (each), in
                                                // bytes: beyond, the child is stopped and
                                                // std::length_error names the limit
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

/// Reads `fd` to its end into `into`; more than `limit` bytes: std::length_error. Never
/// holds more than limit + 1 bytes (each read asks for at most what may still come).
template <class = detail::OnlyWhereUsed>
Task<void> read_all(Fd& fd, std::string& into, std::optional<std::size_t> limit,
                    const std::string& command, const char* stream) {
    char buf[65536];
    for (;;) {
        std::size_t want = sizeof buf;
        if (limit && *limit - into.size() < want) // into.size() <= *limit here
            want = *limit - into.size() + 1;      // one more byte shows the excess
        std::size_t n = co_await read(fd, std::span<char>(buf, want));
        if (n == 0)
            co_return;
        into.append(buf, n);
        if (limit && into.size() > *limit)
            throw std::length_error("xiio::run_process: '" + command + "' wrote more than " +
                                    std::to_string(*limit) + " bytes (max_output) to " + stream);
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

/// Waits until the child has exited; reaps it, except a group leader (kept as a zombie
/// until run_process ends, so its group can still be signalled).
template <class = detail::OnlyWhereUsed>
Task<void> wait_exit(Child& child) {
    while (!child.exited) {
        co_await wait_readable(child.pidfd);
        child.poll(child.group);
    }
}

/// Stops a child whose caller gave up: SIGTERM, SIGKILL after `grace`, always reaped. A
/// group gets SIGTERM, then SIGKILL once its leader has exited or after `grace` (its
/// members may outlive the leader: nothing of the group survives), then the leader is
/// reaped.
template <class = detail::OnlyWhereUsed>
Task<void> terminate(Child& child, Clock::duration grace) {
    std::exception_ptr error; // a cancellation during the grace period: kill at once
    try {
        // wait_exit may have seen the exit already, before a sibling failed: waiting for it
        // again would be ECHILD, which would replace the error that brought us here.
        if (!child.exited)
            child.poll(child.group);
        if (!child.exited || child.group) {
            child.signal(SIGTERM);
            if (!child.exited)
                co_await move_on_after(grace, wait_exit(child));
        }
    } catch (...) {
        error = std::current_exception();
    }
    if (!child.reaped) {
        child.signal(SIGKILL); // a group leader is still unreaped here: its group is ours
        if (!child.exited) {
            try {
                co_await wait_exit(child);
            } catch (...) {
                if (!error)
                    error = std::current_exception();
            }
        }
    }
    if (!child.reaped) { // blocks only for a child that has exited or is about to die
        if (int e = child.reap_blocking(); e != 0 && !error)
            error = std::make_exception_ptr(std::system_error(e, std::system_category(), "waitid"));
    }
    if (error)
        std::rethrow_exception(error);
}

} // namespace detail

/// Runs `cmd` and waits for it; its output is read (and `input` written) while it runs, so
/// megabytes on both stdout and stderr do not deadlock. The command is found and started
/// as by spawn_process(). Throws std::invalid_argument for an empty cmd or max_output
/// without capture_output, std::system_error naming the command if it cannot start,
/// std::length_error naming the limit if stdout or stderr exceeds max_output (the child is
/// stopped as when cancelled), and CalledProcessError with `check`. A cancellation point:
/// cancelled, the child (its group under new_session) gets SIGTERM, SIGKILL after 1 s, and
/// is always reaped.
template <class = detail::OnlyWhereUsed>
Task<CompletedProcess> run_process(std::vector<std::string> cmd, ProcessOptions opts = {}) {
    if (cmd.empty())
        throw std::invalid_argument("xiio::run_process: empty command");
    if (opts.max_output && !opts.capture_output)
        throw std::invalid_argument("xiio::run_process: max_output without capture_output");
    // Everything that allocates comes before the child starts or inside the try below,
    // which stops the child on any failure (and ~Child is the last resort).
    CompletedProcess result{cmd, 0, {}, {}};
    SpawnOptions spawn;
    spawn.pipe_stdin = opts.input.has_value();
    spawn.pipe_stdout = opts.capture_output;
    spawn.pipe_stderr = opts.capture_output && !opts.stderr_to_stdout;
    spawn.stderr_to_stdout = opts.stderr_to_stdout;
    spawn.new_session = opts.new_session;
    spawn.cwd = std::move(opts.cwd);
    spawn.env = std::move(opts.env);
    Process process = spawn_process(std::move(cmd), std::move(spawn));
    detail::ProcessState& p = detail::ProcessAccess::state(process);

    std::exception_ptr error;
    try {
        auto io = [&](TaskGroup& tg) -> Task<void> {
            if (opts.input)
                tg.add_task(detail::feed(p.in, *opts.input));
            if (p.out)
                tg.add_task(detail::read_all(p.out, result.out, opts.max_output,
                                             result.args.front(), "stdout"));
            if (p.err)
                tg.add_task(detail::read_all(p.err, result.err, opts.max_output,
                                             result.args.front(), "stderr"));
            co_await detail::wait_exit(p.child);
        };
        co_await task_group(std::ref(io));
    } catch (...) {
        error = std::current_exception(); // no co_await in a catch block
    }
    if (error) {
        co_await detail::terminate(p.child, std::chrono::seconds(1));
        std::rethrow_exception(error);
    }
    if (!p.child.reaped) // a group leader, kept until now; it has exited
        if (int e = p.child.reap_blocking(); e != 0)
            detail::throw_errno("waitid", e);
    result.returncode = p.child.returncode;
    if (opts.check)
        result.check_returncode();
    co_return result;
}

} // namespace xiio
