#pragma once
// A fixture of tests/docs_check.py: a header with one public name the fixture's
// reference does not document (Widget::frobnicate). Never compiled.

namespace xiio {

/// Documented.
class Widget {
public:
    Widget() = default;
    int documented() const { return 1; }
    void frobnicate(); // not in docs/reference.md: the check must name it

private:
    void hidden(); // private: no entry needed
};

namespace detail {
inline void internal() {} // detail: no entry needed
} // namespace detail

} // namespace xiio
