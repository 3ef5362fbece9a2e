// The packaging tests' consumer of xiio::tls: exits 0 if a client context with ALPN can be
// made (OpenSSL found and linked through the installed or added target). No network.
#include <xiio/tls.hpp>

int main() {
    xiio::TlsContext ctx = xiio::TlsContext::client();
    ctx.set_alpn({"h2", "http/1.1"});
    return ctx.native_handle() ? 0 : 1;
}
