#!/usr/bin/env bash
# authgate side by side with nginx and HAProxy on this machine (issue 6).
#
#   bash bench/compare.sh                  # keep-alive connections (default)
#   MODE=newconn bash bench/compare.sh     # a new TLS connection per request
#
# Knobs (environment): ROUNDS (10), DURATION (5s), CONNS (64), WARMUP (2s, 0 = none),
# TARGETS (space-separated subset of the targets below), AUTHGATE_BIN (skip the
# build and use this binary), SERVER_CPU (1), CLIENT_CPU (0), KEEP_WORK=1 (keep
# the temporary folder with every config and log), AUTHGATE_LOG (RUST_LOG for
# authgate, default warn,rustls=error). See bench/README.md.
#
# MODE=newconn sends "Connection: close": one TCP + TLS connection per request.
# wrk resumes the TLS session of the slot's previous connection, so this
# measures resumed handshakes, for every server alike.
#
# Every server runs pinned to SERVER_CPU with one worker (nginx
# worker_processes 1, haproxy nbthread 1, authgate's tokio runtime sizes itself
# from the affinity mask); wrk runs pinned to CLIENT_CPU with one thread. The
# targets are measured in alternation, round after round (the order rotates
# each round), and every ratio is taken between runs of the same round. Only
# ratios from one run mean anything: absolute numbers drift between machines.
#
# Before measuring, each target must answer 200 "ok" (from the shared upstream)
# with its token, and the authenticating ones 401/403 without a token, with a
# token signed by another key, with an expired token, with alg "none" and with
# a token of the other algorithm; a run with any non-2xx answer is reported
# invalid. Every process started here is recorded and stopped by PID on exit;
# every step is bounded by `timeout`.
set -euo pipefail

MODE=${MODE:-keepalive}
ROUNDS=${ROUNDS:-10}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
WARMUP=${WARMUP:-2s}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
KEEP_WORK=${KEEP_WORK:-0}

ALL_TARGETS="nginx haproxy-hs256 haproxy-es256 authgate-hs256 authgate-es256 authgate-public"
case "$MODE" in
    keepalive) DEFAULT_TARGETS=$ALL_TARGETS ;;
    newconn) DEFAULT_TARGETS="nginx haproxy-hs256 authgate-hs256 authgate-es256" ;;
    *)
        echo "compare.sh: MODE must be keepalive or newconn, not '$MODE'" >&2
        exit 2
        ;;
esac
TARGETS=${TARGETS:-$DEFAULT_TARGETS}
for t in $TARGETS; do
    case " $ALL_TARGETS " in
        *" $t "*) ;;
        *)
            echo "compare.sh: unknown target '$t' (known: $ALL_TARGETS)" >&2
            exit 2
            ;;
    esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: ROUNDS must be a positive integer" >&2; exit 2; }
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: CONNS must be a positive integer" >&2; exit 2; }

# "10s", "2m", "1h" or a bare number of seconds -> seconds.
seconds() {
    local v=$1
    case "$v" in
        *s) v=${v%s} ;;
        *m) v=$((${v%m} * 60)) ;;
        *h) v=$((${v%h} * 3600)) ;;
    esac
    [[ $v =~ ^[0-9]+$ ]] || { echo "compare.sh: '$1' is not a duration like 10s, 2m" >&2; exit 2; }
    echo "$v"
}
DURATION_S=$(seconds "$DURATION")
WARMUP_S=$(seconds "$WARMUP")
((DURATION_S > 0)) || { echo "compare.sh: DURATION must be at least 1s" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAMP=$(date +%Y-%m-%d-%H%M%S)
mkdir -p "$REPO/bench/results"
RESULT="$REPO/bench/results/$STAMP-$MODE.txt"
: >"$RESULT"

# ------------------------------------------------------------ process control

PIDS=()
WORK=""

# A PID and all its descendants, children first.
tree() {
    local p c
    for c in $(pgrep -P "$1" 2>/dev/null || true); do
        tree "$c"
    done
    echo "$1"
}

cleanup() {
    local rc=$? all=() p i
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do
        # Still ours: a direct child of this script (not a reused PID).
        if [[ $(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ') == "$$" ]]; then
            mapfile -t -O "${#all[@]}" all < <(tree "$p")
        fi
    done
    if ((${#all[@]})); then
        kill -TERM "${all[@]}" 2>/dev/null || true
        for i in $(seq 50); do
            local alive=0
            for p in "${all[@]}"; do
                if kill -0 "$p" 2>/dev/null; then alive=1; fi
            done
            ((alive)) || break
            sleep 0.1
        done
        for p in "${all[@]}"; do
            kill -KILL "$p" 2>/dev/null || true
        done
        wait 2>/dev/null || true
    fi
    # A run that stopped before its summary leaves no results file behind.
    if [[ $rc -ne 0 && $rc -ne 3 && -f $RESULT ]]; then
        rm -f "$RESULT"
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP_WORK == 1 || $rc -ne 0 ]]; then
            echo "work folder kept: $WORK" >&2
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf '%s\n' "$*" | tee -a "$RESULT"; }
die() {
    say "compare.sh: $*" >&2
    exit 1
}

# ------------------------------------------------------------------ packages

need_install=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need_install+=(nginx)
command -v haproxy >/dev/null || [[ -x /usr/sbin/haproxy ]] || need_install+=(haproxy)
command -v wrk >/dev/null || need_install+=(wrk)
command -v h2load >/dev/null || need_install+=(nghttp2-client)
command -v curl >/dev/null || need_install+=(curl)
command -v openssl >/dev/null || need_install+=(openssl)
command -v python3 >/dev/null || need_install+=(python3)
if ((${#need_install[@]})); then
    echo "installing ${need_install[*]} ..." >&2
    timeout 600 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends "${need_install[@]}" >&2
fi
export PATH="$PATH:/usr/sbin:/sbin"
for c in nginx haproxy wrk taskset timeout curl openssl python3; do
    command -v "$c" >/dev/null || die "$c is missing"
done
(($(nproc --all) > SERVER_CPU && $(nproc --all) > CLIENT_CPU)) || die "this machine has no CPU $SERVER_CPU or $CLIENT_CPU"

# ------------------------------------------------------------------- authgate

if [[ -n ${AUTHGATE_BIN:-} ]]; then
    AUTHGATE=$AUTHGATE_BIN
else
    echo "building authgate (cargo build --release) ..." >&2
    (cd "$REPO" && timeout 3600 cargo build --release --quiet)
    TARGET_DIR=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    AUTHGATE=$TARGET_DIR/release/authgate
fi
[[ -x $AUTHGATE ]] || die "no authgate binary at $AUTHGATE"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/authgate-bench.XXXXXX")
mkdir -p "$WORK/logs" "$WORK/nginx-tmp"

# ---------------------------------------------------------------------- ports

read -r P_UP P_NGINX P_HA_HS P_HA_ES P_AG_HS P_AG_ES P_AG_PUB < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(7):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
)

declare -A PORT=(
    [nginx]=$P_NGINX [haproxy-hs256]=$P_HA_HS [haproxy-es256]=$P_HA_ES
    [authgate-hs256]=$P_AG_HS [authgate-es256]=$P_AG_ES [authgate-public]=$P_AG_PUB
)

# --------------------------------------------------------------- keys, tokens

timeout 30 "$AUTHGATE" gen-cert --out "$WORK" >/dev/null
CERT=$WORK/dev-cert.pem
KEY=$WORK/dev-key.pem
CERT_ALG=$(openssl x509 -in "$CERT" -noout -text | grep -E 'Public Key Algorithm|NIST CURVE' | tr -s ' ' | sed 's/^ //' | paste -sd' ')
cat "$CERT" "$KEY" >"$WORK/haproxy.pem"

# 48 random bytes as hex: ASCII, so HAProxy's config and the env var hold the same bytes.
SECRET=$(openssl rand -hex 24)
export BENCH_JWT_SECRET=$SECRET

authgate_config() { # name port algorithm auth
    local name=$1 port=$2 alg=$3 auth=$4 keyline
    if [[ $alg == HS256 ]]; then
        keyline='secret_env = "BENCH_JWT_SECRET"'
    else
        keyline='private_key = "jwt-es256.pem"
generate_signing_key = true'
    fi
    cat >"$WORK/$name.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
shutdown_grace = "2s"

[tls]
cert = "dev-cert.pem"
key = "dev-key.pem"

[jwt]
algorithm = "$alg"
$keyline
issuer = "authgate-bench"
audience = "bench"

[[routes]]
path = "/"
upstream = "http://127.0.0.1:$P_UP"
auth = "$auth"

[log]
format = "text"
EOF
}
authgate_config authgate-hs256 "$P_AG_HS" HS256 required
authgate_config authgate-es256 "$P_AG_ES" ES256 required
authgate_config authgate-public "$P_AG_PUB" HS256 public

# Tokens live 2h, or longer when the run needs it.
TTL_MIN=$(((WARMUP_S + ROUNDS * 7 * (DURATION_S + 15)) / 60 + 120))
TOKEN_HS=$(timeout 30 "$AUTHGATE" token --config "$WORK/authgate-hs256.toml" --sub bench --ttl "${TTL_MIN}m")
# The ES256 key is generated by this call (generate_signing_key) and shared with HAProxy.
TOKEN_ES=$(timeout 30 "$AUTHGATE" token --config "$WORK/authgate-es256.toml" --sub bench --ttl "${TTL_MIN}m")
openssl pkey -in "$WORK/jwt-es256.pem" -pubout -out "$WORK/jwt-es256.pub.pem"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORK/other-es256.pem" 2>/dev/null

# Hand-made tokens for the negative checks (wrong key, expired, alg none).
cat >"$WORK/mkjwt.py" <<'EOF'
import base64, hashlib, hmac, json, subprocess, sys, time
alg, key, exp_offset = sys.argv[1], sys.argv[2], int(sys.argv[3])
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
header = {"alg": alg, "typ": "JWT"}
claims = {"sub": "bench", "iss": "authgate-bench", "aud": "bench", "iat": now - 7200,
          "nbf": now - 7200, "exp": now + exp_offset, "jti": "neg-%d" % now}
msg = (b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())).encode()
if alg == "none":
    sig = b""
elif alg == "HS256":
    sig = hmac.new(key.encode(), msg, hashlib.sha256).digest()
else:  # ES256: openssl gives DER (r, s); JWS wants r || s, 32 bytes each
    der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=msg, capture_output=True, check=True).stdout
    def integer(b, i):
        assert b[i] == 2
        n = b[i + 1]
        return int.from_bytes(b[i + 2:i + 2 + n], "big"), i + 2 + n
    i = 2 if der[1] < 0x80 else 3
    r, i = integer(der, i)
    s, _ = integer(der, i)
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
print(msg.decode() + "." + b64(sig))
EOF
mk() { timeout 10 python3 "$WORK/mkjwt.py" "$@"; }
HS_WRONG_KEY=$(mk HS256 "$(openssl rand -hex 24)" 3600)
HS_EXPIRED=$(mk HS256 "$SECRET" -3600)
HS_GOOD_HANDMADE=$(mk HS256 "$SECRET" 3600)
ES_WRONG_KEY=$(mk ES256 "$WORK/other-es256.pem" 3600)
ES_EXPIRED=$(mk ES256 "$WORK/jwt-es256.pem" -3600)
ES_GOOD_HANDMADE=$(mk ES256 "$WORK/jwt-es256.pem" 3600)
NONE_TOKEN=$(mk none x 3600)

declare -A TOKEN=(
    [nginx]=$TOKEN_HS [haproxy-hs256]=$TOKEN_HS [haproxy-es256]=$TOKEN_ES
    [authgate-hs256]=$TOKEN_HS [authgate-es256]=$TOKEN_ES [authgate-public]=$TOKEN_HS
)

# --------------------------------------------------------------------- configs

# Enough connections for the clients and the upstream side, within the fd limit.
MAXCONN=$((CONNS * 2 + 256))

# The part every nginx config here shares: one worker, no access log, temp
# folders and logs under $WORK. $1 = config name, $2 = temp-folder prefix.
nginx_preamble() {
    cat <<EOF
worker_processes 1;
daemon off;
user root;
pid $WORK/$1.pid;
error_log $WORK/logs/$1.err warn;
events { worker_connections $MAXCONN; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-tmp/$2-body;
    proxy_temp_path $WORK/nginx-tmp/$2-proxy;
    fastcgi_temp_path $WORK/nginx-tmp/$2-fastcgi;
    uwsgi_temp_path $WORK/nginx-tmp/$2-uwsgi;
    scgi_temp_path $WORK/nginx-tmp/$2-scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
EOF
}

{ nginx_preamble nginx-upstream up; cat <<EOF
    server {
        listen 127.0.0.1:$P_UP;
        location / { default_type text/plain; return 200 "ok"; }
    }
}
EOF
} >"$WORK/nginx-upstream.conf"

{ nginx_preamble nginx-proxy px; cat <<EOF
    upstream up {
        server 127.0.0.1:$P_UP;
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$P_NGINX ssl;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$WORK/nginx-proxy.conf"

haproxy_config() { # name port alg key
    local name=$1 port=$2 alg=$3 key=$4
    cat >"$WORK/$name.cfg" <<EOF
global
    nbthread 1
    maxconn $MAXCONN
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
    option http-keep-alive
    http-reuse always

frontend fe
    bind 127.0.0.1:$port ssl crt $WORK/haproxy.pem
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.jwt_alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request deny deny_status 401 unless { var(txn.jwt_alg) -m str $alg }
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.jwt_alg,"$key") -m int 1 }
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 unless { var(txn.exp),sub(txn.now) -m int gt 0 }
    default_backend be

backend be
    server up 127.0.0.1:$P_UP
EOF
}
haproxy_config haproxy-hs256 "$P_HA_HS" HS256 "$SECRET"
haproxy_config haproxy-es256 "$P_HA_ES" ES256 "$WORK/jwt-es256.pub.pem"

# ------------------------------------------------------------- start servers

LIFETIME=$((WARMUP_S * 7 + ROUNDS * 7 * (DURATION_S + 15) + 600))

# start NAME PORT-TO-WAIT-FOR SCHEME COMMAND...: pinned, bounded, recorded.
start() {
    local name=$1 port=$2 scheme=$3 pid i code
    shift 3
    timeout -k 5 "$LIFETIME" taskset -c "$SERVER_CPU" "$@" >"$WORK/logs/$name.out" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for i in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || die "$name exited at start: $(tail -n 5 "$WORK/logs/$name.out")"
        code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "$scheme://127.0.0.1:$port/" || true)
        [[ $code != 000 ]] && return 0
        sleep 0.1
    done
    die "$name did not answer on port $port within 15s"
}

wanted() { [[ " $TARGETS " == *" $1 "* ]]; }

# warn, so that logging does not dominate. rustls at error: wrk sends the IP
# address as SNI, which rustls reports with a WARN line on every handshake.
AUTHGATE_LOG=${AUTHGATE_LOG:-warn,rustls=error}

start nginx-upstream "$P_UP" http nginx -e "$WORK/logs/nginx-upstream.err" -p "$WORK" -c "$WORK/nginx-upstream.conf"
wanted nginx && start nginx "$P_NGINX" https nginx -e "$WORK/logs/nginx-proxy.err" -p "$WORK" -c "$WORK/nginx-proxy.conf"
for n in haproxy-hs256 haproxy-es256; do
    wanted $n && start $n "${PORT[$n]}" https haproxy -db -f "$WORK/$n.cfg"
done
for n in authgate-hs256 authgate-es256 authgate-public; do
    wanted $n && start $n "${PORT[$n]}" https env RUST_LOG="$AUTHGATE_LOG" "$AUTHGATE" serve --config "$WORK/$n.toml"
done

# ------------------------------------------------------------------- checks

# check TARGET EXPECTED-CODES TOKEN WHAT
FAILED=0
check() {
    local t=$1 want=$2 tok=$3 what=$4 out code body
    local args=(-sk --max-time 5 -o "$WORK/body" -w '%{http_code}')
    [[ -n $tok ]] && args+=(-H "Authorization: Bearer $tok")
    code=$(curl "${args[@]}" "https://127.0.0.1:${PORT[$t]}/" || true)
    body=$(cat "$WORK/body" 2>/dev/null || true)
    if [[ " $want " == *" $code "* ]] && { [[ $code != 200 ]] || [[ $body == ok ]]; }; then
        out="ok  "
    else
        out="FAIL"
        FAILED=1
    fi
    say "  $out $t: $what -> $code (want ${want// //})"
}

say "checks:"
for t in $TARGETS; do
    check "$t" 200 "${TOKEN[$t]}" "its token"
    case "$t" in
        nginx | authgate-public) check "$t" 200 "" "no token (no auth on this target)" ;;
        *-hs256 | *-es256)
            check "$t" "401 403" "" "no token"
            check "$t" "401 403" "${TOKEN[$t]}x" "its token with a byte appended"
            check "$t" "401 403" "$NONE_TOKEN" "alg none"
            if [[ $t == *-hs256 ]]; then
                check "$t" 200 "$HS_GOOD_HANDMADE" "a hand-made HS256 token (same secret)"
                check "$t" "401 403" "$HS_WRONG_KEY" "HS256 signed with another secret"
                check "$t" "401 403" "$HS_EXPIRED" "HS256 expired an hour ago"
                check "$t" "401 403" "$TOKEN_ES" "the ES256 token (wrong alg)"
            else
                check "$t" 200 "$ES_GOOD_HANDMADE" "a hand-made ES256 token (same key)"
                check "$t" "401 403" "$ES_WRONG_KEY" "ES256 signed with another key"
                check "$t" "401 403" "$ES_EXPIRED" "ES256 expired an hour ago"
                check "$t" "401 403" "$TOKEN_HS" "the HS256 token (wrong alg)"
            fi
            ;;
    esac
done
((FAILED == 0)) || die "a target is misconfigured (see above); not measuring"

# ---------------------------------------------------------------------- runs

cat >"$WORK/report.lua" <<'EOF'
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("BENCH rps=%.2f p50_us=%d p99_us=%d requests=%d non2xx=%d sockerr=%d\n",
        summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
        summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
EOF

WRK_EXTRA=()
[[ $MODE == newconn ]] && WRK_EXTRA=(-H "Connection: close")

# cpu_ticks N: "busy total" jiffies of CPU N so far, from /proc/stat (busy
# is everything but idle and iowait).
cpu_ticks() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# run_wrk TARGET SECONDS TAG: one wrk run; its BENCH line, with how busy the
# server's and the client's CPUs were during it, goes to $WORK/last.
# wrk runs in the background (recorded like the servers) so that a signal
# reaches the EXIT trap at once instead of after the run.
run_wrk() {
    local t=$1 secs=$2 log=$WORK/logs/wrk-$1-$3.txt wp rc=0 s0 s1 c0 c1
    s0=$(cpu_ticks "$SERVER_CPU")
    c0=$(cpu_ticks "$CLIENT_CPU")
    timeout -k 5 $((secs + 60)) taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${secs}s" --latency \
        -H "Authorization: Bearer ${TOKEN[$t]}" "${WRK_EXTRA[@]}" -s "$WORK/report.lua" \
        "https://127.0.0.1:${PORT[$t]}/" >"$log" 2>&1 &
    wp=$!
    PIDS+=("$wp")
    wait "$wp" || rc=$?
    unset 'PIDS[-1]'
    s1=$(cpu_ticks "$SERVER_CPU")
    c1=$(cpu_ticks "$CLIENT_CPU")
    ((rc == 0)) || die "wrk against $t failed ($rc): $(tail -n 3 "$log")"
    grep '^BENCH ' "$log" >"$WORK/last" || die "no result from wrk against $t: $(tail -n 3 "$log")"
    # Busy share of each CPU over the run, in per mille.
    printf ' srv_busy=%d cli_busy=%d\n' \
        "$(awk -v a="$s0" -v b="$s1" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; print (t > 0 ? int(1000 * (y[1] - x[1]) / t) : 0) }')" \
        "$(awk -v a="$c0" -v b="$c1" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; print (t > 0 ? int(1000 * (y[1] - x[1]) / t) : 0) }')" \
        >>"$WORK/last"
}

say ""
say "authgate bench, mode=$MODE rounds=$ROUNDS duration=$DURATION conns=$CONNS warmup=$WARMUP"
say "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')  host: $(uname -srm)  cpus: $(nproc --all)"
say "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
say "servers pinned to CPU $SERVER_CPU (one worker each), wrk -t1 pinned to CPU $CLIENT_CPU"
REV=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo '?')
(cd "$REPO" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null) || REV="$REV+uncommitted"
say "versions: authgate $REV, $(nginx -v 2>&1 | sed 's/.*version: //'), $(haproxy -v | head -n1 | cut -d' ' -f1-3),"\
" wrk $(wrk -v 2>&1 | head -n1 | cut -d' ' -f2)"
say "certificate: $CERT_ALG (the same for every server)"
say "targets: $TARGETS"

if ((WARMUP_S > 0)); then
    for t in $TARGETS; do run_wrk "$t" "$WARMUP_S" warmup; done
fi

printf 'round\ttarget\trps\tp50_us\tp99_us\tnon2xx\tsockerr\tsrv_busy\tcli_busy\n' >"$WORK/results.tsv"
read -r -a order <<<"$TARGETS"
n=${#order[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    say ""
    say "round $r/$ROUNDS"
    for ((i = 0; i < n; i++)); do
        t=${order[$(((i + r - 1) % n))]}
        run_wrk "$t" "$DURATION_S" "r$r"
        line=$(tr '\n' ' ' <"$WORK/last")
        rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$line")
        p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$line")
        p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$line")
        bad=$(sed -E 's/.*non2xx=([0-9]+).*/\1/' <<<"$line")
        sockerr=$(sed -E 's/.*sockerr=([0-9]+).*/\1/' <<<"$line")
        srv=$(sed -E 's/.*srv_busy=([0-9]+).*/\1/' <<<"$line")
        cli=$(sed -E 's/.*cli_busy=([0-9]+).*/\1/' <<<"$line")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$rps" "$p50" "$p99" "$bad" "$sockerr" "$srv" "$cli" >>"$WORK/results.tsv"
    done
    python3 - "$WORK/results.tsv" "$r" <<'EOF' | tee -a "$RESULT"
import csv, sys
rows = [x for x in csv.DictReader(open(sys.argv[1]), delimiter="\t") if x["round"] == sys.argv[2]]
base = next((float(x["rps"]) for x in rows if x["target"] == "nginx"), None)
for x in rows:
    ratio = "%6.2fx" % (float(x["rps"]) / base) if base else "   n/a"
    note = ""
    if int(x["non2xx"]):
        note += "  INVALID: %s non-2xx answers" % x["non2xx"]
    if int(x["sockerr"]):
        note += "  (%s socket errors)" % x["sockerr"]
    # The server CPU's busy time per request (the target and the upstream
    # share that CPU), and how busy the client's CPU was.
    srv, cli = int(x["srv_busy"]) / 1000, int(x["cli_busy"]) / 1000
    cost = "%4.0f us/req" % (srv * 1e6 / float(x["rps"])) if float(x["rps"]) > 0 else "  n/a"
    print("  %-16s %10.0f req/s  p50 %8.2f ms  p99 %8.2f ms  vs nginx %s  server CPU %3.0f%% %s  client CPU %3.0f%%%s" % (
        x["target"], float(x["rps"]), int(x["p50_us"]) / 1000, int(x["p99_us"]) / 1000, ratio, 100 * srv, cost, 100 * cli, note))
EOF
done

# ------------------------------------------------------------------- summary

say ""
set +e
python3 - "$WORK/results.tsv" "$MODE" <<'EOF' | tee -a "$RESULT"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
mode = sys.argv[2]
targets = list(dict.fromkeys(x["target"] for x in rows))
rounds = sorted({int(x["round"]) for x in rows})
by = {(int(x["round"]), x["target"]): x for x in rows}
invalid = {x["target"] for x in rows if int(x["non2xx"])}

def med(t, key):
    return statistics.median(float(by[(r, t)][key]) for r in rounds)

def ratio(a, b):
    if a not in targets or b not in targets:
        return None
    return statistics.median(float(by[(r, a)]["rps"]) / float(by[(r, b)]["rps"]) for r in rounds)

def cost(t):
    # Server CPU busy time per request, in microseconds (median over rounds).
    return statistics.median(int(by[(r, t)]["srv_busy"]) / 1000 * 1e6 / float(by[(r, t)]["rps"]) for r in rounds)

print("summary (medians over %d round%s)" % (len(rounds), "" if len(rounds) == 1 else "s"))
print("  %-16s %10s  %10s  %10s  %-9s  %14s  %10s  %10s" % ("target", "req/s", "p50 ms", "p99 ms", "vs nginx", "server us/req", "server CPU", "client CPU"))
for t in targets:
    r = ratio(t, "nginx")
    print("  %-16s %10.0f  %10.2f  %10.2f  %-9s  %14.0f  %9.0f%%  %9.0f%%%s" % (
          t, med(t, "rps"), med(t, "p50_us") / 1000, med(t, "p99_us") / 1000,
          "%.2fx" % r if r is not None else "n/a", cost(t), med(t, "srv_busy") / 10, med(t, "cli_busy") / 10,
          "  INVALID (non-2xx answers)" if t in invalid else ""))
print("  vs nginx: the median of per-round ratios of req/s. server us/req: the busy time of the")
print("  server CPU (the target and the upstream) per request. A target whose server CPU has")
print("  time to spare while the client CPU is near 100 % is limited by wrk, not by itself.")

print()
print("targets (issue 6):")
checks = []
if mode == "keepalive":
    checks += [("authgate-hs256", "nginx", 1.0), ("authgate-hs256", "haproxy-hs256", 1.25),
               ("authgate-es256", "haproxy-es256", 3.0), ("authgate-hs256", "authgate-public", 0.95),
               ("authgate-es256", "authgate-public", 0.95)]
else:
    checks += [("authgate-hs256", "nginx", 1.2)]
failed = False
for a, b, want in checks:
    r = ratio(a, b)
    if r is None:
        print("  %-16s >= %.2fx %-16s  n/a (target not run)" % (a, want, b))
        continue
    bad = a in invalid or b in invalid
    verdict = "INVALID" if bad else ("met" if r >= want else "not met")
    failed |= bad
    # Three decimals: a median of 0.996x must not read as "1.00x  not met".
    print("  %-16s >= %.2fx %-16s  %.3fx  %s" % (a, want, b, r, verdict))
if mode == "keepalive" and "nginx" in targets:
    for a in [t for t in targets if t.startswith("authgate-")]:
        pa, pn = med(a, "p99_us"), med("nginx", "p99_us")
        verdict = "INVALID" if (a in invalid or "nginx" in invalid) else ("met" if pa <= pn else "not met")
        print("  %-16s p99 <= nginx p99        %.2f ms vs %.2f ms  %s" % (a, pa / 1000, pn / 1000, verdict))
print()
print("Only ratios from one run count; absolute numbers drift between machines.")
sys.exit(3 if invalid else 0)
EOF
status=${PIPESTATUS[0]}
set -e
say "results written to ${RESULT#"$REPO"/}"
if ((status != 0)); then
    say "compare.sh: some runs had non-2xx answers: the numbers above are not valid" >&2
    exit 3
fi
