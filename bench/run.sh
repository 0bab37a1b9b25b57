#!/usr/bin/env bash
# One command for the whole benchmark: installs what is missing (apt), builds
# Portico in release mode, then runs bench/harness.py, which prints the table
# and the ratios and writes bench/out/{results.json,table.md}.
# Arguments are passed to the harness (see bench/run.sh --help).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for cmd in nginx haproxy wrk h2load taskset python3; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ]; then
  pkgs=()
  for cmd in "${need[@]}"; do
    case "$cmd" in
      h2load) pkgs+=(nghttp2-client) ;;
      taskset) pkgs+=(util-linux) ;;
      *) pkgs+=("$cmd") ;;
    esac
  done
  echo "installing: ${pkgs[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
if [ "$(nproc)" -lt 2 ]; then
  echo "the benchmark pins the proxy and the load to different cores: it needs at least 2" >&2
  exit 1
fi

cargo build --release -p portico --bin portico >&2
cargo build --release -p portico-bench >&2  # includes grpc_origin (10-grpc-unary)
exec python3 bench/harness.py "$@"
