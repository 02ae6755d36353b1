#!/usr/bin/env bash
# Scale benchmark: what a backup costs on a huge, thin volume, and whether that grows with
# what changed rather than with the volume's size. Measured in this one run:
#
#   * a 1 TiB sparse live volume holding 1 GiB in 256 scattered 4 MiB extents (half random,
#     half text, so it compresses about 2:1), a full backup of a snapshot of it, then 10
#     incremental backups, each after 1% of the allocated data was rewritten in 64 KiB-aligned
#     pieces; for each backup: wall time, bytes the daemon read (rchar), repository growth,
#     the compressed size of the changed data (zstd -3 on each changed 64 KiB snarf), peak RSS
#     of the job and of the daemon;
#   * the daemon's RSS with the 1 TiB volume mounted and idle (a fresh daemon);
#   * the last backup restored to a sparse file and compared, extent by extent and at probes in
#     the holes, with the live volume (a wrong byte fails the run);
#   * the same layout on a 64 GiB volume for snarf, restic and borg (plain file for the peers),
#     a full backup and SNARF_SCALE_PEER_INCR incrementals each, as ratios.
#
# Targets, printed with PASS/MISS: full backup of the 1 TiB volume under 10 s; each
# incremental's repository growth at most 1.1x the compressed changed data plus 2 MiB; daemon
# RSS under 64 MiB with the 1 TiB volume mounted and idle. (The snapshot-read and compressor
# targets of the same issue are in bench-mount.sh and bench-backup.sh.)
#
# Needs root (FUSE). Installs restic, borgbackup, zstd and time from Debian when missing.
#   SNARF_SCALE_SIZE       the big volume (default 1T)
#   SNARF_SCALE_INCR       incrementals on it (default 10)
#   SNARF_SCALE_PEER_SIZE  the volume for the comparison with restic and borg (default 64G)
#   SNARF_SCALE_PEER_INCR  incrementals in the comparison (default 3)
#   SNARF_BENCH_DIR        where to work (default: a new directory under /var/tmp)
#   SNARF_BIN              a snarf binary to use instead of building target/release/snarf
set -euo pipefail
cd "$(dirname "$0")/.."

size=${SNARF_SCALE_SIZE:-1T}
incr=${SNARF_SCALE_INCR:-10}
peer_size=${SNARF_SCALE_PEER_SIZE:-64G}
peer_incr=${SNARF_SCALE_PEER_INCR:-3}
extents=256
extent=$((4 << 20))
snarf_size=$((64 << 10))
started=$(date +%s)
say() { printf '[bench-scale %4ss] %s\n' "$(($(date +%s) - started))" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (FUSE)"

need=()
command -v restic >/dev/null 2>&1 || need+=(restic)
command -v borg >/dev/null 2>&1 || need+=(borgbackup)
command -v zstd >/dev/null 2>&1 || need+=(zstd)
[ -x /usr/bin/time ] || need+=(time)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ -n "${SNARF_BIN:-}" ]; then
  snarf=$SNARF_BIN
else
  cargo build --release --quiet
  snarf=$PWD/target/release/snarf
fi

work=${SNARF_BENCH_DIR:-$(mktemp -d /var/tmp/snarf-bench-scale.XXXXXX)}
mkdir -p "$work"
store=$work/store
mnt=$work/mnt
repo=$work/repo
logs=$work/logs
mkdir -p "$mnt" "$logs"
daemon=
cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  if grep -qF " $mnt " /proc/self/mountinfo 2>/dev/null; then
    "$snarf" umount -- "$mnt" >/dev/null 2>&1 || umount -l -- "$mnt"
  fi
  [ "$rc" = 0 ] || say "failed (exit $rc); logs were in $logs"
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
dirsize() { du -sb "$1" | awk '{ print $1 }'; }
rchar() { awk '/^rchar/ { print $2 }' "/proc/$1/io"; }
hwm() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status"; } # KiB
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; } # KiB
reset_hwm() { echo 5 >"/proc/$1/clear_refs"; }
maxrss() { awk -F': ' '/Maximum resident set size/ { print $2 }' "$1"; } # KiB
pass() { awk -v x="$1" -v t="$2" 'BEGIN { print (x <= t) ? "PASS" : "MISS" }'; }

# The layout and the rewrites, deterministic: python writes them into FILE (a live volume or a
# plain file) and prints the changed snarfs' compressed size (zstd -3 each) for rewrites.
layout() { # file volume_size → writes the extents
  python3 - "$1" "$2" "$extents" "$extent" <<'EOF'
import os, random, sys
path, size, n, ext = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(7)
slots = size // ext
where = sorted(rng.sample(range(slots), n))
line = b"The quick brown fox jumps over the lazy dog; block %d of a thin volume.\n"
fd = os.open(path, os.O_WRONLY)
for k, s in enumerate(where):
    half = ext // 2
    text = line % k
    data = rng.randbytes(half) + (text * (half // len(text) + 1))[:half]
    os.pwrite(fd, data, s * ext)
os.fsync(fd)
os.close(fd)
print(" ".join(str(s * ext) for s in where))
EOF
}
rewrite() { # file round offsets_file snarf_size → rewrites 1% of the allocated data
  python3 - "$1" "$2" "$3" "$4" "$extents" "$extent" <<'EOF'
import os, random, subprocess, sys
path, rnd, offs, snarf, n, ext = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
starts = [int(x) for x in open(offs).read().split()]
rng = random.Random(1000 + rnd)
total = n * ext // 100  # 1% of the allocated bytes
pieces = max(1, total // (4 * snarf))
fd = os.open(path, os.O_WRONLY)
compressed = 0
done = set()
for _ in range(pieces):
    base = rng.choice(starts)
    at = base + rng.randrange(ext // (4 * snarf)) * 4 * snarf
    if at in done:
        continue
    done.add(at)
    data = rng.randbytes(2 * snarf) + (b"rewritten %d " % rnd) * (2 * snarf // 12 + 1)
    data = data[: 4 * snarf]
    os.pwrite(fd, data, at)
    for i in range(4):
        z = subprocess.run(["zstd", "-3", "-q", "-c"], input=data[i * snarf:(i + 1) * snarf], capture_output=True, check=True)
        compressed += len(z.stdout)
os.fsync(fd)
os.close(fd)
print(compressed, len(done) * 4 * snarf)
EOF
}
verify_restore() { # restored live offsets_file volume_size
  python3 - "$1" "$2" "$3" "$4" "$extent" <<'EOF'
import os, random, sys
a, b, offs, size, ext = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if os.path.getsize(a) != size:
    sys.exit(f"VERIFICATION FAILED: {a} is {os.path.getsize(a)} bytes, not {size}")
fa, fb = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
for o in [int(x) for x in open(offs).read().split()]:
    if os.pread(fa, ext, o) != os.pread(fb, ext, o):
        sys.exit(f"VERIFICATION FAILED: the extent at {o} differs")
rng = random.Random(3)
for _ in range(256):
    o = rng.randrange(size - 4096)
    if os.pread(fa, 4096, o) != os.pread(fb, 4096, o):
        sys.exit(f"VERIFICATION FAILED: bytes at {o} differ")
print("restored volume equal to the snapshot (every extent, 256 probes)")
EOF
}

# ---------- snarf on the big volume ----------
bytes=$(numfmt --from=iec "$size")
peer_bytes=$(numfmt --from=iec "$peer_size")
say "work directory $work; volume $size with $extents x 4 MiB extents; $incr incrementals"
fmt=()
"$snarf" repo init --help 2>/dev/null | grep -q -- '--format' && fmt=(--format 2)
"$snarf" repo init "${fmt[@]}" -- "$repo" >"$logs/repo-init.out"
"$snarf" init --snarf-size "$snarf_size" -- "$store" >"$logs/init.out"
mountit() {
  local out
  out=$("$snarf" mount "--repo=$repo" -- "$store" "$mnt")
  daemon=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out")
  [ -n "$daemon" ] || die "no daemon pid in: $out"
}
mountit
vol=$mnt/live/big.img
truncate -s "$bytes" "$vol"
say "writing the extents"
layout "$vol" "$bytes" >"$work/offsets"
sync

say "remounting: daemon RSS with the volume mounted and idle"
"$snarf" umount -- "$mnt" >/dev/null
mountit
sleep 1
cat "$mnt/control/status" >/dev/null
idle_rss=$(rss "$daemon")

declare -a B_T B_READ B_GROW B_COMP B_JOB B_DAEMON
backup_round() { # name
  local name=$1 t0 r0 s0
  mkdir "$mnt/snapshots/$name"
  sync
  reset_hwm "$daemon"
  r0=$(rchar "$daemon")
  s0=$(dirsize "$repo")
  t0=$(now)
  /usr/bin/time -v -o "$logs/$name.time" "$snarf" backup "--repo=$repo" -- "$mnt" "$name" >"$logs/$name.out" 2>"$logs/$name.err" ||
    die "backup $name failed: $(tail -n 5 "$logs/$name.err")"
  B_T+=("$(since "$t0")")
  B_READ+=("$(($(rchar "$daemon") - r0))")
  B_GROW+=("$(($(dirsize "$repo") - s0))")
  B_JOB+=("$(maxrss "$logs/$name.time")")
  B_DAEMON+=("$(hwm "$daemon")")
}
say "full backup"
backup_round s0
B_COMP+=("-")
prev=s0
for i in $(seq "$incr"); do
  read -r comp _ < <(rewrite "$vol" "$i" "$work/offsets" "$snarf_size")
  B_COMP+=("$comp")
  backup_round "s$i"
  rmdir "$mnt/snapshots/$prev"
  prev=s$i
  say "incremental $i: ${B_T[$i]} s"
done
say "restoring the last backup and comparing it with the snapshot"
last=$(awk '/^backup .* of snapshot/ { print $2; exit }' "$logs/$prev.out")
[ -n "$last" ] || die "no backup id in $(cat "$logs/$prev.out")"
t0=$(now)
"$snarf" restore --volume big.img -- "$repo" "$last" "$work/restored" >"$logs/restore.out" 2>&1 ||
  die "restore failed: $(tail -n 5 "$logs/restore.out")"
restore_s=$(since "$t0")
restored=$work/restored/big.img
[ -f "$restored" ] || restored=$work/restored
say "$(verify_restore "$restored" "$mnt/snapshots/$prev/big.img" "$work/offsets" "$bytes")"
restored_alloc=$(du -B1 "$restored" | awk '{ print $1 }')
rm -rf "$work/restored"
rmdir "$mnt/snapshots/$prev"

# ---------- the comparison: the same layout on a smaller volume ----------
say "comparison on $peer_size: snarf, restic, borg"
pvol=$mnt/live/peer.img
plain=$work/peer.img
truncate -s "$peer_bytes" "$pvol" "$plain"
layout "$pvol" "$peer_bytes" >"$work/peer-offsets"
layout "$plain" "$peer_bytes" >/dev/null
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$work/cache/restic BORG_BASE_DIR=$work/cache/borg
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
restic -r "$work/restic" init --repository-version 2 >"$logs/restic-init.out" 2>&1
borg init --encryption=none "$work/borg" >"$logs/borg-init.out" 2>&1
"$snarf" repo init "${fmt[@]}" -- "$work/prepo" >/dev/null
declare -A PT PG
run_peer() { # tool round
  local t0 s0 r=$2 d
  case $1 in
    snarf) d=$work/prepo; mkdir "$mnt/snapshots/p$r"; s0=$(dirsize "$d"); sync; t0=$(now)
      "$snarf" backup "--repo=$d" --volume peer.img -- "$mnt" "p$r" >"$logs/p-snarf-$r.out" 2>&1 ||
        die "snarf backup p$r failed: $(tail -n 5 "$logs/p-snarf-$r.out")"
      [ "$r" -gt 0 ] && rmdir "$mnt/snapshots/p$((r - 1))" ;;
    restic) d=$work/restic; s0=$(dirsize "$d"); sync; t0=$(now)
      (cd "$work" && restic -r "$d" backup --host bench peer.img >"$logs/p-restic-$r.out" 2>&1) || die "restic failed" ;;
    borg) d=$work/borg; s0=$(dirsize "$d"); sync; t0=$(now)
      (cd "$work" && borg create --compression zstd,3 "$d::r$r" peer.img >"$logs/p-borg-$r.out" 2>&1) || die "borg failed" ;;
  esac
  sync
  PT[$1,$r]=$(since "$t0")
  PG[$1,$r]=$(($(dirsize "$d") - s0))
}
for r in $(seq 0 "$peer_incr"); do
  if [ "$r" -gt 0 ]; then
    rewrite "$pvol" "$r" "$work/peer-offsets" "$snarf_size" >/dev/null
    rewrite "$plain" "$r" "$work/peer-offsets" "$snarf_size" >/dev/null
  fi
  for tool in snarf restic borg; do
    run_peer "$tool" "$r"
    say "$peer_size round $r: $tool ${PT[$tool,$r]} s"
  done
done

# ---------- report ----------
echo
echo "snarf scale benchmark: $size volume holding $(mib $((extents * extent))) MiB in $extents extents, $(nproc) cores"
printf '%-13s %8s %12s %12s %14s %10s %11s\n' "backup" "time s" "read MiB" "repo +MiB" "changed zst MiB" "job RSS" "daemon RSS"
for i in $(seq 0 "$incr"); do
  label=$([ "$i" = 0 ] && echo full || echo "incr $i")
  comp=${B_COMP[$i]}
  printf '%-13s %8s %12s %12s %14s %9sM %10sM\n' "$label" "${B_T[$i]}" "$(mib "${B_READ[$i]}")" "$(mib "${B_GROW[$i]}")" \
    "$([ "$comp" = - ] && echo - || mib "$comp")" "$((B_JOB[$i] / 1024))" "$((B_DAEMON[$i] / 1024))"
done
echo "restore of the last backup: $restore_s s, $(mib "$restored_alloc") MiB allocated in the restored file"
echo
echo "target: full backup of the $size volume in ${B_T[0]} s (< 10 s): $(pass "${B_T[0]}" 10)"
worst=0 worst_i=0
for i in $(seq 1 "$incr"); do
  r=$(awk -v g="${B_GROW[$i]}" -v c="${B_COMP[$i]}" 'BEGIN { printf "%.3f", g / (1.1 * c + 2 * 1048576) }')
  if awk -v r="$r" -v w="$worst" 'BEGIN { exit !(r > w) }'; then worst=$r; worst_i=$i; fi
done
echo "target: each incremental's growth <= 1.1x compressed changed data + 2 MiB; worst is incr $worst_i at ${worst}x of that bound (<= 1.00): $(pass "$worst" 1.0)"
echo "target: daemon RSS idle with the $size volume mounted $((idle_rss / 1024)) MiB (< 64 MiB): $(pass "$idle_rss" 65535)"
echo
echo "comparison on $peer_size (same layout; restic and borg back up a plain file), seconds and repository growth:"
printf '%-9s %16s %16s %16s %10s %10s\n' "round" "snarf" "restic" "borg" "restic/sn" "borg/sn"
for r in $(seq 0 "$peer_incr"); do
  label=$([ "$r" = 0 ] && echo full || echo "incr $r")
  printf '%-9s %7ss %6sM %7ss %6sM %7ss %6sM %9sx %9sx\n' "$label" \
    "${PT[snarf,$r]}" "$(mib "${PG[snarf,$r]}")" "${PT[restic,$r]}" "$(mib "${PG[restic,$r]}")" \
    "${PT[borg,$r]}" "$(mib "${PG[borg,$r]}")" \
    "$(awk -v a="${PT[restic,$r]}" -v b="${PT[snarf,$r]}" 'BEGIN { printf "%.1f", a / b }')" \
    "$(awk -v a="${PT[borg,$r]}" -v b="${PT[snarf,$r]}" 'BEGIN { printf "%.1f", a / b }')"
done
echo "(ratios above 1 mean snarf is faster)"
