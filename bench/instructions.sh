#!/usr/bin/env bash
# Instructions authgate executes per proxied request, counted by valgrind's
# callgrind: repeatable for the same binary and inputs whatever else the
# machine is doing, so it shows a change of a few percent that wall-clock
# load tests on a shared machine cannot. It counts user-space instructions
# only (no kernel time, no cache misses): a complement to bench/compare.sh,
# not a replacement.
#
#   bash bench/instructions.sh                 # 10,000 requests, 16 connections
#   REQUESTS=2000 bash bench/instructions.sh   # quicker
#   AUTHGATE_BIN=/path/to/authgate bash bench/instructions.sh
#   AUTHGATE_LOG=info bash bench/instructions.sh   # with the access log (default: warn)
#
# Setup: an nginx upstream (`return 200 "ok"`), authgate with HS256 on a
# `required` route (the verified-token cache warm after a warm-up of 500
# requests), h2load keep-alive over TLS. Needs valgrind, nginx and h2load
# (Debian valgrind, nginx, nghttp2-client; installed when missing). Every
# process it starts is stopped by PID on exit; every step is bounded in time.
set -euo pipefail

REQUESTS=${REQUESTS:-10000}
CONNS=${CONNS:-16}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v nginx >/dev/null || need+=(nginx)
command -v h2load >/dev/null || need+=(nghttp2-client)
if ((${#need[@]})); then
    echo "installing ${need[*]} ..."
    timeout 300 apt-get update -qq && timeout 600 apt-get install -y -qq "${need[@]}" >/dev/null
fi

AUTHGATE=${AUTHGATE_BIN:-}
if [ -z "$AUTHGATE" ]; then
    echo "building authgate (cargo build --release) ..."
    (cd "$ROOT" && timeout 1800 cargo build --release --quiet)
    AUTHGATE="$ROOT/target/release/authgate"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_UP=$(free_port)
P_AG=$(free_port)
mkdir -p "$WORK/nginx-tmp"
cat >"$WORK/upstream.conf" <<EOC
worker_processes 1;
daemon off;
user root;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-tmp/body;
    proxy_temp_path $WORK/nginx-tmp/proxy;
    fastcgi_temp_path $WORK/nginx-tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx-tmp/uwsgi;
    scgi_temp_path $WORK/nginx-tmp/scgi;
    keepalive_requests 100000000;
    server { listen 127.0.0.1:$P_UP; location / { default_type text/plain; return 200 "ok"; } }
}
EOC
timeout 30 "$AUTHGATE" gen-cert --out "$WORK" >/dev/null
export BENCH_JWT_SECRET
BENCH_JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
cat >"$WORK/config.toml" <<EOC
[server]
listen = "127.0.0.1:$P_AG"
[tls]
cert = "dev-cert.pem"
key = "dev-key.pem"
[jwt]
algorithm = "HS256"
secret_env = "BENCH_JWT_SECRET"
issuer = "authgate"
audience = "api"
[[routes]]
path = "/"
upstream = "http://127.0.0.1:$P_UP"
auth = "required"
EOC
TOKEN=$(timeout 30 "$AUTHGATE" token --config "$WORK/config.toml" --sub bench --ttl 2h)

nginx -e "$WORK/nginx.err" -p "$WORK" -c "$WORK/upstream.conf" >"$WORK/nginx.out" 2>&1 &
PIDS+=($!)
RUST_LOG=${AUTHGATE_LOG:-warn,rustls=error} valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" \
    "$AUTHGATE" serve --config "$WORK/config.toml" >"$WORK/authgate.log" 2>&1 &
VG=$!
PIDS+=("$VG")
for _ in $(seq 120); do
    code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$P_AG/" || true)
    [ "$code" = 200 ] && break
    kill -0 "$VG" 2>/dev/null || { echo "instructions.sh: authgate exited: $(tail -n 5 "$WORK/authgate.log")" >&2; exit 1; }
    sleep 0.5
done
[ "$code" = 200 ] || { echo "instructions.sh: authgate did not answer 200 (got $code)" >&2; exit 1; }

load() { timeout 900 h2load --h1 -n "$1" -c "$CONNS" -m 1 -H "authorization: Bearer $TOKEN" "https://127.0.0.1:$P_AG/"; }
load 500 >/dev/null
timeout 60 callgrind_control -z "$VG" >/dev/null 2>&1
out=$(load "$REQUESTS")
timeout 60 callgrind_control -d "$VG" >/dev/null 2>&1
grep -q "^status codes: $REQUESTS 2xx" <<<"$out" || { echo "instructions.sh: not every request answered 2xx:" >&2; grep '^status codes' <<<"$out" >&2; exit 1; }
dump=$(ls -t "$WORK"/cg.out.* | head -n 1)
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "authgate $("$AUTHGATE" --version 2>/dev/null | head -n 1)"
echo "$REQUESTS requests over $CONNS keep-alive TLS connections, HS256 required route, nginx upstream"
echo "instructions per request: $((total / REQUESTS))"
