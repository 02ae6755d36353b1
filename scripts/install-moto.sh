#!/usr/bin/env bash
# Installs the S3 server that the S3 repository tests and bench-backup.sh run on loopback:
# moto's server (PyPI moto[server]; it implements conditional PutObject, ranged GETs and
# multipart uploads), into target/s3-test-server/venv of this checkout, once: a later run
# finds it there and does nothing. Prints the path of its moto_server executable.
set -euo pipefail
cd "$(dirname "$0")/.."
MOTO_VERSION=5.2.5
moto_dir=$PWD/target/s3-test-server
if [ "$(cat "$moto_dir/version" 2>/dev/null)" != "$MOTO_VERSION" ] || [ ! -x "$moto_dir/venv/bin/moto_server" ]; then
  echo "install-moto.sh: installing the S3 test server (moto $MOTO_VERSION) into $moto_dir" >&2
  rm -rf "$moto_dir"
  mkdir -p "$moto_dir"
  py=python3
  if ! "$py" -m venv "$moto_dir/venv" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    rm -rf "$moto_dir/venv"
    py=/usr/bin/python3
    "$py" -m venv "$moto_dir/venv"
  fi
  "$moto_dir/venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  echo "$MOTO_VERSION" >"$moto_dir/version"
fi
echo "$moto_dir/venv/bin/moto_server"
