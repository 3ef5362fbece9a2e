#pragma once
// Buffered reading: StreamReader (lines, delimited records, exact byte counts) over a
// Socket or an Fd, and LimitOverrunError.
//
// The reader owns one buffer of at most `limit` bytes and fills it in chunks of up to
// 16 KiB with the ordinary primitives (Socket::recv, xiio::read), so the fd behaves as
// everywhere else in xiio. Every call is a Task: cancelling it (timeout, move_on_after)
// loses nothing, since bytes are only ever moved from the fd into the buffer, and a call
// takes them out of the buffer only when it returns.

#include <xiio/errors.hpp>
#include <xiio/io.hpp>
#include <xiio/net.hpp>
#include <xiio/task.hpp>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace xiio {

/// Thrown by StreamReader::read_line and read_until when no delimiter came within `limit`
/// bytes; what() names the limit.
class LimitOverrunError : public std::length_error {
public:
    explicit LimitOverrunError(std::size_t limit)
        : std::length_error("xiio: no delimiter within the limit of " + std::to_string(limit) +
                            " bytes") {}
};

/// Buffered reading from a Socket or an Fd, which must outlive the reader (it keeps a
/// reference). Never holds more than `limit` bytes. Move-only; not while a call runs.
/// One call at a time, on the loop of the fd, like the fd's own I/O.
class StreamReader {
public:
    explicit StreamReader(Socket& s, std::size_t limit = 64 * 1024)
        : socket_(&s), limit_(checked(limit)) {}
    explicit StreamReader(const Fd& fd, std::size_t limit = 64 * 1024)
        : fd_(&fd), limit_(checked(limit)) {}
    StreamReader(StreamReader&&) noexcept = default;
    StreamReader& operator=(StreamReader&&) noexcept = default;

    /// The next line without its "\n" or "\r\n"; a last line without "\n" is returned as
    /// is at end of file, then std::nullopt. LimitOverrunError if the line and its "\n"
    /// do not fit in `limit` bytes.
    template <class = detail::OnlyWhereUsed>
    Task<std::optional<std::string>> read_line() {
        return read_until_impl("\n", true);
    }

    /// The bytes up to `delimiter`, without it (the delimiter is consumed); at end of file
    /// the rest without a delimiter, if any, then std::nullopt. LimitOverrunError if the
    /// record and its delimiter do not fit in `limit` bytes; std::invalid_argument for an
    /// empty delimiter. The delimiter is copied: a temporary may be passed.
    template <class = detail::OnlyWhereUsed>
    Task<std::optional<std::string>> read_until(std::string_view delimiter) {
        if (delimiter.empty())
            throw std::invalid_argument("xiio: StreamReader::read_until: empty delimiter");
        return read_until_impl(std::string(delimiter), false);
    }

    /// Exactly n bytes, from the buffer first. At end of file: IncompleteReadError, and the
    /// `partial` bytes read stay buffered (read_exactly(e.partial) returns them at once).
    /// n may exceed `limit`: what the buffer lacks is then read straight into the result.
    template <class = detail::OnlyWhereUsed>
    Task<std::string> read_exactly(std::size_t n) {
        if (n > limit_ && n > size())
            return read_large(n);
        return read_small(n);
    }

    /// The bytes read from the fd that no call returned yet.
    std::size_t buffered() const noexcept { return size(); }

private:
    static constexpr std::size_t chunk = 16 * 1024;

    static std::size_t checked(std::size_t limit) {
        if (limit == 0)
            throw std::invalid_argument("xiio: StreamReader: limit must be at least 1");
        return limit;
    }

    std::size_t size() const noexcept { return end_ - begin_; }
    const char* data() const noexcept { return buf_.get() + begin_; }
    void consume(std::size_t n) noexcept {
        begin_ += n;
        if (begin_ == end_)
            begin_ = end_ = 0;
    }
    std::string take(std::size_t n) {
        std::string s(data(), n);
        consume(n);
        return s;
    }

    /// One read or recv into [p, p + n): the number of bytes, 0 at end of file.
    template <class = detail::OnlyWhereUsed>
    Task<std::size_t> read_some(char* p, std::size_t n) {
        if (socket_)
            co_return co_await socket_->recv(std::span<char>(p, n));
        co_return co_await xiio::read(*fd_, std::span<char>(p, n));
    }

    /// Reads once more into the buffer (up to a chunk, never beyond `limit` bytes
    /// buffered); 0 at end of file. Requires size() < limit_.
    template <class = detail::OnlyWhereUsed>
    Task<std::size_t> fill() {
        std::size_t want = std::min(chunk, limit_ - size());
        if (cap_ - end_ < want) {
            if (begin_ > 0) { // slide the unread bytes to the front
                std::memmove(buf_.get(), data(), size());
                end_ -= begin_;
                begin_ = 0;
            }
            // Grows (at most to the limit) only when less than half a read's worth is free:
            // a long line doubles the buffer a few times, short ones never do.
            if (cap_ - end_ < (want + 1) / 2) {
                std::size_t cap = std::min(limit_, std::max(cap_ * 2, end_ + want));
                auto bigger = std::make_unique_for_overwrite<char[]>(cap);
                if (end_ > 0)
                    std::memcpy(bigger.get(), buf_.get(), end_);
                buf_ = std::move(bigger);
                cap_ = cap;
            }
        }
        std::size_t n =
            co_await read_some(buf_.get() + end_, std::min(cap_ - end_, limit_ - size()));
        end_ += n;
        co_return n;
    }

    template <class = detail::OnlyWhereUsed>
    Task<std::optional<std::string>> read_until_impl(std::string delim, bool line) {
        std::size_t scanned = 0; // from data(): no delimiter starts before this
        for (;;) {
            std::string_view have(data(), size());
            if (std::size_t at = have.find(delim, scanned); at != std::string_view::npos) {
                std::size_t len = at;
                if (line && len > 0 && have[len - 1] == '\r')
                    --len;
                std::string s(data(), len);
                consume(at + delim.size());
                co_return s;
            }
            if (size() >= limit_) {
                // Discards what is buffered but the tail that may begin a delimiter: the
                // next call returns the rest of the over-long record.
                consume(size() - std::min(size(), delim.size() - 1));
                throw LimitOverrunError(limit_);
            }
            scanned = size() >= delim.size() ? size() - delim.size() + 1 : 0;
            std::size_t got = co_await fill();
            if (got == 0) { // end of file
                if (size() == 0)
                    co_return std::nullopt;
                std::size_t len = size();
                if (line && data()[len - 1] == '\r')
                    --len;
                std::string s(data(), len);
                consume(size());
                co_return s;
            }
        }
    }

    // Awaits go into a local first: g++ 12 never ran this body when it was
    // `while (...) if (co_await fill() == 0) throw ...;`.
    template <class = detail::OnlyWhereUsed>
    Task<std::string> read_small(std::size_t n) {
        while (size() < n) {
            std::size_t got = co_await fill();
            if (got == 0)
                throw IncompleteReadError(size(), n);
        }
        co_return take(n);
    }

    template <class = detail::OnlyWhereUsed>
    Task<std::string> read_large(std::size_t n) {
        std::string out(data(), size());
        begin_ = end_ = 0;
        std::size_t got = out.size();
        out.resize(n);
        try {
            while (got < n) {
                std::size_t r = co_await read_some(out.data() + got, n - got);
                if (r == 0)
                    throw IncompleteReadError(got, n);
                got += r;
            }
        } catch (...) { // cancelled, failed or short: the bytes go back into the buffer
            put_back(out.data(), got);
            throw;
        }
        co_return out;
    }

    /// After read_large took everything: the buffer holds [p, p + n) again (beyond
    /// `limit` if need be, until calls consume it).
    void put_back(const char* p, std::size_t n) noexcept {
        if (n > cap_) {
            auto room = std::unique_ptr<char[]>(new (std::nothrow) char[n]);
            if (!room)
                return; // out of memory: the bytes are lost, never the process
            buf_ = std::move(room);
            cap_ = n;
        }
        if (n > 0)
            std::memcpy(buf_.get(), p, n);
        begin_ = 0;
        end_ = n;
    }

    Socket* socket_ = nullptr;
    const Fd* fd_ = nullptr;
    std::size_t limit_;
    std::unique_ptr<char[]> buf_;
    std::size_t cap_ = 0, begin_ = 0, end_ = 0; // the unread bytes are [begin_, end_)
};

} // namespace xiio
