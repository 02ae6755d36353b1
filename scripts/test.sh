#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine, then runs
# every test (unit tests beside the code, mount-based tests under tests/) with cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
# man -l renders every page snarf generate writes (tests/generate.rs).
command -v man >/dev/null 2>&1 || need+=(man-db)
command -v groff >/dev/null 2>&1 || need+=(groff-base)
# The ssh:// repository tests (tests/repo_ssh.rs) start a real sshd and log in with ssh.
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
# The metrics test parses control/metrics with the Prometheus project's own text parser.
/usr/bin/python3 -c 'import prometheus_client.parser' >/dev/null 2>&1 || need+=(python3-prometheus-client)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${need[*]}" >&2
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "test.sh: missing ${need[*]}; mount tests that need them will be skipped (install them as root to run everything)" >&2
  fi
fi

# The S3 repository tests (tests/repo_s3.rs) run moto's S3 server on loopback, installed
# once into target/s3-test-server (a later run finds it there and skips this).
bash scripts/install-moto.sh >/dev/null
# A missing S3 server is a failure here, never a silent skip.
export SNARF_REQUIRE_S3=1

# The kill -9 and power-loss suites need the crash-test fault points.
exec cargo test --features fault-injection "$@"
