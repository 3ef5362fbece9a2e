#pragma once
// What every benchmark shares: arguments, the measured region, and the result lines.
//
// Every benchmark runs one or all implementations (`--impl raw|xiio|asio|uring|xiio-uring|all`;
// a workload without an implementation skips it) of one or
// all of its cases (`--case NAME|all`), `--runs R` times each, and prints one line per run:
//   RESULT workload=W3 case=P1 impl=xiio run=0 ops=200000 ns_per_op=1234.5 key=value...
// bench/run starts one process per (workload, case, impl) and turns these lines into its
// table; the indented human line after the runs is for people running a binary by hand.
#include <fmt/core.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

// `valgrind --tool=callgrind --instr-atstart=no` counts only what runs between these two
// macros, i.e. the measured region (bench/run --instructions). They are a few no-op
// instructions outside valgrind; where the header is missing they expand to nothing.
#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#else
#define CALLGRIND_START_INSTRUMENTATION
#define CALLGRIND_STOP_INSTRUMENTATION
#endif

#include <cerrno>
#include <sys/epoll.h>

namespace bench {

using Clock = std::chrono::steady_clock;

// ---- valgrind 3.19 (Debian 12) does not know epoll_pwait2 (ENOSYS) ------------------------
// The raw loops use it for nanosecond timeouts, as xiio's EpollPoller does; where it is
// missing both fall back to epoll_wait with the timeout rounded up to whole milliseconds
// (xiio does that itself), so the benchmarks run under callgrind.

/// epoll_pwait2, or epoll_wait with the timeout rounded up where it is missing.
inline int epoll_wait_ns(int ep, epoll_event* events, int max, const timespec* timeout) {
    static bool have_pwait2 = true;
    if (have_pwait2) {
        int n = ::epoll_pwait2(ep, events, max, timeout, nullptr);
        if (n >= 0 || errno != ENOSYS)
            return n;
        have_pwait2 = false;
    }
    int ms = -1;
    if (timeout)
        ms = static_cast<int>(
            std::min<long long>(timeout->tv_sec * 1000LL + (timeout->tv_nsec + 999'999) / 1'000'000,
                                std::numeric_limits<int>::max()));
    return ::epoll_wait(ep, events, max, ms);
}

struct Args {
    long n = 0;
    int runs = 5;
    std::string impl = "all";
    std::string case_name = "all";
    std::map<std::string, std::string, std::less<>> opts; // any other `--key value`

    bool wants_impl(std::string_view i) const { return impl == "all" || impl == i; }
    bool wants_case(std::string_view c) const { return case_name == "all" || case_name == c; }
    long get(std::string_view key, long def) const {
        auto it = opts.find(key);
        return it == opts.end() ? def : std::stol(it->second);
    }
};

/// `--n N --runs R --impl I --case C`, plus any `--key value` for get().
inline Args parse(int argc, char** argv, long default_n) {
    Args a;
    a.n = default_n;
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc || std::strncmp(argv[i], "--", 2) != 0)
            throw std::invalid_argument(std::string("expected --key value, got ") + argv[i]);
        std::string key = argv[i] + 2, value = argv[i + 1];
        if (key == "n")
            a.n = std::stol(value);
        else if (key == "runs")
            a.runs = std::stoi(value);
        else if (key == "impl")
            a.impl = value;
        else if (key == "case")
            a.case_name = value;
        else
            a.opts[key] = value;
    }
    if (a.impl != "all" && a.impl != "raw" && a.impl != "xiio" && a.impl != "asio" &&
        a.impl != "uring" && a.impl != "xiio-uring")
        throw std::invalid_argument("--impl: raw, xiio, asio, uring, xiio-uring or all");
    return a;
}

/// The implementation `xiio` runs xiio on its epoll backend, `xiio-uring` the same code on
/// its io_uring backend: xiio::run() picks the backend from XIIO_BACKEND. Set for the
/// lifetime of this object (the measure() call of one implementation), then restored.
class Backend {
public:
    explicit Backend(const char* name) {
        if (const char* old = std::getenv("XIIO_BACKEND"))
            old_ = old;
        else
            had_ = false;
        ::setenv("XIIO_BACKEND", name, 1);
    }
    ~Backend() {
        if (had_)
            ::setenv("XIIO_BACKEND", old_.c_str(), 1);
        else
            ::unsetenv("XIIO_BACKEND");
    }
    Backend(const Backend&) = delete;
    Backend& operator=(const Backend&) = delete;

    /// The backend of implementation `impl` ("xiio" or "xiio-uring").
    static const char* of(std::string_view impl) noexcept {
        return impl == "xiio-uring" ? "io_uring" : "epoll";
    }

private:
    std::string old_;
    bool had_ = true;
};

/// The measured region: wall clock and, under callgrind, the counted instructions.
/// Construct it right before the work (loop creation included) and call stop() right after.
class Region {
public:
    /// `counted` false: timed, but not counted by callgrind (a warm-up).
    explicit Region(bool counted = true) noexcept : counted_(counted) {
        if (counted_)
            CALLGRIND_START_INSTRUMENTATION;
        cpu0_ = cpu_ns();
        t0_ = Clock::now();
    }
    /// Ends the region; ns of wall clock since the start.
    double stop() noexcept {
        auto t = Clock::now();
        cpu_ = cpu_ns() - cpu0_;
        if (counted_)
            CALLGRIND_STOP_INSTRUMENTATION;
        return std::chrono::duration<double, std::nano>(t - t0_).count();
    }
    /// After stop(): user + system CPU time of the process in the region, in ns.
    double cpu() const noexcept { return cpu_; }

    static double cpu_ns() noexcept {
        rusage u{};
        ::getrusage(RUSAGE_SELF, &u);
        auto ns = [](timeval t) { return t.tv_sec * 1e9 + t.tv_usec * 1e3; };
        return ns(u.ru_utime) + ns(u.ru_stime);
    }

private:
    Clock::time_point t0_;
    double cpu0_ = 0, cpu_ = 0;
    bool counted_;
};

/// Resident set size now, in KiB (from /proc/self/statm).
inline long rss_kib() {
    long pages = 0, resident = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
        if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        std::fclose(f);
    }
    return resident * (::sysconf(_SC_PAGESIZE) / 1024);
}

/// Peak resident set size of the process so far, in KiB.
inline long peak_rss_kib() {
    rusage u{};
    ::getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss;
}

/// One run's outcome: ns per operation plus named extras (bytes per op, lateness, ...).
struct Sample {
    double ns_per_op;
    std::vector<std::pair<std::string, double>> extra = {};
};

/// Runs `run()` (returning a Sample) a.runs times for one (workload, case, impl) and
/// prints a RESULT line per run and a human summary.
template <class F>
void measure(const Args& a, std::string_view workload, std::string_view case_name,
             std::string_view impl, long ops, F run) {
    std::vector<double> ns;
    for (int i = 0; i < a.runs; ++i) {
        Sample s = run();
        ns.push_back(s.ns_per_op);
        fmt::print("RESULT workload={} case={} impl={} run={} ops={} ns_per_op={:.3f}", workload,
                   case_name, impl, i, ops, s.ns_per_op);
        for (auto& [k, v] : s.extra)
            fmt::print(" {}={:.6g}", k, v);
        fmt::print("\n");
        std::fflush(stdout);
    }
    std::sort(ns.begin(), ns.end());
    fmt::print("  {} {:<6} {:<8} {:>10.1f} ns/op ({:.1f}-{:.1f}) over {} runs\n", workload,
               case_name, impl, ns[ns.size() / 2], ns.front(), ns.back(), ns.size());
    std::fflush(stdout);
}

/// Throws unless `ok`: every benchmark checks that all its work was really done.
/// Takes a C string: a std::string parameter would be built on every call, in the loop.
inline void check(bool ok, const char* what) {
    if (!ok)
        throw std::runtime_error(what);
}

} // namespace bench
