#!/usr/bin/env bash
# Installs the Debian packages the tests use when they are missing:
#   chromium      — the JupyterLab browser test (Playwright drives /usr/bin/chromium; no browser download)
#   redis-server  — Redis session-store, shared rate limit and scale-out tests
#   nginx         — the scale-out tests' load balancer (tests/test_scaleout.py starts its own
#                   nginx on free loopback ports; the system service is not needed)
#   wrk           — HTTP throughput benchmarks (benchmarks/, not the tests)
# As root it uses apt-get; otherwise it says what to install and the tests that
# need a missing binary are skipped with that reason.
set -euo pipefail
have() {  # on PATH, or in an sbin directory a non-root PATH may lack (nginx is /usr/sbin/nginx)
  command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /usr/local/sbin/$1 ]]
}
need=()
have chromium || need+=(chromium)
have redis-server || need+=(redis-server)
have nginx || need+=(nginx)
have wrk || need+=(wrk)
if ((${#need[@]} == 0)); then exit 0; fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
else
  echo "note: missing system packages: ${need[*]} (install them with apt as root); tests needing them will be skipped" >&2
fi
