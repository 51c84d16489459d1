#!/usr/bin/env bash
# Thin wrapper: `python -m deploy.deploy "$@"` with the repository importable and its venv if present.
# Relative paths (--config, --source) stay relative to where you run it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m deploy.deploy "$@"
