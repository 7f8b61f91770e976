#!/usr/bin/env bash
# Installs the real services the test suite starts on 127.0.0.1 and stops again:
# the Prometheus Pushgateway, and Prometheus itself for `promtool`, which checks infra/prometheus.yml
# and runs the alert rules' unit tests (tests/unit/latentmill-alerts.test.yml), and Chromium, in which
# the report tests open `latentmill report`'s page headless (all Debian packages). The S3 server
# (SeaweedFS) comes from PyPI with the test extras, so it is already in the virtualenv.
set -euo pipefail
missing=()
command -v prometheus-pushgateway >/dev/null 2>&1 || missing+=(prometheus-pushgateway)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" = 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "install-test-services: ${missing[*]} missing; install with apt-get install ${missing[*]}," \
         "or the tests that need them will be skipped" >&2
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages start system services where an init system runs; the tests start their own.
for service in prometheus-pushgateway prometheus; do
    $SUDO service "$service" stop >/dev/null 2>&1 || true
done
