#!/usr/bin/env bash
# The static checks, as CI runs them: ruff (lint) and mypy --strict (types), both configured in
# pyproject.toml. Both always run; the exit status is non-zero when either fails.
# Usage: scripts/lint.sh   (after scripts/setup.sh; PYTHON_BIN picks another interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON_BIN:-.venv/bin/python}"
status=0
printf '\n== ruff\n' >&2
"$python" -m ruff check --output-format concise mlcomponent tests benchmarks || status=1
printf '\n== mypy\n' >&2
"$python" -m mypy || status=1
exit "$status"
