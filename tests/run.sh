#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine with Python >= 3.11: installs what the tests
# use (apt and pip), compiles the Cython fast path in place, then runs pytest. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
APT_PACKAGES="gcc curl openssl wrk nghttp2-client prometheus iproute2 iptables procps testssl.sh etcd-server chromium chromium-driver fonts-noto-color-emoji redis-server redis-tools postgresql"

need_apt=""
for bin in gcc curl openssl wrk h2load promtool ip iptables ps testssl etcd chromium chromedriver redis-server redis-cli psql; do
  command -v "$bin" >/dev/null 2>&1 || need_apt=1
done
# the dashboard screenshot's mTLS lock
[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need_apt=1
if [ -n "$need_apt" ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    for i in 1 2 3; do apt-get update -qq && break || sleep 5; done
    for i in 1 2 3; do apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null && break || sleep 5; done
  else
    echo "tests/run.sh: please install: $APT_PACKAGES" >&2
  fi
fi

"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
MESHLET_REQUIRE_EXTENSIONS=1 "$PY" setup.py -q build_ext --inplace
"$PY" -m control_plane.cli version

exec "$PY" -m pytest -q "$@"
