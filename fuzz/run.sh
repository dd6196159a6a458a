#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (FUZZ_SECONDS each,
# default 60). Usage: fuzz/run.sh [target...]
#
# Stable Rust only: cargo-fuzz passes -Z flags to rustc, which
# RUSTC_BOOTSTRAP=1 allows on a stable toolchain. The sanitizer is off by
# default (authgate forbids unsafe code; libFuzzer still finds panics,
# overflows via debug assertions, and broken invariants); set
# FUZZ_SANITIZER=address for ASan. New inputs go to fuzz/work/<target>
# (ignored by git); the committed seeds in fuzz/corpus/<target> are read only.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build -s "$sanitizer" -a -O
status=0
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${seconds}s"
  mkdir -p "work/$t" "corpus/$t"
  if ! cargo fuzz run -s "$sanitizer" -a -O "$t" "work/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
    echo "!! $t found a crash: see fuzz/artifacts/$t/"
    status=1
  fi
done
exit "$status"
