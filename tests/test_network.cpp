// Tests of xiio/address.hpp, resolve and Happy Eyeballs (xiio/net.hpp), xiio/datagram.hpp
// and xiio/serve.hpp. Loopback only (127.0.0.1, ::1, Unix sockets in a temporary
// directory); no test needs a network or a resolver: "localhost" and ".invalid" are
// answered without one, and a slow lookup is made through the syscall seam.
#include "helpers.hpp"

#include <array>
#include <atomic>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <netdb.h>

using namespace test;
using xiio::Address;
using xiio::Task;

static_assert(!std::is_copy_constructible_v<xiio::DatagramSocket> &&
              std::is_move_constructible_v<xiio::DatagramSocket>);

namespace {

using Call = xiio::detail::sys::Call;

/// Installs `rule` as the syscall seam's injector while it lives (rules run on any thread).
class Inject : public xiio::detail::sys::Injector {
public:
    using Rule = std::function<int(Call)>;
    explicit Inject(Rule rule) : rule_(std::move(rule)) {
        xiio::detail::sys::injector().store(this, std::memory_order_release);
    }
    ~Inject() override { xiio::detail::sys::injector().store(nullptr); }
    Inject(const Inject&) = delete;
    Inject& operator=(const Inject&) = delete;
    int before(Call c, int, std::size_t&) noexcept override { return rule_(c); }

private:
    Rule rule_;
};

struct TempDir {
    std::filesystem::path path;
    TempDir() {
        static int n = 0;
        path = std::filesystem::temp_directory_path() /
               ("xiio-network-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
        std::filesystem::create_directories(path);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

/// A port on 127.0.0.1 and ::1 where nothing listens (bound, then closed at once).
std::uint16_t closed_port() {
    for (;;) {
        std::uint16_t port;
        {
            auto l = xiio::Listener::tcp("127.0.0.1", 0);
            port = l.port();
        }
        try { // the same number must be free on ::1 too
            auto l6 = xiio::Listener::tcp("::1", port);
        } catch (const std::system_error&) {
            continue;
        }
        return port;
    }
}

bool contains(const std::string& s, const std::string& part) {
    return s.find(part) != std::string::npos;
}

} // namespace

// ---------------------------------------------------------------------------------------
// Address

TEST_CASE("Address parses numeric IPv4, IPv6 and Unix forms and to_string round-trips", "[net]") {
    auto v4 = Address::parse("127.0.0.1", 80);
    CHECK(v4.family() == AF_INET);
    CHECK(v4.port() == 80);
    CHECK(v4.to_string() == "127.0.0.1:80");
    CHECK(Address::parse("127.0.0.1:8080", 80).port() == 8080); // the text's port wins
    auto v6 = Address::parse("::1", 443);
    CHECK(v6.family() == AF_INET6);
    CHECK(v6.to_string() == "[::1]:443");
    CHECK(Address::parse("[::1]", 443) == v6);
    CHECK(Address::parse("[::1]:443") == v6);
    CHECK(Address::parse("[::1]:444") != v6);
    auto un = Address::parse("/tmp/s.sock");
    CHECK(un.family() == AF_UNIX);
    CHECK(un.port() == 0);
    CHECK(un.to_string() == "/tmp/s.sock");
    for (const auto& a : {v4, v6, un})
        CHECK(Address::parse(a.to_string()) == a);
    CHECK(Address().family() == AF_UNSPEC);
    CHECK(Address().to_string().empty());
    for (const char* bad : {"localhost", "example.com", "", "1.2.3.4:99999", "[::1", "[::1]x",
                            "1.2.3.4:", "[127.0.0.1]:80", "::1:80x"}) {
        INFO(bad);
        try {
            (void)Address::parse(bad);
            FAIL("parsed");
        } catch (const std::invalid_argument& e) {
            CHECK(contains(e.what(), std::string("\"") + bad + "\""));
        }
    }
}

TEST_CASE("Socket::peer and Socket::local give both ends of a connection", "[net]") {
    run([]() -> Task<void> {
        for (const char* host : {"127.0.0.1", "::1"}) {
            auto l = xiio::Listener::tcp(host, 0);
            CHECK(l.local().port() == l.port());
            auto pair = co_await xiio::gather(xiio::connect_tcp(host, l.port()), l.accept());
            auto& [c, s] = pair;
            CHECK(s.peer() == c.local());
            CHECK(c.peer() == s.local());
            CHECK(c.peer() == l.local());
        }
        xiio::Socket empty;
        CHECK_THROWS_AS(empty.peer(), std::system_error);
    });
}

TEST_CASE("a blocking socket given to Socket(Fd) is made non-blocking, so it never blocks "
          "the loop",
          "[net]") {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0); // blocking
    xiio::Socket a{xiio::Fd(sv[0])}, b{xiio::Fd(sv[1])};
    run([&]() -> Task<void> {
        // A recv that finds nothing must wait in the loop (a blocking recv would hang the
        // loop here: the sender below could never run).
        std::array<char, 8> buf{};
        auto [n, sent] = co_await xiio::gather(a.recv(buf), [&]() -> Task<int> {
            co_await xiio::sleep(10ms);
            co_await b.send_all(std::string_view("hi"));
            co_return 1;
        }());
        CHECK(std::string_view(buf.data(), n) == "hi");
        CHECK(sent == 1);
    });
    CHECK((::fcntl(a.fd(), F_GETFL) & O_NONBLOCK) != 0);
    CHECK((::fcntl(b.fd(), F_GETFL) & O_NONBLOCK) != 0);
}

// ---------------------------------------------------------------------------------------
// resolve

TEST_CASE("resolve answers localhost with both loopback addresses and numbers at once", "[net]") {
    run([]() -> Task<void> {
        auto addrs = co_await xiio::resolve("localhost", 8080);
        CHECK(std::find(addrs.begin(), addrs.end(), Address::parse("127.0.0.1", 8080)) !=
              addrs.end());
        CHECK(std::find(addrs.begin(), addrs.end(), Address::parse("::1", 8080)) != addrs.end());
        auto numeric = co_await xiio::resolve("::1", 7);
        REQUIRE(numeric.size() == 1);
        CHECK(numeric[0] == Address::parse("[::1]:7"));
        CHECK_THROWS_AS(co_await xiio::resolve("", 7), std::invalid_argument);
    });
}

TEST_CASE("resolve of a name that cannot resolve throws naming the host, at once", "[net]") {
    run([]() -> Task<void> {
        auto start = xiio::Clock::now();
        try {
            co_await xiio::resolve("nonexistent.invalid", 80);
            FAIL("resolved");
        } catch (const std::system_error& e) {
            CHECK(e.code().category() == xiio::gai_category());
            CHECK(e.code().value() == EAI_NONAME);
            CHECK(contains(e.what(), "nonexistent.invalid"));
            CHECK(contains(e.what(), ::gai_strerror(EAI_NONAME)));
        }
        CHECK(elapsed_ms(start) < 100 * slack_scale());
        CHECK_THROWS_AS(co_await xiio::connect_tcp("nonexistent.invalid", 80), std::system_error);
    });
}

TEST_CASE("a cancelled resolve returns at once while the lookup runs on", "[net]") {
    // getaddrinfo is made slow (300 ms, then EIO) through the seam: no resolver is asked.
    std::atomic<int> lookups{0}, finished{0};
    Inject slow([&](Call c) {
        if (c != Call::getaddrinfo)
            return 0;
        ++lookups;
        std::this_thread::sleep_for(300ms);
        ++finished;
        return EIO;
    });
    run([&]() -> Task<void> {
        auto start = xiio::Clock::now();
        auto got = co_await xiio::move_on_after(30ms, xiio::resolve("slow.example.test", 80));
        CHECK_FALSE(got);
        CHECK(elapsed_ms(start) < 30 + 100 * slack_scale());
        CHECK(finished == 0); // still running (or not even started), on its own copy
        try {                 // not cancelled: the lookup's failure, naming the host
            co_await xiio::resolve("slow.example.test", 80);
            FAIL("resolved");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == EIO);
            CHECK(contains(e.what(), "slow.example.test"));
        }
    });
    // The injector must outlive both lookups (the cancelled one finishes on its own).
    for (auto deadline = xiio::Clock::now() + 10s; finished < 2 && xiio::Clock::now() < deadline;)
        std::this_thread::sleep_for(10ms);
    CHECK(lookups == 2);
    CHECK(finished == 2);
}

// ---------------------------------------------------------------------------------------
// connect_tcp with names: Happy Eyeballs

TEST_CASE("connect_tcp to localhost reaches a listener on 127.0.0.1 or on ::1", "[net]") {
    run([]() -> Task<void> {
        for (const char* host : {"127.0.0.1", "::1"}) {
            INFO(host);
            auto port = closed_port();
            auto l = xiio::Listener::tcp(host, port);
            // On 127.0.0.1, the first attempt (::1) is refused: the next starts at once,
            // not after 250 ms.
            auto start = xiio::Clock::now();
            auto pair = co_await xiio::gather(xiio::connect_tcp("localhost", port), l.accept());
            CHECK(elapsed_ms(start) < 200 * slack_scale());
            auto& [c, s] = pair;
            CHECK(c.peer() == l.local());
            co_await c.send_all("hi");
            std::array<char, 4> buf{};
            auto n = co_await s.recv(buf);
            CHECK(std::string_view(buf.data(), n) == "hi");
        }
    });
}

TEST_CASE("connect_tcp to a name whose addresses all refuse names each one", "[net]") {
    run([]() -> Task<void> {
        auto port = closed_port();
        auto p = std::to_string(port);
        try {
            co_await xiio::connect_tcp("localhost", port);
            FAIL("connected");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == ECONNREFUSED);
            std::string what = e.what();
            CHECK(contains(what, "localhost"));
            CHECK(contains(what, "[::1]:" + p));
            CHECK(contains(what, "127.0.0.1:" + p));
            CHECK(what.find("[::1]") < what.find("127.0.0.1")); // IPv6 first
        }
    });
}

TEST_CASE("Happy Eyeballs starts the next address after 250 ms when one hangs", "[net]") {
    // An attempt that hangs on loopback: a listener whose accept queue is full drops SYNs.
    run([]() -> Task<void> {
        auto full = xiio::Listener::tcp("127.0.0.1", 0, 0);
        std::vector<xiio::Socket> fillers;
        for (int i = 0; i < 8; ++i) { // fill the queue (each connect bounded in time)
            auto s =
                co_await xiio::move_on_after(50ms, xiio::connect_tcp("127.0.0.1", full.port()));
            if (!s)
                break;
            fillers.push_back(std::move(*s));
        }
        auto good = xiio::Listener::tcp("::1", 0);
        std::vector<Address> addrs{full.local(), good.local()};
        auto start = xiio::Clock::now();
        auto pair =
            co_await xiio::gather(xiio::detail::race_connect(addrs, "test", 250ms), good.accept());
        auto took = elapsed_ms(start);
        INFO("took " << took << " ms");
        CHECK(took >= 250);
        CHECK(took < 250 + 150 * slack_scale());
        CHECK(std::get<0>(pair).peer() == good.local());
    });
}

// ---------------------------------------------------------------------------------------
// DatagramSocket

TEST_CASE("UDP datagrams round-trip over 127.0.0.1 and ::1 with the sender's address", "[net]") {
    run([]() -> Task<void> {
        for (const char* host : {"127.0.0.1", "::1"}) {
            INFO(host);
            auto a = xiio::DatagramSocket::udp(host, 0);
            auto b = xiio::DatagramSocket::udp(host, 0);
            CHECK(a.local().port() != 0);
            auto sent = co_await a.send_to("ping", b.local());
            CHECK(sent == 4);
            std::array<char, 100> buf{};
            auto [n, from] = co_await b.recv_from(buf);
            CHECK(std::string_view(buf.data(), n) == "ping");
            CHECK(from == a.local());
            b.connect(from);
            co_await b.send("pong");
            auto [m, back] = co_await a.recv_from(buf);
            CHECK(std::string_view(buf.data(), m) == "pong");
            CHECK(back == b.local());
            a.connect(b.local());
            co_await b.send("again");
            auto k = co_await a.recv(buf);
            CHECK(std::string_view(buf.data(), k) == "again");
        }
    });
}

TEST_CASE("a datagram too big for the buffer throws EMSGSIZE, never truncates silently", "[net]") {
    run([]() -> Task<void> {
        auto a = xiio::DatagramSocket::udp("127.0.0.1", 0);
        auto b = xiio::DatagramSocket::udp("127.0.0.1", 0);
        co_await a.send_to(std::string(100, 'x'), b.local());
        co_await a.send_to("fits", b.local());
        std::array<char, 10> small{};
        try {
            co_await b.recv_from(small);
            FAIL("received");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == EMSGSIZE);
            CHECK(contains(e.what(), "100 bytes"));
        }
        auto [n, from] = co_await b.recv_from(small); // the next one is intact
        CHECK(std::string_view(small.data(), n) == "fits");
    });
}

TEST_CASE("Unix datagram sockets round-trip and unlink their paths", "[net]") {
    TempDir dir;
    auto pa = (dir.path / "a.sock").string(), pb = (dir.path / "b.sock").string();
    run([&]() -> Task<void> {
        auto a = xiio::DatagramSocket::unix_datagram(pa);
        auto b = xiio::DatagramSocket::unix_datagram(pb);
        CHECK(b.local() == Address::parse(pb));
        co_await a.send_to("hello", b.local());
        std::array<char, 16> buf{};
        auto [n, from] = co_await b.recv_from(buf);
        CHECK(std::string_view(buf.data(), n) == "hello");
        CHECK(from.to_string() == pa);
    });
    CHECK_FALSE(std::filesystem::exists(pa));
    CHECK_FALSE(std::filesystem::exists(pb));
}

TEST_CASE("a cancelled recv_from takes nothing and the socket keeps working", "[net]") {
    run([]() -> Task<void> {
        auto a = xiio::DatagramSocket::udp("::1", 0);
        auto b = xiio::DatagramSocket::udp("::1", 0);
        std::array<char, 16> buf{};
        auto got = co_await xiio::move_on_after(20ms, b.recv_from(buf));
        CHECK_FALSE(got);
        co_await a.send_to("one", b.local());
        auto [n, from] = co_await b.recv_from(buf);
        CHECK(std::string_view(buf.data(), n) == "one");
    });
}

// ---------------------------------------------------------------------------------------
// serve

namespace {

Task<void> echo_handler(xiio::Socket s) {
    std::array<char, 1024> buf{};
    while (std::size_t n = co_await s.recv(buf))
        co_await s.send_all(std::string_view(buf.data(), n));
}

/// Sends `line`, then reads until the peer closes or `line.size()` bytes came back.
Task<std::string> exchange(std::uint16_t port, std::string line) {
    auto s = co_await xiio::connect_tcp("127.0.0.1", port);
    co_await s.send_all(line);
    std::string back;
    std::array<char, 1024> buf{};
    while (back.size() < line.size()) {
        std::size_t n = co_await s.recv(buf);
        if (n == 0)
            break;
        back.append(buf.data(), n);
    }
    co_return back;
}

} // namespace

TEST_CASE("serve serves many clients at once, and a failing handler ends only its connection",
          "[net]") {
    std::vector<std::pair<std::string, std::string>> errors; // peer, what
    run([&]() -> Task<void> {
        auto l = xiio::Listener::tcp("127.0.0.1", 0);
        xiio::ServeOptions opts;
        opts.on_error = [&](const Address& peer, std::exception_ptr e) {
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& x) {
                errors.emplace_back(peer.to_string(), x.what());
            }
        };
        auto handler = [](xiio::Socket s) -> Task<void> {
            std::array<char, 64> buf{};
            std::size_t n = co_await s.recv(buf);
            if (std::string_view(buf.data(), n) == "boom")
                throw std::runtime_error("handler failed");
            co_await s.send_all(std::string_view(buf.data(), n));
        };
        std::string peer_of_boom;
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(xiio::serve(l, handler, opts));
            auto boom = [&]() -> Task<void> {
                auto s = co_await xiio::connect_tcp("127.0.0.1", l.port());
                peer_of_boom = s.local().to_string();
                co_await s.send_all("boom");
                std::array<char, 8> buf{};
                auto n = co_await s.recv(buf); // closed by serve after the error
                CHECK(n == 0);
            };
            co_await boom();
            std::vector<Task<std::string>> clients;
            for (int i = 0; i < 100; ++i)
                clients.push_back(exchange(l.port(), "client " + std::to_string(i)));
            auto back = co_await xiio::gather(std::move(clients));
            for (int i = 0; i < 100; ++i)
                CHECK(back[static_cast<std::size_t>(i)] == "client " + std::to_string(i));
            tg.cancel();
        });
        REQUIRE(errors.size() == 1);
        CHECK(errors[0].first == peer_of_boom);
        CHECK(errors[0].second == "handler failed");
    });
}

TEST_CASE("serve backs off 100 ms when accept runs out of fds, without spinning", "[net]") {
    std::atomic<int> accepts{0}, failures_left{4};
    Inject emfile([&](Call c) {
        if (c != Call::accept)
            return 0;
        ++accepts;
        return failures_left.fetch_sub(1) > 0 ? EMFILE : 0;
    });
    run([&]() -> Task<void> {
        auto l = xiio::Listener::tcp("127.0.0.1", 0);
        int reports = 0;
        xiio::ServeOptions opts;
        opts.on_error = [&](const Address& peer, std::exception_ptr) {
            CHECK(peer.family() == AF_UNSPEC);
            ++reports;
        };
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(xiio::serve(l, echo_handler, opts));
            auto start = xiio::Clock::now();
            auto back = co_await exchange(l.port(), "after the drought");
            CHECK(back == "after the drought");
            auto took = elapsed_ms(start);
            INFO("took " << took << " ms, " << accepts << " accept calls");
            CHECK(took >= 300); // four failures: at least three pauses... or four
            CHECK(took < 400 + 200 * slack_scale());
            CHECK(accepts < 10); // no spinning
            tg.cancel();
        });
        CHECK(reports == 1); // once a bout
    });
}

TEST_CASE("serve cancelled lets connections finish within the grace, then cancels the rest",
          "[net]") {
    run([]() -> Task<void> {
        auto l = xiio::Listener::tcp("127.0.0.1", 0);
        // A handler that answers after `delay` (the first byte received says how long).
        auto handler = [](xiio::Socket s) -> Task<void> {
            std::array<char, 1> buf{};
            co_await s.recv(buf);
            co_await xiio::sleep(buf[0] == 's' ? 100ms : 10s);
            co_await s.send_all("done");
        };
        xiio::ServeOptions opts;
        opts.grace = 300ms;
        auto ask = [&](char c) -> Task<std::string> {
            auto s = co_await xiio::connect_tcp("127.0.0.1", l.port());
            co_await s.send_all(std::string(1, c));
            std::string back;
            std::array<char, 8> buf{};
            while (std::size_t n = co_await s.recv(buf))
                back.append(buf.data(), n);
            co_return back;
        };
        std::string quick, slow;
        long stopped_after = 0;
        auto quick_client = [&]() -> Task<void> { quick = co_await ask('s'); };
        auto slow_client = [&]() -> Task<void> { slow = co_await ask('l'); };
        xiio::Clock::time_point start;
        auto server = [&]() -> Task<void> {
            co_await xiio::task_group([&](xiio::TaskGroup& sg) -> Task<void> {
                sg.add_task(xiio::serve(l, handler, opts));
                co_await xiio::sleep(50ms); // both clients connected and waiting
                start = xiio::Clock::now();
                sg.cancel(); // serve stops accepting and drains
            });
            stopped_after = elapsed_ms(start);
        };
        co_await xiio::gather(server(), quick_client(), slow_client());
        CHECK(quick == "done"); // finished within the grace
        CHECK(slow.empty());    // cancelled when the grace ran out: closed without answer
        CHECK(stopped_after >= 300);
        CHECK(stopped_after < 300 + 150 * slack_scale());
    });
}

TEST_CASE("serve ends with a fatal accept error, after cancelling its connections", "[net]") {
    run([]() -> Task<void> {
        auto l = xiio::Listener::tcp("127.0.0.1", 0);
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(xiio::serve(l, echo_handler));
            auto back = co_await exchange(l.port(), "served");
            CHECK(back == "served");
            auto idle = co_await xiio::connect_tcp("127.0.0.1", l.port()); // stays open
            co_await xiio::sleep(20ms);
            l.close();                 // the accept's wait fails with EBADF: not a back-off case
            co_await xiio::sleep(10s); // cancelled when serve fails
        };
        try {
            co_await xiio::task_group(body);
            FAIL("serve went on");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == EBADF);
        }
    });
}

TEST_CASE("Listener::tcp with reuse_port shares a port that is otherwise in use", "[net]") {
    auto a = xiio::Listener::tcp("127.0.0.1", 0, SOMAXCONN, true);
    auto b = xiio::Listener::tcp("127.0.0.1", a.port(), SOMAXCONN, true);
    CHECK(b.port() == a.port());
    CHECK_THROWS_AS(xiio::Listener::tcp("127.0.0.1", a.port()), std::system_error);
}
