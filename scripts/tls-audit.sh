#!/usr/bin/env bash
# TLS audit of authgate's listener with testssl.sh (Debian package
# `testssl.sh`, installed when missing). Starts authgate (the debug build,
# or AUTHGATE_BIN) with a throwaway config on a free loopback port, runs
# testssl.sh against it under a time limit, saves the report, then checks:
# no protocol older than TLS 1.2, no weak cipher, no TLS compression,
# secure renegotiation (rustls has no renegotiation at all), no known
# vulnerability rated above LOW. Findings about the certificate itself
# (cert_*: self-signed, no OCSP) are printed but not judged: the audit uses
# a throwaway dev certificate; production certificates come from your CA.
#
# Usage: scripts/tls-audit.sh [OUT_DIR]   (default target/tls-audit)
# Exit code 0 when every check passes, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mkdir -p "${1:-target/tls-audit}" && cd "${1:-target/tls-audit}" && pwd)"
limit="${TLS_AUDIT_SECONDS:-600}"

if ! command -v testssl >/dev/null 2>&1 && ! command -v testssl.sh >/dev/null 2>&1; then
  echo "== installing testssl.sh"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 900 apt-get install -y -qq testssl.sh >/dev/null
fi
testssl="$(command -v testssl || command -v testssl.sh)"
command -v python3 >/dev/null || { echo "python3 is needed to read testssl's JSON" >&2; exit 1; }

bin="${AUTHGATE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build -q
  bin="target/debug/authgate"
fi

work="$(mktemp -d)"
pid=""
cleanup() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/config.toml" <<TOML
[server]
listen = "127.0.0.1:0"
[tls]
cert = "cert.pem"
key = "key.pem"
generate_self_signed = true
[jwt]
algorithm = "ES256"
private_key = "jwt.pem"
generate_signing_key = true
issuer = "authgate"
audience = "api"
[[routes]]
path = "/"
upstream = "echo"
auth = "public"
TOML
RUST_LOG=info NO_COLOR=1 "$bin" serve --config "$work/config.toml" 2>"$work/log" &
pid=$!
addr=""
for _ in $(seq 1 300); do
  addr="$(grep -o 'listen=[0-9.:]*' "$work/log" | head -1 | cut -d= -f2 || true)"
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "authgate did not start" >&2; cat "$work/log" >&2; exit 1; }
echo "== testssl.sh $("$testssl" --version 2>/dev/null | grep -o 'testssl.sh *[0-9.a-z+-]*' | head -1) against $addr (limit ${limit}s)"

rm -f "$out/testssl.json" "$out/testssl.log"
# -p protocols, -s cipher categories, -f forward secrecy, -S server defaults,
# -R renegotiation, -C compression (CRIME), -U the other vulnerabilities.
timeout "$limit" "$testssl" --quiet --color 0 --warnings off --ip one --sneaky \
  -p -s -f -S -U --jsonfile "$out/testssl.json" "$addr" | tee "$out/testssl.log" || true
[ -s "$out/testssl.json" ] || { echo "testssl.sh produced no report (timed out?)" >&2; exit 1; }

status=0
python3 - "$out/testssl.json" <<'PY' || status=$?
import json, sys
findings = {f["id"]: f for f in json.load(open(sys.argv[1]))}
def finding(i): return findings.get(i, {}).get("finding", "<missing>")
fail = []
def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok: fail.append(what)
for p in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"]:
    check("not offered" in finding(p), f"{p}: {finding(p)}")
for p in ["TLS1_2", "TLS1_3"]:
    check(finding(p).startswith("offered"), f"{p}: {finding(p)}")
for c in ["cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW", "cipherlist_3DES_IDEA", "cipherlist_AVERAGE"]:
    check("not offered" in finding(c), f"{c}: {finding(c)}")
check("not vulnerable" in finding("CRIME_TLS") or "No compression" in finding("CRIME_TLS"), f"compression (CRIME_TLS): {finding('CRIME_TLS')}")
check(finding("secure_renego") in ("supported", "not vulnerable") or "not vulnerable" in finding("secure_renego") or finding("secure_renego").startswith("supported"), f"secure_renego: {finding('secure_renego')}")
check("not vulnerable" in finding("secure_client_renego") or finding("secure_client_renego").startswith("not"), f"secure_client_renego: {finding('secure_client_renego')}")
bad = [f"{f['id']} ({f['severity']}): {f['finding']}" for f in findings.values()
       if f.get("severity") in ("MEDIUM", "HIGH", "CRITICAL") and not f["id"].startswith("cert_")]
check(not bad, "no finding above LOW (cert_* aside: the audit uses a throwaway self-signed certificate)" + "".join("\n        " + b for b in bad))
sys.exit(1 if fail else 0)
PY
echo "== report: $out/testssl.log, $out/testssl.json"
exit "$status"
