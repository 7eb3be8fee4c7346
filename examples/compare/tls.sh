# Sourced by the comparison scripts: make_tls DIR writes a throw-away CA and a certificate for
# localhost/127.0.0.1 into DIR (ca.pem, node.pem, node.key), the TLS material Zenoh's QUIC
# needs (Hypha generates its own self-signed certificate).
# shellcheck shell=bash
make_tls() {
  local d=$1
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench-ca" \
    -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$d/node.key" -out "$d/node.csr" 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > "$d/ext"
  openssl x509 -req -in "$d/node.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$d/ext" -out "$d/node.pem" 2>/dev/null
}
