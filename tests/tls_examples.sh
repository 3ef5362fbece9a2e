#!/bin/sh
# shellcheck disable=SC2086 # $ec (the openssl key options) is several words on purpose
# Runs a TLS example against a real peer with a throwaway CA and a certificate for
# localhost, made here in a temporary directory:
#   tls_examples.sh https_get <path to https_get>
#       openssl s_server -www on a free port; https_get fetches / from it by the name
#       localhost (resolved, Happy Eyeballs) with --cafile; prints what https_get printed.
#   tls_examples.sh tls_client <path to tls_client>
#       openssl s_server -rev on a free port; tls_client sends a line to 127.0.0.1 and
#       prints the reversed answer.
#   tls_examples.sh tls_echo_server <path to tls_echo_server>
#       starts the server on a free port, sends a line through openssl s_client, prints
#       "echoed: <line>", sends SIGINT and prints the server's output and exit status.
# Every wait is bounded: polling loops of at most 5 s, clients under `timeout 10`.
set -eu
mode=$1
program=$2
dir=$(mktemp -d)
pids=
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"
ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj /CN=example-ca 2>/dev/null
openssl req $ec -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
    -days 2 -extfile ext.cnf 2>/dev/null

# wait_port FILE SED-EXPRESSION: polls FILE until the expression prints the port (port 0
# asked the kernel for a free one; the server prints the one it got).
wait_port() {
    for _ in $(seq 100); do
        port=$(sed -n "$2" "$1")
        [ -n "$port" ] && return 0
        sleep 0.05
    done
    echo "the server did not start:"
    cat "$1"
    exit 1
}

# s_server OPTION: openssl s_server on a free port of 127.0.0.1 with the certificate,
# answering as OPTION says (-www, -rev); sets $port.
s_server() {
    mkfifo in
    sleep 30 > in & # s_server's stdin stays open (it stops at its EOF)
    pids=$!
    openssl s_server -accept 127.0.0.1:0 -cert server.pem -key server.key "$1" < in > out 2>&1 &
    pids="$pids $!"
    wait_port out 's/^ACCEPT 127\.0\.0\.1:\([0-9]*\)$/\1/p'
}

case $mode in
https_get)
    s_server -www
    timeout 10 "$program" --cafile ca.pem localhost "$port" /
    ;;
tls_client)
    s_server -rev
    timeout 10 "$program" "$port" ca.pem "hello over TLS"
    ;;
tls_echo_server)
    "$program" server.pem server.key --port 0 > out 2> err &
    server=$!
    pids=$server
    wait_port out 's/^listening on port \([0-9]*\)$/\1/p'
    # s_client sends the line, and at the end of its input (a second later, once the echo
    # is back) its close_notify; -verify_return_error: an untrusted server is an error.
    (printf 'hello over TLS\n'; sleep 1) |
        timeout 10 openssl s_client -quiet -no_ign_eof -verify_return_error -CAfile ca.pem \
            -servername localhost -connect "127.0.0.1:$port" > echoed 2> client_err ||
        { echo "s_client failed:"; cat client_err; }
    printf 'echoed: %s\n' "$(cat echoed)"
    kill -INT "$server"
    status=0
    wait "$server" || status=$?
    pids=
    sed 1d out
    echo "server exit status $status"
    cat err >&2
    ;;
*)
    echo "unknown mode $mode" >&2
    exit 2
    ;;
esac
