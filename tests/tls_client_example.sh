#!/bin/sh
# Runs examples/tls_client against `openssl s_server -rev` with a throwaway CA and server
# certificate: tls_client_example.sh <path to tls_client>. Prints what the client printed.
set -eu
client=$1
dir=$(mktemp -d)
server=
sleeper=
cleanup() {
    for p in $server $sleeper; do kill "$p" 2>/dev/null || true; done
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
mkfifo in
sleep 30 > in & # s_server's stdin stays open (it stops at its EOF)
sleeper=$!
openssl s_server -accept 127.0.0.1:0 -cert server.pem -key server.key -rev < in > out 2>&1 &
server=$!
port=
for _ in $(seq 100); do
    port=$(sed -n 's/^ACCEPT 127\.0\.0\.1:\([0-9]*\)$/\1/p' out)
    [ -n "$port" ] && break
    sleep 0.05
done
[ -n "$port" ] || { echo "s_server did not start"; cat out; exit 1; }
"$client" "$port" ca.pem "hello over TLS"
