// The original's README example: read two names from stdin under a timeout, then greet both
// concurrently, each after len(name) / 10 seconds.
//
//   printf 'Alice\nBob\n' | ./greet     # Bob is greeted first: his name is shorter
#include <xiio.hpp>

#include <cstdio>
#include <string>
#include <utility>

#include <unistd.h>

using namespace std::chrono_literals;

// One line from stdin; what came after the newline stays in `buffer` for the next call.
xiio::Task<std::string> read_line(std::string& buffer) {
    for (;;) {
        if (auto nl = buffer.find('\n'); nl != std::string::npos) {
            std::string line = buffer.substr(0, nl);
            buffer.erase(0, nl + 1);
            co_return line;
        }
        std::string chunk = co_await xiio::read(STDIN_FILENO, 32);
        if (chunk.empty()) // end of input: the rest is the last line
            co_return std::exchange(buffer, {});
        buffer += chunk;
    }
}

xiio::Task<void> greet(std::string name) {
    co_await xiio::sleep(100ms * name.size());
    std::printf("Hello, %s!\n", name.c_str());
    std::fflush(stdout);
}

xiio::Task<void> main_task() {
    std::string buffer, name1, name2;
    auto read_names = [&]() -> xiio::Task<void> {
        name1 = co_await read_line(buffer);
        name2 = co_await read_line(buffer);
    };
    co_await xiio::timeout(10s, read_names);
    co_await xiio::gather(greet(name1), greet(name2));
}

int main() {
    try {
        xiio::run(main_task());
    } catch (const xiio::TimeoutError&) {
        std::fputs("no names within 10 s\n", stderr);
        return 1;
    }
}
