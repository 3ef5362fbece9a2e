#pragma once
// The parts of <chrono>, <thread>, <functional>, <ranges> and <algorithm> that xiio's
// headers use, without the rest of those headers.
//
// With libstdc++ 12 in C++20 the whole headers cost every translation unit that includes
// xiio a third of its standard headers' compile time (g++ -O0: 1.9 s of standard headers
// without these parts, 1.2 s with): <chrono> brings <sstream> (for operator<< of durations),
// <thread> brings <stop_token> and std::jthread, <functional> brings <unordered_map>,
// <vector>, <array> and the searchers, <ranges> the views, <algorithm> the std::ranges
// algorithms. libstdc++ declares each piece used here in an internal header of its own:
//
//   <bits/chrono.h>       durations, time points, the clocks, ceil, chrono_literals
//   <bits/std_thread.h>   std::thread, std::thread::id, std::this_thread::get_id
//   <bits/std_function.h> std::function (detail::invoke is std::invoke)
//   <bits/refwrap.h>      std::ref, std::reference_wrapper
//   <bits/ranges_base.h>  std::ranges::input_range, range_reference_t, enable_borrowed_range
//   <bits/stl_algo.h>     std::find, std::min, std::max
//
// Internal headers move between releases, so the lean path is taken only with the
// libstdc++ it was checked against (12, Debian 12's; clang++-16 uses it too). With any
// other standard library or release, the standard headers are included instead. Code that uses more
// (calendars, operator<< of a duration, std::jthread, views, std::ranges algorithms) includes the
// standard header itself, as it should anyway.

#include <version>

#if defined(__GLIBCXX__) && defined(_GLIBCXX_RELEASE) && _GLIBCXX_RELEASE == 12
#define XIIO_DETAIL_LEAN_STD 1
#endif

#if defined(XIIO_DETAIL_LEAN_STD) && __has_include(<bits/chrono.h>)
#include <bits/chrono.h>
#else
#include <chrono>
#endif

#if defined(XIIO_DETAIL_LEAN_STD) && __has_include(<bits/std_thread.h>)
#include <bits/std_thread.h>
#else
#include <thread>
#endif

#if defined(XIIO_DETAIL_LEAN_STD) && __has_include(<bits/std_function.h>) &&                       \
    __has_include(<bits/refwrap.h>) && __has_include(<bits/invoke.h>)
#define XIIO_DETAIL_LEAN_FUNCTIONAL 1
#include <bits/invoke.h>
#include <bits/refwrap.h>
#include <bits/std_function.h>
#else
#include <functional>
#endif
#include <type_traits>
#include <utility>

namespace xiio::detail {

/// std::invoke, which only <functional> declares: libstdc++'s std::invoke is this same
/// call of std::__invoke (<bits/invoke.h>).
template <class F, class... Args>
constexpr std::invoke_result_t<F, Args...>
invoke(F&& f, Args&&... args) noexcept(std::is_nothrow_invocable_v<F, Args...>) {
#ifdef XIIO_DETAIL_LEAN_FUNCTIONAL
    return std::__invoke(std::forward<F>(f), std::forward<Args>(args)...);
#else
    return std::invoke(std::forward<F>(f), std::forward<Args>(args)...);
#endif
}

} // namespace xiio::detail

#if defined(XIIO_DETAIL_LEAN_STD) && __has_include(<bits/ranges_base.h>)
#include <bits/ranges_base.h>
#else
#include <ranges>
#endif

#if defined(XIIO_DETAIL_LEAN_STD) && __has_include(<bits/stl_algo.h>)
#include <bits/stl_algo.h>
#else
#include <algorithm>
#endif
