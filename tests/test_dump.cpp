// Tests of xiio/dump.hpp: dump_tasks() and the deadlock error that carries its text.
#include "helpers.hpp"

#include <functional>
#include <regex>
#include <thread>

#include <sys/socket.h>

using namespace test;
using xiio::Task;
using xiio::TaskGroup;

namespace {

/// Runs `setup(tg)` in a group, lets the tasks it adds reach their waits, and returns
/// dump_tasks() as the group's body saw it, after `check(dump)` looked at it while the
/// tasks still wait; then cancels them all.
template <class F>
std::string dump_of(F setup, std::function<void(const std::string&)> check = {}) {
    return run([&]() -> Task<std::string> {
        std::string text;
        auto body = [&](TaskGroup& tg) -> Task<void> {
            setup(tg);
            co_await xiio::sleep(50ms);
            text = xiio::dump_tasks();
            if (check)
                check(text);
            tg.cancel();
        };
        co_await xiio::task_group(std::ref(body));
        co_return text;
    });
}

/// The entry of the task whose text contains `needle` (from its "task " line to the next).
std::string entry_with(const std::string& dump, const std::string& needle) {
    std::size_t at = dump.find(needle);
    if (at == std::string::npos)
        return {};
    std::size_t begin = dump.rfind("\ntask ", at);
    begin = begin == std::string::npos ? 0 : begin + 1;
    std::size_t end = dump.find("\ntask ", at);
    return dump.substr(begin, end == std::string::npos ? end : end - begin);
}

Task<void> dump_inner() {
    co_await xiio::sleep(10s);
}
Task<void> dump_middle() {
    co_await dump_inner();
}
Task<void> dump_outer() {
    co_await dump_middle();
}

xiio::Generator<int> dump_numbers() {
    co_await xiio::sleep(10s);
    co_yield 1;
}
Task<void> dump_consumer() {
    auto gen = dump_numbers();
    (void)co_await gen.next();
}

Task<void> dump_deep(int n) {
    if (n == 0)
        co_await xiio::sleep(10s);
    else
        co_await dump_deep(n - 1);
}

Task<void> wait_forever(xiio::Future<int>& f) {
    co_await f;
}

} // namespace

TEST_CASE("dump_tasks shows a generator's frame inside its consumer's chain") {
    std::string dump = dump_of([](TaskGroup& tg) { tg.add_task(dump_consumer()); });
    INFO(dump);
    std::string e = entry_with(dump, "dump_consumer");
    REQUIRE(!e.empty());
    std::size_t consumer = e.find("dump_consumer()");
    std::size_t generator = e.find("dump_numbers()");
    CHECK(generator != std::string::npos);
    CHECK(consumer < generator);
    CHECK(e.find("test_dump.cpp") != std::string::npos);
    CHECK(std::regex_search(e, std::regex("deadline in [0-9]+ ms")));
}

TEST_CASE("dump_tasks outside a loop says so") {
    CHECK(xiio::dump_tasks() == "xiio: no loop runs on this thread\n");
}

TEST_CASE("dump_tasks shows a chain of frames outermost first, with names and files") {
    std::string dump = dump_of([](TaskGroup& tg) { tg.add_task(dump_outer()); });
    INFO(dump);
    std::string e = entry_with(dump, "dump_outer");
    REQUIRE(!e.empty());
    std::size_t outer = e.find("dump_outer()");
    std::size_t middle = e.find("dump_middle()");
    std::size_t inner = e.find("dump_inner()");
    REQUIRE(outer != std::string::npos);
    REQUIRE(middle != std::string::npos);
    REQUIRE(inner != std::string::npos);
    CHECK(outer < middle);
    CHECK(middle < inner);
    // One frame a line, each with the file it is defined in.
    std::regex frame(R"(dump_(outer|middle|inner)\(\)  \S*test_dump\.cpp:\d+\n)");
    CHECK(std::distance(std::sregex_iterator(e.begin(), e.end(), frame), std::sregex_iterator()) ==
          3);
    CHECK(e.find("(in a group)") != std::string::npos);
    // The parent waits for the group; the body (the caller) runs.
    CHECK(dump.find("xiio: 3 tasks\n") == 0);
    CHECK(dump.find("a task group of 2 unfinished tasks") != std::string::npos);
    CHECK(dump.find("running") != std::string::npos);
}

TEST_CASE("dump_tasks shows the fd and the direction a task reads") {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    xiio::Fd a(sv[0]), b(sv[1]);
    auto reader = [&]() -> Task<void> {
        char buf[16];
        co_await xiio::read(a, buf);
    };
    std::string dump = dump_of([&](TaskGroup& tg) { tg.add_task(reader()); });
    INFO(dump);
    CHECK(dump.find("fd " + std::to_string(a.get()) + " readable (socket:[") != std::string::npos);
}

TEST_CASE("dump_tasks shows the time left of a sleeping task") {
    std::string dump = dump_of([](TaskGroup& tg) { tg.add_task(xiio::sleep(2s)); });
    INFO(dump);
    std::smatch m;
    REQUIRE(std::regex_search(dump, m, std::regex(R"(a deadline in (\d+) ms)")));
    long ms = std::stol(m[1]);
    CHECK(ms > 1000);
    CHECK(ms < 2000);
}

TEST_CASE("dump_tasks shows a group with its member count") {
    auto nested = []() -> Task<void> {
        auto inner = [](TaskGroup& tg) -> Task<void> {
            for (int i = 0; i < 3; ++i)
                tg.add_task(xiio::sleep(10s));
            co_return;
        };
        co_await xiio::task_group(inner);
    };
    std::string dump = dump_of([&](TaskGroup& tg) { tg.add_task(nested()); });
    INFO(dump);
    CHECK(dump.find("a task group of 3 unfinished tasks") != std::string::npos);
    CHECK(dump.find("xiio: 6 tasks\n") == 0); // root, body, nested, its 3 sleepers
}

TEST_CASE("dump_tasks shows a wait for a future") {
    xiio::Future<int> f;
    std::string dump = dump_of([&](TaskGroup& tg) { tg.add_task(wait_forever(f)); });
    INFO(dump);
    std::string e = entry_with(dump, "wait_forever");
    CHECK(e.find("waits for a future\n") != std::string::npos);
}

TEST_CASE("dump_tasks shows a wait for a queue, a lock, an event, a semaphore") {
    xiio::Queue<int> q(1);
    xiio::Lock lock;
    xiio::Event event;
    xiio::Semaphore sem(0);
    auto getter = [&]() -> Task<void> { co_await q.get(); };
    auto locker = [&]() -> Task<void> {
        auto held = co_await lock.lock();
        co_await xiio::sleep(10s);
    };
    auto second = [&]() -> Task<void> {
        co_await xiio::yield(); // after the locker took it
        auto held = co_await lock.lock();
    };
    auto waiter = [&]() -> Task<void> { co_await event.wait(); };
    auto acquirer = [&]() -> Task<void> { co_await sem.acquire(); };
    std::string dump = dump_of([&](TaskGroup& tg) {
        tg.add_task(getter());
        tg.add_task(locker());
        tg.add_task(second());
        tg.add_task(waiter());
        tg.add_task(acquirer());
    });
    INFO(dump);
    CHECK(dump.find("waits for Queue::get\n") != std::string::npos);
    CHECK(dump.find("waits for Lock::lock\n") != std::string::npos);
    CHECK(dump.find("waits for Event::wait\n") != std::string::npos);
    CHECK(dump.find("waits for Semaphore::acquire\n") != std::string::npos);
}

TEST_CASE("dump_tasks shows a job on a thread") {
    auto job = [] { std::this_thread::sleep_for(200ms); };
    auto offload = [&]() -> Task<void> { co_await xiio::in_thread(job); };
    std::string dump = dump_of([&](TaskGroup& tg) { tg.add_task(offload()); });
    INFO(dump);
    CHECK(dump.find("waits for a job on a worker thread\n") != std::string::npos);
}

TEST_CASE("dump_tasks shows the pid of a child process", "[no-valgrind]") {
    auto child = []() -> Task<void> {
        std::vector<std::string> cmd{"sleep", "5"};
        co_await xiio::timeout(5s, xiio::run_process(cmd));
    };
    std::string cmdline, stat;
    auto look = [&](const std::string& dump) {
        // While it runs: what /proc says of the pid the dump names.
        std::smatch m;
        if (!std::regex_search(dump, m, std::regex(R"(child process pid (\d+)\))")))
            return;
        xiio::detail::read_proc("/proc/" + m[1].str() + "/cmdline", cmdline);
        xiio::detail::read_proc("/proc/" + m[1].str() + "/stat", stat);
    };
    std::string dump = dump_of([&](TaskGroup& tg) { tg.add_task(child()); }, look);
    INFO(dump);
    CHECK(std::regex_search(dump, std::regex(R"(fd \d+ readable \(child process pid \d+\))")));
    CHECK(cmdline == std::string("sleep\0"
                                 "5\0",
                                 8)); // our child, running `sleep 5`
    std::smatch ppid;                 // stat: "pid (comm) state ppid ..."
    REQUIRE(std::regex_search(stat, ppid, std::regex(R"(\) \S+ (\d+) )")));
    CHECK(ppid[1] == std::to_string(::getpid()));
    CHECK(entry_with(dump, "child process pid").find("wait_exit") != std::string::npos);
}

TEST_CASE("the deadlock error carries the dump of the tasks") {
    std::string what;
    try {
        run([]() -> Task<void> {
            xiio::Future<int> never;
            co_await wait_forever(never);
        });
    } catch (const std::logic_error& e) {
        what = e.what();
    }
    INFO(what);
    CHECK(what.find("deadlock") != std::string::npos);
    CHECK(what.find("xiio: 1 task\n") != std::string::npos);
    std::string e = entry_with(what, "wait_forever");
    CHECK(e.find("task 1: waits for a future\n") != std::string::npos);
    CHECK(e.find("test_dump.cpp:") != std::string::npos);
}

TEST_CASE("dump_tasks cuts a chain deeper than 64 frames in the middle") {
    std::string dump = dump_of([](TaskGroup& tg) { tg.add_task(dump_deep(99)); }); // 100 frames
    INFO(dump);
    std::string e = entry_with(dump, "dump_deep");
    CHECK(e.find("\n    ... 36 frames ...\n") != std::string::npos);
    std::regex frame(R"(dump_deep\(int\)  \S*test_dump\.cpp:\d+\n)");
    CHECK(std::distance(std::sregex_iterator(e.begin(), e.end(), frame), std::sregex_iterator()) ==
          64);
}

TEST_CASE("dump_tasks shows a task not started yet, and the caller as running") {
    run([]() -> Task<void> {
        auto body = [](TaskGroup& tg) -> Task<void> {
            tg.add_task(dump_outer());
            std::string dump = xiio::dump_tasks(); // before the new member ever ran
            INFO(dump);
            std::string e = entry_with(dump, "dump_outer");
            CHECK(e.find("(in a group): not started yet\n    ") != std::string::npos);
            CHECK(e.find("dump_middle") == std::string::npos); // only its root frame so far
            CHECK(dump.find("(in a group): running (its frames are not shown while it runs)\n") !=
                  std::string::npos);
            tg.cancel();
            co_return;
        };
        co_await xiio::task_group(body);
    });
}
