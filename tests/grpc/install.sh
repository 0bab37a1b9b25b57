#!/usr/bin/env bash
# Installs what the gRPC test peers (tests/grpc/peer.py, peer.js), the
# HPACK peer (tests/h2/hpack_peer.py) and the HTTP/2 conformance client
# (tests/h2/conformance.py) need, when missing: Python grpcio,
# grpcio-health-checking, hpack and hyperframe in a venv under
# target/grpc-venv, Node @grpc/grpc-js under target/grpc-node. Idempotent
# and quiet; .ci/run calls it before the tests, and so can a developer.
# Nothing is fetched at test time.
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=target/grpc-venv
if ! "$venv/bin/python3" -c 'import grpc, grpc_health.v1.health, hpack, hyperframe' >/dev/null 2>&1; then
    python3 -m venv "$venv"
    # hpack: the HPACK peer of tests/hpack.rs (python-hyper's, pure Python);
    # hyperframe (python-hyper's frame codec) with hpack: the raw HTTP/2
    # client of tests/h2_conformance.rs.
    "$venv/bin/pip" install -q --disable-pip-version-check \
        grpcio==1.85.1 grpcio-health-checking==1.85.1 hpack==4.1.0 hyperframe==6.1.0
fi

node_dir=target/grpc-node
if [ ! -f "$node_dir/node_modules/@grpc/grpc-js/package.json" ]; then
    # npm as a command, or as the module a Node package ships without the
    # command's link (NodeSource's repack); on a machine with no Node at
    # all, Debian's nodejs and npm.
    npm=(npm)
    if ! command -v npm >/dev/null 2>&1; then
        bundled=/usr/lib/node_modules/npm/bin/npm-cli.js
        if [ -f "$bundled" ] && command -v node >/dev/null 2>&1; then
            npm=(node "$bundled")
        elif command -v apt-get >/dev/null 2>&1; then
            sudo=""
            if [ "$(id -u)" -ne 0 ]; then
                sudo="sudo"
            fi
            $sudo apt-get -qq update >/dev/null
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends \
                nodejs npm >/dev/null
        else
            echo "the Node gRPC peer needs npm, and there is no apt-get to install it" >&2
            exit 1
        fi
    fi
    mkdir -p "$node_dir"
    cp tests/grpc/package.json "$node_dir/package.json"
    (cd "$node_dir" && "${npm[@]}" install --no-audit --no-fund --loglevel=error >/dev/null)
fi
