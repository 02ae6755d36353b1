#!/usr/bin/env bash
# Converge benchmark: a backup of a live volume under a steady random-write load (fio,
# 4 KiB to 64 KiB writes, rate-limited), as a snapshot backup and as a converge backup
# (snarf backup MOUNT --converge), measured in this one run against the same load:
#
#   * each backup's time, and converge's as a ratio to the snapshot backup's;
#   * the peak of the old contents held for the backup (pre-images in memory plus on disk,
#     sampled from control/status.json every 10 ms), and converge's as a ratio;
#   * converge's passes, bytes copied again and how long its final freeze was held;
#   * the writers' throughput during each backup against the same load with no backup.
#
# Needs root (FUSE). Installs fio on Debian when missing.
#   SNARF_BENCH_SIZE   volume size (default 1G)
#   SNARF_BENCH_RATE   the load's write rate (fio --rate, default 16m)
#   SNARF_BENCH_DIR    where to work (default: a new directory under /var/tmp, on disk)
set -euo pipefail
cd "$(dirname "$0")/.."

size=${SNARF_BENCH_SIZE:-1G}
load_rate=${SNARF_BENCH_RATE:-16m}
if ! command -v fio >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends fio >/dev/null
fi
cargo build --release --quiet
snarf=$PWD/target/release/snarf

work=${SNARF_BENCH_DIR:-$(mktemp -d /var/tmp/snarf-bench-converge.XXXXXX)}
mkdir -p "$work"
store=$work/store
mnt=$work/mnt
repo=$work/repo
mkdir -p "$mnt"
fio_pid=
cleanup() {
  if [ -n "$fio_pid" ]; then kill "$fio_pid" 2>/dev/null || true; wait "$fio_pid" 2>/dev/null || true; fi
  if grep -q " $mnt " /proc/self/mountinfo 2>/dev/null; then
    "$snarf" umount -- "$mnt" >/dev/null 2>&1 || umount -l -- "$mnt" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

"$snarf" init -- "$store" >/dev/null
"$snarf" repo init -- "$repo" >/dev/null
"$snarf" mount -- "$store" "$mnt" >/dev/null
bytes=$(numfmt --from=iec "$size")
mib=$((bytes >> 20))
vol=$mnt/live/vol.img
python3 scripts/bench-data.py generate "$bytes" 1 "$vol" >/dev/null
sync

now() { date +%s.%N; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "inf"; else printf "%.2f", a / b }'; }

# The load: random writes of 4 KiB to 64 KiB at $load_rate for $1 seconds (or until
# SIGINT), its terse report into file $2.
load_args=(--name=load --filename="$vol" --size="$size" --rw=randwrite --bsrange=4k-64k
  --rate="$load_rate" --ioengine=psync --time_based --output-format=terse --terse-version=3)
load() { fio "${load_args[@]}" --runtime="$1" --output="$2" >/dev/null 2>&1; }
# The write bandwidth in MiB/s of a terse fio report.
mibs() { awk -F';' 'NF > 50 { v = $48 } END { printf "%.1f", v / 1024 }' "$1"; }

# Held old contents in bytes (memory + disk tiers) now.
held() {
  python3 - "$mnt/control/status.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(s["preimage_memory"]["used"] + s["preimage_disk"]["used"])
PY
}

# Runs one backup under the load, 2 s after the load started: `under_load snapshot ARGS`
# takes a snapshot then and backs it up, `under_load converge ARGS` runs a converge
# backup. Prints "seconds peak_bytes load_MiB/s"; leaves the job's output in $work/out.
under_load() {
  local kind=$1 out=$work/load.out peak=0 h t0 t1 job
  shift
  fio "${load_args[@]}" --runtime=600 --output="$out" >/dev/null 2>&1 &
  fio_pid=$!
  sleep 2
  t0=$(now)
  if [ "$kind" = snapshot ]; then
    mkdir "$mnt/snapshots/s"
    set -- "$mnt" s "$@"
  else
    set -- "$mnt" --converge "$@"
  fi
  "$snarf" backup "$@" --repo "$repo" >"$work/out" 2>/dev/null &
  job=$!
  while kill -0 "$job" 2>/dev/null; do
    h=$(held); [ "$h" -gt "$peak" ] && peak=$h
    sleep 0.01
  done
  wait "$job"
  t1=$(now)
  if [ "$kind" = snapshot ]; then rmdir "$mnt/snapshots/s"; fi
  kill -INT "$fio_pid" 2>/dev/null || true
  wait "$fio_pid" 2>/dev/null || true
  fio_pid=
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') $peak $(mibs "$out")"
}

echo "snarf converge benchmark: $mib MiB volume, load randwrite 4k-64k at $load_rate, $(nproc) cores"
load 10 "$work/alone.out"
base_load=$(mibs "$work/alone.out")
echo "load alone: $base_load MiB/s"

# A first full backup, so both measured backups are incrementals of the same kind.
"$snarf" backup "$mnt" --converge --repo "$repo" >/dev/null 2>&1
read -r snap_s snap_peak snap_load < <(under_load snapshot)
echo "snapshot backup under load: $snap_s s, old contents held at peak $((snap_peak >> 20)) MiB, load $snap_load MiB/s ($(ratio "$snap_load" "$base_load")x alone)"
read -r conv_s conv_peak conv_load < <(under_load converge)
echo "converge backup under load: $conv_s s, old contents held at peak $((conv_peak >> 20)) MiB, load $conv_load MiB/s ($(ratio "$conv_load" "$base_load")x alone)"
sed -n 's/^converged/  converged/p' "$work/out"
echo
echo "converge / snapshot time: $(ratio "$conv_s" "$snap_s")x"
echo "converge / snapshot peak old contents held: $conv_peak / $snap_peak bytes"

# A full backup of each kind too, where the copy is long.
read -r fsnap_s fsnap_peak fsnap_load < <(under_load snapshot --mode full)
read -r fconv_s fconv_peak fconv_load < <(under_load converge --mode full)
echo "full snapshot backup under load: $fsnap_s s, peak held $((fsnap_peak >> 20)) MiB, load $(ratio "$fsnap_load" "$base_load")x alone"
echo "full converge backup under load: $fconv_s s, peak held $((fconv_peak >> 20)) MiB, load $(ratio "$fconv_load" "$base_load")x alone"
sed -n 's/^converged/  converged/p' "$work/out"
echo "full converge / full snapshot time: $(ratio "$fconv_s" "$fsnap_s")x; peak held $fconv_peak / $fsnap_peak bytes"
