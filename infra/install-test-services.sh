#!/usr/bin/env bash
# Installs the real services the test suite starts on 127.0.0.1 and stops again:
# the Prometheus Pushgateway (Debian package). The S3 server (SeaweedFS) comes from PyPI
# with the test extras, so it is already in the virtualenv.
set -euo pipefail
if command -v prometheus-pushgateway >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null 2>&1; then
    echo "install-test-services: prometheus-pushgateway is missing; install it (apt-get install prometheus-pushgateway) or the metrics tests will be skipped" >&2
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus-pushgateway >/dev/null
# The package starts a system service where an init system runs; the tests start their own.
$SUDO service prometheus-pushgateway stop >/dev/null 2>&1 || true
