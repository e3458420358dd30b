#!/usr/bin/env bash
# Install what the benchmarks need, by package name, under bench/ only:
#   - the npm packages of bench/package.json (yjs, y-protocols, lib0, ws, y-websocket, and
#     the anchors @y/websocket-server and @hocuspocus/server), from package-lock.json;
#     optionally @hocuspocus/extension-sqlite, whose better-sqlite3 npm builds from source;
#   - bench/.venv-anchors: pycrdt-websocket 0.16 and uvicorn (with websockets and uvloop)
#     in a venv of their own, so the project's .venv stays as it is.
# modi-sync itself runs from the project's .venv (see the top-level README).
set -euo pipefail
cd "$(dirname "$0")"

npm ci --no-audit --no-fund

if [ ! -x .venv-anchors/bin/python ]; then
    python3 -m venv .venv-anchors
fi
.venv-anchors/bin/pip install -q 'pycrdt-websocket>=0.16,<0.17' uvicorn websockets uvloop

# Optional: py-spy, to see where a server spends its time (bench/README.md).
# .venv-anchors/bin/pip install -q py-spy
echo "bench: ready"
