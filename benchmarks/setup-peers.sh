#!/usr/bin/env bash
# Install the peers the benchmark compares against, each in its own virtualenv
# (their pins conflict with each other and with ours): Seldon MLServer, KServe.
set -euo pipefail
cd "$(dirname "$0")"
python="${PYTHON:-python3}"
make_venv() {  # name, packages...
  local name=$1; shift
  if [ ! -x ".venv-$name/bin/python" ]; then "$python" -m venv ".venv-$name"; fi
  ".venv-$name/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
}
make_venv mlserver "mlserver==1.7.1" "scikit-learn>=1.4" "joblib>=1.3" &
make_venv kserve "kserve==0.21.0" &
wait
# wrk drives HTTP/1.1; h2load (nghttp2-client) drives gRPC, a C load generator that is not the bottleneck
missing=""
command -v wrk >/dev/null || missing="$missing wrk"
command -v h2load >/dev/null || missing="$missing nghttp2-client"
if [ -n "$missing" ]; then apt-get update -qq && apt-get install -y -qq $missing >/dev/null; fi
