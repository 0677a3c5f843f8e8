#!/usr/bin/env bash
# Refreshes every lock in launcher/locks/ to the newest versions pyproject.toml's ranges allow.
# Uses a pinned uv in its own venv under ~/.cache (never downloads a Python: UV_PYTHON_DOWNLOADS=never).
# Then run `bash scripts/test.sh`: it reinstalls .venv from the new lock before testing.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
tools="${XDG_CACHE_HOME:-$HOME/.cache}/cluster-launcher/uv-$UV_VERSION"
if [ ! -x "$tools/bin/uv" ]; then
  echo "==> Installing uv $UV_VERSION into $tools"
  rm -rf "$tools"
  "${PYTHON:-python3}" -m venv "$tools"
  "$tools/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
export UV_PYTHON_DOWNLOADS=never
"${PYTHON:-python3}" scripts/locks.py compile "$tools/bin/uv"
echo "==> Done. Review with: git diff --stat launcher/locks/"
