#!/usr/bin/env bash
# The main job on an embedded default: a throwaway store, a mount, a volume written while a
# snapshot is taken, the snapshot copied out with cp and its checksum compared, the mount
# cleaned up. Needs root (FUSE mounts); installs fuse3 on Debian when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v fusermount3 >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends fuse3 >/dev/null
fi
exec cargo run --release --quiet -- demo "$@"
