#!/usr/bin/env bash
# Installs the Debian packages the tests use when they are missing:
#   chromium      — the JupyterLab browser test (Playwright drives /usr/bin/chromium; no browser download)
#   redis-server  — Redis session-store tests
#   wrk           — HTTP throughput benchmark (benchmarks/, not the tests)
# As root it uses apt-get; otherwise it says what to install and the tests that
# need a missing binary are skipped with that reason.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if ((${#need[@]} == 0)); then exit 0; fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
else
  echo "note: missing system packages: ${need[*]} (install them with apt as root); tests needing them will be skipped" >&2
fi
