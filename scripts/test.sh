#!/usr/bin/env bash
# The README's second command: install everything the tests need, then run the whole suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k manifest).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n== %s\n' "$*" >&2; }

say "python environment (.venv)"
scripts/setup.sh examples,kubernetes,test

say "system packages: chromium (browser tests)"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || { echo "test: could not install Debian's chromium with apt-get; the browser tests need it" >&2; exit 1; }
  else
    echo "test: Debian's chromium is missing; install it (sudo apt-get install chromium)" >&2; exit 1
  fi
fi

k8s=../shared/tools/k8s
if [ -x "$k8s/ensure.sh" ]; then
  say "kube-apiserver and etcd (../shared/tools/k8s/ensure.sh)"
  "$k8s/ensure.sh" >/dev/null || { echo "test: $k8s/ensure.sh failed; the Kubernetes tests need it" >&2; exit 1; }
fi

say "pytest"
exec .venv/bin/python -m pytest "$@"
