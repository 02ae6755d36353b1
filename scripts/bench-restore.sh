#!/usr/bin/env bash
# Restore benchmark: snarf's live restore (`snarf restore --live`) against a plain `snarf
# restore` and restic's restore of the same backup, measured in this one run.
#
#   * a seeded volume (scripts/bench-data.py), backed up from a snarf mount into a snarf
#     repository, and from a plain file into a restic repository;
#   * plain restores, each until its data is on disk (the command, then sync): `snarf
#     restore` and `restic restore`;
#   * live restore 1, with a reader: time until the command returns, until the first byte
#     of MOUNT/live/NAME reads, until a full `cat` of it ends while the background copy runs,
#     and until the copy is done (its LIVE-RESTORE row in control/status says `done`, its
#     bitmap is gone); then the first byte and a full `cat` again after the restore;
#   * live restore 2, no reader: the total time from the command until the copy is done,
#     against the plain restores (the target);
#   * every restore and every cat is checked against the source's checksum: a wrong byte
#     fails the run.
#
# Page cache warm for every tool (repositories just written). Prints a table with ratios and
# the targets with PASS/MISS (first byte < 1 s; live total <= 1.2x plain snarf restore).
# Exits non-zero only on an error or a verification failure, never on a missed target.
#
# Needs root (FUSE). Installs restic, fuse3, time and python3 from Debian when missing.
#   SNARF_BENCH_SIZE  volume size (default 2G; 512M while developing)
#   SNARF_BENCH_SEED  data seed (default 1)
#   SNARF_BENCH_DIR   where to work (default: a new directory under /var/tmp, on disk, not
#                     tmpfs); everything the run makes goes there and is removed at the end
#   SNARF_BENCH_KEEP  set to 1 to keep the work directory (repositories, logs) afterwards
#   SNARF_BIN         a snarf binary to use instead of building target/release/snarf
set -euo pipefail
cd "$(dirname "$0")/.."
repo_root=$PWD

size_arg=${SNARF_BENCH_SIZE:-2G}
seed=${SNARF_BENCH_SEED:-1}
started=$(date +%s)
load_start=$(cut -d" " -f1-3 /proc/loadavg)

say() { printf '[bench-restore %4ss] %s\n' "$(($(date +%s) - started))" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (the snarf mount)"
[ -e /dev/fuse ] || die "/dev/fuse is missing: FUSE is needed for the mount"

# ---------- tools ----------
need=()
command -v restic >/dev/null 2>&1 || need+=(restic)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v python3 >/dev/null 2>&1 || need+=(python3)
[ -x /usr/bin/time ] || need+=(time)
if [ "${#need[@]}" -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ -n "${SNARF_BIN:-}" ]; then
  snarf=$SNARF_BIN
else
  say "building snarf (cargo build --release)"
  cargo build --release --quiet
  snarf=$repo_root/target/release/snarf
fi
[ -x "$snarf" ] || die "no snarf binary at $snarf"

bytes=$(numfmt --from=iec "$size_arg")
[ "$bytes" -ge $((16 << 20)) ] || die "SNARF_BENCH_SIZE=$size_arg is too small (16M at least)"
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.0f", b / 1048576 }')

# ---------- work directory and cleanup ----------
if [ -n "${SNARF_BENCH_DIR:-}" ]; then
  mkdir -p "$SNARF_BENCH_DIR"
  work=$(mktemp -d "$SNARF_BENCH_DIR/bench-restore.XXXXXX")
else
  work=$(mktemp -d /var/tmp/snarf-bench-restore.XXXXXX)
fi
fstype=$(stat -f -c %T "$work")
[ "$fstype" != tmpfs ] || die "$work is on tmpfs; point SNARF_BENCH_DIR at a disk"

data=$work/data
src=$data/vol.img
store=$work/snarf-store
mnt=$work/snarf-mnt
srepo=$work/repo-snarf
rrepo=$work/repo-restic
logs=$work/logs
mkdir -p "$data" "$mnt" "$logs" "$work/cache"
export RESTIC_PASSWORD=snarf-bench
export RESTIC_CACHE_DIR=$work/cache/restic
daemon=

is_mounted() { grep -qF " $1 " /proc/self/mountinfo 2>/dev/null; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if is_mounted "$mnt"; then
    "$snarf" umount -- "$mnt" >/dev/null 2>&1 || "$snarf" umount --lazy -- "$mnt" >/dev/null 2>&1 || umount -l -- "$mnt"
  fi
  if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
    sleep 2
    kill -0 "$daemon" 2>/dev/null && kill "$daemon" 2>/dev/null
  fi
  if [ "$rc" != 0 ]; then
    say "failed (exit $rc); logs of the commands are in $logs"
    [ "${SNARF_BENCH_KEEP:-}" = 1 ] || say "(set SNARF_BENCH_KEEP=1 to keep them)"
  fi
  if [ "${SNARF_BENCH_KEEP:-}" = 1 ]; then
    say "kept $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------- measuring ----------
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
declare -A T # seconds, by key
sum() { sha256sum "$1" | awk '{ print $1 }'; }
verify() { # what file
  local got
  got=$(sum "$2")
  [ "$got" = "$sum_src" ] || die "VERIFICATION FAILED: $1: $2 has sha256 $got, the source has $sum_src"
  say "verified $1: sha256 equal to the source"
}
# A command until its data is on disk: the command, then sync (earlier dirty data is flushed
# before, untimed). Output to $logs/key.out and .err; a failure stops the run.
synced() {
  local key=$1 t0; shift
  sync
  t0=$(now)
  "$@" >"$logs/$key.out" 2>"$logs/$key.err" || { tail -n 20 "$logs/$key.err" >&2; die "$key failed"; }
  sync
  T[$key]=$(since "$t0")
}
# The state of volume NAME's LIVE-RESTORE row in control/status (empty without one).
live_state() {
  awk -v v="$1" '/^LIVE-RESTORE/ { in_t = 1; next } /^$/ { in_t = 0 } in_t && $1 == v {
      for (i = 2; i <= NF; i++) if ($i == "ok" || $i == "unreachable" || $i == "done" || $i == "damaged") { print $i; exit } }' \
    "$mnt/control/status"
}
# Waits until the live restore of NAME is done (at most an hour, so a stuck copy fails).
wait_done() {
  local i
  for i in $(seq 360000); do
    [ "$(live_state "$1")" = done ] && return 0
    sleep 0.01
  done
  die "the live restore of $1 did not finish"
}
# Starts the live restore of the backup as NAME; T[key_cmd] = the command's time, t_live = when.
live() { # key name
  t_live=$(now)
  "$snarf" restore --volume vol.img --live "$mnt" --as "$2" -- "$srepo" "$id" >"$logs/$1.out" 2>"$logs/$1.err" ||
    { cat "$logs/$1.err" >&2; die "snarf restore --live failed"; }
  T[${1}_cmd]=$(since "$t_live")
}
first_byte() { head -c 1 -- "$1" >/dev/null; }

# ---------- data and backups (untimed) ----------
say "work directory $work ($fstype); volume $mib MiB, seed $seed"
gen=$(python3 scripts/bench-data.py generate "$bytes" "$seed" "$src")
say "$gen"
sum_src=$(sum "$src")
"$snarf" repo init --compression 3 -- "$srepo" >"$logs/repo-init.out"
"$snarf" init -- "$store" >"$logs/init.out"
out=$("$snarf" mount -- "$store" "$mnt")
daemon=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out")
[ -n "$daemon" ] || die "could not read the daemon pid from: $out"
dd if="$src" of="$mnt/live/vol.img" bs=1M status=none conv=fsync
mkdir "$mnt/snapshots/b"
say "snarf: backup"
"$snarf" backup "--repo=$srepo" -- "$mnt" b >"$logs/backup.out" 2>"$logs/backup.err" || die "snarf backup failed"
id=$(awk '/^backup .* of snapshot/ { print $2; exit }' "$logs/backup.out")
[ -n "$id" ] || die "no backup id in snarf's output: $(cat "$logs/backup.out")"
rmdir "$mnt/snapshots/b"
rm "$mnt/live/vol.img"
say "restic: backup"
restic -r "$rrepo" init --repository-version 2 >"$logs/restic-init.out" 2>&1
(cd "$data" && restic -r "$rrepo" backup --host bench vol.img >"$logs/restic-backup.out" 2>&1) || die "restic backup failed"

# ---------- plain restores ----------
say "snarf: plain restore"
synced plain "$snarf" restore --volume vol.img -- "$srepo" "$id" "$work/restore-snarf"
verify "snarf restore" "$work/restore-snarf/vol.img"
rm -rf "$work/restore-snarf"
say "restic: restore"
synced restic restic -r "$rrepo" restore latest --target "$work/restore-restic"
verify "restic restore" "$work/restore-restic/vol.img"
rm -rf "$work/restore-restic"

# ---------- live restore 1: a reader during the copy, then after ----------
sync
say "snarf: live restore with a reader"
live live1 vol1.img
first_byte "$mnt/live/vol1.img"
T[live1_first]=$(since "$t_live")
t0=$(now)
cat "$mnt/live/vol1.img" >/dev/null
T[live1_cat]=$(since "$t0")
state=$(live_state vol1.img)
wait_done vol1.img
T[live1_total]=$(since "$t_live")
got=$(sum "$mnt/live/vol1.img")
[ "$got" = "$sum_src" ] || die "VERIFICATION FAILED: cat of live/vol1.img during the live restore: sha256 $got"
say "verified cat during the live restore (the copy was ${state:-gone} when it ended)"
[ "$state" != done ] || NOTE_CAT="(the copy had ended before the cat did: the cat overlapped it only in part)"
t0=$(now)
first_byte "$mnt/live/vol1.img"
T[after_first]=$(since "$t0")
t0=$(now)
cat "$mnt/live/vol1.img" >/dev/null
T[after_cat]=$(since "$t0")
verify "cat after the live restore" "$mnt/live/vol1.img"
rm "$mnt/live/vol1.img"

# ---------- live restore 2: no reader, the total ----------
sync
say "snarf: live restore, no reader"
live live2 vol2.img
wait_done vol2.img
sync
T[live2_total]=$(since "$t_live")
verify "live restore without a reader" "$mnt/live/vol2.img"
left=$(find "$store/state/restore" -type f | wc -l)
[ "$left" = 0 ] || die "$left restored bitmap(s) left after the restores ended"
elapsed=$(($(date +%s) - started))

# ---------- report ----------
fmt_s() { awk -v s="$1" 'BEGIN { printf (s < 10 ? "%.3f s" : "%.1f s"), s }'; }
fmt_rate() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.0f MiB/s", b / 1048576 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b <= 0) print "n/a"; else printf "%.2f", a / b }'; }
row() { printf '%-58s %12s %12s %14s %14s\n' "$@"; }
trow() { row "$1" "$(fmt_s "${T[$2]}")" "$(fmt_rate "${T[$2]}")" "$(ratio "${T[$2]}" "${T[plain]}")x" "$(ratio "${T[$2]}" "${T[restic]}")x"; }

echo "snarf restore benchmark: $mib MiB volume (seed $seed), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) memory"
echo "data: $gen"
echo "setup: snarf $("$snarf" --version | awk '{ print $2 }') (repository zstd -3, not encrypted, 64 KiB snarfs) and"
echo "       $(restic version | awk '{ print $1, $2 }') (repository v2, encrypted) on a local disk ($fstype); page cache warm"
echo "timing: plain restores until on disk (command, then sync); live restores from the command until"
echo "       the first byte reads, until a cat of live/NAME to /dev/null ends (checked by sha256 afterwards, untimed), until control/status says done"
echo "load average at start/end: $load_start / $(cut -d' ' -f1-3 /proc/loadavg); run took ${elapsed} s"
echo
echo "ratios: the time over the plain snarf restore's and over restic's (<1 = faster)"
row "figure" "time" "MiB/s" "/plain snarf" "/restic"
trow "plain snarf restore" plain
trow "restic restore" restic
row "live restore: the command returns" "$(fmt_s "${T[live1_cmd]}")" "" "" ""
row "live restore: first byte, from the command's start" "$(fmt_s "${T[live1_first]}")" "" "" ""
trow "live restore: full cat during the copy" live1_cat
trow "live restore with that reader: until done" live1_total
row "after the live restore: first byte" "$(fmt_s "${T[after_first]}")" "" "" ""
trow "after the live restore: full cat" after_cat
trow "live restore, no reader: until done (total)" live2_total
[ -n "${NOTE_CAT:-}" ] && echo "$NOTE_CAT"
echo

lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 < b + 0) }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 <= b + 0) }'; }
verdict() { if "$@"; then echo PASS; else echo MISS; fi; }
total_ratio=$(ratio "${T[live2_total]}" "${T[plain]}")
echo "targets"
printf '%-4s  %-66s %s\n' "$(verdict lt "${T[live1_first]}" 1)" "first byte of a live restore < 1 s" "$(fmt_s "${T[live1_first]}")"
printf '%-4s  %-66s %s\n' "$(verdict le "$total_ratio" 1.2)" "live restore total <= 1.2x plain snarf restore (live/plain)" "$total_ratio"
echo "all restores and cats verified equal to the source (sha256)"
