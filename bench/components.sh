#!/usr/bin/env bash
# What components cost a host (docs/BENCHMARKS.md, "Components"): builds
# the gateway component, the Rust and JavaScript tenant policies and the
# kit's certificates, then runs host/benches/components.rs (wasmtime) and
# bench/gateway-node.mjs (Node). Needs what .ci/run installs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p attrelay-gateway --profile gateway --target wasm32-wasip2
(cd examples/tenant-longer-grace && cargo build --release --locked --target wasm32-wasip2 --target-dir ../../target/test-components)
(cd examples/tenant-js && npm run build)
python3 conformance/make-certs.py target/bench-certs
dist=target/bench-gateway-js
ATTRELAY_GATEWAY_WASM="$PWD/target/wasm32-wasip2/gateway/attrelay_gateway.wasm" ATTRELAY_GATEWAY_DIST="$PWD/$dist" \
  node gateways/haraka/scripts/build.mjs
cargo bench -p attrelay --bench components
node bench/gateway-node.mjs "$dist" target/bench-certs
