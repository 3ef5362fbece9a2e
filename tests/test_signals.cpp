// Tests of xiio/signals.hpp: subscribe_signals and SignalSubscription.
// Signals are sent to this thread (pthread_kill), never to the process: other threads of
// the test process (thread pool workers block every signal, but Catch2's may not) must not
// receive them.
#include "helpers.hpp"

#include <csignal>
#include <memory>
#include <set>
#include <stdexcept>
#include <thread>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>

using namespace test;
using xiio::Task;

namespace {

bool blocked(int sig) {
    sigset_t m = current_mask();
    return sigismember(&m, sig) == 1;
}

void send_self(int sig) {
    REQUIRE(pthread_kill(pthread_self(), sig) == 0);
}

/// Sets a signal's disposition for the scope, then restores it.
struct Disposition {
    int sig;
    struct sigaction old {};
    Disposition(int s, void (*handler)(int)) : sig(s) {
        struct sigaction sa {};
        sa.sa_handler = handler;
        sigemptyset(&sa.sa_mask);
        sigaction(sig, &sa, &old);
    }
    ~Disposition() { sigaction(sig, &old, nullptr); }
};

} // namespace

TEST_CASE("next returns a signal sent to the subscribed thread") {
    Disposition dfl(SIGUSR1, SIG_DFL); // would kill the process if it were delivered
    auto sig = run([]() -> Task<int> {
        auto sub = xiio::subscribe_signals({SIGUSR1});
        auto raise_later = []() -> Task<void> {
            co_await xiio::sleep(10ms);
            send_self(SIGUSR1);
        };
        auto [s, _] = co_await xiio::gather(sub.next(), raise_later());
        (void)_;
        co_return s;
    });
    CHECK(sig == SIGUSR1);
}

TEST_CASE("a signal that arrived before next is reported at once") {
    run([]() -> Task<void> {
        auto sub = xiio::subscribe_signals({SIGUSR2});
        send_self(SIGUSR2);
        int s = co_await sub.next();
        CHECK(s == SIGUSR2);
    });
}

TEST_CASE("several signals are reported one at a time") {
    run([]() -> Task<void> {
        auto sub = xiio::subscribe_signals({SIGUSR1, SIGUSR2, SIGHUP});
        send_self(SIGHUP);
        send_self(SIGUSR2);
        std::set<int> seen;
        for (int i = 0; i < 2; ++i) {
            int s = co_await sub.next();
            seen.insert(s);
        }
        CHECK(seen == std::set<int>{SIGHUP, SIGUSR2});
        auto later = []() -> Task<void> {
            co_await xiio::sleep(5ms);
            send_self(SIGUSR1);
        };
        auto [s, _] = co_await xiio::gather(sub.next(), later());
        (void)_;
        CHECK(s == SIGUSR1);
    });
}

TEST_CASE("a subscription outside a loop is awaited inside one") {
    auto sub = xiio::subscribe_signals({SIGUSR1});
    send_self(SIGUSR1);
    int s = xiio::run(sub.next());
    CHECK(s == SIGUSR1);
}

TEST_CASE("destruction drains a pending signal and restores the mask exactly") {
    Disposition dfl(SIGUSR1, SIG_DFL); // a delivered SIGUSR1 would kill the process
    sigset_t before = current_mask();
    REQUIRE(!blocked(SIGUSR1));
    {
        auto sub = xiio::subscribe_signals({SIGUSR1});
        CHECK(blocked(SIGUSR1));
        send_self(SIGUSR1);
        send_self(SIGUSR1);
    }
    CHECK(same_mask(current_mask(), before));
    sigset_t pending;
    sigpending(&pending);
    CHECK(sigismember(&pending, SIGUSR1) == 0);
}

TEST_CASE("destruction inside a loop restores the mask exactly") {
    run([]() -> Task<void> {
        Disposition dfl(SIGUSR2, SIG_DFL);
        sigset_t before = current_mask();
        {
            auto sub = xiio::subscribe_signals({SIGUSR2});
            send_self(SIGUSR2);
            co_await xiio::sleep(1ms);
        }
        CHECK(same_mask(current_mask(), before));
        co_return;
    });
}

TEST_CASE("the whole previous mask is restored") {
    sigset_t before = current_mask();
    {
        auto sub = xiio::subscribe_signals({SIGUSR1});
        sigset_t extra;
        sigemptyset(&extra);
        sigaddset(&extra, SIGWINCH);
        pthread_sigmask(SIG_BLOCK, &extra, nullptr); // changed while subscribed
    }
    CHECK(same_mask(current_mask(), before));
}

TEST_CASE("a signal that was already blocked stays blocked after the subscription") {
    sigset_t before = current_mask();
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &usr2, nullptr);
    { auto sub = xiio::subscribe_signals({SIGUSR2}); }
    CHECK(blocked(SIGUSR2));
    pthread_sigmask(SIG_SETMASK, &before, nullptr);
}

TEST_CASE("SIGKILL and SIGSTOP and invalid numbers throw logic_error and change nothing") {
    sigset_t before = current_mask();
    auto fds = open_fds();
    CHECK_THROWS_AS(xiio::subscribe_signals({SIGUSR1, SIGKILL}), std::logic_error);
    CHECK_THROWS_AS(xiio::subscribe_signals({SIGSTOP}), std::logic_error);
    CHECK_THROWS_AS(xiio::subscribe_signals({0}), std::logic_error);
    CHECK_THROWS_AS(xiio::subscribe_signals({-3}), std::logic_error);
    CHECK_THROWS_AS(xiio::subscribe_signals({NSIG}), std::logic_error);
    CHECK_THROWS_AS(xiio::subscribe_signals({}), std::invalid_argument);
    CHECK(same_mask(current_mask(), before));
    CHECK(open_fds() == fds);
    // Nothing was recorded as subscribed either.
    auto sub = xiio::subscribe_signals({SIGUSR1});
    CHECK(sub.fd() >= 0);
}

TEST_CASE("a signal already subscribed on this thread throws logic_error and changes nothing") {
    auto first = xiio::subscribe_signals({SIGUSR1});
    sigset_t before = current_mask();
    auto fds = open_fds();
    CHECK_THROWS_AS(xiio::subscribe_signals({SIGUSR2, SIGUSR1}), std::logic_error);
    CHECK(same_mask(current_mask(), before));
    CHECK(!blocked(SIGUSR2));
    CHECK(open_fds() == fds);
    // SIGUSR2 is free, and SIGUSR1 is free again once the first subscription is gone.
    { auto second = xiio::subscribe_signals({SIGUSR2}); }
    first = xiio::SignalSubscription();
    auto again = xiio::subscribe_signals({SIGUSR1});
    CHECK(again.fd() >= 0);
}

TEST_CASE("another thread may subscribe to the same signal") {
    auto mine = xiio::subscribe_signals({SIGUSR1});
    bool ok = false;
    std::thread t([&] {
        auto theirs = xiio::subscribe_signals({SIGUSR1});
        ok = theirs.fd() >= 0;
    });
    t.join();
    CHECK(ok);
}

TEST_CASE("a subscription destroyed on another thread closes its fd and leaves both masks "
          "alone") {
    REQUIRE_FALSE(blocked(SIGUSR1));
    auto sub = xiio::subscribe_signals({SIGUSR1});
    int fd = sub.fd();
    bool usr2_still_blocked = false, usr1_unchanged = false;
    std::thread t([&] {
        // This thread's mask differs from the one the subscription saved: restoring that
        // one here would unblock SIGUSR2 in this thread.
        sigset_t usr2;
        sigemptyset(&usr2);
        sigaddset(&usr2, SIGUSR2);
        pthread_sigmask(SIG_BLOCK, &usr2, nullptr);
        bool usr1_before = blocked(SIGUSR1); // inherited from the subscribing thread
        xiio::SignalSubscription moved = std::move(sub);
        moved.reset();
        usr2_still_blocked = blocked(SIGUSR2);
        usr1_unchanged = blocked(SIGUSR1) == usr1_before;
    });
    t.join();
    CHECK(usr2_still_blocked);
    CHECK(usr1_unchanged);
    CHECK(::fcntl(fd, F_GETFD) == -1); // closed
    CHECK(blocked(SIGUSR1)); // the subscribing thread's mask is not this thread's to change
    // Put the test thread back as it was: unblock SIGUSR1 and give the signal back.
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_UNBLOCK, &usr1, nullptr);
    sigdelset(&xiio::detail::subscribed_signals(), SIGUSR1);
}

TEST_CASE("the subscription's fd is close-on-exec and is not leaked") {
    LeakCheck leaks;
    int fd;
    {
        auto sub = xiio::subscribe_signals({SIGUSR1});
        fd = sub.fd();
        REQUIRE(fd >= 0);
        CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
        auto moved = std::move(sub);
        CHECK(sub.fd() == -1);
        CHECK(moved.fd() == fd);
        run([&]() -> Task<void> {
            send_self(SIGUSR1);
            int s = co_await moved.next();
            CHECK(s == SIGUSR1);
        });
    }
    leaks.check();
}

TEST_CASE("next on an empty subscription throws logic_error") {
    xiio::SignalSubscription sub;
    CHECK_THROWS_AS(sub.next(), std::logic_error);
    CHECK(sub.fd() == -1);
}

TEST_CASE("next under a timeout is cancellable") {
    run([]() -> Task<void> {
        auto sub = xiio::subscribe_signals({SIGUSR1});
        auto start = xiio::Clock::now();
        auto r = co_await xiio::move_on_after(20ms, sub.next());
        CHECK(!r);
        CHECK(elapsed_ms(start) < 120);
        CHECK_THROWS_AS(co_await xiio::timeout(10ms, sub.next()), xiio::TimeoutError);
        // Still usable afterwards.
        send_self(SIGUSR1);
        int s = co_await sub.next();
        CHECK(s == SIGUSR1);
    });
}

TEST_CASE("next can be added to a group") {
    run([]() -> Task<void> {
        auto sub = xiio::subscribe_signals({SIGUSR2});
        co_await xiio::task_group([&](xiio::TaskGroup& tg) -> Task<void> {
            auto h = tg.add_task(sub.next());
            co_await xiio::yield();
            send_self(SIGUSR2);
            int s = co_await h;
            CHECK(s == SIGUSR2);
        });
    });
}

TEST_CASE("subscribing SIGPIPE inside a loop reports the SIGPIPE of a broken pipe") {
    Disposition dfl(SIGPIPE, SIG_DFL);
    sigset_t before = current_mask();
    run([]() -> Task<void> {
        auto sub = xiio::subscribe_signals({SIGPIPE});
        Pipe p;
        p.r.close();
        CHECK_THROWS_AS(co_await xiio::write(p.w, "x"), std::system_error);
        int s = co_await sub.next();
        CHECK(s == SIGPIPE);
    });
    // The loop's own SIGPIPE handling is back, and so is the mask of before run().
    CHECK(same_mask(current_mask(), before));
    CHECK(!blocked(SIGPIPE));
}

TEST_CASE("a SIGPIPE subscription made before run and destroyed inside it keeps SIGPIPE off") {
    Disposition dfl(SIGPIPE, SIG_DFL);
    sigset_t before = current_mask();
    auto sub = std::make_unique<xiio::SignalSubscription>(xiio::subscribe_signals({SIGPIPE}));
    xiio::run([&]() -> Task<void> {
        sub.reset(); // SIGPIPE stays blocked while the loop runs
        CHECK(blocked(SIGPIPE));
        Pipe p;
        p.r.close();
        CHECK_THROWS_AS(co_await xiio::write(p.w, "x"), std::system_error);
    }());
    CHECK(same_mask(current_mask(), before));
}

TEST_CASE("a subscription without SIGPIPE leaves the loop's SIGPIPE block alone") {
    sigset_t before = current_mask();
    auto sub = std::make_unique<xiio::SignalSubscription>(xiio::subscribe_signals({SIGUSR1}));
    xiio::run([&]() -> Task<void> {
        sub.reset();
        CHECK(blocked(SIGPIPE));
        co_return;
    }());
    CHECK(same_mask(current_mask(), before));
}

TEST_CASE("a signal sent to the process is reported while other tasks run (original)") {
    assert_duration(100ms, [] {
        run([]() -> Task<void> {
            auto sub = xiio::subscribe_signals({SIGUSR1});
            auto send = []() -> Task<void> {
                co_await xiio::sleep(100ms);
                ::kill(::getpid(), SIGUSR1);
            };
            auto [sig, _] = co_await xiio::gather(sub.next(), send());
            CHECK(sig == SIGUSR1);
        });
    });
}

TEST_CASE("two subscriptions to different signals coexist and restore the mask in reverse") {
    sigset_t before, after;
    pthread_sigmask(SIG_SETMASK, nullptr, &before);
    run([]() -> Task<void> {
        auto one = xiio::subscribe_signals({SIGUSR1});
        auto two = xiio::subscribe_signals({SIGUSR2});
        ::pthread_kill(::pthread_self(), SIGUSR2);
        ::pthread_kill(::pthread_self(), SIGUSR1);
        int a = co_await one.next();
        int b = co_await two.next();
        CHECK(a == SIGUSR1);
        CHECK(b == SIGUSR2);
        two = xiio::SignalSubscription(); // younger first
        one = xiio::SignalSubscription();
    });
    pthread_sigmask(SIG_SETMASK, nullptr, &after);
    for (int sig : {SIGUSR1, SIGUSR2, SIGPIPE, SIGINT})
        CHECK(sigismember(&before, sig) == sigismember(&after, sig));
}
