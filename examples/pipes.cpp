// Fds and exact reads and writes over a pipe: a writer task sends length-prefixed
// messages with writeall, a reader takes each with two read_exactly calls (the 4-byte
// length, then the body), and a message cut short by the writer closing its end shows
// IncompleteReadError and its `partial` count. Every fd is an xiio::Fd: closed when the
// Fd goes, which is also how the reader sees end of file.
//
//   ./pipes
#include <xiio.hpp>

#include <fmt/core.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <cerrno>
#include <fcntl.h>
#include <unistd.h>

// Both ends of a new pipe, owned (close-on-exec: a child process would not inherit them).
std::pair<xiio::Fd, xiio::Fd> make_pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) < 0)
        throw std::system_error(errno, std::system_category(), "pipe2");
    return {xiio::Fd(fds[0]), xiio::Fd(fds[1])};
}

// A message: its length as 4 bytes (big-endian), then its bytes.
std::string frame(const std::string& body) {
    auto n = static_cast<std::uint32_t>(body.size());
    std::string out{char(n >> 24), char(n >> 16 & 0xff), char(n >> 8 & 0xff), char(n & 0xff)};
    return out + body;
}

// Takes the write end by value: when the task ends, the Fd closes and the reader sees end
// of file. The last message promises 10 bytes but brings 4.
xiio::Task<void> writer(xiio::Fd out) {
    co_await xiio::writeall(out, frame("hello"));
    co_await xiio::writeall(out, frame(std::string(1 << 20, 'x'))); // 16 pipe buffers' worth
    co_await xiio::writeall(out, frame("pipes"));
    std::string cut = frame("truncated!").substr(0, 4 + 4);
    co_await xiio::writeall(out, cut);
}

xiio::Task<void> reader(xiio::Fd in) {
    for (;;) {
        char header[4];
        co_await xiio::read_exactly(in, header); // throws IncompleteReadError at end of file
        std::uint32_t n = 0;
        for (char c : header)
            n = n << 8 | static_cast<unsigned char>(c);
        std::vector<char> body(n);
        try {
            co_await xiio::read_exactly(in, body);
        } catch (const xiio::IncompleteReadError& e) {
            fmt::print("incomplete message: {} of {} bytes arrived (\"{}\") before end of file\n",
                       e.partial, n, std::string(body.data(), e.partial));
            co_return;
        }
        if (n > 64)
            fmt::print("message of {} bytes\n", n);
        else
            fmt::print("message of {} bytes: {}\n", n, std::string(body.data(), n));
    }
}

int main() {
    try {
        auto [in, out] = make_pipe();
        // Both run at once: the 1 MiB message fills the pipe, and writeall waits until
        // the reader drains it.
        xiio::run(xiio::gather(writer(std::move(out)), reader(std::move(in))));
    } catch (const std::exception& e) {
        fmt::print(stderr, "pipes: {}\n", e.what());
        return 1;
    }
    return 0;
}
