// Tests of xiio/stream.hpp: StreamReader over pipes (Fd), socketpairs and loopback TCP
// (Socket): lines, delimiters split across reads, exact counts, the limit, cancellation.
#include "helpers.hpp"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <sys/socket.h>

using namespace test;
using xiio::Task;

static_assert(!std::is_copy_constructible_v<xiio::StreamReader> &&
              std::is_nothrow_move_constructible_v<xiio::StreamReader>);
static_assert(std::is_base_of_v<std::length_error, xiio::LimitOverrunError>);

namespace {

/// Two connected non-blocking Unix stream sockets.
struct SocketPair {
    xiio::Socket a, b;
    SocketPair() {
        int sv[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
        a = xiio::Socket(xiio::Fd(sv[0]));
        b = xiio::Socket(xiio::Fd(sv[1]));
    }
};

/// Writes `parts` to `fd` one by one, `gap` apart, then closes it.
Task<void> trickle(xiio::Fd& fd, std::vector<std::string> parts, xiio::Clock::duration gap) {
    for (const auto& p : parts) {
        co_await xiio::writeall(fd, p);
        co_await xiio::sleep(gap);
    }
    fd.close();
}

} // namespace

TEST_CASE("read_line strips \\n and \\r\\n, returns a last line without one, then nullopt",
          "[stream]") {
    run([]() -> Task<void> {
        Pipe p;
        co_await xiio::writeall(p.w, std::string_view("one\r\ntwo\n\nfour\r\r\nlast"));
        p.w.close();
        xiio::StreamReader r(p.r);
        std::vector<std::string> lines;
        while (auto line = co_await r.read_line())
            lines.push_back(*line);
        CHECK(lines == std::vector<std::string>{"one", "two", "", "four\r", "last"});
        auto again = co_await r.read_line(); // stays at end of file
        CHECK_FALSE(again);
        CHECK(r.buffered() == 0);
    });
}

TEST_CASE("read_line keeps the data past a line buffered for the next call", "[stream]") {
    run([]() -> Task<void> {
        SocketPair sp;
        co_await sp.b.send_all(std::string_view("first\nsecond\nthi"));
        xiio::StreamReader r(sp.a);
        auto first = co_await r.read_line();
        REQUIRE(first);
        CHECK(*first == "first");
        CHECK(r.buffered() == 10); // "second\nthi": one recv took it all
        auto second = co_await r.read_line();
        REQUIRE(second);
        CHECK(*second == "second");
        co_await sp.b.send_all(std::string_view("rd\n"));
        sp.b.shutdown_write();
        auto third = co_await r.read_line();
        REQUIRE(third);
        CHECK(*third == "third");
        auto end = co_await r.read_line();
        CHECK_FALSE(end);
    });
}

TEST_CASE("read_until finds a delimiter split across reads and excludes it", "[stream]") {
    run([]() -> Task<void> {
        Pipe p;
        xiio::StreamReader r(p.r);
        std::vector<std::string> records;
        auto reader = [&]() -> Task<void> {
            while (auto rec = co_await r.read_until(std::string("<|>"))) // a temporary: copied
                records.push_back(*rec);
        };
        std::vector<std::string> parts = {"alpha<", "|", ">beta<|", "><|>gam<|ma<", "|>tail"};
        co_await xiio::gather(reader(), trickle(p.w, parts, std::chrono::milliseconds(2)));
        CHECK(records == std::vector<std::string>{"alpha", "beta", "", "gam<|ma", "tail"});
        CHECK_THROWS_AS(r.read_until(""), std::invalid_argument);
    });
}

TEST_CASE("read_exactly takes from the buffer first; binary and split UTF-8 arrive intact",
          "[stream]") {
    run([]() -> Task<void> {
        SocketPair sp;
        // NUL bytes, a "\n" inside binary data, and "é" (C3 A9) split between two sends.
        std::string bin("\x00\x01\n\xff\xc3", 5);
        co_await sp.b.send_all(std::string_view("hdr\n"));
        co_await sp.b.send_all(bin);
        xiio::StreamReader r(sp.a);
        auto hdr = co_await r.read_line();
        REQUIRE(hdr);
        CHECK(*hdr == "hdr");
        auto writer = [&]() -> Task<void> {
            co_await xiio::sleep(std::chrono::milliseconds(5));
            co_await sp.b.send_all(std::string_view("\xa9xyz"));
        };
        std::string got;
        auto reader = [&]() -> Task<void> { got = co_await r.read_exactly(7); };
        co_await xiio::gather(reader(), writer());
        CHECK(got == std::string("\x00\x01\n\xff\xc3\xa9x", 7));
        auto zero = co_await r.read_exactly(0);
        CHECK(zero.empty());
        auto rest = co_await r.read_exactly(2);
        CHECK(rest == "yz");
    });
}

TEST_CASE("read_exactly at end of file: IncompleteReadError, the partial bytes stay readable",
          "[stream]") {
    run([]() -> Task<void> {
        Pipe p;
        co_await xiio::writeall(p.w, std::string_view("abcde"));
        p.w.close();
        xiio::StreamReader r(p.r, 16);
        std::size_t partial = 0;
        try {
            (void)co_await r.read_exactly(10);
            FAIL("no IncompleteReadError");
        } catch (const xiio::IncompleteReadError& e) {
            partial = e.partial;
        }
        CHECK(partial == 5);
        CHECK(r.buffered() == 5);
        auto bytes = co_await r.read_exactly(partial);
        CHECK(bytes == "abcde");
        // The same beyond the limit (read straight into the result).
        Pipe q;
        co_await xiio::writeall(q.w, std::string(40, 'z'));
        q.w.close();
        xiio::StreamReader big(q.r, 16);
        try {
            (void)co_await big.read_exactly(100);
            FAIL("no IncompleteReadError");
        } catch (const xiio::IncompleteReadError& e) {
            partial = e.partial;
        }
        CHECK(partial == 40);
        CHECK(big.buffered() == 40); // beyond the limit: put back whole
        auto all = co_await big.read_exactly(partial);
        CHECK(all == std::string(40, 'z'));
    });
}

TEST_CASE("read_exactly beyond the limit reads straight into the result", "[stream]") {
    run([]() -> Task<void> {
        SocketPair sp;
        std::string data(300 * 1024, '\0');
        for (std::size_t i = 0; i < data.size(); ++i)
            data[i] = static_cast<char>(i * 7 + i / 251);
        auto writer = [&]() -> Task<void> {
            co_await sp.b.send_all(std::string_view("len\n"));
            co_await sp.b.send_all(data);
            co_await sp.b.send_all(std::string_view("after\n"));
        };
        xiio::StreamReader r(sp.a, 1024);
        std::string got, after;
        auto reader = [&]() -> Task<void> {
            auto len = co_await r.read_line();
            REQUIRE(len);
            got = co_await r.read_exactly(data.size());
            CHECK(r.buffered() <= 1024);
            after = (co_await r.read_line()).value_or("?");
        };
        co_await xiio::gather(reader(), writer());
        CHECK(got == data);
        CHECK(after == "after");
    });
}

TEST_CASE("a line beyond the limit: LimitOverrunError naming it; the reader goes on", "[stream]") {
    run([]() -> Task<void> {
        Pipe p;
        // A line of 7 bytes and its "\n" fit a limit of 8; 8 bytes do not.
        co_await xiio::writeall(p.w, std::string_view("1234567\n12345678\nabcdefghijklm\nok\n"));
        p.w.close();
        xiio::StreamReader r(p.r, 8);
        auto fits = co_await r.read_line();
        REQUIRE(fits);
        CHECK(*fits == "1234567");
        std::string what;
        try {
            (void)co_await r.read_line();
            FAIL("no LimitOverrunError");
        } catch (const xiio::LimitOverrunError& e) {
            what = e.what();
        }
        CHECK(what.find("8 bytes") != std::string::npos);
        CHECK(r.buffered() == 0);           // the 8 bytes buffered were discarded
        auto tail = co_await r.read_line(); // the rest of the over-long line
        REQUIRE(tail);
        CHECK(tail->empty());
        CHECK_THROWS_AS(co_await r.read_line(), xiio::LimitOverrunError); // "abcdefgh"
        auto rest = co_await r.read_line();
        REQUIRE(rest);
        CHECK(*rest == "ijklm");
        auto ok = co_await r.read_line();
        REQUIRE(ok);
        CHECK(*ok == "ok");
    });
}

TEST_CASE("read_until past the limit keeps a delimiter that straddles the discarded part",
          "[stream]") {
    run([]() -> Task<void> {
        Pipe p;
        co_await xiio::writeall(p.w, std::string_view("abcdefg--x--"));
        p.w.close();
        xiio::StreamReader r(p.r, 8); // "abcdefg-" fills it: no "--" within 8 bytes
        CHECK_THROWS_AS(co_await r.read_until("--"), xiio::LimitOverrunError);
        CHECK(r.buffered() == 1); // the "-" that may begin a delimiter
        auto next = co_await r.read_until("--");
        REQUIRE(next);
        CHECK(next->empty()); // "-" + "-": the delimiter of the over-long record
        auto x = co_await r.read_until("--");
        REQUIRE(x);
        CHECK(*x == "x");
    });
}

TEST_CASE("a read_line cancelled while waiting keeps what it read; the next returns the line",
          "[stream]") {
    run([]() -> Task<void> {
        SocketPair sp;
        xiio::StreamReader r(sp.a);
        co_await sp.b.send_all(std::string_view("hel"));
        auto timed_out = co_await xiio::move_on_after(std::chrono::milliseconds(20), r.read_line());
        CHECK_FALSE(timed_out);
        CHECK(r.buffered() == 3);
        co_await sp.b.send_all(std::string_view("lo wor"));
        CHECK_THROWS_AS(co_await xiio::timeout(std::chrono::milliseconds(20), r.read_line()),
                        xiio::TimeoutError);
        CHECK(r.buffered() == 9);
        co_await sp.b.send_all(std::string_view("ld\nnext\n"));
        auto line = co_await r.read_line();
        REQUIRE(line);
        CHECK(*line == "hello world");
        // read_exactly, within and beyond the limit, cancelled half-way: nothing lost.
        auto part = co_await xiio::move_on_after(std::chrono::milliseconds(20), r.read_exactly(9));
        CHECK_FALSE(part);
        xiio::StreamReader small(sp.a, 4);
        co_await sp.b.send_all(std::string_view("0123456789"));
        auto big =
            co_await xiio::move_on_after(std::chrono::milliseconds(20), small.read_exactly(16));
        CHECK_FALSE(big);
        CHECK(small.buffered() == 10);
        auto next = co_await r.read_line();
        REQUIRE(next);
        CHECK(*next == "next");
        co_await sp.b.send_all(std::string_view("abcdef"));
        auto whole = co_await small.read_exactly(16);
        CHECK(whole == "0123456789abcdef");
    });
}

TEST_CASE("1 MiB of lines in random chunk sizes arrives intact, never above the limit",
          "[stream]") {
    std::mt19937 rng(12345);
    std::vector<std::string> lines;
    std::string stream;
    while (stream.size() < 1024 * 1024) {
        std::string line(rng() % 300, '\0');
        for (auto& c : line)
            c = static_cast<char>(' ' + rng() % 95);
        stream += line + (rng() % 4 == 0 ? "\r\n" : "\n");
        lines.push_back(std::move(line));
    }
    auto check = [&](auto&& source, auto&& sink, auto&& done) -> Task<void> {
        xiio::StreamReader r(source, 1024);
        auto writer = [&]() -> Task<void> {
            std::mt19937 sizes(777);
            for (std::size_t at = 0; at < stream.size();) {
                std::size_t n = std::min<std::size_t>(stream.size() - at, 1 + sizes() % 5000);
                co_await xiio::writeall(sink, std::string_view(stream).substr(at, n));
                at += n;
                if (sizes() % 8 == 0)
                    co_await xiio::yield();
            }
            done();
        };
        std::size_t i = 0, mismatches = 0, max_buffered = 0;
        auto reader = [&]() -> Task<void> {
            while (auto line = co_await r.read_line()) {
                if (i >= lines.size() || *line != lines[i])
                    ++mismatches;
                ++i;
                max_buffered = std::max(max_buffered, r.buffered());
            }
        };
        co_await xiio::gather(reader(), writer());
        CHECK(i == lines.size());
        CHECK(mismatches == 0);
        CHECK(max_buffered <= 1024);
    };
    SECTION("pipe, through an Fd") {
        run([&]() -> Task<void> {
            Pipe p;
            auto close = [&] { p.w.close(); };
            co_await check(p.r, p.w, close);
        });
    }
    SECTION("loopback TCP, through a Socket") {
        run([&]() -> Task<void> {
            auto listener = xiio::Listener::tcp("127.0.0.1", 0);
            xiio::Socket client = co_await xiio::connect_tcp("127.0.0.1", listener.port());
            xiio::Socket server = co_await listener.accept();
            xiio::Fd out(::dup(client.fd())); // writeall wants an fd; the Socket is read
            client.close();
            auto close = [&] { out.close(); };
            co_await check(server, out, close);
        });
    }
}

#ifdef XIIO_SYSCALL_SEAM

namespace {

/// Counts the read() calls on one fd and the largest size asked; optionally makes each
/// one return at most `cap` bytes (a short read, as a slow peer gives).
class ReadWatch : public xiio::detail::sys::Injector {
public:
    ReadWatch(int fd, std::size_t cap) : fd_(fd), cap_(cap) {
        xiio::detail::sys::injector().store(this, std::memory_order_release);
    }
    ~ReadWatch() override { xiio::detail::sys::injector().store(nullptr); }
    ReadWatch(const ReadWatch&) = delete;
    ReadWatch& operator=(const ReadWatch&) = delete;

    int before(xiio::detail::sys::Call c, int fd, std::size_t& size) noexcept override {
        if (c == xiio::detail::sys::Call::read && fd == fd_) {
            ++reads;
            largest = std::max(largest, size);
            size = std::min(size, cap_);
        }
        return 0;
    }
    // Touched only by calls on fd_, all made on the loop's thread.
    long reads = 0;
    std::size_t largest = 0;

private:
    int fd_;
    std::size_t cap_;
};

} // namespace

TEST_CASE("StreamReader reads in chunks of at most 16 KiB, not per line or byte", "[stream]") {
    run([]() -> Task<void> {
        Pipe p;
        ReadWatch watch(p.r.get(), std::size_t(-1));
        constexpr std::size_t lines = 100000; // 100,000 lines of 2 bytes: 200 KB
        std::string data;
        for (std::size_t i = 0; i < lines; ++i)
            data += "y\n";
        auto write_all = [&]() -> Task<void> {
            co_await xiio::writeall(p.w, data);
            p.w.close();
        };
        std::size_t got = 0, bad = 0;
        auto reader = [&]() -> Task<void> {
            xiio::StreamReader r(p.r);
            while (auto line = co_await r.read_line()) { // mostly without suspending
                ++got;
                bad += *line != "y";
            }
        };
        co_await xiio::gather(reader(), write_all());
        CHECK(got == lines);
        CHECK(bad == 0);
        CHECK(watch.largest <= 16 * 1024);
        CHECK(watch.reads < 100); // 200 KB / 16 KiB = 13 full reads, plus short ones
    });
}

TEST_CASE("StreamReader with reads of one byte each: delimiters split every way", "[stream]") {
    run([]() -> Task<void> {
        Pipe p;
        ReadWatch watch(p.r.get(), 1);
        co_await xiio::writeall(p.w, std::string_view("a<|>bc<|><|>line\r\nrest\r\n01234"));
        p.w.close();
        xiio::StreamReader r(p.r, 8);
        std::vector<std::string> got;
        for (int i = 0; i < 3; ++i) {
            auto rec = co_await r.read_until("<|>");
            got.push_back(rec.value_or("?"));
        }
        for (int i = 0; i < 2; ++i) {
            auto line = co_await r.read_line();
            got.push_back(line.value_or("?"));
        }
        got.push_back(co_await r.read_exactly(5));
        auto end = co_await r.read_line();
        CHECK_FALSE(end);
        CHECK(got == std::vector<std::string>{"a", "bc", "", "line", "rest", "01234"});
        CHECK(watch.reads >= 30); // one byte at a time, and one more for the end
    });
}

#endif
