// Tests of xiio/loop.hpp through its seam: the waiting step (Poller) replaced by doubles
// that count, fail or get interrupted.
#include "helpers.hpp"

#include <atomic>
#include <csignal>
#include <thread>

#include <pthread.h>

using namespace test;
using xiio::Task;

namespace {

/// Wraps epoll; counts waits and fails the n-th one (0 = never) with `err`.
class TestPoller : public xiio::detail::Poller {
public:
    int fail_at = 0;
    int err = EIO;
    int waits = 0;
    std::vector<int> added;

    int add(int fd, unsigned events, bool oneshot) override {
        added.push_back(fd);
        return real_.add(fd, events, oneshot);
    }
    int modify(int fd, unsigned events, bool oneshot) override {
        return real_.modify(fd, events, oneshot);
    }
    void remove(int fd) noexcept override { real_.remove(fd); }
    void wait(xiio::Clock::time_point deadline,
              std::vector<xiio::detail::PollEvent>& ready) override {
        if (++waits == fail_at)
            throw std::system_error(err, std::system_category(), "epoll_pwait2");
        real_.wait(deadline, ready);
    }

private:
    xiio::detail::EpollPoller real_;
};

/// Installs a TestPoller for the loops this thread creates while it lives.
struct UsePoller {
    TestPoller* poller = nullptr;
    UsePoller(int fail_at = 0) {
        xiio::detail::poller_factory() = [this, fail_at] {
            auto p = std::make_unique<TestPoller>();
            p->fail_at = fail_at;
            poller = p.get();
            return p;
        };
    }
    ~UsePoller() { xiio::detail::poller_factory() = nullptr; }
};

} // namespace

TEST_CASE("cleanup runs when the loop's wait fails while tasks are paused") {
    UsePoller use(1);
    bool cleaned = false;
    auto body = [&]() -> Task<void> {
        try {
            co_await xiio::sleep(1s);
        } catch (const std::system_error&) {
            cleaned = true;
            throw;
        }
    };
    try {
        run(body);
        FAIL("no exception");
    } catch (const std::system_error& e) {
        CHECK(e.code().value() == EIO);
    }
    CHECK(cleaned);
}

TEST_CASE("the loop's failure is thrown into every suspended task, and out of run even if caught") {
    UsePoller use(2); // the first wait only polls while the members are ready to start
    int caught = 0;
    auto sleeper = [&]() -> Task<void> {
        try {
            co_await xiio::sleep(1s);
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == EIO);
            ++caught; // and swallowed
        }
    };
    auto body = [&]() -> Task<void> { co_await xiio::gather(sleeper(), sleeper(), sleeper()); };
    CHECK_THROWS_AS(run(body), std::system_error);
    CHECK(caught == 3);
}

TEST_CASE("cleanup may await after the loop's wait failed, and a later run works") {
    UsePoller use(1);
    bool cleaned = false;
    auto body = [&]() -> Task<void> {
        std::exception_ptr error;
        try {
            co_await xiio::sleep(1s);
        } catch (...) {
            error = std::current_exception(); // no co_await in a catch block: store it
        }
        co_await xiio::sleep(10ms); // the next wait works again
        cleaned = true;
        if (error)
            std::rethrow_exception(error);
    };
    CHECK_THROWS_AS(run(body), std::system_error);
    CHECK(cleaned);
    xiio::detail::poller_factory() = nullptr;
    CHECK(xiio::run([]() -> Task<int> {
              co_await xiio::sleep(1ms);
              co_return 5;
          }()) == 5);
}

TEST_CASE("a deadlock is reported as logic_error instead of hanging") {
    CHECK_THROWS_AS(run([]() -> Task<void> {
                        xiio::Future<int> never;
                        co_await never;
                    }),
                    std::logic_error);
}

TEST_CASE("an owned Fd costs no epoll_ctl per wait") {
    UsePoller use;
    run([&]() -> Task<void> {
        Pipe p;
        for (int i = 0; i < 50; ++i) {
            auto writer = [&]() -> Task<void> {
                co_await xiio::yield();
                co_await xiio::write(p.w, "x");
            };
            co_await xiio::gather(xiio::read(p.r, 1), writer());
        }
        CHECK(use.poller->added.size() == 1); // the reader's registration, added once
    });
}

TEST_CASE("an int fd keeps no registration after its wait ended") {
    UsePoller use;
    run([&]() -> Task<void> {
        int fds[2];
        REQUIRE(::pipe2(fds, O_NONBLOCK) == 0);
        REQUIRE(::write(fds[1], "x", 1) == 1);
        co_await xiio::wait_readable(fds[0]);
        // If fds[0] stayed in the epoll set, closing it while a dup keeps the (readable)
        // file open would leave a stale registration and make every poll return at once.
        int keep = ::dup(fds[0]);
        ::close(fds[0]);
        int before = use.poller->waits;
        co_await xiio::sleep(30ms);
        CHECK(use.poller->waits - before <= 3);
        ::close(keep);
        ::close(fds[1]);
    });
}

namespace {
void on_usr1(int) {}
} // namespace

TEST_CASE("EINTR from signals during the wait is retried") {
    struct sigaction sa {};
    sa.sa_handler = on_usr1; // no SA_RESTART: epoll_pwait2 fails with EINTR
    struct sigaction old {};
    sigaction(SIGUSR1, &sa, &old);
    pthread_t self = pthread_self();
    std::atomic<bool> stop{false};
    std::thread storm([&] {
        while (!stop) {
            pthread_kill(self, SIGUSR1);
            std::this_thread::sleep_for(1ms);
        }
    });
    assert_duration(100ms, [] { run([]() -> Task<void> { co_await xiio::sleep(100ms); }); });
    stop = true;
    storm.join();
    sigaction(SIGUSR1, &old, nullptr);
}
