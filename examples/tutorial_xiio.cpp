// Tutorial, last step (docs/tutorial.md): the toy loop's ping-pong (tutorial_toy_loop.cpp)
// written with xiio. Same tasks, same output; the loop, the awaitables and the frames'
// ownership are xiio's.
#include <xiio.hpp>

#include <cerrno>
#include <cstdio>
#include <string>
#include <system_error>

#include <sys/socket.h>

using namespace std::chrono_literals;

xiio::Task<void> pinger(xiio::Fd& fd) {
    std::printf("pinger: sleeping 50 ms\n");
    co_await xiio::sleep(50ms);
    for (int i = 1; i <= 3; ++i) {
        std::printf("pinger: ping %d\n", i);
        co_await xiio::writeall(fd, "ping");
        std::string reply = co_await xiio::read(fd, 16);
        std::printf("pinger: got %s\n", reply.c_str());
    }
    ::shutdown(fd.get(), SHUT_WR); // the ponger reads end of stream
}

xiio::Task<void> ponger(xiio::Fd& fd) {
    for (;;) {
        std::printf("ponger: waiting\n");
        std::string request = co_await xiio::read(fd, 16);
        if (request.empty())
            break;
        std::printf("ponger: got %s, answering\n", request.c_str());
        co_await xiio::writeall(fd, "pong");
    }
    std::printf("ponger: end of stream\n");
}

xiio::Task<void> main_task() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
        throw std::system_error(errno, std::generic_category(), "socketpair");
    xiio::Fd left(fds[0]), right(fds[1]); // owned: closed when main_task ends
    co_await xiio::gather(ponger(right), pinger(left));
}

int main() {
    xiio::run(main_task());
}
