// Tutorial, step 4 (docs/tutorial.md): a toy event loop. A task type, a ready queue, an
// awaitable that registers an fd with epoll, and a loop that waits in epoll_wait and
// resumes the frame that waited. Two tasks play ping-pong over a socketpair; a sleep is
// a timerfd, waited for like any other fd. No xiio here: only <coroutine> and Linux.
#include <chrono>
#include <coroutine>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <system_error>
#include <vector>

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

using namespace std::chrono_literals;

[[noreturn]] void fail(const char* what) {
    throw std::system_error(errno, std::generic_category(), what);
}

// A task the loop owns: lazy, and kept at its final suspend point until the loop ends.
struct Task {
    struct promise_type {
        Task get_return_object() { return Task{Handle::from_promise(*this)}; }
        std::suspend_always initial_suspend() noexcept { return {}; }
        std::suspend_always final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); }
    };
    using Handle = std::coroutine_handle<promise_type>;
    Handle handle;
};

class Loop {
public:
    Loop() : epfd_(epoll_create1(EPOLL_CLOEXEC)) {
        if (epfd_ < 0)
            fail("epoll_create1");
    }
    ~Loop() {
        for (Task::Handle h : tasks_)
            h.destroy(); // the loop owns the frames
        ::close(epfd_);
    }

    void spawn(Task t) {
        tasks_.push_back(t.handle);
        ready_.push_back(t.handle);
    }

    void run() {
        for (;;) {
            while (!ready_.empty()) { // run everything that is ready...
                std::coroutine_handle<> h = ready_.front();
                ready_.pop_front();
                h.resume();
            }
            if (waiting_ == 0)
                return; // nothing can ever become ready
            // ...then sleep until the kernel reports an fd
            epoll_event events[16];
            int n = epoll_wait(epfd_, events, 16, -1);
            if (n < 0 && errno != EINTR)
                fail("epoll_wait");
            for (int i = 0; i < n; ++i) { // the frame that waits is in the event
                ready_.push_back(std::coroutine_handle<>::from_address(events[i].data.ptr));
                --waiting_;
            }
        }
    }

    // co_await loop.readable(fd): suspends until fd can be read without blocking.
    struct Readable {
        Loop& loop;
        int fd;

        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<> h) {
            epoll_event ev{};
            ev.events = EPOLLIN | EPOLLONESHOT; // report once, then stay quiet
            ev.data.ptr = h.address();          // who to resume
            if (epoll_ctl(loop.epfd_, EPOLL_CTL_ADD, fd, &ev) < 0)
                fail("epoll_ctl");
            ++loop.waiting_;
        }
        void await_resume() { epoll_ctl(loop.epfd_, EPOLL_CTL_DEL, fd, nullptr); }
    };
    Readable readable(int fd) { return Readable{*this, fd}; }

    // co_await loop.sleep(d): a timerfd becomes readable when it expires.
    struct Sleep : Readable {
        Sleep(Loop& loop, std::chrono::milliseconds d)
            : Readable{loop, timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC)} {
            itimerspec when{};
            when.it_value.tv_sec = d.count() / 1000;
            when.it_value.tv_nsec = d.count() % 1000 * 1'000'000;
            if (fd < 0 || timerfd_settime(fd, 0, &when, nullptr) < 0)
                fail("timerfd");
        }
        Sleep(const Sleep&) = delete; // one owner for the timerfd
        ~Sleep() { ::close(fd); }
    };
    Sleep sleep(std::chrono::milliseconds d) { return Sleep(*this, d); }

private:
    int epfd_;
    int waiting_ = 0;                           // frames registered with epoll
    std::deque<std::coroutine_handle<>> ready_; // frames to resume, in order
    std::vector<Task::Handle> tasks_;
};

void send(int fd, const char* text) {
    if (::write(fd, text, std::strlen(text)) < 0)
        fail("write");
}

Task pinger(Loop& loop, int fd) {
    std::printf("pinger: sleeping 50 ms\n");
    co_await loop.sleep(50ms);
    for (int i = 1; i <= 3; ++i) {
        std::printf("pinger: ping %d\n", i);
        send(fd, "ping");
        co_await loop.readable(fd);
        char buf[16];
        ssize_t n = ::read(fd, buf, sizeof buf);
        std::printf("pinger: got %.*s\n", static_cast<int>(n), buf);
    }
    ::shutdown(fd, SHUT_WR); // the ponger reads end of stream
}

Task ponger(Loop& loop, int fd) {
    for (;;) {
        std::printf("ponger: waiting\n");
        co_await loop.readable(fd);
        char buf[16];
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n <= 0)
            break;
        std::printf("ponger: got %.*s, answering\n", static_cast<int>(n), buf);
        send(fd, "pong");
    }
    std::printf("ponger: end of stream\n");
}

int main() {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0)
        fail("socketpair");
    {
        Loop loop;
        loop.spawn(ponger(loop, fds[1]));
        loop.spawn(pinger(loop, fds[0]));
        loop.run();
    }
    ::close(fds[0]);
    ::close(fds[1]);
}
