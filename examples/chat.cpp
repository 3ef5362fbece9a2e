// A line-based chat server: every line a client sends goes to all the other clients.
// Each client has an outbox (a Queue<std::string>) drained by its own writer task; a
// sender waits only while the outbox of a lagging client is full.
//
//   ./chat --port 7001      then connect with several `nc 127.0.0.1 7001`
#include <xiio.hpp>

#include <fmt/core.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <set>
#include <string>

using Outbox = xiio::Queue<std::string>;
using Room = std::set<std::shared_ptr<Outbox>>;

// Membership of the room for as long as a client is connected (however it ends).
struct Member {
    Room& room;
    std::shared_ptr<Outbox> outbox = std::make_shared<Outbox>(64);
    explicit Member(Room& r) : room(r) { room.insert(outbox); }
    ~Member() {
        room.erase(outbox);
        outbox->close(); // senders waiting on it get ClosedError
    }
};

// Sends what the client's outbox holds until the outbox is closed.
xiio::Task<void> writer(xiio::Socket& s, Outbox& outbox) {
    while (auto line = co_await outbox.get())
        co_await s.send_all(*line);
}

// Sends `text` to every other member of the room, waiting while one of them lags.
xiio::Task<void> broadcast(Room& room, std::shared_ptr<Outbox> me, std::string text) {
    Room others = room; // a snapshot: members may leave while we wait
    others.erase(me);
    for (const auto& other : others) {
        try {
            co_await other->put(text); // waits while that client lags
        } catch (const xiio::ClosedError&) {
        } // that client left
    }
}

// A client's error (a reset, a line over 4 KiB) ends that client only: thrown out of
// client(), it would make the server's group cancel everyone. CancelledError is no
// std::exception: it goes on. A last line without "\n" before the client closes is sent too.
xiio::Task<void> client(xiio::Socket s, Room& room, int id) {
    Member me(room);
    auto body = [&](xiio::TaskGroup& tg) -> xiio::Task<void> {
        tg.add_task(writer(s, *me.outbox));
        xiio::StreamReader reader(s, 4096); // a longer line: LimitOverrunError
        while (auto line = co_await reader.read_line())
            co_await broadcast(room, me.outbox, fmt::format("[{}] {}\n", id, *line));
        me.outbox->close(); // the writer drains it, then ends
    };
    try {
        co_await xiio::task_group(body);
    } catch (const std::exception& e) {
        fmt::print(stderr, "chat: client {}: {}\n", id, e.what());
    }
}

xiio::Task<void> chat(std::uint16_t port) {
    auto listener = xiio::Listener::tcp("127.0.0.1", port);
    fmt::print("chat on port {}\n", listener.port());
    std::fflush(stdout);
    Room room;
    // Not a coroutine: it makes the client's task; serve keeps it (and its count) alive.
    auto handler = [&room, id = 0](xiio::Socket s) mutable {
        return client(std::move(s), room, ++id);
    };
    xiio::ServeOptions options;
    options.on_error = [](const xiio::Address&, std::exception_ptr error) {
        try { // client() reports its own errors: only accept's back-off gets here
            std::rethrow_exception(error);
        } catch (const std::exception& e) {
            fmt::print(stderr, "chat: {}; retrying every 100 ms\n", e.what());
        }
    };
    co_await xiio::serve(listener, handler, options);
}

int main(int argc, char** argv) {
    std::uint16_t port = 0;
    if (argc == 3 && std::strcmp(argv[1], "--port") == 0)
        port = static_cast<std::uint16_t>(std::atoi(argv[2]));
    try {
        xiio::run(chat(port));
    } catch (const std::exception& e) {
        fmt::print(stderr, "chat: {}\n", e.what());
        return 1;
    }
}
