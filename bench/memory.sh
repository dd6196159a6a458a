#!/usr/bin/env bash
# authgate's memory under load (issue 6, point 5), measured from outside:
#   1. RSS with IDLE_CONNS (10,000) idle keep-alive TLS connections open;
#   2. RSS across REQUESTS (1,000,000) proxied requests, on a fresh
#      authgate: sampled after a warm-up and at the end, "flat" meaning
#      within +-10 %.
# authgate runs the release build with HS256 on a `required` route to the
# built-in echo upstream, pinned to CPU 1; the clients run on CPU 0.
#
#   bash bench/memory.sh
#   IDLE_CONNS=2000 REQUESTS=100000 bash bench/memory.sh     # a quick check
#
# Needs python3 (idle connections) and h2load (Debian nghttp2-client, installed
# when missing). Every process it starts is stopped by PID on exit.
set -euo pipefail

IDLE_CONNS=${IDLE_CONNS:-10000}
REQUESTS=${REQUESTS:-1000000}
CONNS=${CONNS:-64}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if ! command -v h2load >/dev/null 2>&1; then
    echo "installing nghttp2-client (h2load) ..."
    timeout 300 apt-get update -qq && timeout 300 apt-get install -y -qq nghttp2-client >/dev/null
fi
ulimit -n $((IDLE_CONNS + 1024)) 2>/dev/null || { echo "memory.sh: cannot raise the open-file limit to hold $IDLE_CONNS connections" >&2; exit 1; }

AUTHGATE=${AUTHGATE_BIN:-}
if [ -z "$AUTHGATE" ]; then
    echo "building authgate (cargo build --release) ..."
    (cd "$ROOT" && timeout 1800 cargo build --release --quiet)
    AUTHGATE="$ROOT/target/release/authgate"
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
timeout 30 "$AUTHGATE" gen-cert --out "$WORK" >/dev/null
export BENCH_JWT_SECRET=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
cat > "$WORK/config.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT"
idle_timeout = "10m"
max_connections = $((IDLE_CONNS + 1000))
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
upstream = "echo"
auth = "required"
EOF
TOKEN=$(timeout 30 "$AUTHGATE" token --config "$WORK/config.toml" --sub bench --ttl 2h)

# Starts authgate (AG = its PID) and waits until it answers with the token.
start_authgate() {
    RUST_LOG=warn,rustls=error taskset -c "$SERVER_CPU" "$AUTHGATE" serve --config "$WORK/config.toml" 2>>"$WORK/authgate.log" &
    AG=$!
    PIDS+=("$AG")
    for _ in $(seq 100); do
        curl -sk -o /dev/null "https://127.0.0.1:$PORT/" && break
        sleep 0.1
    done
    code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$PORT/")
    [ "$code" = 200 ] || { echo "memory.sh: authgate answered $code with the token" >&2; exit 1; }
    echo "authgate pid $AG, RSS at start: $(rss) kB"
}
rss() { awk '/^VmRSS/ {print $2}' "/proc/$AG/status"; }
start_authgate

# 1. Idle keep-alive connections: each does a TLS handshake and one request,
#    then stays open and silent.
cat > "$WORK/idle.py" <<'EOF'
import socket, ssl, sys, time
port, n, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
req = f"GET / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
conns = []
for i in range(n):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
    s.sendall(req)
    s.recv(65536)
    conns.append(s)
print(f"open {len(conns)}", flush=True)
time.sleep(3600)
EOF
taskset -c "$CLIENT_CPU" python3 "$WORK/idle.py" "$PORT" "$IDLE_CONNS" "$TOKEN" > "$WORK/idle.out" 2>&1 &
IDLE=$!
PIDS+=("$IDLE")
for _ in $(seq 1200); do
    grep -q '^open' "$WORK/idle.out" 2>/dev/null && break
    kill -0 "$IDLE" 2>/dev/null || { echo "memory.sh: the idle client failed:" >&2; cat "$WORK/idle.out" >&2; exit 1; }
    sleep 0.25
done
grep -q '^open' "$WORK/idle.out" || { echo "memory.sh: the idle connections did not open in time" >&2; exit 1; }
sleep 2
IDLE_RSS=$(rss)
echo "RSS with $IDLE_CONNS idle keep-alive TLS connections: $IDLE_RSS kB ($((IDLE_RSS / 1024)) MB; target <= 64 MB)"
kill "$IDLE" 2>/dev/null || true
wait "$IDLE" 2>/dev/null || true

# 2. Many proxied requests: RSS after a warm-up tenth, then at the end. On
# a fresh authgate: what the idle connections freed would otherwise still
# be going back to the system during the run (mimalloc returns freed
# memory gradually), which reads as RSS falling, not as the steady state.
kill "$AG" 2>/dev/null || true
wait "$AG" 2>/dev/null || true
start_authgate
WARM=$((REQUESTS / 10))
taskset -c "$CLIENT_CPU" timeout 600 h2load --h1 -n "$WARM" -c "$CONNS" -m 1 -H "authorization: Bearer $TOKEN" "https://127.0.0.1:$PORT/" > "$WORK/warm.txt"
WARM_RSS=$(rss)
taskset -c "$CLIENT_CPU" timeout 1800 h2load --h1 -n "$((REQUESTS - WARM))" -c "$CONNS" -m 1 -H "authorization: Bearer $TOKEN" "https://127.0.0.1:$PORT/" > "$WORK/run.txt"
END_RSS=$(rss)
grep -E '^requests:' "$WORK/warm.txt" "$WORK/run.txt" | sed 's|.*/||'
ok=$(grep -E '^status codes:' "$WORK/run.txt")
echo "$ok"
pct=$(( (END_RSS - WARM_RSS) * 100 / WARM_RSS ))
echo "RSS after $WARM requests: $WARM_RSS kB; after $REQUESTS: $END_RSS kB (${pct}% change; target within +-10%)"

verdict=0
[ "$IDLE_RSS" -le $((64 * 1024)) ] && echo "idle connections: met" || { echo "idle connections: NOT met"; verdict=1; }
[ "${pct#-}" -le 10 ] && echo "flat RSS: met" || { echo "flat RSS: NOT met"; verdict=1; }
exit "$verdict"
