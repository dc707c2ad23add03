#!/usr/bin/env bash
# The README's first command: set up, train the iris example's model into its local
# model box, and serve it on http://127.0.0.1:8080 (no S3, no cluster).
# Arguments go to `mlcomponent serve`; a --host or --port given there replaces the default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh examples
model=examples/iris/data/boxes/iris-data/users/developer/file_groups/models/iris.joblib
[ -f "$model" ] || .venv/bin/python examples/iris/train.py
defaults=()
case " $* " in *" --host "* | *" --host="*) ;; *) defaults+=(--host "${HOST:-127.0.0.1}") ;; esac
case " $* " in *" --port "* | *" --port="*) ;; *) defaults+=(--port "${PORT:-8080}") ;; esac
exec .venv/bin/mlcomponent serve examples/iris/mlcomponent.yaml "${defaults[@]}" "$@"
