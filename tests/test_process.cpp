// Tests of xiio/process.hpp: run_process.
#include "helpers.hpp"

#include <xiio/process.hpp>

#include <filesystem>
#include <fstream>
#include <thread>

#include <sys/wait.h>

using namespace test;
using xiio::ProcessOptions;
using xiio::Task;

namespace {

using Cmd = std::vector<std::string>;

xiio::CompletedProcess sh(const std::string& script, ProcessOptions opts = {}) {
    return run([&]() -> Task<xiio::CompletedProcess> {
        Cmd cmd{"sh", "-c", script}; // g++ 12: no braced list inside co_await
        co_return co_await xiio::run_process(cmd, opts);
    });
}

ProcessOptions capture() {
    ProcessOptions o;
    o.capture_output = true;
    return o;
}

} // namespace

TEST_CASE("run_process returns the exit status and the arguments") {
    auto ok = sh("exit 0");
    CHECK(ok.returncode == 0);
    CHECK(ok.args == Cmd{"sh", "-c", "exit 0"});
    CHECK(sh("exit 3").returncode == 3);
    CHECK(no_children());
}

TEST_CASE("capture_output collects stdout and stderr separately") {
    auto r = sh("echo out; echo err >&2", capture());
    CHECK(r.out == "out\n");
    CHECK(r.err == "err\n");
}

TEST_CASE("without capture_output nothing is collected") {
    auto r = sh("true");
    CHECK(r.out.empty());
    CHECK(r.err.empty());
}

TEST_CASE("input is written to stdin and then closed") {
    auto opts = capture();
    opts.input = "hello\nworld\n";
    auto r = sh("cat; echo done", opts);
    CHECK(r.out == "hello\nworld\ndone\n");
}

TEST_CASE("megabytes on stdin and on both stdout and stderr do not deadlock") {
    std::string data(10 << 20, '\0');
    for (std::size_t i = 0; i < data.size(); ++i)
        data[i] = static_cast<char>('a' + (i * 31 + i / 1000) % 26);
    auto opts = capture();
    opts.input = data;
    // cat copies stdin to stdout; a second stream of 10 MB goes to stderr meanwhile.
    auto r = sh("head -c 10485760 /dev/zero >&2 & cat; wait", opts);
    CHECK(r.returncode == 0);
    CHECK(r.out.size() == data.size());
    CHECK(r.out == data);
    CHECK(r.err == std::string(10 << 20, '\0'));
}

TEST_CASE("a child that exits without reading its input is not an error") {
    auto opts = capture();
    opts.input = std::string(1 << 20, 'x'); // more than a pipe holds
    auto r = sh("exit 0", opts);
    CHECK(r.returncode == 0);
}

TEST_CASE("check throws CalledProcessError with code, command and output") {
    auto opts = capture();
    opts.check = true;
    try {
        sh("echo partial; echo oops >&2; exit 4", opts);
        FAIL("no exception");
    } catch (const xiio::CalledProcessError& e) {
        CHECK(e.returncode == 4);
        CHECK(e.cmd == Cmd{"sh", "-c", "echo partial; echo oops >&2; exit 4"});
        CHECK(e.out == "partial\n");
        CHECK(e.err == "oops\n");
    }
    auto done = sh("exit 2");
    CHECK_THROWS_AS(done.check_returncode(), xiio::CalledProcessError);
}

TEST_CASE("returncode is -N when the child was killed by signal N") {
    CHECK(sh("kill -9 $$").returncode == -9);
    CHECK(sh("kill -TERM $$").returncode == -SIGTERM);
}

TEST_CASE("cwd sets the child's working directory") {
    auto opts = capture();
    opts.cwd = "/tmp";
    CHECK(sh("pwd", opts).out == "/tmp\n");
}

TEST_CASE("env replaces the environment and its PATH finds the command") {
    auto opts = capture();
    opts.env = std::vector<std::string>{"FOO=bar", "PATH=/usr/bin:/bin"};
    CHECK(sh("echo $FOO; echo ${HOME:-nohome}", opts).out == "bar\nnohome\n");
}

TEST_CASE("env without PATH finds no command without a slash") {
    ProcessOptions opts;
    opts.env = std::vector<std::string>{"FOO=bar"};
    try {
        sh("true", opts);
        FAIL("no exception");
    } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::no_such_file_or_directory);
    }
    opts.env = std::vector<std::string>{"PATH=/nonexistent"};
    CHECK_THROWS_AS(sh("true", opts), std::system_error);
    CHECK(no_children());
}

TEST_CASE("a command that cannot start throws system_error naming the command") {
    run([]() -> Task<void> {
        Cmd cmd{"xiio-no-such-command", "arg"};
        try {
            co_await xiio::run_process(cmd);
            FAIL("no exception");
        } catch (const std::system_error& e) {
            CHECK(e.code() == std::errc::no_such_file_or_directory);
            CHECK(std::string(e.what()).find("xiio-no-such-command") != std::string::npos);
            CHECK(std::string(e.what()).rfind("posix_spawn", 0) == 0);
        }
        Cmd path{"/nonexistent/prog"};
        CHECK_THROWS_AS(co_await xiio::run_process(path), std::system_error);
        char path_buf[] = "/tmp/xiio-not-executable-XXXXXX"; // mode 0600
        ::close(::mkstemp(path_buf));
        Cmd not_executable{path_buf};
        try {
            co_await xiio::run_process(not_executable);
            FAIL("no exception");
        } catch (const std::system_error& e) {
            CHECK(e.code() == std::errc::permission_denied);
        }
        ::unlink(path_buf);
    });
    CHECK(no_children());
}

TEST_CASE("an empty command is invalid_argument") {
    CHECK_THROWS_AS(run([]() -> Task<void> {
                        Cmd empty;
                        co_await xiio::run_process(empty);
                    }),
                    std::invalid_argument);
}

TEST_CASE("a cancelled process gets SIGTERM and is reaped: no zombie, no fd") {
    assert_duration(100ms, [] {
        run([]() -> Task<void> {
            Cmd cmd{"sleep", "10"};
            auto opts = capture();
            CHECK_THROWS_AS(co_await xiio::timeout(100ms, xiio::run_process(cmd, opts)),
                            xiio::TimeoutError);
            CHECK(no_children());
        });
    });
}

TEST_CASE("a child that ignores SIGTERM is killed after a grace period of 1 s") {
    assert_duration(1100ms, [] {
        run([]() -> Task<void> {
            Cmd cmd{"sh", "-c", "trap '' TERM; exec sleep 10"};
            CHECK_THROWS_AS(co_await xiio::timeout(100ms, xiio::run_process(cmd)),
                            xiio::TimeoutError);
            CHECK(no_children());
        });
    });
}

TEST_CASE("no fd of ours leaks into the child") {
    int leaky = ::dup(0); // not close-on-exec
    REQUIRE(leaky >= 3);
    auto r = sh("ls /proc/self/fd", capture());
    ::close(leaky);
    // 0, 1, 2 and the directory ls reads (3); nothing of ours.
    CHECK(r.out == "0\n1\n2\n3\n");
}

TEST_CASE("the child starts with an empty signal mask although the loop blocks SIGPIPE") {
    auto r = sh("grep SigBlk /proc/self/status", capture());
    CHECK(r.out.find("0000000000000000") != std::string::npos);
}

TEST_CASE("other tasks run while a child runs") {
    run([]() -> Task<void> {
        int ticks = 0;
        auto ticker = [&]() -> Task<void> {
            for (int i = 0; i < 5; ++i) {
                co_await xiio::sleep(10ms);
                ++ticks;
            }
        };
        Cmd cmd{"sleep", "0.2"};
        auto [r, _] = co_await xiio::gather(xiio::run_process(cmd), ticker());
        CHECK(r.returncode == 0);
        CHECK(ticks == 5);
    });
}

// The original's test_subprocess, ported.

TEST_CASE("run_process waits for the child and captures its output (original)") {
    assert_duration(100ms, [] {
        auto r = sh("sleep 0.1 && echo 'Hello World'", capture());
        CHECK(r.returncode == 0);
        CHECK(r.out == "Hello World\n");
    });
}

TEST_CASE("check passes for true and throws CalledProcessError for false (original)") {
    run([]() -> Task<void> {
        ProcessOptions opts;
        opts.check = true;
        Cmd ok{"true"}, fails{"false"};
        auto r = co_await xiio::run_process(ok, opts);
        CHECK(r.returncode == 0);
        CHECK_THROWS_AS(co_await xiio::run_process(fails, opts), xiio::CalledProcessError);
    });
}

TEST_CASE("a directory named like the command earlier on PATH is skipped as execvp does") {
    struct TempDir {
        std::filesystem::path path =
            std::filesystem::temp_directory_path() / ("xiio-path-" + std::to_string(::getpid()));
        TempDir() { std::filesystem::create_directories(path / "true"); }
        ~TempDir() { std::filesystem::remove_all(path); }
    } dir;
    ProcessOptions opts;
    opts.env = std::vector<std::string>{"PATH=" + dir.path.string() + ":/usr/bin:/bin"};
    auto r = run([&]() -> Task<xiio::CompletedProcess> {
        Cmd cmd{"true"};
        co_return co_await xiio::run_process(cmd, opts);
    });
    CHECK(r.returncode == 0);
    // Only the directory on PATH: nothing to run, EACCES as execvp reports it.
    opts.env = std::vector<std::string>{"PATH=" + dir.path.string()};
    try {
        run([&]() -> Task<void> {
            Cmd cmd{"true"};
            co_await xiio::run_process(cmd, opts);
        });
        FAIL("no exception");
    } catch (const std::system_error& e) {
        CHECK(e.code() == std::errc::permission_denied);
    }
    CHECK(no_children());
}

// Second round: max_output, stderr_to_stdout, new_session.

namespace {

/// A file name of its own for this test process; removed when it goes.
struct TempFile {
    std::string path =
        (std::filesystem::temp_directory_path() / ("xiio-proc-" + std::to_string(::getpid())))
            .string();
    ~TempFile() { std::filesystem::remove(path); }
    /// The numbers the file holds, waiting up to 2 s for the shell to write them.
    std::vector<pid_t> numbers() const {
        auto end = xiio::Clock::now() + 2s;
        std::vector<pid_t> v;
        while (v.empty() && xiio::Clock::now() < end) {
            std::ifstream in(path);
            for (pid_t n; in >> n;)
                v.push_back(n);
            if (v.empty())
                std::this_thread::sleep_for(5ms);
        }
        return v;
    }
};

/// The error run_process throws for `script` with capture_output and max_output = limit.
std::string max_output_error(const std::string& script, std::size_t limit) {
    auto opts = capture();
    opts.max_output = limit;
    try {
        sh(script, opts);
    } catch (const std::length_error& e) {
        return e.what();
    }
    return "no exception";
}

} // namespace

TEST_CASE("max_output bounds stdout: yes is stopped and reaped, the error names the limit") {
    auto body = [] {
        std::string what = max_output_error("exec yes", 100000);
        CHECK(what.find("100000 bytes") != std::string::npos);
        CHECK(what.find("stdout") != std::string::npos);
        CHECK(what.find("'sh'") != std::string::npos);
    };
    // well below the grace period of 1 s, also on a busy machine
    assert_duration(0ms, body, 500ms);
    CHECK(no_children());
}

TEST_CASE("max_output bounds stderr separately") {
    std::string what = max_output_error("echo small; exec yes >&2", 4096);
    CHECK(what.find("4096 bytes") != std::string::npos);
    CHECK(what.find("stderr") != std::string::npos);
    CHECK(no_children());
}

TEST_CASE("max_output: exactly the limit is fine, one byte more is not") {
    auto opts = capture();
    opts.max_output = 1000;
    auto r = sh("head -c 1000 /dev/zero; head -c 1000 /dev/zero >&2", opts);
    CHECK(r.returncode == 0);
    CHECK(r.out.size() == 1000);
    CHECK(r.err.size() == 1000);
    CHECK(max_output_error("head -c 1001 /dev/zero", 1000).find("1000 bytes") != std::string::npos);
    CHECK(max_output_error("head -c 1 /dev/zero", 0).find("0 bytes") != std::string::npos);
    CHECK(no_children());
}

TEST_CASE("max_output without capture_output is invalid_argument") {
    ProcessOptions opts;
    opts.max_output = 10;
    CHECK_THROWS_AS(sh("true", opts), std::invalid_argument);
}

TEST_CASE("stderr_to_stdout merges stderr into out") {
    auto opts = capture();
    opts.stderr_to_stdout = true;
    auto r = sh("echo a; echo b >&2; echo c", opts);
    CHECK(r.out == "a\nb\nc\n");
    CHECK(r.err.empty());
}

TEST_CASE("without new_session a cancelled shell's background child survives") {
    // Why new_session exists: SIGTERM reaches the shell only.
    Subreaper subreaper;
    TempFile file;
    run([&]() -> Task<void> {
        Cmd cmd{"sh", "-c", "sleep 5 & echo $! > " + file.path + "; wait"};
        CHECK_THROWS_AS(co_await xiio::timeout(200ms, xiio::run_process(cmd)), xiio::TimeoutError);
    });
    auto pids = file.numbers();
    REQUIRE(pids.size() == 1);
    pid_t orphan = pids[0];
    CHECK(::waitpid(orphan, nullptr, WNOHANG) == 0); // alive (and ours, as the subreaper)
    ::kill(orphan, SIGKILL);
    ::waitpid(orphan, nullptr, 0);
    CHECK(no_children());
}

TEST_CASE("new_session: a cancelled child leaves no member of its group alive") {
    Subreaper subreaper;
    TempFile file;
    auto body = [&] {
        run([&]() -> Task<void> {
            ProcessOptions opts;
            opts.new_session = true;
            Cmd cmd{"sh", "-c", "sleep 5 & sleep 5 & echo $$ > " + file.path + "; wait"};
            CHECK_THROWS_AS(co_await xiio::timeout(200ms, xiio::run_process(cmd, opts)),
                            xiio::TimeoutError);
        });
    };
    // well below the grace period of 1 s, also on a busy machine
    assert_duration(200ms, body, 500ms);
    auto pids = file.numbers();
    REQUIRE(pids.size() == 1);
    CHECK(group_gone(pids[0], 1s)); // the sleeps died too
    CHECK(no_children());
}

TEST_CASE("new_session: a group member that ignores SIGTERM gets SIGKILL once the leader exits") {
    Subreaper subreaper;
    TempFile file;
    auto body = [&] {
        run([&]() -> Task<void> {
            ProcessOptions opts;
            opts.new_session = true;
            opts.capture_output = true;
            Cmd cmd{"sh", "-c", "(trap '' TERM; exec sleep 5) & echo $$ > " + file.path + "; wait"};
            CHECK_THROWS_AS(co_await xiio::timeout(200ms, xiio::run_process(cmd, opts)),
                            xiio::TimeoutError);
        });
    };
    // well below the grace period of 1 s, also on a busy machine
    assert_duration(200ms, body, 500ms);
    auto pids = file.numbers();
    REQUIRE(pids.size() == 1);
    CHECK(group_gone(pids[0], 1s));
    CHECK(no_children());
}

TEST_CASE("new_session: max_output stops the whole group") {
    Subreaper subreaper;
    TempFile file;
    auto opts = capture();
    opts.new_session = true;
    opts.max_output = 10000;
    // The shell exits at once; its background yes goes on writing into the pipe.
    Cmd cmd{"sh", "-c", "echo $$ > " + file.path + "; yes &"};
    CHECK_THROWS_AS(run([&]() -> Task<void> { co_await xiio::run_process(cmd, opts); }),
                    std::length_error);
    auto pids = file.numbers();
    REQUIRE(pids.size() == 1);
    CHECK(group_gone(pids[0], 1s));
    CHECK(no_children());
}
