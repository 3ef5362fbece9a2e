// Tests of xiio/io.hpp: Fd, readiness waits, read, write, read_exactly, writeall.
#include "helpers.hpp"

#include <array>
#include <csignal>
#include <cstdlib>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include <sys/socket.h>

using namespace test;
using xiio::Task;

namespace {

bool is_nonblocking(int fd) {
    return ::fcntl(fd, F_GETFL) & O_NONBLOCK;
}

} // namespace

TEST_CASE("a pipe read/write pair via the loop") {
    assert_duration(0ms, [] {
        auto [data, nothing] = run([]() -> Task<std::tuple<std::string, std::monostate>> {
            Pipe p;
            co_return co_await xiio::gather(xiio::read(p.r, 32),
                                            xiio::writeall(p.w, "Hello World"));
        });
        CHECK(data == "Hello World");
    });
}

TEST_CASE("read waits for data written later") {
    assert_duration(50ms, [] {
        run([]() -> Task<void> {
            Pipe p;
            auto writer = [&]() -> Task<void> {
                co_await xiio::sleep(50ms);
                co_await xiio::writeall(p.w, "late");
            };
            auto [s, _] = co_await xiio::gather(xiio::read(p.r, 100), writer());
            CHECK(s == "late");
        });
    });
}

TEST_CASE("read returns 0 and an empty string at end of file") {
    run([]() -> Task<void> {
        Pipe p;
        p.w.close();
        char buf[8];
        {
            auto got = co_await xiio::read(p.r, buf);
            CHECK(got == 0);
        }
        {
            auto got = co_await xiio::read(p.r, 8);
            CHECK(got == "");
        }
    });
}

TEST_CASE("read and write accept char and byte buffers of any contiguous kind") {
    run([]() -> Task<void> {
        Pipe p;
        std::vector<char> vec{'a', 'b'};
        std::array<char, 2> arr{'c', 'd'};
        std::array<std::byte, 2> bytes{std::byte{'e'}, std::byte{'f'}};
        {
            auto got = co_await xiio::write(p.w, vec);
            CHECK(got == 2);
        }
        {
            auto got = co_await xiio::write(p.w, arr);
            CHECK(got == 2);
        }
        {
            auto got = co_await xiio::write(p.w, std::span<const std::byte>(bytes));
            CHECK(got == 2);
        }
        {
            auto got = co_await xiio::write(p.w, "gh"); // a literal is written without its NUL
            CHECK(got == 2);
        }
        std::string s = "ij";
        {
            auto got = co_await xiio::write(p.w.get(), s);
            CHECK(got == 2);
        }

        std::array<char, 4> a4{};
        {
            auto got = co_await xiio::read(p.r, a4);
            CHECK(got == 4);
        }
        CHECK(std::string(a4.data(), 4) == "abcd");
        std::array<std::byte, 2> b2{};
        {
            auto got = co_await xiio::read(p.r, b2);
            CHECK(got == 2);
        }
        CHECK(b2[0] == std::byte{'e'});
        std::vector<char> v4(4);
        {
            auto got = co_await xiio::read(p.r.get(), v4);
            CHECK(got == 4);
        }
        CHECK(std::string(v4.begin(), v4.end()) == "ghij");
    });
}

TEST_CASE("read on a closed fd throws system_error EBADF naming the call") {
    run([]() -> Task<void> {
        int fds[2];
        REQUIRE(::pipe(fds) == 0);
        ::close(fds[0]);
        ::close(fds[1]);
        try {
            co_await xiio::read(fds[0], 10);
            FAIL("no exception");
        } catch (const std::system_error& e) {
            CHECK(e.code() == std::errc::bad_file_descriptor);
        }
        CHECK_THROWS_AS(co_await xiio::wait_readable(fds[0]), std::system_error);
        CHECK_THROWS_AS(co_await xiio::wait_readable(-1), std::system_error);
    });
}

TEST_CASE("writing to a pipe whose reader is gone throws EPIPE and never raises SIGPIPE") {
    auto old = std::signal(SIGPIPE, SIG_DFL); // the default action would kill the process
    run([]() -> Task<void> {
        Pipe p;
        p.r.close();
        try {
            co_await xiio::write(p.w, "x");
            FAIL("no exception");
        } catch (const std::system_error& e) {
            CHECK(e.code() == std::errc::broken_pipe);
            CHECK(std::string(e.what()).rfind("write", 0) == 0);
        }
        CHECK_THROWS_AS(co_await xiio::writeall(p.w, "again"), std::system_error);
    });
    sigset_t pending;
    sigpending(&pending);
    CHECK_FALSE(sigismember(&pending, SIGPIPE));
    std::signal(SIGPIPE, old);
}

TEST_CASE("read_exactly fills the buffer across several writes") {
    run([]() -> Task<void> {
        Pipe p;
        auto writer = [&]() -> Task<void> {
            for (const char* part : {"ab", "cd", "ef"}) {
                co_await xiio::writeall(p.w, part);
                co_await xiio::sleep(5ms);
            }
        };
        std::array<char, 6> buf{};
        co_await xiio::gather(xiio::read_exactly(p.r, buf), writer());
        CHECK(std::string(buf.data(), 6) == "abcdef");
    });
}

TEST_CASE("read_exactly throws IncompleteReadError with the partial count at EOF") {
    run([]() -> Task<void> {
        Pipe p;
        co_await xiio::writeall(p.w, "abc");
        p.w.close();
        std::array<char, 8> buf{};
        try {
            co_await xiio::read_exactly(p.r, buf);
            FAIL("no exception");
        } catch (const xiio::IncompleteReadError& e) {
            CHECK(e.partial == 3);
            CHECK(std::string(buf.data(), 3) == "abc");
        }
    });
}

TEST_CASE("writeall writes megabytes through a pipe while another task reads") {
    run([]() -> Task<void> {
        Pipe p;
        std::string data(4 << 20, '\0');
        for (std::size_t i = 0; i < data.size(); ++i)
            data[i] = static_cast<char>(i * 7 + i / 4096);
        std::string received;
        auto reader = [&]() -> Task<void> {
            for (;;) {
                auto chunk = co_await xiio::read(p.r, 65536);
                if (chunk.empty())
                    break;
                received += chunk;
            }
        };
        auto writer = [&]() -> Task<void> {
            co_await xiio::writeall(p.w, data);
            p.w.close();
        };
        co_await xiio::gather(reader(), writer());
        CHECK(received == data);
    });
}

TEST_CASE("wait_readable and wait_writable return once the fd is ready") {
    run([]() -> Task<void> {
        Pipe p;
        co_await xiio::wait_writable(p.w);
        auto writer = [&]() -> Task<void> {
            co_await xiio::sleep(20ms);
            co_await xiio::write(p.w, "x");
        };
        auto start = xiio::Clock::now();
        co_await xiio::gather(xiio::wait_readable(p.r), writer());
        CHECK(elapsed_ms(start) >= 20);
    });
}

TEST_CASE("several tasks may wait on one fd, for the same or different events") {
    run([]() -> Task<void> {
        int sv[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
        xiio::Fd a(sv[0]), b(sv[1]);
        int readers = 0;
        auto reader = [&]() -> Task<void> {
            co_await xiio::wait_readable(a.get());
            ++readers;
        };
        auto writer = [&]() -> Task<void> {
            co_await xiio::wait_writable(a.get()); // same fd, other direction
            co_await xiio::sleep(10ms);
            co_await xiio::write(b, "x");
        };
        co_await xiio::gather(reader(), reader(), writer());
        CHECK(readers == 2);
        char c;
        {
            auto got = co_await xiio::read(a, std::span<char>(&c, 1));
            CHECK(got == 1);
        }
    });
}

TEST_CASE("an Fd closes its fd, release gives it up, and moving keeps its registration") {
    LeakCheck leaks;
    int released = -1;
    xiio::run([&]() -> Task<void> { // not test::run: the released fd is still open at the end
        Pipe p;
        co_await xiio::writeall(p.w, "a");
        {
            auto got = co_await xiio::read(p.r, 1);
            CHECK(got == "a");
        }
        xiio::Fd moved = std::move(p.r); // registered in the loop by the read above
        CHECK_FALSE(p.r);
        CHECK(moved);
        auto writer = [&]() -> Task<void> {
            co_await xiio::sleep(10ms);
            co_await xiio::writeall(p.w, "b");
        };
        auto [s, _] = co_await xiio::gather(xiio::read(moved, 1), writer());
        CHECK(s == "b");
        released = p.w.release();
        CHECK_FALSE(p.w);
    }());
    CHECK(::fcntl(released, F_GETFD) >= 0); // still open
    ::close(released);
    leaks.check();
}

TEST_CASE("an Fd may outlive the loop it was used in") {
    Pipe p;
    run([&]() -> Task<void> {
        co_await xiio::writeall(p.w, "x");
        {
            auto got = co_await xiio::read(p.r, 1);
            CHECK(got == "x");
        }
    });
    // A second loop registers it afresh.
    run([&]() -> Task<void> {
        co_await xiio::writeall(p.w, "y");
        {
            auto got = co_await xiio::read(p.r, 1);
            CHECK(got == "y");
        }
    });
}

TEST_CASE("closing an Fd while a task waits on it fails that wait with EBADF") {
    run([]() -> Task<void> {
        Pipe p;
        auto waiter = [&]() -> Task<void> {
            try {
                co_await xiio::read(p.r, 1);
                FAIL("no exception");
            } catch (const std::system_error& e) {
                CHECK(e.code() == std::errc::bad_file_descriptor);
            }
        };
        auto closer = [&]() -> Task<void> {
            co_await xiio::sleep(10ms);
            p.r.close();
        };
        co_await xiio::gather(waiter(), closer());
    });
}

TEST_CASE("close() and reuse of an int fd's number never confuse a later wait") {
    run([]() -> Task<void> {
        int first[2];
        REQUIRE(::pipe(first) == 0);
        REQUIRE(::write(first[1], "x", 1) == 1);
        co_await xiio::wait_readable(first[0]); // registered, then the wait ended
        int keep = ::dup(first[0]);             // the old file stays open (and readable)
        int number = first[0];
        ::close(first[0]);
        int second[2];
        REQUIRE(::pipe(second) == 0);
        REQUIRE(second[0] == number); // the number is reused by an empty pipe
        // No stale event: the new, empty pipe must not look readable.
        auto woke = co_await xiio::move_on_after(50ms, xiio::wait_readable(second[0]));
        CHECK_FALSE(woke);
        // And a real event still arrives.
        REQUIRE(::write(second[1], "y", 1) == 1);
        {
            auto got = co_await xiio::read(second[0], 1);
            CHECK(got == "y");
        }
        for (int fd : {keep, first[1], second[0], second[1]})
            ::close(fd);
    });
}

TEST_CASE("the flags of an int fd are never changed") {
    run([]() -> Task<void> {
        int fds[2];
        REQUIRE(::pipe(fds) == 0); // blocking
        co_await xiio::writeall(fds[1], "abc");
        {
            auto got = co_await xiio::read(fds[0], 3);
            CHECK(got == "abc");
        }
        CHECK_FALSE(is_nonblocking(fds[0]));
        CHECK_FALSE(is_nonblocking(fds[1]));
        ::close(fds[0]);
        ::close(fds[1]);
    });
}

TEST_CASE("read_exactly on a blocking int fd reads each part as it comes, never blocking") {
    run([]() -> Task<void> {
        Pipe p(0); // blocking pipe
        int ticks = 0;
        bool done = false;
        auto ticker = [&]() -> Task<void> {
            while (!done) {
                co_await xiio::sleep(1ms);
                ++ticks;
            }
        };
        char buf[10];
        auto reader = [&]() -> Task<void> {
            co_await xiio::read_exactly(p.r.get(), buf);
            done = true;
        };
        auto writer = [&]() -> Task<void> {
            co_await xiio::write(p.w.get(), "abc");
            co_await xiio::sleep(20ms); // the reader has 3 of 10 bytes: it must wait again
            co_await xiio::write(p.w.get(), "defghij");
        };
        co_await xiio::gather(ticker(), reader(), writer());
        CHECK(std::string(buf, 10) == "abcdefghij");
        CHECK(ticks > 5); // the loop ran while the reader waited for the second part

        // End of file after a part: IncompleteReadError with what was read.
        co_await xiio::write(p.w.get(), "xy");
        p.w.close();
        try {
            co_await xiio::read_exactly(p.r.get(), buf);
            FAIL("read_exactly returned");
        } catch (const xiio::IncompleteReadError& e) {
            CHECK(e.partial == 2);
            CHECK(std::string(buf, 2) == "xy");
        }
    });
}

TEST_CASE("a blocking fd never blocks the loop") {
    run([]() -> Task<void> {
        Pipe p(0); // blocking pipe
        int ticks = 0;
        bool done = false;
        auto ticker = [&]() -> Task<void> {
            while (!done) {
                co_await xiio::sleep(1ms);
                ++ticks;
            }
        };
        std::string data(1 << 20, 'z');
        std::string received;
        auto reader = [&]() -> Task<void> {
            while (received.size() < data.size()) {
                co_await xiio::sleep(2ms); // slower than the writer: the pipe fills up
                received += co_await xiio::read(p.r.get(), 65536);
            }
        };
        auto writer = [&]() -> Task<void> {
            co_await xiio::writeall(p.w.get(), data);
            co_await xiio::sleep(20ms);
            done = true;
        };
        co_await xiio::gather(ticker(), reader(), writer());
        CHECK(received == data);
        CHECK(ticks > 5);
        CHECK_FALSE(is_nonblocking(p.r.get()));
    });
}

TEST_CASE("an Fd is made non-blocking on first use") {
    run([]() -> Task<void> {
        Pipe p(0);
        CHECK_FALSE(is_nonblocking(p.w.get()));
        co_await xiio::writeall(p.w, "x");
        CHECK(is_nonblocking(p.w.get()));
    });
}

TEST_CASE("a regular file counts as always ready") {
    run([]() -> Task<void> {
        char path[] = "/tmp/xiio-test-XXXXXX";
        xiio::Fd f(::mkstemp(path));
        REQUIRE(f);
        ::unlink(path);
        co_await xiio::writeall(f, "file data");
        REQUIRE(::lseek(f.get(), 0, SEEK_SET) == 0);
        co_await xiio::wait_readable(f);
        {
            auto got = co_await xiio::read(f, 100);
            CHECK(got == "file data");
        }
        xiio::Condition c{.files = {{f.get(), xiio::READ}}};
        auto ready = co_await c;
        CHECK(ready == xiio::Files{{f.get(), xiio::READ}});
    });
}

TEST_CASE("read of a string too large to allocate throws in the task and the fd still works") {
    run([]() -> Task<void> {
        Pipe p;
        co_await xiio::writeall(p.w, "abc");
        const std::size_t huge = std::string().max_size() + 1;
        // Data is ready, so the first attempt happens inside await_suspend: the sizing
        // must fail before it, not in the noexcept syscall path (std::terminate).
        CHECK_THROWS_AS(co_await xiio::read(p.r, huge), std::length_error);
        CHECK_THROWS_AS(co_await xiio::read(p.r.get(), huge), std::length_error);
        auto got = co_await xiio::read(p.r, 10);
        CHECK(got == "abc");
    });
}

namespace {

/// Reads exactly n bytes from fd into a string.
Task<std::string> read_n(const xiio::Fd& fd, std::size_t n) {
    std::string got(n, '\0');
    co_await xiio::read_exactly(fd, got);
    co_return got;
}

} // namespace

// The temporary a write awaitable is made from dies at the end of the statement that adds
// the task; the task runs later. Under ASan a borrowed view of it would be a
// heap-use-after-free (long strings) or read moved-from stack bytes (short ones, whose
// characters live inside the std::string object itself).
TEST_CASE("writeall of a temporary string passed to add_task owns the bytes") {
    for (std::size_t n : {std::size_t(3), std::size_t(100000)}) { // in the SSO buffer, on the heap
        CAPTURE(n);
        std::string expected = "x" + std::string(n, 'y');
        run([&]() -> Task<void> {
            Pipe p;
            std::string got;
            co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
                tg.add_task(xiio::writeall(p.w, "x" + std::string(n, 'y')));
                got = co_await read_n(p.r, expected.size());
            });
            CHECK(got == expected);
        });
    }
}

TEST_CASE("writeall and write of temporaries passed to gather own the bytes") {
    for (std::size_t n : {std::size_t(3), std::size_t(100000)}) {
        CAPTURE(n);
        std::string expected = "x" + std::string(n, 'y');
        run([&]() -> Task<void> {
            Pipe p;
            // gather() returns a lazy Task: the temporary is gone before it starts.
            auto both = xiio::gather(xiio::writeall(p.w, "x" + std::string(n, 'y')),
                                     read_n(p.r, expected.size()));
            auto [nothing, got] = co_await std::move(both);
            CHECK(got == expected);

            auto one = xiio::gather(xiio::write(p.w, std::string("abc")), read_n(p.r, 3));
            auto [written, three] = co_await std::move(one);
            CHECK(written == 3);
            CHECK(three == "abc");

            // A temporary inside the co_await expression itself (alive until the await
            // ends anyway) is moved in too, and destroyed once.
            auto [nothing2, again] = co_await xiio::gather(
                xiio::writeall(p.w, "x" + std::string(n, 'y')), read_n(p.r, expected.size()));
            CHECK(again == expected);
        });
    }
}

TEST_CASE("writeall owns temporary vectors of char and of std::byte") {
    run([]() -> Task<void> {
        Pipe p;
        std::string chars, bytes;
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(xiio::writeall(p.w, std::vector<char>(70000, 'c')));
            chars = co_await read_n(p.r, 70000);
        });
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(xiio::writeall(p.w, std::vector<std::byte>(5, std::byte{'b'})));
            bytes = co_await read_n(p.r, 5);
        });
        CHECK(chars == std::string(70000, 'c'));
        CHECK(bytes == "bbbbb");
    });
}

TEST_CASE("an owning write awaitable stays valid however often it is moved") {
    run([]() -> Task<void> {
        Pipe p;
        std::optional<Task<void>> task;
        {
            // A short string's bytes move with it: each move must re-point the awaitable.
            // The moved-from objects are still alive (and hold emptied strings) until the
            // end of this scope; a stale view would write their bytes, not "short".
            auto a = xiio::writeall(p.w, std::string("short"));
            auto b = std::move(a);
            auto c = std::move(b);
            task.emplace(std::move(c));
        }
        auto [nothing, got] = co_await xiio::gather(std::move(*task), read_n(p.r, 5));
        CHECK(got == "short");
    });
}

TEST_CASE("write data that is an lvalue or a view is borrowed, not copied") {
    // A named string, a string_view, a span or a literal stays a view (zero-copy, no
    // allocation): the awaitable is the same type as for a string_view, and sees a change
    // of the string made before it runs.
    std::string s = "abc";
    static_assert(std::is_same_v<decltype(xiio::writeall(0, s)),
                                 decltype(xiio::writeall(0, std::string_view(s)))>);
    static_assert(std::is_same_v<decltype(xiio::writeall(0, "abc")),
                                 decltype(xiio::writeall(0, std::span<const char>(s)))>);
    static_assert(
        std::is_same_v<decltype(xiio::write(0, s)), decltype(xiio::write(0, std::string_view(s)))>);
    static_assert(!std::is_same_v<decltype(xiio::writeall(0, std::string(s))),
                                  decltype(xiio::writeall(0, s))>);
    run([&]() -> Task<void> {
        Pipe p;
        auto pending = xiio::writeall(p.w, s);
        s[0] = 'X';
        auto [nothing, got] = co_await xiio::gather(std::move(pending), read_n(p.r, 3));
        CHECK(got == "Xbc");
    });
}

// ---- an Fd away from its loop's thread, an Fd moved under a queued awaitable --------------

TEST_CASE("an Fd closed inside an in_thread job is closed by its loop, without a race") {
    // Before: the job's thread edited the loop's fd table while the loop ran (TSan: a data
    // race; ASan: use-after-free when the loop had grown its table meanwhile).
    LeakCheck leaks;
    auto before = xiio::detail::live_counts();
    run([]() -> Task<void> {
        Pipe p;
        co_await xiio::writeall(p.w, "a");
        co_await xiio::wait_readable(p.r);      // registered with this loop now (a read that
        auto got = co_await xiio::read(p.r, 1); // succeeds at once registers nothing)
        CHECK(got == "a");
        bool closed = false;
        auto job = [&] { // captures by reference: see in_thread about temporaries
            xiio::Fd here = std::move(p.r); // moved and closed on the worker
            here.close();
            closed = !here;
        };
        co_await xiio::in_thread(job);
        CHECK(closed);
        // The loop closed the read end by the time the job's completion ran (orphans are
        // taken first): a write now has no reader.
        try {
            co_await xiio::writeall(p.w, "b");
            FAIL("no EPIPE");
        } catch (const std::system_error& e) {
            CHECK(e.code() == std::errc::broken_pipe);
        }
    });
    CHECK(xiio::detail::live_counts() == before);
    leaks.check();
}

TEST_CASE("an Fd released inside an in_thread job stays open and can be registered again") {
    LeakCheck leaks;
    run([]() -> Task<void> {
        Pipe p;
        co_await xiio::writeall(p.w, "a");
        co_await xiio::wait_readable(p.r); // registered
        co_await xiio::read(p.r, 1);
        auto job = [&] { return p.r.release(); };
        int number = co_await xiio::in_thread(job);
        CHECK(::fcntl(number, F_GETFD) >= 0); // still open
        xiio::Fd again(number);               // the loop forgot the old registration
        co_await xiio::writeall(p.w, "b");
        auto got = co_await xiio::read(again, 1);
        CHECK(got == "b");
    });
    leaks.check();
}

TEST_CASE("Fds closed on other threads while their loops end leak nothing and race nothing") {
    // Each round: a loop registers a pipe's read end, hands it to a thread and ends; the
    // thread closes it at some point around the loop's end (before, during, after).
    LeakCheck leaks;
    for (int round = 0; round < 40; ++round) {
        Pipe p;
        std::thread closer;
        xiio::run([&]() -> Task<void> { // not test::run: the thread may close it later
            co_await xiio::writeall(p.w, "x");
            co_await xiio::wait_readable(p.r); // registered
            closer = std::thread([fd = std::move(p.r), round]() mutable {
                std::this_thread::sleep_for(std::chrono::microseconds(round * 25));
                fd.close();
            });
            if (round % 2)
                co_await xiio::sleep(std::chrono::microseconds(round * 25));
        }());
        closer.join();
    }
    leaks.check();
}

TEST_CASE("an awaitable made from an Fd survives the Fd moving before it starts") {
    // Before: the awaitable kept a pointer to the Fd's state; a vector that reallocated
    // between add_task and the member's start left it dangling (ASan: use-after-free).
    LeakCheck leaks;
    run([]() -> Task<void> {
        Pipe p;
        std::vector<xiio::Fd> fds;
        fds.push_back(std::move(p.r));
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            tg.add_task(xiio::read(fds[0], 1));     // queued, not started
            fds.reserve(fds.capacity() * 4 + 16);   // moves the Fd, frees the old storage
            tg.add_task(xiio::writeall(p.w, "zy")); // the reader starts after this
            co_return;
        });
        auto got = co_await xiio::read(fds[0], 1); // the moved Fd still works
        CHECK(got == "y");
    });
    leaks.check();
}

TEST_CASE("two Fds that own the same number are misuse, reported as logic_error") {
    run([]() -> Task<void> {
        Pipe p;
        co_await xiio::writeall(p.w, "a");
        co_await xiio::wait_readable(p.r); // registered
        co_await xiio::read(p.r, 1);
        xiio::Fd twin(p.r.get());
        CHECK_THROWS_AS(xiio::read(twin, 1), std::logic_error);
        [[maybe_unused]] int same = twin.release(); // p.r closes it
        co_await xiio::writeall(p.w, "b");
        auto got = co_await xiio::read(p.r, 1); // the first owner is unaffected
        CHECK(got == "b");
    });
}
