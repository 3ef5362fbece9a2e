// The server examples under stress, each run as a child process (on 127.0.0.1 only):
// - out of fds (a low RLIMIT_NOFILE), accept fails with EMFILE at once, without suspending:
//   the server must back off rather than spin or exit, and serve everyone once fds free up;
// - a client that resets mid-stream (SO_LINGER {1, 0}, then close) must cost only its own
//   connection: the other clients keep being served.
// The examples are what users copy, so they get the same care as the library.
#include "helpers.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace test;
using xiio::Task;

extern char** environ;

// The examples are built only with XIIO_BUILD_EXAMPLES: without them there is nothing to
// drive (and the helpers below would be unused).
#if defined(XIIO_ECHO_SERVER) || defined(XIIO_CHAT) || defined(XIIO_ECHO_CORES)

namespace {

/// An fd closed when it goes (members of a half-built ServerProcess close too).
struct OwnedFd {
    int fd = -1;
    OwnedFd() = default;
    OwnedFd(const OwnedFd&) = delete;
    OwnedFd& operator=(const OwnedFd&) = delete;
    ~OwnedFd() {
        if (fd >= 0)
            ::close(fd);
    }
};

/// A server example run as a child process with `--port 0`, under a soft RLIMIT_NOFILE of
/// `nofile` if nonzero (set by `sh -c 'ulimit -n N'` before it execs the server). Its stdout
/// is a pipe (the first line names the port), its stderr a memfd read by errors(). The
/// destructor kills and reaps it if it still runs: no zombie, whatever the test did.
class ServerProcess {
public:
    explicit ServerProcess(const std::string& program, int nofile = 0) {
        int out[2];
        REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
        out_.fd = out[0];
        OwnedFd out_w;
        out_w.fd = out[1];
        err_.fd = ::memfd_create("server-stderr", MFD_CLOEXEC);
        REQUIRE(err_.fd >= 0);
        std::vector<std::string> args{program, "--port", "0"};
        if (nofile > 0)
            args = {"/bin/sh",
                    "-c",
                    "ulimit -n " + std::to_string(nofile) + " && exec \"$0\" \"$@\"",
                    program,
                    "--port",
                    "0"};
        std::vector<char*> argv;
        for (auto& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, out_w.fd, 1);
        posix_spawn_file_actions_adddup2(&actions, err_.fd, 2);
        posix_spawnattr_t attr;
        posix_spawnattr_init(&attr);
        sigset_t none, pipe;
        sigemptyset(&none);
        sigemptyset(&pipe);
        sigaddset(&pipe, SIGPIPE);
        posix_spawnattr_setsigmask(&attr, &none); // the test may have blocked SIGINT/SIGTERM
        posix_spawnattr_setsigdefault(&attr, &pipe);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        int rc = ::posix_spawn(&pid_, argv[0], &actions, &attr, argv.data(), environ);
        posix_spawn_file_actions_destroy(&actions);
        posix_spawnattr_destroy(&attr);
        if (rc != 0)
            pid_ = -1;
        REQUIRE(rc == 0);
    }
    ~ServerProcess() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
    }
    ServerProcess(const ServerProcess&) = delete;
    ServerProcess& operator=(const ServerProcess&) = delete;

    /// The port of the first number the server prints (0 if it printed none within 10 s).
    std::uint16_t port() {
        std::string printed;
        auto deadline = xiio::Clock::now() + 10s;
        while (printed.find('\n') == std::string::npos && xiio::Clock::now() < deadline) {
            pollfd p{out_.fd, POLLIN, 0};
            if (::poll(&p, 1, 100) <= 0)
                continue;
            char buf[256];
            ssize_t n = ::read(out_.fd, buf, sizeof buf);
            if (n <= 0)
                break;
            printed.append(buf, static_cast<std::size_t>(n));
        }
        auto digits = printed.find_first_of("0123456789");
        INFO("the server printed: " << printed);
        return digits == std::string::npos
                   ? 0
                   : static_cast<std::uint16_t>(std::stoi(printed.substr(digits)));
    }

    pid_t pid() const { return pid_; }

    /// What the server printed after the first line, up to its exit (call after stop()).
    std::string rest_of_output() {
        std::string text;
        char buf[256];
        for (ssize_t n; (n = ::read(out_.fd, buf, sizeof buf)) > 0;)
            text.append(buf, static_cast<std::size_t>(n));
        return text;
    }

    /// Whether the server still runs (it has not exited, nor been killed).
    bool running() { return pid_ > 0 && ::waitpid(pid_, &status_, WNOHANG) == 0; }

    /// CPU time (user + system) the server has used so far, from /proc/PID/stat.
    double cpu_seconds() const {
        std::ifstream f("/proc/" + std::to_string(pid_) + "/stat");
        std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        auto paren = stat.rfind(')'); // the command name may hold spaces: skip past it
        REQUIRE(paren != std::string::npos);
        std::istringstream fields(stat.substr(paren + 1));
        std::vector<std::string> v(std::istream_iterator<std::string>(fields), {});
        REQUIRE(v.size() > 12);
        // v[0] is field 3 (state): utime and stime are fields 14 and 15, in clock ticks.
        return static_cast<double>(std::stol(v[11]) + std::stol(v[12])) /
               static_cast<double>(::sysconf(_SC_CLK_TCK));
    }

    /// What the server wrote to stderr so far.
    std::string errors() const {
        std::string text;
        char buf[4096];
        for (off_t at = 0;;) {
            ssize_t n = ::pread(err_.fd, buf, sizeof buf, at);
            if (n <= 0)
                return text;
            text.append(buf, static_cast<std::size_t>(n));
            at += n;
        }
    }

    /// Sends `sig` and reaps the server; its wait status (-1: not gone within 10 s).
    int stop(int sig) {
        ::kill(pid_, sig);
        for (auto deadline = xiio::Clock::now() + 10s; xiio::Clock::now() < deadline;) {
            if (::waitpid(pid_, &status_, WNOHANG) == pid_) {
                pid_ = -1;
                return status_;
            }
            ::usleep(10'000);
        }
        return -1;
    }

private:
    OwnedFd out_, err_;
    pid_t pid_ = -1;
    int status_ = 0;
};

/// test::run(body), and on an exception (the server hung up, say) a failure that shows
/// what the server wrote to stderr.
template <class F>
void run_against(const ServerProcess& server, F body) {
    try {
        run(std::move(body));
    } catch (const std::exception& e) {
        FAIL(e.what() << "\nthe server's stderr:\n" << server.errors());
    }
}

/// How many times `what` occurs in `text`.
std::size_t count(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
        ++n;
    return n;
}

/// The next line ('\n' included) from `s`; what came after it stays in `buffer`.
Task<std::string> read_line(xiio::Socket& s, std::string& buffer) {
    for (;;) {
        if (auto eol = buffer.find('\n'); eol != std::string::npos) {
            std::string line = buffer.substr(0, eol + 1);
            buffer.erase(0, eol + 1);
            co_return line;
        }
        std::array<char, 4096> chunk;
        std::size_t n = co_await s.recv(chunk);
        if (n == 0)
            throw std::runtime_error("the server closed the connection");
        buffer.append(chunk.data(), n);
    }
}

/// Makes the close of `s` a reset: SO_LINGER {on, 0 s} sends an RST instead of a FIN.
void reset_on_close(const xiio::Socket& s) {
    ::linger lg{1, 0};
    REQUIRE(::setsockopt(s.fd(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0);
}

} // namespace

#ifdef XIIO_ECHO_SERVER

TEST_CASE("echo_server out of fds backs off without spinning and serves every client",
          "[examples]") {
    // 150 clients at once against 64 fds: the server holds ~55 connections, then accept
    // fails with EMFILE until clients leave. Each client holds its connection 600 ms after
    // its echo, so the server spends ~1.2 s out of fds in all. While the first clients
    // hold, the server has nothing to do but retry: its CPU time over 400 ms of that shows
    // whether it spins (an xiio::yield() in place of the back-off sleep burns ~0.2 s there,
    // ~0.6 s over the run; backing off, it takes ~0.02 s over the run, ~0.07 s under ASan).
    ServerProcess server(XIIO_ECHO_SERVER, 64);
    auto port = server.port();
    REQUIRE(port != 0);
    constexpr int clients = 150;
    int served = 0, served_in_window = -1;
    double window_cpu = -1;
    auto client = [&](int i) -> Task<void> {
        auto s = co_await xiio::connect_tcp("127.0.0.1", port);
        std::string line = "client " + std::to_string(i) + "\n", buffer;
        co_await s.send_all(line);
        auto echo = co_await read_line(s, buffer);
        if (echo == line)
            ++served;
        co_await xiio::sleep(600ms); // keeps one of the server's fds a while
    };
    auto idle_window = [&]() -> Task<void> {
        for (int before = -1; served == 0 || served != before;) { // until the first stall
            before = served;
            co_await xiio::sleep(50ms);
        }
        served_in_window = served;
        double cpu = server.cpu_seconds();
        co_await xiio::sleep(400ms);
        window_cpu = server.cpu_seconds() - cpu;
        served_in_window = served - served_in_window; // none, if it was a stall
    };
    auto start = xiio::Clock::now();
    run_against(server, [&]() -> Task<void> {
        std::vector<Task<void>> tasks;
        for (int i = 0; i < clients; ++i)
            tasks.push_back(client(i));
        tasks.push_back(idle_window());
        co_await xiio::timeout(20s, xiio::gather(std::move(tasks)));
    });
    auto took = elapsed_ms(start);
    double cpu = server.cpu_seconds();
    auto errors = server.errors();
    INFO("served " << served << " clients in " << took << " ms; server CPU " << cpu << " s in all, "
                   << window_cpu << " s while out of fds and idle for 400 ms (" << served_in_window
                   << " served then); its stderr:\n"
                   << errors);
    CHECK(served == clients);
    CHECK(errors.find("Too many open files") != std::string::npos); // EMFILE did happen
    CHECK(count(errors, "retrying") < 30u);                         // reported once a bout
    CHECK(window_cpu < 0.1);
    CHECK(cpu < 0.5);
    REQUIRE(server.running());
    int status = server.stop(SIGTERM); // still healthy: shuts down cleanly
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("echo_server serves its other clients while one resets mid-stream", "[examples]") {
    // The resetting client sends without reading until the server is stuck sending its echo
    // back, then resets: the server's send fails with ECONNRESET. 20 healthy clients keep
    // exchanging lines before, during and 20 rounds after.
    ServerProcess server(XIIO_ECHO_SERVER);
    auto port = server.port();
    REQUIRE(port != 0);
    constexpr int healthy = 20;
    bool reset_done = false;
    std::size_t reset_sent = 0;
    std::vector<int> rounds(healthy), after_reset(healthy);
    auto talker = [&](int i) -> Task<void> {
        auto s = co_await xiio::connect_tcp("127.0.0.1", port);
        std::string buffer;
        for (int j = 0; after_reset[i] < 20; ++j) {
            bool after = reset_done;
            std::string line = "client " + std::to_string(i) + " round " + std::to_string(j) + " " +
                               std::string(100, 'h') + "\n";
            co_await s.send_all(line);
            auto echo = co_await read_line(s, buffer);
            if (echo != line)
                throw std::runtime_error("wrong echo: " + echo);
            ++rounds[i];
            after_reset[i] += after;
            co_await xiio::sleep(1ms);
        }
    };
    auto resetter = [&]() -> Task<void> {
        {
            auto s = co_await xiio::connect_tcp("127.0.0.1", port);
            std::string chunk(64 * 1024, 'r');
            auto send_chunk = [&]() -> Task<std::size_t> { co_return co_await s.send(chunk); };
            while (reset_sent < (256u << 20)) {
                auto n = co_await xiio::move_on_after(100ms, send_chunk);
                if (!n)
                    break; // we read nothing: the server is stuck sending to us
                reset_sent += *n;
            }
            reset_on_close(s);
        } // closed: an RST
        reset_done = true;
    };
    auto start = xiio::Clock::now();
    run_against(server, [&]() -> Task<void> {
        std::vector<Task<void>> tasks;
        for (int i = 0; i < healthy; ++i)
            tasks.push_back(talker(i));
        tasks.push_back(resetter());
        co_await xiio::timeout(20s, xiio::gather(std::move(tasks)));
    });
    auto took = elapsed_ms(start);
    auto errors = server.errors();
    INFO("took " << took << " ms; the resetter sent " << reset_sent
                 << " bytes; the server's stderr:\n"
                 << errors);
    CHECK(reset_done);
    CHECK(*std::min_element(after_reset.begin(), after_reset.end()) == 20);
    CHECK(*std::min_element(rounds.begin(), rounds.end()) > 20);
    CHECK(count(errors, "connection dropped") == 1); // reported, then carried on
    REQUIRE(server.running());
    int status = server.stop(SIGTERM);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

#endif

#ifdef XIIO_CHAT

namespace {

/// Connects `n` chat clients one by one, each a member before the next comes: the
/// newcomer says "join" and the first client waits to hear it.
Task<std::vector<xiio::Socket>> join_chat(std::uint16_t port, int n, std::string& first_buffer) {
    std::vector<xiio::Socket> members;
    members.push_back(co_await xiio::connect_tcp("127.0.0.1", port));
    for (int i = 1; i < n; ++i) {
        members.push_back(co_await xiio::connect_tcp("127.0.0.1", port));
        std::string join = "join " + std::to_string(i) + "\n";
        co_await members.back().send_all(join);
        for (;;) {
            auto line = co_await xiio::timeout(10s, read_line(members.front(), first_buffer));
            if (line.ends_with("] " + join))
                break;
        }
    }
    co_return members;
}

} // namespace

TEST_CASE("chat keeps the room going while one client resets mid-stream", "[examples]") {
    // 10 members send 50 lines each, and each must get all 450 lines of the others, while
    // an 11th member sends a line and half of another, then resets.
    ServerProcess server(XIIO_CHAT);
    auto port = server.port();
    REQUIRE(port != 0);
    constexpr int healthy = 10, lines = 50;
    std::vector<std::set<std::string>> received(healthy);
    bool reset_done = false;
    run_against(server, [&]() -> Task<void> {
        std::vector<std::string> buffers(healthy);
        auto members = co_await join_chat(port, healthy + 1, buffers[0]);
        auto writer = [&](int i) -> Task<void> {
            for (int j = 0; j < lines; ++j) {
                std::string line = "msg " + std::to_string(i) + " " + std::to_string(j) + "\n";
                co_await members[i].send_all(line);
                co_await xiio::sleep(2ms);
            }
        };
        auto reader = [&](int i) -> Task<void> {
            while (received[i].size() < std::size_t{(healthy - 1) * lines}) {
                auto line = co_await read_line(members[i], buffers[i]);
                if (auto at = line.find("] msg "); at != std::string::npos)
                    received[i].insert(line.substr(at + 2));
            }
        };
        auto resetter = [&]() -> Task<void> {
            co_await xiio::sleep(20ms); // amid the others' lines
            co_await members[healthy].send_all(std::string_view("leaving\nhalf a li"));
            reset_on_close(members[healthy]);
            members[healthy] = xiio::Socket(); // closed: an RST
            reset_done = true;
        };
        std::vector<Task<void>> tasks;
        for (int i = 0; i < healthy; ++i) {
            tasks.push_back(writer(i));
            tasks.push_back(reader(i));
        }
        tasks.push_back(resetter());
        co_await xiio::timeout(20s, xiio::gather(std::move(tasks)));
    });
    auto errors = server.errors();
    INFO("the server's stderr:\n" << errors);
    CHECK(reset_done);
    for (int i = 0; i < healthy; ++i) {
        std::set<std::string> expected;
        for (int k = 0; k < healthy; ++k)
            for (int j = 0; k != i && j < lines; ++j)
                expected.insert("msg " + std::to_string(k) + " " + std::to_string(j) + "\n");
        CHECK(received[i] == expected);
    }
    CHECK(count(errors, "chat: client") == 1); // the reset, reported
    CHECK(server.running());
}

TEST_CASE("chat out of fds backs off without spinning and recovers when clients leave",
          "[examples]") {
    // 60 idle clients against 32 fds: while they stay, the server is out of fds with
    // nothing to do but retry accept. Over 800 ms of that, a chat that retried at once (an
    // xiio::yield() in place of the back-off sleep) burns ~0.5 s of CPU; backing off, ~0.
    ServerProcess server(XIIO_CHAT, 32);
    auto port = server.port();
    REQUIRE(port != 0);
    double cpu = 0;
    std::string heard;
    run_against(server, [&]() -> Task<void> {
        {
            std::vector<xiio::Socket> idle;
            for (int i = 0; i < 60; ++i)
                idle.push_back(co_await xiio::connect_tcp("127.0.0.1", port));
            co_await xiio::sleep(100ms); // the server took what it could
            double before = server.cpu_seconds();
            co_await xiio::sleep(800ms);
            cpu = server.cpu_seconds() - before;
        } // they leave: the server accepts what waits in its backlog, and sees them go
        std::string buffer;
        auto members = co_await join_chat(port, 2, buffer);
        co_await members[1].send_all(std::string_view("back again\n"));
        heard = co_await xiio::timeout(10s, read_line(members[0], buffer));
    });
    auto errors = server.errors();
    INFO("server CPU over 800 ms out of fds: " << cpu << " s; its stderr:\n" << errors);
    CHECK(errors.find("Too many open files") != std::string::npos);
    CHECK(cpu < 0.1);
    CHECK(heard.ends_with("] back again\n"));
    CHECK(server.running());
}

#endif

#ifdef XIIO_ECHO_CORES

TEST_CASE("echo_cores echoes on every loop, and on SIGINT lets open connections finish",
          "[examples]") {
    ServerProcess server(XIIO_ECHO_CORES);
    auto port = server.port();
    REQUIRE(port != 0);
    std::vector<xiio::Socket> clients;
    std::string reply, after_signal;
    run_against(server, [&]() -> Task<void> {
        // Open connections, spread over the loops by the kernel; each echoes a line.
        for (int i = 0; i < 16; ++i) {
            clients.push_back(co_await xiio::connect_tcp("127.0.0.1", port));
            std::string buffer;
            co_await clients.back().send_all(std::string_view("ping\n"));
            reply += co_await xiio::timeout(10s, read_line(clients.back(), buffer));
        }
        ::kill(server.pid(), SIGINT);
        // Still open after the signal: served within the grace period.
        std::string buffer;
        co_await clients[0].send_all(std::string_view("still there\n"));
        after_signal = co_await xiio::timeout(10s, read_line(clients[0], buffer));
        clients.clear(); // they leave: the server's loops end before the grace is over
    });
    CHECK(reply == [] {
        std::string r;
        for (int i = 0; i < 16; ++i)
            r += "ping\n";
        return r;
    }());
    CHECK(after_signal == "still there\n");
    auto start = xiio::Clock::now();
    int status = server.stop(0); // the signal was sent already: reap it
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(elapsed_ms(start) < 900);
    auto out = server.rest_of_output();
    INFO("stdout after the first line: " << out << "\nstderr: " << server.errors());
    CHECK(out.find("got signal 2, shutting down\n") != std::string::npos);
    CHECK(out.find("loops stopped\n") != std::string::npos);
}

#endif

#endif
