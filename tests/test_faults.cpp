// Fault injection through the syscall seam (xiio/detail/sys.hpp): the kernel's legal but
// unkind answers - EINTR storms, EAGAIN after readiness, short reads and writes, EMFILE
// when an fd is created, epoll failing - must give correct results or a clear exception,
// never a hang, a lost byte or a leak (tests/main.cpp checks every case for leaks).
// Faults of the waiting step through the Poller seam are in test_loop.cpp.
#include "helpers.hpp"

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <sys/wait.h>

using namespace test;
using xiio::Task;
using Call = xiio::detail::sys::Call;

namespace {

using Inject = SeamInjector;

/// Fails every call of kind `c` with `err`.
Inject::Rule fail(Call c, int err) {
    return [c, err](Call call, int, std::size_t&) { return call == c ? err : 0; };
}

/// Fails every other call of the kinds in `calls` with `err` (the first one fails).
Inject::Rule every_other(std::vector<Call> calls, int err) {
    auto n = std::make_shared<std::atomic<long>>(0);
    return [calls, err, n](Call call, int, std::size_t&) {
        for (Call c : calls)
            if (c == call)
                return (n->fetch_add(1) % 2 == 0) ? err : 0;
        return 0;
    };
}

std::string pattern(std::size_t n) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i)
        s[i] = static_cast<char>('a' + (i * 7 + i / 251) % 26);
    return s;
}

/// Sends `data` through a pipe from one task to another with writeall/read_exactly, under
/// a 5 s timeout so that a lost wakeup fails instead of hanging. Returns what arrived.
std::string through_pipe(const std::string& data, bool owned) {
    Pipe p;
    std::string got(data.size(), '\0');
    auto writer = [&]() -> Task<void> {
        if (owned)
            co_await xiio::writeall(p.w, data);
        else
            co_await xiio::writeall(p.w.get(), data);
    };
    auto reader = [&]() -> Task<void> {
        if (owned)
            co_await xiio::read_exactly(p.r, got);
        else
            co_await xiio::read_exactly(p.r.get(), got);
    };
    run([&]() -> Task<void> {
        co_await xiio::timeout(5s, [&]() -> Task<void> {
            co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
                tg.add_task(writer());
                tg.add_task(reader());
                co_return;
            });
        });
    });
    return got;
}

} // namespace

// ---- EINTR, EAGAIN after readiness, short counts ------------------------------------------

/// 1 MiB through a pipe, on an owned and on an int fd, while every other read and write
/// fails with `err`: every byte arrives, in order.
static void survives_every_other(int err) {
    auto data = pattern(1024 * 1024);
    for (bool owned : {true, false}) {
        Inject faults(every_other({Call::read, Call::write}, err));
        CHECK(through_pipe(data, owned) == data);
        CHECK(faults.hits() > 10);
    }
}

TEST_CASE("faults: an EINTR on every other read and write is retried, nothing is lost") {
    survives_every_other(EINTR);
}

TEST_CASE("faults: EAGAIN after readiness keeps the task waiting, on owned and int fds") {
    // Every other attempt claims "not ready after all": a task must wait again (its fd
    // re-armed) and still get every byte, without waking with nothing or hanging.
    survives_every_other(EAGAIN);
}

TEST_CASE("faults: reads and writes that move 1 to 7 bytes at a time lose and add nothing") {
    auto data = pattern(20000);
    for (bool owned : {true, false}) {
        auto n = std::make_shared<std::atomic<unsigned>>(0);
        Inject faults([n](Call c, int, std::size_t& size) {
            if ((c == Call::read || c == Call::write) && size > 1)
                size = std::min<std::size_t>(size, 1 + n->fetch_add(1) % 7);
            return 0;
        });
        CHECK(through_pipe(data, owned) == data);
    }
}

TEST_CASE("faults: short and interrupted sends and receives on a socket lose nothing") {
    auto data = pattern(100000);
    auto n = std::make_shared<std::atomic<unsigned>>(0);
    Inject faults([n](Call c, int, std::size_t& size) {
        if (c != Call::send && c != Call::recv)
            return 0;
        unsigned k = n->fetch_add(1);
        if (k % 5 == 0)
            return EINTR;
        if (k % 5 == 1)
            return EAGAIN;
        size = std::min<std::size_t>(size, 1 + k % 1000);
        return 0;
    });
    std::string got;
    auto server = [&](xiio::Listener& l) -> Task<void> {
        auto s = co_await l.accept();
        std::vector<char> buf(4096);
        while (std::size_t k = co_await s.recv(buf))
            got.append(buf.data(), k);
    };
    auto client = [&](std::uint16_t port) -> Task<void> {
        auto s = co_await xiio::connect_tcp("127.0.0.1", port);
        co_await s.send_all(data);
        s.shutdown_write();
    };
    run([&]() -> Task<void> {
        auto l = xiio::Listener::tcp("127.0.0.1", 0);
        co_await xiio::timeout(5s, [&]() -> Task<void> {
            co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
                tg.add_task(server(l));
                tg.add_task(client(l.port()));
                co_return;
            });
        });
    });
    CHECK(got == data);
    CHECK(faults.hits() > 10);
}

// ---- what a wait asks the kernel -----------------------------------------------------------

TEST_CASE("an int fd that an Fd of the loop owns takes no fcntl per wait; another one does") {
    // read_exactly(socket.fd(), buf) in a loop of requests: the number belongs to a Socket,
    // which made it O_NONBLOCK, so asking the kernel again each time is a syscall per
    // request for nothing (W4 paid one).
    auto fcntls = std::make_shared<std::atomic<int>>(0);
    Inject count([fcntls](Call c, int, std::size_t&) {
        if (c == Call::fcntl)
            ++*fcntls;
        return 0;
    });
    run([&]() -> Task<void> {
        Pipe owned, plain;
        char buf[1];
        co_await xiio::writeall(owned.w, "a"); // claims both ends of `owned`
        co_await xiio::read_exactly(owned.r, buf);
        const int before = fcntls->load();
        for (int i = 0; i < 20; ++i) {
            co_await xiio::writeall(owned.w.get(), "b");
            co_await xiio::read_exactly(owned.r.get(), buf);
        }
        CHECK(fcntls->load() == before);
        co_await xiio::writeall(plain.w.get(), "c"); // no Fd of this loop claimed it
        CHECK(fcntls->load() == before + 1);         // so the counter counts
        co_await xiio::read_exactly(plain.r.get(), buf);
    });
}

// ---- the waiting step ---------------------------------------------------------------------

TEST_CASE("faults: epoll_pwait2 interrupted 50 times in a row still sleeps the right time") {
    auto n = std::make_shared<std::atomic<int>>(0);
    Inject faults([n](Call c, int, std::size_t&) {
        return c == Call::epoll_pwait2 && n->fetch_add(1) < 50 ? EINTR : 0;
    });
    assert_duration(30ms,
                    [] { run([]() -> Task<void> { co_await xiio::sleep(30ms); }, on_epoll); });
    CHECK(n->load() > 50);
}

TEST_CASE("faults: epoll_pwait2 failing is thrown into the tasks, runs their cleanup, "
          "leaves run(), and the next run works") {
    bool cleaned = false;
    {
        Inject faults(fail(Call::epoll_pwait2, ENOMEM));
        auto body = [&]() -> Task<void> {
            try {
                co_await xiio::sleep(10s);
            } catch (const std::system_error&) {
                cleaned = true;
                throw;
            }
        };
        try {
            run(body, on_epoll);
            FAIL("run() returned");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == ENOMEM);
        }
    }
    CHECK(cleaned);
    run([]() -> Task<void> { co_await xiio::sleep(1ms); });
}

TEST_CASE("faults: without epoll_pwait2 (ENOSYS: old kernels, valgrind) epoll_wait is used, "
          "with timeouts rounded up to whole milliseconds") {
    Inject faults(fail(Call::epoll_pwait2, ENOSYS));
    auto start = xiio::Clock::now();
    auto deadline = start + std::chrono::microseconds(20'300);
    xiio::Clock::time_point woke;
    run(
        [&]() -> Task<void> {
            co_await xiio::sleep_until(deadline);
            woke = xiio::Clock::now();
            co_await xiio::gather(xiio::sleep(5ms), xiio::sleep(10ms)); // and it keeps working
        },
        on_epoll);
    CHECK(woke >= deadline); // never early
    CHECK(woke - deadline < 50ms);
    CHECK(faults.hits() == 1); // asked once per loop, then remembered
}

// ---- EMFILE (and friends) when an fd is created -------------------------------------------

TEST_CASE("faults: run() without an epoll fd throws system_error(EMFILE) and leaks nothing") {
    Inject faults(fail(Call::epoll_create, EMFILE));
    try {
        run([]() -> Task<void> { co_return; }, on_epoll);
        FAIL("run() returned");
    } catch (const std::system_error& e) {
        CHECK(e.code().value() == EMFILE);
    }
}

TEST_CASE("faults: in_thread without an eventfd throws system_error(EMFILE); the next works") {
    auto job = [] { return 42; };
    run([&]() -> Task<void> {
        {
            Inject faults(fail(Call::eventfd, EMFILE));
            try {
                co_await xiio::in_thread(job);
                FAIL("in_thread returned");
            } catch (const std::system_error& e) {
                CHECK(e.code().value() == EMFILE);
            }
        }
        int r = co_await xiio::in_thread(job);
        CHECK(r == 42);
    });
}

TEST_CASE("faults: run_process without pipes, pidfd or fork fails cleanly: no child is left") {
    xiio::ProcessOptions capture;
    capture.capture_output = true;
    struct Case {
        Call call;
        int err;
    };
    for (auto [call, err] :
         {Case{Call::pipe, EMFILE}, Case{Call::pidfd_open, EMFILE}, Case{Call::spawn, EAGAIN}}) {
        INFO("call " << static_cast<int>(call) << " fails with " << err);
        Inject faults(fail(call, err));
        run([&]() -> Task<void> {
            std::vector<std::string> cmd{"sleep", "10"};
            try {
                co_await xiio::run_process(cmd, capture);
                FAIL("run_process returned");
            } catch (const std::system_error& e) {
                CHECK(e.code().value() == err);
            }
        });
        CHECK(no_children()); // a child spawned before pidfd_open failed was killed, reaped
    }
}

TEST_CASE("faults: subscribe_signals without a signalfd throws and leaves the mask as it was") {
    sigset_t before, after;
    pthread_sigmask(SIG_SETMASK, nullptr, &before);
    {
        Inject faults(fail(Call::signalfd, EMFILE));
        try {
            auto sub = xiio::subscribe_signals({SIGUSR2});
            FAIL("subscribe_signals returned");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == EMFILE);
        }
    }
    pthread_sigmask(SIG_SETMASK, nullptr, &after);
    CHECK(sigismember(&after, SIGUSR2) == sigismember(&before, SIGUSR2));
    auto sub = xiio::subscribe_signals({SIGUSR2}); // not "already subscribed"
}

TEST_CASE("faults: sockets that cannot be created or accepted throw system_error(EMFILE)") {
    run([]() -> Task<void> {
        auto l = xiio::Listener::tcp("127.0.0.1", 0);
        {
            Inject faults(fail(Call::socket, EMFILE));
            CHECK_THROWS_AS(xiio::Listener::tcp("127.0.0.1", 0), std::system_error);
            CHECK_THROWS_AS(co_await xiio::connect_tcp("127.0.0.1", l.port()), std::system_error);
        }
        // accept() sees the connection, cannot take it: the error reaches the task, and the
        // connection stays in the backlog for the next accept.
        auto c = co_await xiio::connect_tcp("127.0.0.1", l.port());
        {
            Inject faults(fail(Call::accept, EMFILE));
            try {
                co_await l.accept();
                FAIL("accept returned");
            } catch (const std::system_error& e) {
                CHECK(e.code().value() == EMFILE);
            }
        }
        auto s = co_await l.accept();
        co_await c.send_all("ok");
        char buf[2];
        co_await xiio::read_exactly(s.fd(), buf);
        CHECK(std::string(buf, 2) == "ok");
    });
}

// ---- fairness: awaits that keep completing at once still give the loop back --------------

namespace {

/// Runs `spinner(stop)` (a task whose awaits complete without suspending until `stop` is
/// set, or for 2 s at most) beside a task that measures a 10 ms sleep and one that waits for
/// a signal another thread sends after 20 ms; both must come within 250 ms (not 2 s).
template <class Spinner>
void check_not_starved(Spinner spinner) {
    // Without the budget both come only when the spinner gives up (2 s); a few ms is what
    // an idle machine shows. 25 ms was not enough for clang's ASan build beside other
    // tests on 2 loaded cores (35 ms seen); 250 ms still tells starvation (2 s) apart.
    auto slack = std::chrono::milliseconds(250 * slack_scale());
    run([&]() -> Task<void> {
        auto sub = xiio::subscribe_signals({SIGUSR1});
        int finished = 0;
        bool stop = false;
        xiio::Clock::duration slept{}, signalled{};
        std::atomic<xiio::Clock::rep> raised_at{0};
        auto observer = [&]() -> Task<void> {
            auto start = xiio::Clock::now();
            co_await xiio::sleep(10ms);
            slept = xiio::Clock::now() - start;
            stop = ++finished == 2;
        };
        auto receiver = [&]() -> Task<void> {
            co_await sub.next();
            signalled = xiio::Clock::now() -
                        xiio::Clock::time_point(xiio::Clock::duration(raised_at.load()));
            stop = ++finished == 2;
        };
        pthread_t loop_thread = ::pthread_self();
        std::thread raiser([&] {
            std::this_thread::sleep_for(20ms);
            raised_at = xiio::Clock::now().time_since_epoch().count();
            ::pthread_kill(loop_thread, SIGUSR1); // blocked there: pending on the signalfd
        });
        // The spinner is added last: the other two wait already when it starts to spin.
        co_await xiio::gather(observer(), receiver(), spinner(stop));
        raiser.join();
        using MsD = std::chrono::duration<double, std::milli>;
        double slept_ms = MsD(slept).count(), signalled_ms = MsD(signalled).count();
        INFO("sleep(10ms) took " << slept_ms << " ms, the signal " << signalled_ms << " ms");
        CHECK(slept < 10ms + slack);
        CHECK(signalled < slack);
    });
}

} // namespace

// An accept that keeps failing (EMFILE) completes without suspending: a server that catches
// the error and retries at once held the loop forever (timers, signals, other clients).
TEST_CASE("fairness: a loop of failing accepts does not delay a timer or a signal") {
    auto l = xiio::Listener::tcp("127.0.0.1", 0);
    Inject faults(fail(Call::accept, EMFILE));
    long errors = 0;
    check_not_starved([&](bool& stop) -> Task<void> {
        for (auto end = xiio::Clock::now() + 2s; !stop && xiio::Clock::now() < end;) {
            try {
                co_await l.accept();
            } catch (const std::system_error&) {
                ++errors;
            }
        }
    });
    CHECK(errors > 0);
}
