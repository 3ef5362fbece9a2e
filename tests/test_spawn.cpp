// Tests of xiio/spawn.hpp: spawn_process and Process.
#include "helpers.hpp"

#include <xiio/spawn.hpp>

#include <xiio/process.hpp>

#include <cstdio>
#include <fstream>
#include <thread>

#include <sys/wait.h>

using namespace test;
using xiio::Process;
using xiio::SpawnOptions;
using xiio::Task;

namespace {

using Cmd = std::vector<std::string>;

/// Reads `fd` to its end.
Task<std::string> read_to_end(xiio::Fd& fd) {
    std::string got;
    char buf[65536];
    while (std::size_t n = co_await xiio::read(fd, buf))
        got.append(buf, n);
    co_return got;
}

} // namespace

TEST_CASE("spawn_process streams 1 MB through cat and back exactly") {
    run([]() -> Task<void> {
        SpawnOptions opts;
        opts.pipe_stdin = opts.pipe_stdout = true;
        Cmd cmd{"cat"};
        Process p = xiio::spawn_process(cmd, opts);
        std::string data(1 << 20, '\0');
        for (std::size_t i = 0; i < data.size(); ++i)
            data[i] = static_cast<char>(i * 7 + i / 4096);
        // More than a pipe holds both ways: writing and reading must overlap.
        auto writer = [&]() -> Task<void> {
            co_await xiio::writeall(p.stdin_fd(), data);
            p.stdin_fd().close(); // cat sees end of file
        };
        auto [got, _] = co_await xiio::gather(read_to_end(p.stdout_fd()), writer());
        int code = co_await p.wait();
        CHECK(code == 0);
        CHECK(got.size() == data.size());
        CHECK(got == data);
    });
    CHECK(no_children());
}

TEST_CASE("send_signal(SIGTERM) then wait returns -SIGTERM") {
    run([]() -> Task<void> {
        Cmd cmd{"sleep", "10"};
        Process p = xiio::spawn_process(cmd);
        CHECK(p.pid() > 0);
        CHECK_THROWS_AS(p.send_signal(NSIG + 1), std::system_error); // EINVAL
        p.send_signal(SIGTERM);
        int code = co_await p.wait();
        CHECK(code == -SIGTERM);
        // Waited for: a second wait returns the status at once, a signal does nothing.
        p.send_signal(SIGKILL);
        int again = co_await p.wait();
        CHECK(again == -SIGTERM);
    });
    CHECK(no_children());
}

TEST_CASE("wait returns the exit status of a child that already exited") {
    run([]() -> Task<void> {
        Cmd cmd{"sh", "-c", "exit 7"};
        Process p = xiio::spawn_process(cmd);
        co_await xiio::sleep(50ms);
        int code = co_await p.wait();
        CHECK(code == 7);
    });
    CHECK(no_children());
}

TEST_CASE("a cancelled wait leaves the child running and owned by its Process") {
    run([]() -> Task<void> {
        Cmd cmd{"sleep", "10"};
        Process p = xiio::spawn_process(cmd);
        std::optional<int> code = co_await xiio::move_on_after(50ms, p.wait());
        CHECK(!code);
        CHECK(::kill(p.pid(), 0) == 0);
        CHECK(::waitpid(p.pid(), nullptr, WNOHANG) == 0); // running, not a zombie
        // Moved while nothing waits: the new owner waits.
        Process q = std::move(p);
        CHECK(p.pid() == -1);
        q.send_signal(SIGKILL);
        int killed = co_await q.wait();
        CHECK(killed == -SIGKILL);
    });
    CHECK(no_children());
}

TEST_CASE("a Process destroyed unwaited inside run() kills and reaps its child at once") {
    auto body = [] {
        run([]() -> Task<void> {
            SpawnOptions opts;
            opts.pipe_stdout = true;
            Cmd cmd{"sleep", "10"};
            {
                Process p = xiio::spawn_process(cmd, opts);
                co_await xiio::sleep(10ms); // the child runs
                CHECK(::kill(p.pid(), 0) == 0);
            }
            CHECK(no_children());
        });
    };
    // well below the grace period of 1 s, also on a busy machine
    assert_duration(0ms, body, 500ms);
    CHECK(no_children());
}

TEST_CASE("a Process destroyed unwaited outside any loop kills and reaps its child") {
    pid_t pid;
    {
        Cmd cmd{"sleep", "10"};
        Process p = xiio::spawn_process(cmd);
        pid = p.pid();
        CHECK(::kill(pid, 0) == 0);
    }
    CHECK(::kill(pid, 0) == -1);
    CHECK(no_children());
}

TEST_CASE("a Process whose pipes a loop used is killed and reaped after that loop is gone") {
    SpawnOptions opts;
    opts.pipe_stdin = opts.pipe_stdout = true;
    Process p = xiio::run([&]() -> Task<Process> {
        Cmd cmd{"cat"};
        Process q = xiio::spawn_process(cmd, opts);
        co_await xiio::writeall(q.stdin_fd(), "ping\n");
        char buf[5];
        co_await xiio::read_exactly(q.stdout_fd(), buf);
        co_return std::move(q);
    }());
    CHECK(::kill(p.pid(), 0) == 0);
    p = Process(); // cat still waits for input: SIGKILL, reaped
    CHECK(no_children());
}

TEST_CASE("the fds of a Process that is not piped are logic_error, and so is an empty Process") {
    Cmd cmd{"true"};
    SpawnOptions opts;
    opts.pipe_stdout = true;
    opts.stderr_to_stdout = true;
    Process p = xiio::spawn_process(cmd, opts);
    CHECK_NOTHROW(p.stdout_fd());
    CHECK_THROWS_AS(p.stdin_fd(), std::logic_error);
    CHECK_THROWS_AS(p.stderr_fd(), std::logic_error); // merged into stdout
    try {
        Process none = xiio::spawn_process(cmd);
        none.stdout_fd();
        FAIL("no exception");
    } catch (const std::logic_error& e) {
        CHECK(std::string(e.what()).find("pipe_stdout") != std::string::npos);
    }
    Process empty = std::move(p);
    CHECK(p.pid() == -1);
    CHECK_THROWS_AS(p.stdout_fd(), std::logic_error);
    CHECK_THROWS_AS(p.send_signal(SIGTERM), std::logic_error);
    CHECK_THROWS_AS(p.wait(), std::logic_error);
    int code = xiio::run(empty.wait());
    CHECK(code == 0);
    CHECK(no_children());
}

TEST_CASE("spawn_process of a command that cannot start throws system_error itself") {
    // Outside any loop: the error comes from spawn_process(), not from a later await.
    try {
        Cmd cmd{"/nonexistent"};
        (void)xiio::spawn_process(cmd);
        FAIL("no exception");
    } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::no_such_file_or_directory);
        CHECK(std::string(e.what()).find("/nonexistent") != std::string::npos);
    }
    SpawnOptions opts;
    opts.pipe_stdin = opts.pipe_stdout = true;
    Cmd missing{"xiio-no-such-command"};
    CHECK_THROWS_AS(xiio::spawn_process(missing, opts), std::system_error);
    Cmd empty;
    CHECK_THROWS_AS(xiio::spawn_process(empty), std::invalid_argument);
    Cmd cmd{"true"};
    opts.pipe_stderr = opts.stderr_to_stdout = true;
    CHECK_THROWS_AS(xiio::spawn_process(cmd, opts), std::invalid_argument);
    CHECK(no_children());
}

TEST_CASE("spawn_process: cwd and env are the child's") {
    run([]() -> Task<void> {
        SpawnOptions opts;
        opts.pipe_stdout = true;
        opts.cwd = "/tmp";
        opts.env = std::vector<std::string>{"FOO=bar", "PATH=/usr/bin:/bin"};
        Cmd cmd{"sh", "-c", "pwd; echo $FOO ${HOME:-nohome}"};
        Process p = xiio::spawn_process(cmd, opts);
        std::string out = co_await read_to_end(p.stdout_fd());
        int code = co_await p.wait();
        CHECK(code == 0);
        CHECK(out == "/tmp\nbar nohome\n");
    });
}

TEST_CASE("spawn_process: stderr_to_stdout merges both into stdout_fd") {
    run([]() -> Task<void> {
        SpawnOptions opts;
        opts.pipe_stdout = true;
        opts.stderr_to_stdout = true;
        Cmd cmd{"sh", "-c", "echo a; echo b >&2"};
        Process p = xiio::spawn_process(cmd, opts);
        std::string out = co_await read_to_end(p.stdout_fd());
        int code = co_await p.wait();
        CHECK(code == 0);
        CHECK(out == "a\nb\n");
    });
}

TEST_CASE("spawn_process: stdout and stderr pipes are separate") {
    run([]() -> Task<void> {
        SpawnOptions opts;
        opts.pipe_stdout = opts.pipe_stderr = true;
        Cmd cmd{"sh", "-c", "echo out; echo err >&2"};
        Process p = xiio::spawn_process(cmd, opts);
        auto [out, err] =
            co_await xiio::gather(read_to_end(p.stdout_fd()), read_to_end(p.stderr_fd()));
        int code = co_await p.wait();
        CHECK(code == 0);
        CHECK(out == "out\n");
        CHECK(err == "err\n");
    });
}

TEST_CASE("new_session: the child leads its own session and process group") {
    run([]() -> Task<void> {
        SpawnOptions opts;
        opts.pipe_stdout = true;
        opts.new_session = true;
        Cmd cmd{"sh", "-c", "ps -o pgid= -o sid= -p $$"};
        Process p = xiio::spawn_process(cmd, opts);
        std::string out = co_await read_to_end(p.stdout_fd());
        int code = co_await p.wait();
        CHECK(code == 0);
        int pgid = 0, sid = 0;
        REQUIRE(std::sscanf(out.c_str(), "%d %d", &pgid, &sid) == 2);
        CHECK(pgid == p.pid());
        CHECK(sid == p.pid());
    });
}

TEST_CASE("new_session: a Process destroyed unwaited kills its whole group") {
    Subreaper subreaper;
    pid_t pgid = -1;
    run([&]() -> Task<void> {
        SpawnOptions opts;
        opts.pipe_stdout = true;
        opts.new_session = true;
        Cmd cmd{"sh", "-c", "sleep 5 & sleep 5 & echo started; wait"};
        Process p = xiio::spawn_process(cmd, opts);
        pgid = p.pid();
        xiio::StreamReader lines(p.stdout_fd());
        auto line = co_await lines.read_line();
        CHECK(line == "started");
    });
    CHECK(group_gone(pgid, 1s));
    CHECK(no_children());
}
