// The io_uring backend's own promises (the whole suite also runs on it: CTest runs every
// test case a second time with XIIO_BACKEND=io_uring). Here: choosing a backend and
// falling back, and what only a completion backend can get wrong - a completion racing
// its cancellation, a frame destroyed with an operation in the kernel, more submissions
// than the ring has room for, EINTR from io_uring_enter, an Fd closed under an operation.
// [no-valgrind]: valgrind does not see what the kernel writes through the ring.
#include "helpers.hpp"

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include <sys/socket.h>

using namespace test;
using xiio::Backend;
using xiio::Task;
using Call = xiio::detail::sys::Call;

namespace {

using Inject = SeamInjector;

/// Whether io_uring works here (a sandbox may refuse it).
bool io_uring_works() {
    static bool works = [] {
        try {
            xiio::run([]() -> Task<void> { co_return; }(), {.backend = Backend::io_uring});
            return true;
        } catch (const std::system_error&) {
            return false;
        }
    }();
    return works;
}

/// Sets an environment variable while it lives.
struct Env {
    Env(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name))
            old_ = old;
        ::setenv(name, value, 1);
    }
    ~Env() {
        if (old_)
            ::setenv(name_, old_->c_str(), 1);
        else
            ::unsetenv(name_);
    }
    const char* name_;
    std::optional<std::string> old_;
};

/// Whether the loop running this task hands operations to the kernel (io_uring).
Task<bool> on_io_uring() {
    co_return xiio::detail::current_loop()->completes_io();
}

constexpr xiio::RunOptions uring{.backend = Backend::io_uring};

struct SocketPair {
    xiio::Fd a, b;
    SocketPair() {
        int sv[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
        a = xiio::Fd(sv[0]);
        b = xiio::Fd(sv[1]);
    }
};

/// Bytes readable now on `fd`, without waiting.
std::string drain(int fd) {
    std::string s;
    char buf[4096];
    for (;;) {
        ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0)
            return s;
        s.append(buf, static_cast<std::size_t>(n));
    }
}

} // namespace

TEST_CASE("RunOptions and XIIO_BACKEND choose the backend", "[no-valgrind]") {
    Env unset("XIIO_BACKEND", "");
    CHECK_FALSE(xiio::run(on_io_uring(), {.backend = Backend::epoll}));
    CHECK_FALSE(xiio::run(on_io_uring())); // automatic: epoll until io_uring is faster
    {
        Env env("XIIO_BACKEND", "epoll");
        CHECK_FALSE(xiio::run(on_io_uring()));
    }
    {
        Env env("XIIO_BACKEND", "kqueue");
        CHECK_THROWS_AS(xiio::run(on_io_uring()), std::invalid_argument);
        CHECK_FALSE(xiio::run(on_io_uring(), {.backend = Backend::epoll})); // explicit wins
    }
    if (!io_uring_works()) {
        WARN("io_uring is refused here: only epoll was checked");
        return;
    }
    CHECK(xiio::run(on_io_uring(), uring));
    Env env("XIIO_BACKEND", "io_uring");
    CHECK(xiio::run(on_io_uring()));
}

TEST_CASE("automatic falls back to epoll where io_uring is refused; explicit io_uring throws",
          "[no-valgrind]") {
    Env unset("XIIO_BACKEND", "");
    auto& prefer = xiio::detail::automatic_prefers_io_uring();
    prefer = true;
    struct Restore {
        ~Restore() { xiio::detail::automatic_prefers_io_uring() = false; }
    } restore;
    for (int err : {ENOSYS, EPERM, EACCES}) {
        INFO("io_uring_setup fails with " << err);
        Inject refuse(
            [err](Call c, int, std::size_t&) { return c == Call::io_uring_setup ? err : 0; });
        CHECK_FALSE(xiio::run(on_io_uring())); // automatic: epoll after all
        try {
            xiio::run(on_io_uring(), uring);
            FAIL("explicit io_uring did not throw");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == err);
            CHECK(std::string(e.what()).find("io_uring_setup") != std::string::npos);
        }
        CHECK(refuse.hits() >= 2);
    }
    if (io_uring_works())
        CHECK(xiio::run(on_io_uring())); // not refused: automatic takes it when preferred
}

TEST_CASE("io_uring: a read cancelled as its data arrives loses no byte", "[no-valgrind]") {
    if (!io_uring_works()) {
        WARN("io_uring is refused here");
        return;
    }
    // The writer writes at about the deadline of the reader's timeout, so some rounds
    // cancel a read whose completion is on its way. Every byte must either come back
    // from the read (the cancellation then waits for the next co_await) or stay in the
    // socket.
    SocketPair p;
    std::size_t got_by_read = 0, rounds_cancelled = 0;
    std::string got;
    const int rounds = 200;
    xiio::run(
        [&]() -> Task<void> {
            for (int i = 0; i < rounds; ++i) {
                char msg = static_cast<char>('a' + i % 26);
                // Named: a lambda temporary would die before its coroutine runs.
                auto reader = [&]() -> Task<void> {
                    try {
                        co_await xiio::timeout(Ms(1), [&]() -> Task<void> {
                            char buf[4];
                            std::size_t n = co_await xiio::read(p.a, buf);
                            got.append(buf, n);
                            got_by_read += n;
                        });
                    } catch (const xiio::TimeoutError&) {
                        ++rounds_cancelled;
                    }
                };
                auto writer = [&]() -> Task<void> {
                    co_await xiio::sleep(Ms(i % 3));
                    co_await xiio::writeall(p.b, std::string_view(&msg, 1));
                };
                co_await xiio::gather(reader(), writer());
                got += drain(p.a.get()); // what no read took stays in the socket
            }
        }(),
        uring);
    REQUIRE(got.size() == static_cast<std::size_t>(rounds));
    for (int i = 0; i < rounds; ++i)
        CHECK(got[static_cast<std::size_t>(i)] == static_cast<char>('a' + i % 26));
    CHECK(got_by_read > 0);
    CHECK(rounds_cancelled > 0);
}

TEST_CASE("io_uring: a frame destroyed with a read in the kernel waits for its cancellation",
          "[no-valgrind]") {
    if (!io_uring_works()) {
        WARN("io_uring is refused here");
        return;
    }
    // The generator's frame holds the buffer a read fills; destroying the generator while
    // a consumer waits inside it must stop the read before the frame is freed (ASan would
    // see the kernel write into freed memory otherwise) and leave the data in the socket.
    SocketPair p;
    xiio::run(
        [&]() -> Task<void> {
            auto lines = [](int fd) -> xiio::Generator<std::string> {
                char buf[64];
                std::size_t n = co_await xiio::read(fd, buf);
                co_yield std::string(buf, n);
            };
            auto gen = std::make_unique<xiio::Generator<std::string>>(lines(p.a.get()));
            auto consumer = [&]() -> Task<void> {
                CHECK_THROWS_AS(co_await gen->next(), std::logic_error);
            };
            auto destroyer = [&]() -> Task<void> {
                co_await xiio::sleep(Ms(5));
                gen.reset(); // the read is in the kernel now
            };
            co_await xiio::gather(consumer(), destroyer());
            REQUIRE(::write(p.b.get(), "late", 4) == 4);
        }(),
        uring);
    CHECK(drain(p.a.get()) == "late");
}

TEST_CASE("io_uring: more operations than the ring has entries", "[no-valgrind]") {
    if (!io_uring_works()) {
        WARN("io_uring is refused here");
        return;
    }
    // 1,000 reads pending at once on a ring of 256 entries (and a completion queue of
    // 1,024, which their completions overflow when all arrive together).
    const int n = 1000;
    std::vector<SocketPair> pairs(n);
    long sum = 0;
    xiio::run(
        [&]() -> Task<void> {
            auto reader = [&](int i) -> Task<void> {
                int v = 0;
                co_await xiio::read_exactly(pairs[static_cast<std::size_t>(i)].a,
                                            std::span(reinterpret_cast<char*>(&v), sizeof v));
                sum += v;
            };
            co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
                for (int i = 0; i < n; ++i)
                    tg.add_task(reader(i));
                co_await xiio::sleep(Ms(20)); // every read is in the kernel
                for (int i = 0; i < n; ++i)
                    REQUIRE(::write(pairs[static_cast<std::size_t>(i)].b.get(), &i, sizeof i) ==
                            sizeof i);
            });
        }(),
        uring);
    CHECK(sum == static_cast<long>(n) * (n - 1) / 2);
}

TEST_CASE("io_uring: EINTR from io_uring_enter is waited through", "[no-valgrind]") {
    if (!io_uring_works()) {
        WARN("io_uring is refused here");
        return;
    }
    std::atomic<long> calls{0};
    Inject storm([&](Call c, int, std::size_t&) {
        return c == Call::io_uring_enter && calls.fetch_add(1) % 2 == 0 ? EINTR : 0;
    });
    SocketPair p;
    xiio::run(
        [&]() -> Task<void> {
            auto start = xiio::Clock::now();
            co_await xiio::sleep(Ms(30));
            CHECK(elapsed_ms(start) >= 30);
            CHECK(elapsed_ms(start) < 30 + 200 * slack_scale());
            for (int i = 0; i < 50; ++i) {
                co_await xiio::writeall(p.a, "ping");
                char buf[4];
                co_await xiio::read_exactly(p.b, buf);
                CHECK(std::string_view(buf, 4) == "ping");
            }
        }(),
        uring);
    CHECK(storm.hits() > 10);
}

TEST_CASE("io_uring: an Fd closed under a pending read fails it, and the read takes nothing",
          "[no-valgrind]") {
    if (!io_uring_works()) {
        WARN("io_uring is refused here");
        return;
    }
    SocketPair p;
    int peer = p.b.get();
    xiio::run(
        [&]() -> Task<void> {
            auto reader = [&]() -> Task<void> {
                char buf[8];
                try {
                    co_await xiio::read(p.a, buf);
                    FAIL("the read of a closed Fd returned");
                } catch (const std::system_error& e) {
                    CHECK(e.code().value() == EBADF);
                }
            };
            auto closer = [&]() -> Task<void> {
                co_await xiio::sleep(Ms(5)); // the read is in the kernel
                p.a.close();
            };
            co_await xiio::gather(reader(), closer());
            // The cancelled read holds no reference any more: the peer sees the close.
            char c;
            CHECK(::recv(peer, &c, 1, MSG_DONTWAIT) == 0);
        }(),
        uring);
}

TEST_CASE("io_uring: cancelling a pending read ends it with the cancellation, data stays",
          "[no-valgrind]") {
    if (!io_uring_works()) {
        WARN("io_uring is refused here");
        return;
    }
    SocketPair p;
    xiio::run(
        [&]() -> Task<void> {
            char buf[8];
            CHECK_THROWS_AS(co_await xiio::timeout(Ms(10), xiio::read(p.a, buf)),
                            xiio::TimeoutError);
            co_await xiio::writeall(p.b, "after");
            std::size_t n = co_await xiio::read(p.a, buf);
            CHECK(std::string_view(buf, n) == "after");
        }(),
        uring);
}

TEST_CASE("io_uring: io_uring_enter failing is thrown into the tasks, and the next run works",
          "[no-valgrind]") {
    if (!io_uring_works()) {
        WARN("io_uring is refused here");
        return;
    }
    bool cleaned = false;
    {
        Inject faults(
            [](Call c, int, std::size_t&) { return c == Call::io_uring_enter ? ENOMEM : 0; });
        auto body = [&]() -> Task<void> {
            try {
                co_await xiio::sleep(std::chrono::seconds(10));
            } catch (const std::system_error&) {
                cleaned = true;
                throw;
            }
        };
        try {
            run(body, uring);
            FAIL("run() returned");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == ENOMEM);
        }
    }
    CHECK(cleaned);
    run([]() -> Task<void> { co_await xiio::sleep(Ms(1)); }, uring);
}
