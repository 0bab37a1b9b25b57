#!/usr/bin/env bash
# A profile-guided (PGO) release build of Portico, for packagers:
#
#   bench/pgo.sh            # -> target/pgo/release/portico
#
# 1. builds Portico instrumented (rustc -Cprofile-generate);
# 2. trains it: bench/harness.py runs every scenario once, briefly, against
#    that build (keep-alive and new connections, 16 KiB and 1 MiB bodies,
#    h2c, TLS full and resumed handshakes, gRPC, the access log, filters,
#    10,000 routes, idle connections, and the registry benchmarks);
# 3. merges the counts (llvm-profdata, from rustup's llvm-tools component)
#    and builds the release binary with them (-Cprofile-use).
#
# Why: Portico's user-space time per request is spread thin over many small
# functions (futures polled through layers, hyper, tokio), and the compiler
# cannot tell the paths every request takes from the error paths around
# them. With the counts it inlines and lays out the taken ones together:
# a tenth to a third less user-space CPU per request in the harness
# (figures in bench/RESULTS.md, "Issue 15: seventh pass"). The plain `cargo build
# --release` stays what the README and the tests use; this is the same
# code, compiled with more knowledge.
#
# A path the training does not take is compiled as rarely run, not wrongly:
# it stays correct, and may be slower than in a plain build. Takes about
# half an hour on 2 cores (two fat-LTO builds, the plain one bench/run.sh
# makes if it is stale, and a short harness run); needs
# what bench/run.sh needs (it installs nginx, HAProxy, wrk and h2load).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
raw=$root/target/pgo-profile/raw
profile=$root/target/pgo-profile/portico.profdata

rustup component add llvm-tools >&2
profdata=$(find "$(rustc --print sysroot)" -name llvm-profdata -type f | head -n 1)
[ -x "$profdata" ] || { echo "llvm-profdata not found in rustc's sysroot" >&2; exit 1; }

rm -rf "$raw" && mkdir -p "$raw"
CARGO_TARGET_DIR=target/pgo-instrumented RUSTFLAGS="-Cprofile-generate=$raw" \
  cargo build --release -p portico --bin portico >&2

# The harness's tools (grpc_origin, the registry load tools) are built
# plainly; only the gateway under test is instrumented. bench/run.sh
# installs the peers and tools, builds them, then runs the harness.
PORTICO_BIN=$root/target/pgo-instrumented/release/portico \
  bash bench/run.sh --reps 1 --seconds 2 --out "$root/target/pgo-profile/training" >&2
ls "$raw"/*.profraw >/dev/null 2>&1 || { echo "the training wrote no profile" >&2; exit 1; }
"$profdata" merge -o "$profile" "$raw"

CARGO_TARGET_DIR=target/pgo RUSTFLAGS="-Cprofile-use=$profile" \
  cargo build --release -p portico --bin portico >&2
echo "$root/target/pgo/release/portico"
