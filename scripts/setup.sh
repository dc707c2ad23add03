#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install mlcomponent into it, editable.
# Usage: scripts/setup.sh [EXTRAS]   e.g. "examples" or "examples,kubernetes,test"
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-examples}"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: mlcomponent needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  echo "setup: $python cannot create virtual environments (no venv/ensurepip); on Debian or Ubuntu: apt-get install python3-venv" >&2
  exit 1
fi
# A .venv left half-made by an interrupted run (no working pip) is made again.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  rm -rf .venv
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
fi
stamp=".venv/.installed-$(echo "$extras" | tr ',' '-')"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # setuptools prints an "Editable installation" banner (a warning) even under --quiet.
  PYTHONWARNINGS="ignore:Editable installation" \
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
  touch "$stamp"
fi
