#pragma once
// race: runs tasks concurrently, the first one to finish decides, the others are cancelled.
//
// Built on the group machinery, as gather is: each task becomes a member of a task group,
// wrapped in a small coroutine (detail::race_member) that catches the task's outcome and
// reports it to the race's state. The first report wins: it keeps the value (or the
// exception) and calls tg.cancel(), which throws CancelledError into every other member.
// The group's join then waits for them all, so no loser is still running (or cleaning up)
// when race returns. Later reports are losers: a value is dropped, a CancelledError is the
// expected end, any other exception is kept and thrown if the winner returned a value (a
// failure in a loser's cleanup is never swallowed silently). A member never lets an
// exception reach the group, so the group's "first error wins" rule does not apply;
// only a cancellation of the awaiting task from outside does (the join forwards it to
// every member and rethrows it once they finished).
//
// Errors: std::invalid_argument for an empty vector, std::logic_error for an empty Task
// (both at the call, before anything runs); otherwise the winner's exception, a loser's
// error, or the outside CancelledError, in that order of precedence (outside first).

#include <xiio/multiplex.hpp>

#include <cstddef>
#include <exception>
#include <optional>
#include <stdexcept>
#include <utility>
#include <variant>
#include <vector>

namespace xiio {

namespace detail {

inline bool is_cancelled_error(const std::exception_ptr& e) noexcept {
    try {
        std::rethrow_exception(e);
    } catch (const CancelledError&) {
        return true;
    } catch (...) {
        return false;
    }
}

/// What the members of one race report to. Lives in the race's frame, which outlives the
/// group (the join returns only after every member finished).
struct RaceState {
    static constexpr std::size_t none = static_cast<std::size_t>(-1);
    TaskGroup* group = nullptr;
    std::size_t winner = none;
    std::exception_ptr winner_error;
    std::exception_ptr loser_error; // the first error (not a CancelledError) of a loser

    /// Member `i` finished: true if it is the winner (the others are cancelled now).
    bool finish(std::size_t i) noexcept {
        if (winner != none)
            return false;
        winner = i;
        group->cancel();
        return true;
    }
    void failed(std::size_t i, std::exception_ptr e) noexcept {
        if (finish(i))
            winner_error = std::move(e);
        else if (!loser_error && !is_cancelled_error(e))
            loser_error = std::move(e);
    }
    /// After the join: the winner's exception, else a loser's error.
    void rethrow() const {
        if (winner_error)
            std::rethrow_exception(winner_error);
        if (loser_error)
            std::rethrow_exception(loser_error);
    }
};

/// A race member: awaits `task` and reports its outcome; `store(value)` keeps the winner's
/// value. Throws nothing (a member's exception would become the group's error).
template <class T, class Store>
Task<void> race_member(Task<T> task, RaceState& st, std::size_t i, Store store) {
    std::exception_ptr e;
    try {
        if constexpr (std::is_void_v<T>) {
            co_await std::move(task);
            if (st.finish(i))
                store();
        } else {
            T v = co_await std::move(task);
            if (st.finish(i))
                store(std::move(v));
            // else: a loser that completed before it saw the cancellation; dropped
        }
    } catch (...) {
        e = std::current_exception();
    }
    if (e)
        st.failed(i, std::move(e));
}

template <class T>
using race_alt_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

/// Keeps the winner's value in the variant, at index I (the alternatives may repeat).
template <std::size_t I, class Variant>
struct StoreAt {
    std::optional<Variant>* out;
    void operator()() const { out->emplace(std::in_place_index<I>); }
    template <class V>
    void operator()(V&& v) const {
        out->emplace(std::in_place_index<I>, std::forward<V>(v));
    }
};

template <class T>
struct StoreIn {
    std::optional<T>* out;
    void operator()(T&& v) const { out->emplace(std::move(v)); }
};
struct StoreNothing {
    void operator()() const noexcept {}
};

inline void check_race_task(bool present) {
    if (!present)
        throw std::logic_error("xiio::race: empty Task");
}

template <class... T>
Task<std::variant<race_alt_t<T>...>> race_tasks(Task<T>... tasks) {
    using Result = std::variant<race_alt_t<T>...>;
    RaceState st;
    std::optional<Result> result;
    auto body = [&](TaskGroup& tg) -> Task<void> {
        st.group = &tg;
        [&]<std::size_t... I>(std::index_sequence<I...>) {
            (tg.add_task(race_member(std::move(tasks), st, I, StoreAt<I, Result>{&result})), ...);
        }(std::index_sequence_for<T...>{});
        co_return;
    };
    co_await task_group(std::ref(body)); // rethrows a cancellation from outside
    st.rethrow();
    co_return std::move(*result);
}

template <class T>
Task<std::conditional_t<std::is_void_v<T>, std::size_t, std::pair<std::size_t, T>>>
race_vector(std::vector<Task<T>> tasks) {
    RaceState st;
    std::conditional_t<std::is_void_v<T>, std::monostate, std::optional<T>> value;
    auto body = [&](TaskGroup& tg) -> Task<void> {
        st.group = &tg;
        for (std::size_t i = 0; i < tasks.size(); ++i) {
            if constexpr (std::is_void_v<T>)
                tg.add_task(race_member(std::move(tasks[i]), st, i, StoreNothing{}));
            else
                tg.add_task(race_member(std::move(tasks[i]), st, i, StoreIn<T>{&value}));
        }
        co_return;
    };
    co_await task_group(std::ref(body));
    st.rethrow();
    if constexpr (std::is_void_v<T>)
        co_return st.winner;
    else
        co_return std::pair<std::size_t, T>(st.winner, std::move(*value));
}

} // namespace detail

/// Runs all tasks (or xiio awaitables) concurrently; the first to finish decides: its
/// value, at its index in the variant (void: std::monostate), or its exception rethrown.
/// The others get CancelledError and are waited for before race returns; a loser's error
/// other than CancelledError is thrown if the winner returned a value (a loser's value is
/// dropped). A cancellation point: cancelling the awaiting task cancels every member.
/// std::logic_error for an empty Task.
template <class... A>
auto race(A&&... tasks) {
    static_assert(sizeof...(A) > 0, "xiio::race: give it at least one task");
    static_assert((detail::is_task_like_v<A> && ...),
                  "xiio::race: every argument must be a xiio::Task<T> (what calling a "
                  "coroutine returns) or an awaitable of xiio (sleep, read, ...)");
    if constexpr (sizeof...(A) > 0 && (detail::is_task_like_v<A> && ...)) {
        return [](auto... ts) {
            (detail::check_race_task(static_cast<bool>(ts)), ...);
            return detail::race_tasks(std::move(ts)...);
        }(detail::as_task(std::forward<A>(tasks))...);
    }
}

/// Like race(tasks...): (the winner's index, its value); for T = void, the index only.
/// std::invalid_argument if `tasks` is empty, std::logic_error for an empty Task (both at
/// the call). A cancellation point.
template <class T>
Task<std::conditional_t<std::is_void_v<T>, std::size_t, std::pair<std::size_t, T>>>
race(std::vector<Task<T>> tasks) {
    if (tasks.empty())
        throw std::invalid_argument("xiio::race: no tasks");
    for (const auto& t : tasks)
        detail::check_race_task(static_cast<bool>(t));
    return detail::race_vector(std::move(tasks));
}

} // namespace xiio
