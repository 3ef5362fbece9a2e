// Tests of xiio/net.hpp: Socket, Listener, connect_tcp, connect_unix (127.0.0.1, ::1 and
// Unix sockets in a temporary directory only), and the echo_server example.
#include "helpers.hpp"

#include <array>
#include <filesystem>
#include <string>
#include <vector>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

using namespace test;
using xiio::Task;

static_assert(!std::is_copy_constructible_v<xiio::Socket> &&
              std::is_move_constructible_v<xiio::Socket>);
static_assert(!std::is_copy_constructible_v<xiio::Listener> &&
              std::is_move_constructible_v<xiio::Listener>);

extern char** environ;

namespace {

/// A fresh directory for Unix sockets, removed at the end of the test.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        static int n = 0;
        path = std::filesystem::temp_directory_path() /
               ("xiio-net-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
        std::filesystem::create_directories(path);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

/// Echoes everything it receives until the peer shuts down its side.
Task<void> echo(xiio::Socket s) {
    std::vector<char> buf(64 * 1024);
    for (;;) {
        std::size_t n = co_await s.recv(buf);
        if (n == 0)
            break;
        co_await s.send_all(std::string_view(buf.data(), n));
    }
}

/// Sends `data` while reading the echo back; returns what came back.
Task<std::string> echo_through(xiio::Socket& s, const std::string& data) {
    std::string back;
    auto sender = [&]() -> Task<void> {
        co_await s.send_all(data);
        s.shutdown_write();
    };
    auto receiver = [&]() -> Task<void> {
        std::vector<char> buf(64 * 1024);
        while (std::size_t n = co_await s.recv(buf))
            back.append(buf.data(), n);
    };
    co_await xiio::gather(sender(), receiver());
    co_return back;
}

std::string pattern(std::size_t n) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i)
        s[i] = static_cast<char>('a' + (i * 7 + i / 251) % 26);
    return s;
}

/// Serves one connection with echo, while the client echoes 1 MB through it.
Task<void> echo_megabyte(xiio::Listener& l, Task<xiio::Socket> connecting) {
    auto data = pattern(1 << 20);
    std::string back;
    auto server = [&]() -> Task<void> { co_await echo(co_await l.accept()); };
    auto client = [&]() -> Task<void> {
        auto s = co_await std::move(connecting);
        back = co_await echo_through(s, data);
    };
    co_await xiio::gather(server(), client());
    CHECK(back.size() == data.size());
    CHECK(back == data);
}

/// A port nobody listens on (bound, then released).
std::uint16_t free_port() {
    auto l = xiio::Listener::tcp("127.0.0.1", 0);
    return l.port();
}

} // namespace

TEST_CASE("echo of 1 MB over TCP on 127.0.0.1 returns every byte") {
    run([]() -> Task<void> {
        auto l = xiio::Listener::tcp("127.0.0.1", 0);
        co_await echo_megabyte(l, xiio::connect_tcp("127.0.0.1", l.port()));
    });
}

TEST_CASE("echo of 1 MB over TCP on ::1 returns every byte") {
    run([]() -> Task<void> {
        auto l = xiio::Listener::tcp("::1", 0);
        co_await echo_megabyte(l, xiio::connect_tcp("[::1]", l.port()));
    });
}

TEST_CASE("echo of 1 MB over a Unix socket returns every byte") {
    TempDir dir;
    run([&]() -> Task<void> {
        auto path = (dir.path / "echo.sock").string();
        auto l = xiio::Listener::unix_socket(path);
        CHECK(l.port() == 0);
        co_await echo_megabyte(l, xiio::connect_unix(path));
    });
}

TEST_CASE("a thousand concurrent clients are served by one server in one loop") {
    run([]() -> Task<void> {
        auto l = xiio::Listener::tcp("127.0.0.1", 0, 1024);
        constexpr int clients = 1000;
        int ok = 0;
        auto client = [&](int i) -> Task<void> {
            auto s = co_await xiio::connect_tcp("127.0.0.1", l.port());
            auto msg = "hello " + std::to_string(i);
            auto back = co_await echo_through(s, msg);
            if (back == msg)
                ++ok;
        };
        auto server = [&]() -> Task<void> {
            co_await xiio::task_group([&](xiio::TaskGroup& conns) -> Task<void> {
                for (int i = 0; i < clients; ++i)
                    conns.add_task(echo(co_await l.accept()));
            });
        };
        auto start = xiio::Clock::now();
        co_await xiio::timeout(30s, xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
                                   auto served = tg.add_task(server());
                                   std::vector<Task<void>> cs;
                                   for (int i = 0; i < clients; ++i)
                                       cs.push_back(client(i));
                                   co_await xiio::gather(std::move(cs));
                                   co_await served;
                               }));
        INFO("took " << elapsed_ms(start) << " ms");
        CHECK(ok == clients);
        CHECK(elapsed_ms(start) < 20000);
    });
}

TEST_CASE("a peer closing mid-stream surfaces as end of stream or a system_error") {
    run([]() -> Task<void> {
        auto l = xiio::Listener::tcp("127.0.0.1", 0);
        bool clean = false;
        auto server = [&]() -> Task<void> {
            auto s = co_await l.accept();
            std::array<char, 1000> buf{};
            co_await s.recv(buf); // take a little, then close with unread data: a reset
        };
        auto client = [&]() -> Task<void> {
            auto s = co_await xiio::connect_tcp("127.0.0.1", l.port());
            auto data = pattern(8 << 20);
            try {
                co_await s.send_all(data); // fails once the reset arrives
                std::array<char, 100> buf{};
                while (co_await s.recv(buf) > 0) {
                }
            } catch (const std::system_error& e) {
                int err = e.code().value();
                CHECK((err == ECONNRESET || err == EPIPE));
            }
            clean = true;
        };
        co_await xiio::timeout(10s, xiio::gather(server(), client()));
        CHECK(clean);

        // A peer that closes cleanly: recv returns 0.
        auto a = xiio::connect_tcp("127.0.0.1", l.port());
        auto both = co_await xiio::gather(std::move(a), l.accept());
        std::get<1>(both).close();
        std::array<char, 10> buf{};
        auto n = co_await std::get<0>(both).recv(buf);
        CHECK(n == 0);
    });
}

TEST_CASE("connect refused throws a system_error naming the address") {
    run([]() -> Task<void> {
        auto port = free_port();
        auto expected = "connect 127.0.0.1:" + std::to_string(port);
        try {
            co_await xiio::connect_tcp("127.0.0.1", port);
            FAIL("connected");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == ECONNREFUSED);
            CHECK(std::string(e.what()).rfind(expected, 0) == 0);
            CHECK(std::string(e.what()).find("refused") != std::string::npos);
        }
        CHECK_THROWS_AS(co_await xiio::connect_unix("/nonexistent/xiio.sock"), std::system_error);
    });
}

TEST_CASE("Listener::tcp rejects names other than localhost since binding never resolves") {
    run([]() -> Task<void> {
        CHECK_THROWS_AS(xiio::Listener::tcp("example.com", 0), std::invalid_argument);
        auto l = xiio::Listener::tcp("localhost", 0);
        auto pair = co_await xiio::gather(xiio::connect_tcp("localhost", l.port()), l.accept());
        CHECK(std::get<0>(pair).fd() >= 0);
        CHECK(std::get<1>(pair).fd() >= 0);
    });
}

TEST_CASE("cancelling accept and recv leaks nothing and the sockets keep working") {
    run([]() -> Task<void> {
        auto l = xiio::Listener::tcp("127.0.0.1", 0);
        auto accepted = co_await xiio::move_on_after(20ms, l.accept());
        CHECK_FALSE(accepted);
        auto pair = co_await xiio::gather(xiio::connect_tcp("127.0.0.1", l.port()), l.accept());
        auto& [c, s] = pair;
        std::array<char, 10> buf{};
        auto got = co_await xiio::move_on_after(20ms, s.recv(buf));
        CHECK_FALSE(got);
        co_await c.send_all("ping");
        auto n = co_await s.recv(buf);
        CHECK(std::string_view(buf.data(), n) == "ping");
    });
}

TEST_CASE("send after shutdown_write throws EPIPE") {
    run([]() -> Task<void> {
        auto l = xiio::Listener::tcp("127.0.0.1", 0);
        auto pair = co_await xiio::gather(xiio::connect_tcp("127.0.0.1", l.port()), l.accept());
        auto& [c, s] = pair;
        c.shutdown_write();
        try {
            co_await c.send("x");
            FAIL("sent");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == EPIPE);
            CHECK(std::string(e.what()).rfind("send", 0) == 0);
        }
        std::array<char, 10> buf{};
        auto n = co_await s.recv(buf);
        CHECK(n == 0);
    });
}

TEST_CASE("a TCP listener on port 0 reports the port it got") {
    auto l = xiio::Listener::tcp("127.0.0.1", 0);
    CHECK(l.port() != 0);
    auto l6 = xiio::Listener::tcp("::1", 0);
    CHECK(l6.port() != 0);
}

TEST_CASE("a Unix listener unlinks its path when destroyed") {
    TempDir dir;
    auto path = dir.path / "l.sock";
    {
        auto l = xiio::Listener::unix_socket(path.string());
        CHECK(std::filesystem::exists(path));
        auto moved = std::move(l);
        CHECK(std::filesystem::exists(path));
    }
    CHECK_FALSE(std::filesystem::exists(path));
}

#ifdef XIIO_ECHO_SERVER
TEST_CASE("the echo_server example echoes a line and exits 0 on SIGINT") {
    Pipe out(0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out.w.get(), 1);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    std::string prog = XIIO_ECHO_SERVER, port_arg = "--port", zero = "0";
    char* argv[] = {prog.data(), port_arg.data(), zero.data(), nullptr};
    pid_t pid = -1;
    int rc = posix_spawn(&pid, prog.c_str(), &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    REQUIRE(rc == 0);
    out.w.close();
    std::string reply;
    try {
        run([&]() -> Task<void> {
            std::string printed;
            while (printed.find('\n') == std::string::npos) {
                auto chunk = co_await xiio::timeout(10s, xiio::read(out.r, 100));
                if (chunk.empty())
                    break;
                printed += chunk;
            }
            auto digits = printed.find_first_of("0123456789");
            REQUIRE(digits != std::string::npos);
            auto port = static_cast<std::uint16_t>(std::stoi(printed.substr(digits)));
            auto s = co_await xiio::connect_tcp("127.0.0.1", port);
            co_await s.send_all("hello echo\n");
            std::array<char, 100> buf{};
            while (reply.size() < 11) {
                auto n = co_await xiio::timeout(10s, s.recv(buf));
                if (n == 0)
                    break;
                reply.append(buf.data(), n);
            }
        });
    } catch (...) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        throw;
    }
    CHECK(reply == "hello echo\n");
    ::kill(pid, SIGINT);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}
#endif

TEST_CASE("connect_unix waits for room while the listener's backlog is full") {
    TempDir dir;
    run([&]() -> Task<void> {
        auto path = (dir.path / "small.sock").string();
        // Backlog 1: the kernel queues two connections; the other clients' first connect
        // answers EAGAIN until the server has accepted some.
        auto l = xiio::Listener::unix_socket(path, 1);
        constexpr int clients = 8;
        std::string echoed(clients, '-');
        auto server = [&]() -> Task<void> {
            for (int i = 0; i < clients; ++i) {
                co_await xiio::sleep(5ms); // slow: the backlog stays full for a while
                auto s = co_await l.accept();
                std::array<char, 1> b{};
                auto n = co_await s.recv(b);
                REQUIRE(n == 1);
                co_await s.send_all(std::string_view(b.data(), 1));
            }
        };
        auto client = [&](int i) -> Task<void> {
            auto s = co_await xiio::connect_unix(path);
            char c = static_cast<char>('a' + i);
            co_await s.send_all(std::string_view(&c, 1));
            std::array<char, 1> b{};
            auto n = co_await s.recv(b);
            if (n == 1)
                echoed[static_cast<std::size_t>(i)] = b[0];
        };
        std::vector<Task<void>> tasks;
        tasks.push_back(server());
        for (int i = 0; i < clients; ++i)
            tasks.push_back(client(i));
        auto all = xiio::gather(std::move(tasks));
        auto done = co_await xiio::move_on_after(5s, std::move(all));
        CHECK(done);
        CHECK(echoed == "abcdefgh");
    });
}

TEST_CASE("a connect_unix waiting for room in a full backlog can be cancelled") {
    TempDir dir;
    run([&]() -> Task<void> {
        auto path = (dir.path / "full.sock").string();
        auto l = xiio::Listener::unix_socket(path, 1); // never accepts
        std::vector<xiio::Socket> connected;
        bool timed_out = false;
        for (int i = 0; i < 10 && !timed_out; ++i) {
            auto s = co_await xiio::move_on_after(30ms, xiio::connect_unix(path));
            if (s)
                connected.push_back(std::move(*s));
            else
                timed_out = true;
        }
        CHECK(timed_out);
        CHECK(!connected.empty());
    });
}

TEST_CASE("send_all and send of a temporary string passed to add_task own the bytes") {
    for (std::size_t n : {std::size_t(3), std::size_t(1 << 20)}) { // SSO-short, heap-long
        CAPTURE(n);
        run([n]() -> Task<void> {
            auto l = xiio::Listener::tcp("127.0.0.1", 0);
            auto pair = co_await xiio::gather(xiio::connect_tcp("127.0.0.1", l.port()), l.accept());
            auto& [c, s] = pair;
            std::string got;
            co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
                // The temporary dies at the end of the statement; the task runs later.
                tg.add_task(c.send_all(pattern(n)));
                std::vector<char> buf(64 * 1024);
                while (got.size() < n) {
                    std::size_t k = co_await s.recv(buf);
                    if (k == 0)
                        break;
                    got.append(buf.data(), k);
                }
            });
            CHECK(got.size() == n);
            CHECK(got == pattern(n));

            // One send() of a short temporary (the socket buffer takes it at once).
            std::string three;
            co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
                tg.add_task(c.send(std::string("abc")));
                std::array<char, 3> buf{};
                while (three.size() < 3) {
                    std::size_t k = co_await s.recv(std::span(buf).first(3 - three.size()));
                    if (k == 0)
                        break;
                    three.append(buf.data(), k);
                }
            });
            CHECK(three == "abc");
        });
    }
}

TEST_CASE("send_all of an lvalue borrows it, zero-copy") {
    std::string s = "abc";
    xiio::Socket sock;
    static_assert(
        std::is_same_v<decltype(sock.send_all(s)), decltype(sock.send_all(std::string_view(s)))>);
    static_assert(std::is_same_v<decltype(sock.send(s)), decltype(sock.send("abc"))>);
    static_assert(
        !std::is_same_v<decltype(sock.send_all(std::string(s))), decltype(sock.send_all(s))>);
}
