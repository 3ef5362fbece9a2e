#pragma once
// W4's cases c1, c100, c1000: the echo server under test in this process, on `--loops N`
// threads (one loop and one SO_REUSEPORT listener each), and C clients in a separate
// process (this binary again, `--clients-only`): a fixed raw epoll client, the same for
// every server implementation, so that only the server differs.
//
// The client process tells the server side through a pipe when every client is connected
// ("C") and when every echo came back and was checked ("D <requests>"). The measured
// region is between the two: the server's wall time, and its CPU time (getrusage of this
// process: the server loops; the coordinating thread only sleeps in poll) per request.
// The client process is bounded by alarm(); the server side waits for it with poll
// timeouts, kills it on any error and always reaps it.
#include "common.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

namespace remote {

constexpr std::size_t msg_size = 64;
constexpr int time_limit_s = 120; // of one run: the client's alarm and the server's patience

[[noreturn]] inline void fail(const char* what) {
    throw std::runtime_error(std::string(what) + ": " + std::strerror(errno));
}

/// Owns an fd.
class UniqueFd {
public:
    explicit UniqueFd(int fd = -1) noexcept : fd_(fd) {}
    UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    UniqueFd& operator=(UniqueFd&& o) noexcept {
        std::swap(fd_, o.fd_);
        return *this;
    }
    ~UniqueFd() {
        if (fd_ >= 0)
            ::close(fd_);
    }
    int get() const noexcept { return fd_; }
    int release() noexcept { return std::exchange(fd_, -1); }

private:
    int fd_;
};

/// Raises the soft RLIMIT_NOFILE to at least `need`; throws (saying so) if the hard limit
/// is lower.
inline void raise_nofile(long need, const char* who) {
    rlimit r{};
    ::getrlimit(RLIMIT_NOFILE, &r);
    if (r.rlim_cur != RLIM_INFINITY && r.rlim_cur < static_cast<rlim_t>(need)) {
        if (r.rlim_max != RLIM_INFINITY && r.rlim_max < static_cast<rlim_t>(need))
            throw std::runtime_error(fmt::format(
                "{} needs {} open files but RLIMIT_NOFILE's hard limit is {}: raise it (ulimit "
                "-Hn as root, or limits.conf) or run fewer clients",
                who, need, r.rlim_max));
        r.rlim_cur = static_cast<rlim_t>(need);
        if (::setrlimit(RLIMIT_NOFILE, &r) < 0)
            fail("setrlimit RLIMIT_NOFILE");
    }
}

/// Request i of client `id`: distinct per (client, i).
inline std::array<char, msg_size> request(int id, int i) {
    std::array<char, msg_size> m;
    m.fill('.');
    std::uint32_t v[2] = {static_cast<std::uint32_t>(id), static_cast<std::uint32_t>(i)};
    std::memcpy(m.data(), v, sizeof v);
    return m;
}

inline void write_all(int fd, const std::string& s) {
    if (::write(fd, s.data(), s.size()) != static_cast<ssize_t>(s.size()))
        fail("clients: write to the status pipe");
}

// ---- the client process --------------------------------------------------------------------

/// `bench_echo --clients-only FD --port P --clients C --requests R`: connects C clients to
/// 127.0.0.1:P, writes "C\n" to FD, then has each do R requests (send 64 bytes, read the
/// echo, check it) and close, and writes "D <requests>\n". One epoll loop, level-triggered;
/// a client reads only once epoll says its echo is there and sends the next request at
/// once: per request a send, a recv and a share of an epoll_wait.
inline int clients_main(int status_fd, std::uint16_t port, int clients, int requests) {
    ::alarm(time_limit_s); // dies (SIGALRM) rather than outlive a stuck server
    raise_nofile(clients + 16L, "the client process");
    struct Client {
        int fd = -1, id = 0, done = 0;
        bool connected = false;
        std::size_t got = 0;
        std::array<char, msg_size> sent, in;
    };
    UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
    std::vector<Client> cs(static_cast<std::size_t>(clients));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    auto ctl = [&](Client& c, int op, unsigned events) {
        epoll_event ev{};
        ev.events = events;
        ev.data.ptr = &c;
        if (::epoll_ctl(ep.get(), op, c.fd, &ev) < 0)
            fail("clients: epoll_ctl");
    };
    int one = 1;
    for (int i = 0; i < clients; ++i) {
        Client& c = cs[static_cast<std::size_t>(i)];
        c.id = i;
        c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c.fd < 0)
            fail("clients: socket");
        ::setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (::connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 &&
            errno != EINPROGRESS)
            fail("clients: connect");
        ctl(c, EPOLL_CTL_ADD, EPOLLOUT);
    }
    std::array<epoll_event, 256> events;
    auto wait = [&] {
        int n = ::epoll_wait(ep.get(), events.data(), static_cast<int>(events.size()), -1);
        if (n < 0 && errno != EINTR)
            fail("clients: epoll_wait");
        return std::max(n, 0);
    };
    for (int pending = clients; pending > 0;) {
        int n = wait();
        for (int i = 0; i < n; ++i) {
            auto& c = *static_cast<Client*>(events[i].data.ptr);
            int err = 0;
            socklen_t len = sizeof err;
            ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) {
                errno = err;
                fail("clients: connect");
            }
            c.connected = true;
            ctl(c, EPOLL_CTL_MOD, EPOLLIN);
            --pending;
        }
    }
    write_all(status_fd, "C\n");
    auto send_request = [](Client& c) {
        c.sent = request(c.id, c.done);
        c.got = 0;
        // 64 bytes into an empty socket buffer: a short write would be a broken socket.
        if (::send(c.fd, c.sent.data(), msg_size, MSG_NOSIGNAL) != static_cast<ssize_t>(msg_size))
            fail("clients: send");
    };
    for (auto& c : cs)
        send_request(c);
    long ok = 0;
    for (int open = clients; open > 0;) {
        int n = wait();
        for (int i = 0; i < n; ++i) {
            auto& c = *static_cast<Client*>(events[i].data.ptr);
            if (c.fd < 0)
                continue;
            ssize_t r = ::recv(c.fd, c.in.data() + c.got, msg_size - c.got, 0);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    continue;
                fail("clients: recv");
            }
            if (r == 0)
                throw std::runtime_error("clients: recv: early end of stream");
            c.got += static_cast<std::size_t>(r);
            if (c.got < msg_size)
                continue;
            bench::check(c.in == c.sent, "clients: wrong echo");
            ++ok;
            if (++c.done == requests) {
                ::close(std::exchange(c.fd, -1)); // the server reads end of stream
                --open;
            } else {
                send_request(c);
            }
        }
    }
    write_all(status_fd, fmt::format("D {}\n", ok));
    return 0;
}

// ---- the server side -----------------------------------------------------------------------

/// One server loop: serves the connections that `listener` accepts (an SO_REUSEPORT
/// socket of its own, non-blocking) until `stop` (an eventfd) becomes readable.
using ServeFn = std::function<void(int listener, int stop)>;

/// The client process, killed and reaped unless wait() reaped it.
class ClientProcess {
public:
    ClientProcess(const std::string& self, int status_fd, std::uint16_t port, int clients,
                  int requests) {
        std::vector<std::string> args = {self,
                                         "--clients-only",
                                         "3",
                                         "--port",
                                         std::to_string(port),
                                         "--clients",
                                         std::to_string(clients),
                                         "--requests",
                                         std::to_string(requests)};
        std::vector<char*> argv;
        for (auto& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        // posix_spawn: fork and exec without running anything of ours in between (the
        // server threads are already running). The status pipe becomes its fd 3.
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, status_fd, 3);
        int err = ::posix_spawn(&pid_, self.c_str(), &fa, nullptr, argv.data(), environ);
        posix_spawn_file_actions_destroy(&fa);
        if (err) {
            errno = err;
            fail("posix_spawn of the client process");
        }
    }
    ~ClientProcess() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
    }
    ClientProcess(const ClientProcess&) = delete;
    ClientProcess& operator=(const ClientProcess&) = delete;

    pid_t pid() const noexcept { return pid_; }
    /// Reaps it (it exits right after its last line; its alarm bounds the wait). Returns
    /// its user + system CPU time in ns (its whole life, connecting included).
    double wait() {
        int status = 0;
        rusage u{};
        while (::wait4(pid_, &status, 0, &u) < 0)
            if (errno != EINTR)
                fail("wait4");
        pid_ = -1;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            throw std::runtime_error(fmt::format("the client process failed (status {:#x})",
                                                 static_cast<unsigned>(status)));
        auto ns = [](timeval t) { return t.tv_sec * 1e9 + t.tv_usec * 1e3; };
        return ns(u.ru_utime) + ns(u.ru_stime);
    }

private:
    pid_t pid_ = -1;
};

/// The next line from the client process, waiting at most time_limit_s; throws if a
/// server loop failed meanwhile (`failed` readable) or the client process ended without it.
inline std::string read_line(int fd, std::string& buf, int failed) {
    for (;;) {
        if (auto nl = buf.find('\n'); nl != std::string::npos) {
            std::string line = buf.substr(0, nl);
            buf.erase(0, nl + 1);
            return line;
        }
        pollfd p[2] = {{fd, POLLIN, 0}, {failed, POLLIN, 0}};
        int n = ::poll(p, 2, time_limit_s * 1000);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail("poll");
        if (n == 0)
            throw std::runtime_error("no word from the client process in time");
        if (p[1].revents)
            throw std::runtime_error("a server loop failed");
        char chunk[256];
        ssize_t r = ::read(fd, chunk, sizeof chunk);
        if (r < 0 && errno != EINTR)
            fail("read from the client process");
        if (r == 0)
            throw std::runtime_error("the client process ended early (see its error above)");
        if (r > 0)
            buf.append(chunk, static_cast<std::size_t>(r));
    }
}

/// A listening TCP socket on 127.0.0.1:port with SO_REUSEPORT (port 0: a free one).
inline UniqueFd reuseport_listener(std::uint16_t& port) {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (fd.get() < 0)
        fail("socket");
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        fail("setsockopt SO_REUSEPORT");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    socklen_t len = sizeof addr;
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) < 0 ||
        ::listen(fd.get(), 4096) < 0 ||
        ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) < 0)
        fail("listen");
    port = ntohs(addr.sin_port);
    return fd;
}

/// One run: `loops` server loops running `serve`, the client process, the region.
inline bench::Sample run(const ServeFn& serve, const std::string& self, int clients, int requests,
                         int loops) {
    raise_nofile(clients + 64L + loops, "the server");
    std::uint16_t port = 0;
    std::vector<UniqueFd> listeners;
    for (int i = 0; i < loops; ++i)
        listeners.push_back(reuseport_listener(port));
    UniqueFd stop(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    UniqueFd failed(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    int pipe_fds[2];
    if (stop.get() < 0 || failed.get() < 0 || ::pipe2(pipe_fds, O_CLOEXEC) < 0)
        fail("eventfd/pipe");
    UniqueFd status(pipe_fds[0]), status_w(pipe_fds[1]);
    auto signal = [](int fd) {
        std::uint64_t one = 1;
        [[maybe_unused]] auto r = ::write(fd, &one, sizeof one);
    };
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(loops));
    std::vector<std::thread> threads;
    auto stop_all = [&] {
        signal(stop.get());
        for (auto& t : threads)
            t.join();
        threads.clear();
    };
    double ns = 0, cpu = 0, client_cpu = 0;
    long ok = 0;
    try {
        for (int i = 0; i < loops; ++i)
            threads.emplace_back([&, i] {
                try {
                    serve(listeners[static_cast<std::size_t>(i)].get(), stop.get());
                } catch (...) {
                    errors[static_cast<std::size_t>(i)] = std::current_exception();
                    signal(failed.get());
                }
            });
        ClientProcess child(self, status_w.get(), port, clients, requests);
        status_w = UniqueFd(); // ours closed: EOF once the child is gone
        std::string buf;
        if (read_line(status.get(), buf, failed.get()) != "C")
            throw std::runtime_error("the client process said something unexpected");
        bench::Region region;
        std::string done = read_line(status.get(), buf, failed.get());
        ns = region.stop();
        cpu = region.cpu();
        if (std::sscanf(done.c_str(), "D %ld", &ok) != 1)
            throw std::runtime_error("the client process said something unexpected");
        client_cpu = child.wait();
    } catch (...) {
        stop_all();
        for (auto& e : errors) // a server loop's error says more than ours
            if (e)
                std::rethrow_exception(e);
        throw;
    }
    stop_all();
    for (auto& e : errors)
        if (e)
            std::rethrow_exception(e);
    bench::check(ok == static_cast<long>(clients) * requests, "missing echoes");
    double per = ns / static_cast<double>(ok);
    return {per,
            {{"requests_per_s", 1e9 / per},
             {"cpu_ns_per_op", cpu / static_cast<double>(ok)},
             {"client_cpu_ns_per_op", client_cpu / static_cast<double>(ok)},
             {"loops", loops}}};
}

} // namespace remote
