// Tests of xiio/multiplex.hpp: task groups, handles, gather, timeout, move_on_after.
#include "helpers.hpp"

#include <memory>
#include <stdexcept>
#include <thread>

using namespace test;
using xiio::Task;
using xiio::TaskGroup;

namespace {

/// Sleeps; records in `log` whether it finished or was cancelled.
Task<void> sleeper(Ms d, std::string& log, char name) {
    try {
        co_await xiio::sleep(d);
        log += name;
    } catch (const xiio::CancelledError&) {
        log += static_cast<char>(std::toupper(name));
        throw;
    }
}

} // namespace

// ---- task groups -----------------------------------------------------------------------

TEST_CASE("an empty group returns the body's value at once") {
    assert_duration(0ms, [] {
        auto v = run([]() -> Task<int> {
            co_return co_await xiio::task_group([](TaskGroup&) -> Task<int> { co_return 3; });
        });
        CHECK(v == 3);
    });
}

TEST_CASE("all members have finished when task_group returns") {
    run([]() -> Task<void> {
        std::string log;
        co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
            tg.add_task(sleeper(30ms, log, 'a'));
            tg.add_task(sleeper(10ms, log, 'b'));
            co_return;
        });
        CHECK(log == "ba");
    });
}

TEST_CASE("added tasks start the next time the adding task suspends, not before") {
    run([]() -> Task<void> {
        std::string log;
        co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
            auto child = [&]() -> Task<void> {
                log += 'c';
                co_return;
            };
            tg.add_task(child());
            log += '1';
            tg.add_task(child());
            log += '2';
            co_await xiio::yield();
            log += '3';
        });
        CHECK(log == "12cc3");
    });
}

TEST_CASE("tasks may be added while the group runs, also from members") {
    run([]() -> Task<void> {
        std::string log;
        // The member lambdas live outside the body: the body ends first, and a closure
        // that dies before the tasks it made would leave them with dangling captures.
        auto grandchild = [&]() -> Task<void> {
            co_await xiio::sleep(10ms);
            log += 'g';
        };
        auto child = [&](TaskGroup& tg) -> Task<void> {
            co_await xiio::sleep(10ms);
            log += 'c';
            tg.add_task(grandchild());
        };
        co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
            tg.add_task(child(tg));
            co_await xiio::sleep(5ms);
            log += 'b';
        });
        CHECK(log == "bcg");
    });
}

TEST_CASE("size counts the body and unstarted tasks, finished members leave the group") {
    run([]() -> Task<void> {
        co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
            CHECK(tg.size() == 1);
            tg.add_task(delayed(1, 10ms));
            tg.add_task(delayed(2, 30ms));
            CHECK(tg.size() == 3);
            co_await xiio::sleep(20ms);
            CHECK(tg.size() == 2);
            co_await xiio::sleep(20ms);
            CHECK(tg.size() == 1);
        });
    });
}

TEST_CASE("when a member throws, the body gets CancelledError at its current co_await") {
    run([]() -> Task<void> {
        bool body_cancelled = false;
        auto start = xiio::Clock::now();
        CHECK_THROWS_WITH(co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
                              tg.add_task(fail_after(20ms));
                              try {
                                  co_await xiio::sleep(1s);
                              } catch (const xiio::CancelledError&) {
                                  body_cancelled = true;
                                  throw;
                              }
                          }),
                          "boom");
        CHECK(body_cancelled);
        CHECK(elapsed_ms(start) < 500);
    });
}

TEST_CASE("an exception in the body returns at once and cancels sleeping children") {
    assert_duration(20ms, [] {
        run([]() -> Task<void> {
            std::string log;
            CHECK_THROWS_WITH(co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
                                  tg.add_task(sleeper(1s, log, 'a'));
                                  tg.add_task(sleeper(1s, log, 'b'));
                                  co_await xiio::sleep(20ms);
                                  throw std::runtime_error("body");
                              }),
                              "body");
            CHECK(log == "AB");
        });
    });
}

TEST_CASE("a group whose body throws before any child ran: the children never run") {
    run([]() -> Task<void> {
        auto arg = std::make_shared<int>(1);
        bool ran = false;
        auto child = [](std::shared_ptr<int> /*keep*/, bool& flag) -> Task<void> {
            flag = true;
            co_return;
        };
        CHECK_THROWS_WITH(co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
                              tg.add_task(child(arg, ran));
                              tg.add_task(child(arg, ran));
                              CHECK(arg.use_count() == 3); // held by the two unstarted frames
                              throw std::runtime_error("early");
                              co_return;
                          }),
                          "early");
        CHECK_FALSE(ran);
        CHECK(arg.use_count() == 1); // their frames were destroyed, arguments with them
    });
}

TEST_CASE("the first exception wins and exceptions during cancellation are dropped") {
    run([]() -> Task<void> {
        auto cleanup_fails = []() -> Task<void> {
            try {
                co_await xiio::sleep(1s);
            } catch (const xiio::CancelledError&) {
                throw std::logic_error("during cancellation");
            }
        };
        CHECK_THROWS_WITH(co_await xiio::gather(cleanup_fails(), fail_after(10ms, "first"),
                                                fail_after(10ms, "second")),
                          "first");
    });
}

TEST_CASE("a CancelledError escaping a member is not an error of the group") {
    auto v = run([]() -> Task<int> {
        co_return co_await xiio::task_group([](TaskGroup& tg) -> Task<int> {
            tg.add_task([]() -> Task<void> {
                throw xiio::CancelledError{};
                co_return; // makes it a coroutine: the throw happens inside the member
            }());
            co_await xiio::sleep(10ms);
            co_return 5;
        });
    });
    CHECK(v == 5);
}

TEST_CASE("task handles give value, exception or cancellation, and outlive the group") {
    run([]() -> Task<void> {
        std::optional<xiio::TaskHandle<int>> ok, failed, cancelled;
        CHECK_THROWS_WITH(co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
                              ok = tg.add_task(delayed(7, 5ms));
                              failed = tg.add_task([]() -> Task<int> {
                                  co_await xiio::sleep(20ms);
                                  throw std::runtime_error("member");
                              }());
                              cancelled = tg.add_task(delayed(1, 1s));
                              CHECK_FALSE(ok->done());
                              CHECK_THROWS_AS(ok->result(), std::logic_error);
                              auto v = co_await *ok;
                              CHECK(v == 7);
                              CHECK(ok->done());
                              co_await xiio::sleep(1s);
                          }),
                          "member");
        CHECK(ok->result() == 7);
        CHECK_THROWS_WITH(failed->result(), "member");
        CHECK(cancelled->done());
        CHECK_THROWS_AS(cancelled->result(), xiio::CancelledError);
        CHECK_THROWS_AS(co_await *cancelled, xiio::CancelledError);
    });
}

TEST_CASE("a moved-from task handle is a logic_error, not a crash") {
    run([]() -> Task<void> {
        co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
            xiio::TaskHandle<int> h = tg.add_task(delayed(3, 1ms));
            xiio::TaskHandle<int> moved = std::move(h);
            CHECK_THROWS_WITH(h.done(), "TaskHandle::done: the handle was moved from");
            CHECK_THROWS_WITH(h.result(), "TaskHandle::result: the handle was moved from");
            CHECK_THROWS_WITH(co_await h, "TaskHandle::co_await: the handle was moved from");
            CHECK(co_await moved == 3);
        });
    });
}

TEST_CASE("tg.cancel() from inside cancels every member, the body included, without error") {
    run([]() -> Task<void> {
        std::string log;
        bool body_cancelled = false;
        co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
            tg.add_task(sleeper(1s, log, 'a'));
            co_await xiio::sleep(10ms);
            tg.cancel();
            try {
                co_await xiio::sleep(1s);
            } catch (const xiio::CancelledError&) {
                body_cancelled = true;
                throw;
            }
        });
        CHECK(log == "A");
        CHECK(body_cancelled);
    });
}

TEST_CASE("tg.cancel() from another task ends the group, task_group<R> then throws "
          "CancelledError") {
    run([]() -> Task<void> {
        TaskGroup* group = nullptr;
        auto canceller = [&]() -> Task<void> {
            co_await xiio::sleep(10ms);
            group->cancel();
        };
        auto grouped = [&]() -> Task<int> {
            co_return co_await xiio::task_group([&](TaskGroup& tg) -> Task<int> {
                group = &tg;
                co_await xiio::sleep(1s);
                co_return 1;
            });
        };
        auto start = xiio::Clock::now();
        CHECK_THROWS_AS(co_await xiio::gather(grouped(), canceller()), xiio::CancelledError);
        CHECK(elapsed_ms(start) < 500);
    });
}

TEST_CASE("after tg.cancel() a body that finished returns its value and later errors are "
          "dropped") {
    auto v = run([]() -> Task<int> {
        co_return co_await xiio::task_group([](TaskGroup& tg) -> Task<int> {
            tg.add_task(fail_after(20ms));
            tg.cancel();
            co_return 9;
        });
    });
    CHECK(v == 9);
}

TEST_CASE("tasks added after cancellation run normally") {
    run([]() -> Task<void> {
        std::string log;
        co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
            tg.cancel();
            tg.add_task(sleeper(10ms, log, 'a'));
            co_return;
        });
        CHECK(log == "a");
    });
}

TEST_CASE("cancellation from outside is never swallowed by an inner group") {
    run([]() -> Task<void> {
        std::string log;
        bool rethrown = false;
        auto inner = [&]() -> Task<void> {
            try {
                co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
                    tg.add_task(sleeper(1s, log, 'a'));
                    co_await xiio::sleep(1s);
                });
            } catch (const xiio::CancelledError&) {
                rethrown = true;
                throw;
            }
            log += "not here";
        };
        CHECK_THROWS_WITH(co_await xiio::gather(inner(), fail_after(10ms)), "boom");
        CHECK(rethrown);
        CHECK(log == "A");
    });
}

TEST_CASE("cancellation from outside is not swallowed even if the inner group was cancelled") {
    run([]() -> Task<void> {
        bool rethrown = false;
        auto inner = [&]() -> Task<void> {
            try {
                co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
                    tg.add_task([]() -> Task<void> {
                        // Ignores its cancellation for a while: the group stays open.
                        std::exception_ptr e;
                        try {
                            co_await xiio::sleep(1s);
                        } catch (...) {
                            e = std::current_exception();
                        }
                        co_await xiio::sleep(30ms);
                    }());
                    co_await xiio::yield();
                    tg.cancel();
                    co_return;
                });
            } catch (const xiio::CancelledError&) {
                rethrown = true;
                throw;
            }
        };
        CHECK_THROWS_AS(co_await xiio::timeout(10ms, inner()), xiio::TimeoutError);
        CHECK(rethrown);
    });
}

TEST_CASE("a group inside a group inside a group, with the innermost failing") {
    run([]() -> Task<void> {
        std::string log;
        auto level3 = [&]() -> Task<void> {
            co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
                tg.add_task(sleeper(1s, log, 'c'));
                co_await fail_after(10ms, "innermost");
            });
        };
        auto level2 = [&]() -> Task<void> {
            co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
                tg.add_task(sleeper(1s, log, 'b'));
                co_await level3();
            });
        };
        auto start = xiio::Clock::now();
        CHECK_THROWS_WITH(co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
                              tg.add_task(sleeper(1s, log, 'a'));
                              co_await level2();
                          }),
                          "innermost");
        CHECK(elapsed_ms(start) < 500);
        std::sort(log.begin(), log.end());
        CHECK(log == "ABC");
    });
}

TEST_CASE("cleanup after cancellation may await, and the group waits for it") {
    assert_duration(60ms, [] {
        run([]() -> Task<void> {
            bool cleaned = false;
            auto worker = [&]() -> Task<void> {
                std::exception_ptr error;
                try {
                    co_await xiio::sleep(1s);
                } catch (...) {
                    error = std::current_exception();
                }
                co_await xiio::sleep(50ms); // awaiting during cleanup runs normally
                cleaned = true;
                if (error)
                    std::rethrow_exception(error);
            };
            CHECK_THROWS_WITH(co_await xiio::gather(worker(), fail_after(10ms)), "boom");
            CHECK(cleaned);
        });
    });
}

TEST_CASE("each cancellation throws one CancelledError, also after an earlier one was caught") {
    run([]() -> Task<void> {
        int caught = 0;
        auto stubborn = [&]() -> Task<void> {
            for (int i = 0; i < 2; ++i) {
                try {
                    co_await xiio::sleep(1s);
                } catch (const xiio::CancelledError&) {
                    ++caught;
                }
            }
        };
        auto inner = [&]() -> Task<void> {
            co_await xiio::task_group([&](TaskGroup& tg) -> Task<void> {
                tg.add_task(stubborn());
                co_await xiio::sleep(10ms);
                tg.cancel(); // first cancellation: caught, the member sleeps again
            });
        };
        // The outer timeout cancels the group from outside: the member's second one.
        auto done = co_await xiio::move_on_after(50ms, inner());
        CHECK_FALSE(done);
        CHECK(caught == 2);
    });
}

// ---- gather ----------------------------------------------------------------------------

TEST_CASE("gather of immediate values") {
    auto r = run([]() -> Task<std::tuple<int, int>> {
        co_return co_await xiio::gather(delayed(1, 0ms), delayed(2, 0ms));
    });
    CHECK(r == std::tuple{1, 2});
}

TEST_CASE("gather of delayed values takes the longest and keeps input order") {
    assert_duration(100ms, [] {
        auto r = run([]() -> Task<std::vector<int>> {
            std::vector<Task<int>> ts;
            ts.push_back(delayed(1, 100ms));
            ts.push_back(delayed(2, 50ms));
            ts.push_back(delayed(3, 0ms));
            co_return co_await xiio::gather(std::move(ts));
        });
        CHECK(r == std::vector<int>{1, 2, 3});
    });
}

TEST_CASE("gather of mixed types gives std::monostate for void") {
    auto r = run([]() -> Task<std::tuple<int, std::monostate, std::string, std::size_t>> {
        Pipe p;
        co_await xiio::writeall(p.w, "ab");
        co_return co_await xiio::gather(
            delayed(1, 1ms), xiio::sleep(1ms), []() -> Task<std::string> { co_return "s"; }(),
            xiio::write(p.w, "xyz"));
    });
    CHECK(std::get<0>(r) == 1);
    CHECK(std::get<2>(r) == "s");
    CHECK(std::get<3>(r) == 3);
}

TEST_CASE("gather of move-only values") {
    auto r = run([]() -> Task<std::vector<std::unique_ptr<int>>> {
        std::vector<Task<std::unique_ptr<int>>> ts;
        for (int i = 0; i < 3; ++i)
            ts.push_back([](int v) -> Task<std::unique_ptr<int>> {
                co_await xiio::yield();
                co_return std::make_unique<int>(v);
            }(i));
        co_return co_await xiio::gather(std::move(ts));
    });
    REQUIRE(r.size() == 3);
    CHECK(*r[2] == 2);
}

TEST_CASE("gather of void tasks in a vector") {
    run([]() -> Task<void> {
        int n = 0;
        std::vector<Task<void>> ts;
        for (int i = 0; i < 10; ++i)
            ts.push_back([](int& count) -> Task<void> {
                co_await xiio::yield();
                ++count;
            }(n));
        co_await xiio::gather(std::move(ts));
        CHECK(n == 10);
    });
}

TEST_CASE("gather of 100,000 tasks") {
    auto sum = run([]() -> Task<long> {
        std::vector<Task<int>> ts;
        ts.reserve(100'000);
        for (int i = 0; i < 100'000; ++i)
            ts.push_back(delayed(1, Ms(i % 10)));
        auto values = co_await xiio::gather(std::move(ts));
        long s = 0;
        for (int v : values)
            s += v;
        co_return s;
    });
    CHECK(sum == 100'000);
}

TEST_CASE("gather raises on error") {
    CHECK_THROWS_AS(
        run([]() -> Task<void> { co_await xiio::gather(delayed(1, 10ms), fail_after(0ms)); }),
        std::runtime_error);
}

TEST_CASE("gather cancels others on error and returns at the failure's time") {
    assert_duration(50ms, [] {
        run([]() -> Task<void> {
            std::string log;
            CHECK_THROWS_AS(co_await xiio::gather(sleeper(1s, log, 'a'), fail_after(50ms)),
                            std::runtime_error);
            CHECK(log == "A");
        });
    });
}

TEST_CASE("cleanup runs when the loop's wait fails while members are paused") {
    struct Failing : xiio::detail::EpollPoller {
        int waits = 0;
        void wait(xiio::Clock::time_point d, std::vector<xiio::detail::PollEvent>& r) override {
            if (++waits == 1) // no fd is watched: the first wait has both members asleep
                throw std::system_error(EIO, std::system_category(), "epoll_pwait2");
            EpollPoller::wait(d, r);
        }
    };
    xiio::detail::poller_factory() = [] { return std::make_unique<Failing>(); };
    int cleaned = 0;
    auto member = [&]() -> Task<void> {
        try {
            co_await xiio::sleep(1s);
        } catch (const std::system_error&) {
            ++cleaned;
            throw;
        }
    };
    CHECK_THROWS_AS(run([&]() -> Task<void> { co_await xiio::gather(member(), member()); }),
                    std::system_error);
    xiio::detail::poller_factory() = nullptr;
    CHECK(cleaned == 2);
}

// ---- timeout ---------------------------------------------------------------------------

TEST_CASE("timeout that finishes in time returns the value") {
    auto v = run([]() -> Task<int> { co_return co_await xiio::timeout(1s, delayed(4, 10ms)); });
    CHECK(v == 4);
}

TEST_CASE("timeout that expires throws TimeoutError at the deadline") {
    assert_duration(50ms, [] {
        CHECK_THROWS_AS(
            run([]() -> Task<int> { co_return co_await xiio::timeout(50ms, delayed(4, 1s)); }),
            xiio::TimeoutError);
    });
}

TEST_CASE("timeout accepts a callable, kept alive until it ends") {
    auto v = run([]() -> Task<std::string> {
        auto text = std::make_shared<std::string>("kept");
        auto body = [text]() -> Task<std::string> {
            co_await xiio::sleep(10ms);
            co_return *text;
        };
        co_return co_await xiio::timeout(1s, body);
    });
    CHECK(v == "kept");
}

// g++ 12 destroys such a temporary twice inside a co_await (a double free): there the form
// does not compile (tests/compile_fail: "a temporary lambda with by-copy captures ...").
// Where it compiles it must be safe: ASan (clang-asan preset) sees any double free.
#if !(defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13)
TEST_CASE("a temporary lambda with by-copy captures is safe where the compiler accepts it") {
    auto v = run([]() -> Task<std::size_t> {
        std::string text(100, 'x'); // on the heap: a double free would be seen
        auto a = co_await xiio::timeout(1s, [text]() -> Task<std::size_t> {
            co_await xiio::sleep(1ms);
            co_return text.size();
        });
        bool in_time = co_await xiio::move_on_after(1s, [text]() -> Task<void> { co_return; });
        auto b = co_await xiio::task_group(
            [text](TaskGroup&) -> Task<std::size_t> { co_return text.size(); });
        auto c = co_await xiio::in_thread([text] { return text.size(); });
        co_return a + b + c + (in_time ? 1 : 0);
    });
    CHECK(v == 301);
}
#endif

TEST_CASE("timeout(nullopt) runs without limit") {
    auto v = run(
        []() -> Task<int> { co_return co_await xiio::timeout(std::nullopt, delayed(2, 20ms)); });
    CHECK(v == 2);
}

TEST_CASE("move_on_after returns empty at the deadline and the value in time") {
    run([]() -> Task<void> {
        auto late = co_await xiio::move_on_after(20ms, delayed(1, 1s));
        CHECK_FALSE(late.has_value());
        auto early = co_await xiio::move_on_after(1s, delayed(1, 1ms));
        REQUIRE(early.has_value());
        CHECK(*early == 1);
        bool finished = co_await xiio::move_on_after(10ms, xiio::sleep(1s));
        CHECK_FALSE(finished);
        finished = co_await xiio::move_on_after(1s, xiio::sleep(1ms));
        CHECK(finished);
    });
}

TEST_CASE("a body that swallows CancelledError still yields TimeoutError") {
    assert_duration(20ms, [] {
        CHECK_THROWS_AS(run([]() -> Task<int> {
                            auto swallow = []() -> Task<int> {
                                try {
                                    co_await xiio::sleep(1s);
                                } catch (const xiio::CancelledError&) {
                                }
                                co_return 1;
                            };
                            co_return co_await xiio::timeout(20ms, swallow);
                        }),
                        xiio::TimeoutError);
    });
}

TEST_CASE("nested timeouts: only the inner one expired, it reports the timeout") {
    run([]() -> Task<void> {
        bool outer_saw_timeout = false;
        auto inner = [&]() -> Task<void> {
            try {
                co_await xiio::timeout(20ms, xiio::sleep(1s));
            } catch (const xiio::TimeoutError&) {
                outer_saw_timeout = true; // the inner timeout's error reaches the outer body
                throw;
            }
        };
        CHECK_THROWS_AS(co_await xiio::timeout(1s, inner()), xiio::TimeoutError);
        CHECK(outer_saw_timeout);
    });
}

TEST_CASE("nested timeouts: only the outer one expired, the inner sees a cancellation") {
    run([]() -> Task<void> {
        bool inner_cancelled = false;
        auto inner = [&]() -> Task<void> {
            try {
                co_await xiio::timeout(1s, xiio::sleep(2s));
            } catch (const xiio::CancelledError&) {
                inner_cancelled = true;
                throw;
            }
        };
        auto start = xiio::Clock::now();
        CHECK_THROWS_AS(co_await xiio::timeout(20ms, inner()), xiio::TimeoutError);
        CHECK(inner_cancelled);
        CHECK(elapsed_ms(start) < 500);
    });
}

TEST_CASE("the deadline of a timeout is exact: no drift from re-arming") {
    assert_duration(
        100ms,
        [] {
            run([]() -> Task<void> {
                auto steps = []() -> Task<void> {
                    for (;;)
                        co_await xiio::sleep(80ms); // a re-armed deadline would end at 160 ms
                };
                CHECK_THROWS_AS(co_await xiio::timeout(100ms, steps), xiio::TimeoutError);
            });
        },
        50ms);
}

TEST_CASE("add_task on a group that has finished throws logic_error") {
    // The group lives in task_group's frame, which stays alive as long as its Task: a
    // pointer kept by the body can reach the group after it finished.
    TaskGroup* kept = nullptr;
    auto body = [&](TaskGroup& tg) -> Task<int> {
        kept = &tg;
        co_return 7;
    };
    run([&]() -> Task<void> {
        auto group = xiio::task_group(std::ref(body));
        int v = co_await group;
        CHECK(v == 7);
        CHECK_THROWS_WITH(kept->add_task(xiio::sleep(1ms)),
                          Catch::Contains("the group has finished"));
        CHECK(kept->size() == 0);
    });
}

TEST_CASE("misuse of a group throws logic_error: no loop, an empty task") {
    CHECK_THROWS_AS(TaskGroup(), std::logic_error); // no loop runs on this thread
    run([]() -> Task<void> {
        co_await xiio::task_group([](TaskGroup& tg) -> Task<void> {
            CHECK_THROWS_AS(tg.add_task(Task<int>()), std::logic_error);
            auto t = delayed(1, 0ms);
            tg.add_task(std::move(t));
            CHECK_THROWS_AS(tg.add_task(std::move(t)), std::logic_error); // moved from
            co_return;
        });
    });
}

TEST_CASE("add_task after the last member finished, before the parent resumed, is logic_error") {
    run([]() -> Task<void> {
        xiio::TaskGroup* group = nullptr;
        xiio::Future<void> last_member_ending;
        bool threw = false;
        auto outsider = [&]() -> Task<void> {
            co_await last_member_ending; // woken before the group's parent is
            try {
                group->add_task(xiio::sleep(1ms));
            } catch (const std::logic_error&) {
                threw = true;
            }
        };
        auto body = [&](xiio::TaskGroup& tg) -> Task<void> {
            group = &tg;
            co_await xiio::yield();
            last_member_ending.set_result();
        };
        co_await xiio::gather(outsider(), xiio::task_group(body));
        CHECK(threw);
    });
}

// ---- a deadline against a hand-off in the same iteration ----------------------------------

namespace {

/// Makes the deadline of a `d`-long move_on_after and a hand-off `d - 1ms` from now fall due
/// in the same loop iteration: a blocker holds the loop past both, then the hand-off runs
/// first (its timer is earlier) and wakes the body, and the deadline fires after it.
Task<void> block_loop_for(std::chrono::milliseconds d) {
    co_await xiio::yield();
    std::this_thread::sleep_for(d);
}

} // namespace

// The timer's cancellation found the body already woken by the put and stayed pending; the
// body returned the value, and move_on_after reported a timeout: the item had left the queue
// and nobody had it.
TEST_CASE("move_on_after whose body was handed a queue item as the deadline passed returns it") {
    run([]() -> Task<void> {
        xiio::Queue<int> q(1);
        std::optional<std::optional<int>> got;
        xiio::Clock::time_point t0;
        auto getter = [&]() -> Task<void> {
            t0 = xiio::Clock::now(); // the deadline is 6 ms after this, or later
            got = co_await xiio::move_on_after(6ms, q.get());
        };
        auto putter = [&]() -> Task<void> {
            // Relative to the getter's start, not to this task's: under valgrind a task
            // may start milliseconds after the one before it.
            co_await xiio::sleep_until(t0 + 5ms);
            co_await q.put(42);
        };
        co_await xiio::gather(getter(), putter(), block_loop_for(20ms));
        REQUIRE(got.has_value()); // not a timeout
        REQUIRE(got->has_value());
        CHECK(**got == 42);
    });
}

TEST_CASE("timeout whose body was handed a permit as the deadline passed keeps it, no error") {
    run([]() -> Task<void> {
        xiio::Semaphore sem(0);
        bool acquired = false;
        xiio::Clock::time_point t0;
        auto acquirer = [&]() -> Task<void> {
            t0 = xiio::Clock::now();
            co_await xiio::timeout(6ms, sem.acquire());
            acquired = true;
        };
        auto releaser = [&]() -> Task<void> {
            co_await xiio::sleep_until(t0 + 5ms); // see the test above
            sem.release();
        };
        co_await xiio::gather(acquirer(), releaser(), block_loop_for(20ms));
        CHECK(acquired);
        // The permit is held by the acquirer, not free and not lost: nobody else gets one.
        auto again = co_await xiio::move_on_after(5ms, sem.acquire());
        CHECK(!again);
    });
}

// A body that saw the cancellation (and swallowed it) still timed out, as the reference says.
TEST_CASE("a body that caught the deadline's cancellation and returned a value still timed out") {
    run([]() -> Task<void> {
        auto body = []() -> Task<int> {
            try {
                co_await xiio::sleep(1s);
            } catch (const xiio::CancelledError&) {
            }
            co_return 7;
        };
        auto r = co_await xiio::move_on_after(5ms, body());
        CHECK(!r);
    });
}
