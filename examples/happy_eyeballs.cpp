// Happy eyeballs (RFC 8305), simplified: start an attempt; start the next one as soon as
// the previous failed or after 100 ms without an answer; the first success wins and the
// group cancels every attempt still running. Attempts are simulated with sleeps, so the
// point stays on the structure: no attempt outlives the race, whatever happens.
#include <xiio.hpp>

#include <fmt/core.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

using namespace std::chrono_literals;

struct Mirror {
    std::string name;
    std::chrono::milliseconds latency;
    bool works;
};

xiio::Task<std::string> connect(const Mirror& m) {
    co_await xiio::sleep(m.latency);
    if (!m.works)
        throw std::runtime_error(m.name + " refused");
    co_return m.name;
}

xiio::Task<std::string> first_success(const std::vector<Mirror>& mirrors) {
    std::optional<std::string> winner;
    std::exception_ptr last_error;
    std::vector<std::unique_ptr<xiio::Future<>>> failed; // one per attempt
    // Defined out here, not in the group's body: attempts outlive the body, and a lambda
    // must outlive the tasks it creates (its captures live in the closure).
    auto attempt = [&](xiio::TaskGroup& tg, const Mirror& m,
                       xiio::Future<>& fail) -> xiio::Task<void> {
        try {
            winner = co_await connect(m);
            tg.cancel(); // the others lost: cancel them (and stop starting new ones)
        } catch (const std::runtime_error&) {
            last_error = std::current_exception();
            fail.set_result(); // lets the next attempt start at once
        }
    };
    co_await xiio::task_group([&](xiio::TaskGroup& tg) -> xiio::Task<void> {
        for (const auto& m : mirrors) {
            failed.push_back(std::make_unique<xiio::Future<>>());
            tg.add_task(attempt(tg, m, *failed.back()));
            // Wait until this attempt failed, or 100 ms passed.
            xiio::Condition next{.futures = {failed.back().get()},
                                 .time = xiio::Clock::now() + 100ms};
            co_await next;
        }
    });
    if (!winner)
        std::rethrow_exception(last_error);
    co_return *winner;
}

int main() {
    std::vector<Mirror> mirrors{{"ipv6.example", 400ms, true},
                                {"ipv4.example", 20ms, false},
                                {"backup.example", 150ms, true},
                                {"slow.example", 50ms, true}};
    auto start = xiio::Clock::now();
    std::string winner = xiio::run(first_success(mirrors));
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(xiio::Clock::now() - start);
    fmt::print("connected to {} after {} ms\n", winner, ms.count());
}
