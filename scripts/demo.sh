#!/usr/bin/env bash
# The whole product on a throwaway store, each step printed with the command a user would
# type: a snapshot under a live writer, copied out with cp and checked against the volume's
# checksum at the snapshot instant; a backup and its summary; an incremental backup after
# changes; backups/ listed and compared through the mount; a restore and its check; the
# control files; metrics; the clean-up. Needs root (FUSE mounts); installs fuse3 on Debian
# when missing. Ends with OK; cleans up on every path.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v fusermount3 >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends fuse3 >/dev/null
fi
cargo build --release --quiet
export PATH="$PWD/target/release:$PATH"

size_mib=${SNARF_DEMO_MIB:-64}
work=$(mktemp -d "${TMPDIR:-/tmp}/snarf-demo.XXXXXX")
writer=""
mounted=""
cleanup() {
  status=$?
  if [ -n "$writer" ]; then kill "$writer" 2>/dev/null || true; wait "$writer" 2>/dev/null || true; fi
  if [ -n "$mounted" ] && mountpoint -q "$work/mnt" 2>/dev/null; then
    snarf umount "$work/mnt" >/dev/null 2>&1 || umount -l "$work/mnt" 2>/dev/null || true
  fi
  rm -rf -- "$work"
  [ "$status" -eq 0 ] || echo "demo: FAILED (exit $status)" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$work"

# Prints a command as a user would type it, then runs it.
run() {
  printf '\n$ %s\n' "$*"
  "$@"
}
# Same, for a pipeline or redirection, given as one string of this script's own words.
run_sh() {
  printf '\n$ %s\n' "$1"
  bash -c "$1"
}
say() {
  printf '\n# %s\n' "$*"
}
check() {
  if [ "$1" != "$2" ]; then
    echo "demo: $3: $1 != $2" >&2
    exit 1
  fi
  echo "  ok: $3"
}
sum() { sha256sum -- "$1" | cut -d' ' -f1; }

say "A store, a repository, a mount"
run snarf init store
run snarf repo init repo
mkdir mnt
run snarf mount store mnt --repo "$work/repo"
mounted=1
run dd if=/dev/urandom of=mnt/live/vm1.img bs=1M count="$size_mib" status=none
run ls -l mnt/live

say "A writer keeps rewriting vm1.img at random places (in the background)"
# It pauses when asked (the file 'pause' exists), so the demo can take the volume's checksum
# at the very instant of a snapshot; otherwise it never stops.
(
  while :; do
    if [ -e pause ]; then
      : >paused
      while [ -e pause ]; do sleep 0.01; done
      rm -f paused
    fi
    dd if=/dev/urandom of=mnt/live/vm1.img bs=64K count=4 seek=$((RANDOM % (size_mib * 16 - 4))) \
      conv=notrunc status=none
  done
) &
writer=$!
sleep 1

say "Snapshot under the live writer (the writer pauses only so we can checksum the instant)"
: >pause
while [ ! -e paused ]; do sleep 0.01; done
at_snapshot=$(sum mnt/live/vm1.img)
echo "  sha256 of vm1.img at the snapshot instant: $at_snapshot"
run mkdir mnt/snapshots/nightly
rm -f pause
sleep 0.5
run cp --sparse=always mnt/snapshots/nightly/vm1.img copy.img
check "$(sum copy.img)" "$at_snapshot" "the copy equals vm1.img at the snapshot instant"
live_now=$(sum mnt/live/vm1.img)
[ "$live_now" != "$at_snapshot" ] && echo "  ok: the live volume has moved on meanwhile ($live_now)"

say "A backup of the snapshot, with its summary"
printf '\n$ %s\n' "snarf backup mnt nightly"
snarf backup mnt nightly | tee summary-nightly.txt
first=$(awk 'NR == 1 && $1 == "backup" { print $2 }' summary-nightly.txt)
[ -n "$first" ] || { echo "demo: no backup id in the summary" >&2; exit 1; }

say "Changes, then an incremental backup that reads only the changed snarfs (handed to the mount with --wait, so control/jobs lists it)"
sleep 1
run mkdir mnt/snapshots/later
printf '\n$ %s\n' "snarf backup mnt later --wait"
snarf backup mnt later --wait | tee summary-later.txt
grep -q "incremental from $first" summary-later.txt
echo "  ok: incremental from $first"

say "Committed backups, read through the mount"
run ls mnt/backups/
run cmp "mnt/backups/$first/vm1.img" copy.img
echo "  ok: backups/$first/vm1.img is byte for byte the snapshot"
run snarf backups repo

say "A restore, and its check"
run snarf restore repo "$first" restored
check "$(sum restored/vm1.img)" "$at_snapshot" "the restored volume equals vm1.img at the snapshot instant"

say "The control files"
run cat mnt/control/jobs
run cat mnt/control/status
run cat mnt/control/finishing
run_sh "snarf metrics mnt | grep -E '^snarf_(volume_write_bytes_total|jobs|last_backup)'"

say "Clean-up"
kill "$writer"; wait "$writer" 2>/dev/null || true; writer=""
run rmdir mnt/snapshots/nightly mnt/snapshots/later
run snarf umount mnt
mounted=""
echo
echo OK
