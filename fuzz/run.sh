#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) with the
# corpus kept in fuzz/corpus/TARGET. Needs nightly and cargo-fuzz:
#   rustup toolchain install nightly && cargo +nightly install cargo-fuzz
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
# The nightly used for fuzzing may lack the wasm32-wasip2 target: build the
# embedded policy with the project's toolchain and hand it over.
(cd .. && cargo build --release -p attrelay-policy --lib --target wasm32-wasip2 --target-dir target/policy-guest)
export ATTRELAY_POLICY_WASM="$PWD/../target/policy-guest/wasm32-wasip2/release/attrelay_policy.wasm"
# fuzz/corpus holds the seeds kept in the repository; the growing working
# corpus lives in fuzz/target/corpus (ignored).
for target in smtp_command data_reader certificate policyd_request config address trace_headers; do
  work="target/corpus/$target"
  mkdir -p "$work"
  cp -n corpus/"$target"/* "$work"/ 2>/dev/null || true
  echo "== $target ($seconds s)"
  cargo +nightly fuzz run "$target" "$work" -- -max_total_time="$seconds" -rss_limit_mb=2048
done
