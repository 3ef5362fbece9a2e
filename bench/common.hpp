#pragma once
// What every benchmark shares: arguments, repeated measurement, one table row per
// implementation with its ratios to the raw baseline and to xiio.
#include <fmt/core.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

namespace bench {

struct Args {
    long n;
    int runs = 5;
};

/// `--n N --runs R`.
inline Args parse(int argc, char** argv, long default_n) {
    Args a{default_n};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--n"))
            a.n = std::stol(argv[i + 1]);
        else if (!std::strcmp(argv[i], "--runs"))
            a.runs = std::stoi(argv[i + 1]);
    }
    return a;
}

struct Stats {
    double median, min, max;
};

/// Runs `f` (returning ns per operation) `runs` times.
template <class F>
Stats measure(int runs, F f) {
    std::vector<double> ns;
    for (int i = 0; i < runs; ++i)
        ns.push_back(f());
    std::sort(ns.begin(), ns.end());
    return {ns[ns.size() / 2], ns.front(), ns.back()};
}

/// `name  median ns (min-max)  extra  raw xR  [xiio/this xX]`.
inline void row(const char* name, const Stats& s, const Stats& raw, const Stats* xiio,
                const std::string& extra = {}) {
    fmt::print("  {:<6} {:>9.1f} ns ({:.1f}-{:.1f}) {}  raw x{:.2f}", name, s.median, s.min, s.max,
               extra, s.median / raw.median);
    if (xiio)
        fmt::print("   xiio/this {:.2f}", xiio->median / s.median);
    fmt::print("\n");
}

} // namespace bench
