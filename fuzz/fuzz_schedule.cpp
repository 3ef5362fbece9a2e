// libFuzzer target: the fuzzer's bytes choose a task tree (tests/torture.hpp), which is run
// on xiio and checked against the model of the reference, exactly as tests/test_torture.cpp does
// with seeded trees. A mismatch, a hang, a leaked frame/runner/registration/timer or fd
// prints the tree and aborts; ASan and UBSan catch the rest. See fuzz/README.md.
#include "torture.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    torture::BytesChooser ch(data, size);
    torture::Config cfg;
    // Bounded: at most 16 nodes, sleeps of at most 500 us, no subprocesses (a fork per
    // input is slow under ASan): an input runs in a few milliseconds.
    cfg.max_nodes = 16;
    cfg.max_sleep_us = 500;
    cfg.processes = false;
    cfg.watchdog_ms = 5000;
    torture::Tree tree = torture::generate(ch, cfg);
    std::uint64_t inject_seed = ch.below(~std::uint64_t{0});
    torture::Result r = torture::check_tree(tree, cfg, inject_seed);
    if (!r.error.empty()) {
        std::fprintf(stderr, "xiio_fuzz_schedule: the tree did not behave as predicted:\n%s%s",
                     r.error.c_str(), torture::dump(tree).c_str());
        std::fflush(stderr);
        std::abort();
    }
    return 0;
}
