#!/usr/bin/env bash
# The README's second command: install everything the tests need, then run the whole suite and,
# beside it, the static checks (scripts/lint.sh: ruff and mypy); it fails when either fails.
# Extra arguments go to pytest (e.g. scripts/test.sh -k manifest), and then only pytest runs.
#
# Needs Python 3.11+ and git. As root on Debian/Ubuntu it also installs, with apt-get, Debian's
# `chromium` (the browser tests), `kubernetes-client` (kubectl, for the Kubernetes tests) and curl,
# and it uses ../shared/tools/k8s (a real kube-apiserver and etcd) when that folder is there.
# Whatever it cannot install it says, and goes on: pytest then lists the tests that need it
# as "not run, because ..." at the end (on CI, with CI set, those tests fail instead).
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n== %s\n' "$*" >&2; }
warn() { printf 'test: %s\n' "$*" >&2; }

say "python environment (.venv)"
scripts/setup.sh examples,kubernetes,test

apt_updated=
# apt_install COMMAND PACKAGE WHAT: install Debian's PACKAGE (no recommends) unless COMMAND exists.
apt_install() {
  local command=$1 package=$2 what=$3
  command -v "$command" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    warn "$command is missing and this is not root: run 'sudo apt-get install --no-install-recommends $package', or the $what are not run"
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    warn "$command is missing and there is no apt-get here: install $package (Debian's name), or the $what are not run"
    return 0
  fi
  if [ -z "$apt_updated" ]; then
    apt-get update -qq >/dev/null 2>&1 || warn "apt-get update failed; trying the package lists already here"
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null 2>&1 \
    || warn "apt-get install $package failed; the $what are not run"
}

say "system packages: chromium (browser tests), kubectl (Kubernetes tests), curl (README tour), docker-registry (ship e2e)"
apt_install chromium chromium "browser tests"
apt_install kubectl kubernetes-client "Kubernetes tests"
apt_install curl curl "README's curl steps"
apt_install docker-registry docker-registry "ship e2e's image registry"

k8s=../shared/tools/k8s
if [ -x "$k8s/ensure.sh" ]; then
  say "kube-apiserver and etcd ($k8s/ensure.sh)"
  if ! out=$("$k8s/ensure.sh" 2>&1); then
    printf '%s\n' "$out" | tail -n 3 >&2
    warn "$k8s/ensure.sh failed (it installs etcd with apt as root); the Kubernetes tests are not run"
  fi
else
  warn "$k8s is not here (it sits beside the repository); the Kubernetes tests are not run"
fi

say "pytest"
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
status=0
.venv/bin/python -m pytest || status=$?
say "static checks (scripts/lint.sh)"
scripts/lint.sh || { warn "ruff or mypy failed (above)"; [ "$status" != 0 ] || status=1; }
exit "$status"
