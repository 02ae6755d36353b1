#!/usr/bin/env bash
# Mount benchmark: snarf's FUSE mount against the raw volume file, measured in this one run
# on the same data, warm page cache on both sides.
#
#   * sequential read of a snapshot file with cat and dd bs=1M, first pass (through FUSE)
#     and second pass (the kernel keeps snapshot pages cached), as ratios to reading the
#     raw backing file;
#   * fio: sequential 1 MiB writes with fdatasync, and random 4 KiB writes, into live/
#     without a snapshot, with a fresh snapshot (first writes capture pre-images) and again
#     over already-preserved snarfs, for persistent and for volatile snapshots, each as a
#     ratio to the same fio job on a raw file; random 4 KiB writes with fdatasync, first
#     pass under each kind of snapshot; the cost of first writes with fdatasync against no
#     snapshot (PASS/MISS against 1.5x), persistent against volatile;
#   * crash-proof change tracking on vs off, random 4 KiB + fdatasync, no snapshot
#     (PASS/MISS against 1.05x);
#   * live/ in its default direct-I/O mode against the kernel's buffered path (--live-io):
#     sequential durable writes, random writes with and without fdatasync, reads;
#   * snapshots/ in its default direct-I/O mode against buffered (--snapshot-io): a snapshot
#     read with dd bs=1M, O_DIRECT dd, cat and tar after two other snapshots were read;
#   * the daemon's peak memory (VmHWM).
#
# Needs root (FUSE). Installs fio on Debian when missing.
#   SNARF_BENCH_SIZE  volume size (default 1G)
#   SNARF_BENCH_DIR   where to work (default: a new directory under /var/tmp, on disk)
#   SNARF_BENCH_RUNTIME  seconds per random-write fio job (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."

size=${SNARF_BENCH_SIZE:-1G}
runtime=${SNARF_BENCH_RUNTIME:-5}
if ! command -v fio >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends fio >/dev/null
fi
cargo build --release --quiet
snarf=$PWD/target/release/snarf

work=${SNARF_BENCH_DIR:-$(mktemp -d /var/tmp/snarf-bench-mount.XXXXXX)}
mkdir -p "$work"
store=$work/store
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
  if grep -q " $mnt " /proc/self/mountinfo 2>/dev/null; then
    "$snarf" umount -- "$mnt" >/dev/null 2>&1 || umount -l -- "$mnt" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

"$snarf" init -- "$store" >/dev/null
out=$("$snarf" mount -- "$store" "$mnt")
daemon=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out")
bytes=$(numfmt --from=iec "$size")
mib=$((bytes >> 20))

now() { date +%s.%N; }
# seconds → MiB/s
rate() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.0f", b / 1048576 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
timed() { local t0 t1; t0=$(now); "$@" >/dev/null; t1=$(now); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }'; }
fio_job() { # file rw bs extra... → "bandwidth_KiB/s iops" of the job's writes, or reads
  local file=$1 rw=$2 bs=$3; shift 3
  fio --name=bench --filename="$file" --size="$size" --rw="$rw" --bs="$bs" --ioengine=psync \
      --output-format=terse --terse-version=3 "$@" 2>/dev/null |
    awk -F';' -v rw="$rw" '{ if (rw ~ /read/) print $7, $8; else print $48, $49 }'
}

echo "snarf mount benchmark: $mib MiB volume, store in $work, $(nproc) cores"
echo

# ---------- reads ----------
vol=$mnt/live/vol.img
raw=$store/volumes/vol.img
dd if=/dev/urandom of="$vol" bs=1M count="$mib" status=none conv=fsync
cat "$raw" >/dev/null # warm the page cache on the raw side
blk=$(stat -c %o "$vol")
# Reads are short (well under a second each) on a noisy virtual machine: every case runs
# three times, each first pass on a new snapshot (cold kernel cache), and the median is kept.
median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
declare -a raw_cats cat1s cat2s raw_dds dd1s dd2s
for round in 1 2 3; do
  mkdir "$mnt/snapshots/cat$round"
  snap=$mnt/snapshots/cat$round/vol.img
  raw_cats+=("$(timed cat "$raw")")
  cat1s+=("$(timed cat "$snap")")
  cat2s+=("$(timed cat "$snap")")
  rmdir "$mnt/snapshots/cat$round"
  mkdir "$mnt/snapshots/dd$round"
  snap=$mnt/snapshots/dd$round/vol.img
  raw_dds+=("$(timed dd if="$raw" of=/dev/null bs=1M status=none)")
  dd1s+=("$(timed dd if="$snap" of=/dev/null bs=1M status=none)")
  dd2s+=("$(timed dd if="$snap" of=/dev/null bs=1M status=none)")
  rmdir "$mnt/snapshots/dd$round"
done
raw_cat=$(median3 "${raw_cats[@]}"); cat1=$(median3 "${cat1s[@]}"); cat2=$(median3 "${cat2s[@]}")
raw_dd=$(median3 "${raw_dds[@]}"); dd1=$(median3 "${dd1s[@]}"); dd2=$(median3 "${dd2s[@]}")

printf '%-52s %12s %8s\n' "read" "MiB/s" "vs raw"
printf '%-52s %12s %8s\n' "raw volume file, cat" "$(rate "$raw_cat")" "1.00x"
printf '%-52s %12s %8s\n' "snapshot, cat, first pass" "$(rate "$cat1")" "$(ratio "$raw_cat" "$cat1")x"
printf '%-52s %12s %8s\n' "snapshot, cat, second pass" "$(rate "$cat2")" "$(ratio "$raw_cat" "$cat2")x"
printf '%-52s %12s %8s\n' "raw volume file, dd bs=1M" "$(rate "$raw_dd")" "1.00x"
printf '%-52s %12s %8s\n' "snapshot, dd bs=1M, first pass" "$(rate "$dd1")" "$(ratio "$raw_dd" "$dd1")x"
printf '%-52s %12s %8s\n' "snapshot, dd bs=1M, second pass" "$(rate "$dd2")" "$(ratio "$raw_dd" "$dd2")x"
echo "(snapshot and live files report st_blksize=$blk, so cat and cp read in $((blk >> 10)) KiB requests)"
echo

# ---------- writes ----------
rawfile=$work/raw-write.img
wvol=$mnt/live/write.img
dd if=/dev/urandom of="$rawfile" bs=1M count="$mib" status=none conv=fsync
dd if=/dev/urandom of="$wvol" bs=1M count="$mib" status=none conv=fsync
sync

# Durable sequential writes: 256 MiB of 1 MiB writes, each followed by fdatasync.
seq_job() { fio_job "$1" write 1M --io_size=256M --fdatasync=1 --end_fsync=1 | awk '{ print $1 }'; }
# Random 4 KiB writes for a fixed time (page cache; no sync).
rnd_job() { fio_job "$1" randwrite 4k --time_based --runtime="$runtime" --randseed=7 | awk '{ print $2 }'; }
# The disk of a virtual machine is noisy: every case runs three times, interleaved with
# the raw baseline, and the median is kept.
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
# Each snapshot case runs for a persistent snapshot (the default: pre-images durable,
# group-committed, before the write they protect) and a volatile one (memory first).
take() { echo "create $1 $2" > "$mnt/control/snapshot"; }
declare -a raw_seq none_seq raw_rnd none_rnd
declare -a first_seq_persistent kept_seq_persistent first_rnd_persistent kept_rnd_persistent
declare -a first_seq_volatile kept_seq_volatile first_rnd_volatile kept_rnd_volatile
for round in 1 2 3; do
  sync; raw_seq+=("$(seq_job "$rawfile")")
  sync; none_seq+=("$(seq_job "$wvol")")
  for kind in persistent volatile; do
    take "w$kind$round" "$kind"
    sync; eval "first_seq_$kind+=(\"\$(seq_job \"\$wvol\")\")"
    sync; eval "kept_seq_$kind+=(\"\$(seq_job \"\$wvol\")\")"
    rmdir "$mnt/snapshots/w$kind$round"
  done
done
for round in 1 2 3; do
  sync; raw_rnd+=("$(rnd_job "$rawfile")")
  sync; none_rnd+=("$(rnd_job "$wvol")")
  for kind in persistent volatile; do
    take "r$kind$round" "$kind"
    sync; eval "first_rnd_$kind+=(\"\$(rnd_job \"\$wvol\")\")"
    sync; eval "kept_rnd_$kind+=(\"\$(rnd_job \"\$wvol\")\")"
    [ "$round" = 3 ] && eval "held_$kind=\$(awk '\$1 == \"preimage-memory\" || \$1 == \"preimage-disk\" { print \$2 }' \"\$mnt/control/status\" | paste -sd/)"
    rmdir "$mnt/snapshots/r$kind$round"
  done
done
# Random 4 KiB writes + fdatasync (the targets are with fdatasync): without a snapshot, and
# the first pass under a fresh persistent and a fresh volatile snapshot.
sync_rnd_job() { fio_job "$1" randwrite 4k --time_based --runtime="$runtime" --randseed="$2" --fdatasync=1 | awk '{ print $2 }'; }
declare -a none_srnd first_srnd_persistent first_srnd_volatile
for round in 1 2 3; do
  sync; none_srnd+=("$(sync_rnd_job "$wvol" "3$round")")
  for kind in persistent volatile; do
    take "s$kind$round" "$kind"
    sync; eval "first_srnd_$kind+=(\"\$(sync_rnd_job \"\$wvol\" 4$round)\")"
    rmdir "$mnt/snapshots/s$kind$round"
  done
done
raw_seq_bw=$(median "${raw_seq[@]}"); none_seq_bw=$(median "${none_seq[@]}")
raw_rnd_iops=$(median "${raw_rnd[@]}"); none_rnd_iops=$(median "${none_rnd[@]}")

kib() { awk -v k="$1" 'BEGIN { printf "%.0f MiB/s", k / 1024 }'; }
printf '%-52s %14s %8s %12s\n' "write (fio)" "rate" "vs raw" "vs no-snap"
printf '%-52s %14s %8s %12s\n' "raw file, seq 1 MiB + fdatasync" "$(kib "$raw_seq_bw")" "1.00x" "-"
printf '%-52s %14s %8s %12s\n' "live/, no snapshot" "$(kib "$none_seq_bw")" "$(ratio "$none_seq_bw" "$raw_seq_bw")x" "1.00x"
for kind in persistent volatile; do
  eval "first=\$(median \"\${first_seq_$kind[@]}\"); kept=\$(median \"\${kept_seq_$kind[@]}\")"
  printf '%-52s %14s %8s %12s\n' "live/, $kind snapshot, first writes" "$(kib "$first")" "$(ratio "$first" "$raw_seq_bw")x" "$(ratio "$first" "$none_seq_bw")x"
  printf '%-52s %14s %8s %12s\n' "live/, $kind snapshot, preserved snarfs" "$(kib "$kept")" "$(ratio "$kept" "$raw_seq_bw")x" "$(ratio "$kept" "$none_seq_bw")x"
done
printf '%-52s %14s %8s %12s\n' "raw file, random 4 KiB" "$raw_rnd_iops IOPS" "1.00x" "-"
printf '%-52s %14s %8s %12s\n' "live/, no snapshot" "$none_rnd_iops IOPS" "$(ratio "$none_rnd_iops" "$raw_rnd_iops")x" "1.00x"
for kind in persistent volatile; do
  eval "first=\$(median \"\${first_rnd_$kind[@]}\"); kept=\$(median \"\${kept_rnd_$kind[@]}\")"
  printf '%-52s %14s %8s %12s\n' "live/, $kind snapshot, first pass" "$first IOPS" "$(ratio "$first" "$raw_rnd_iops")x" "$(ratio "$first" "$none_rnd_iops")x"
  printf '%-52s %14s %8s %12s\n' "live/, $kind snapshot, preserved snarfs" "$kept IOPS" "$(ratio "$kept" "$raw_rnd_iops")x" "$(ratio "$kept" "$none_rnd_iops")x"
done
none_srnd_iops=$(median "${none_srnd[@]}")
printf '%-52s %14s %8s %12s\n' "live/, no snapshot, random 4 KiB + fdatasync" "$none_srnd_iops IOPS" "-" "1.00x"
for kind in persistent volatile; do
  eval "first=\$(median \"\${first_srnd_$kind[@]}\")"
  printf '%-52s %14s %8s %12s\n' "live/, $kind snapshot, first pass + fdatasync" "$first IOPS" "-" "$(ratio "$first" "$none_srnd_iops")x"
done
echo "(pre-images held at the end of the random-write snapshots, memory/disk: persistent $held_persistent, volatile $held_volatile)"
echo
verdict() { awk -v x="$1" -v t="$2" 'BEGIN { print (x <= t) ? "PASS" : "MISS" }'; }
# Cost = time per write against no snapshot: the inverse of the rate ratio.
echo "first writes under a snapshot, cost against no snapshot with fdatasync (target <= 1.5x):"
for kind in persistent volatile; do
  eval "fseq=\$(median \"\${first_seq_$kind[@]}\"); frnd=\$(median \"\${first_srnd_$kind[@]}\")"
  cseq=$(ratio "$none_seq_bw" "$fseq"); crnd=$(ratio "$none_srnd_iops" "$frnd")
  eval "cseq_$kind=\$cseq; crnd_$kind=\$crnd"
  printf '  %-11s seq 1 MiB: %sx %s; random 4 KiB: %sx %s\n' "$kind" "$cseq" "$(verdict "$cseq" 1.5)" "$crnd" "$(verdict "$crnd" 1.5)"
done
echo "  persistent against volatile: seq 1 MiB $(ratio "$cseq_persistent" "$cseq_volatile")x, random 4 KiB $(ratio "$crnd_persistent" "$crnd_volatile")x"
echo

# ---------- crash-proof change tracking: the write-intent bitmap's marks ----------
# Random 4 KiB writes + fdatasync, no snapshot, right after a backup committed (every region
# of the write-intent bitmap clean: the first write into each pays a durable mark) against
# the same job with every region marked already (marks cost nothing: tracking as good as off).
"$snarf" repo init -- "$work/track-repo" >/dev/null
declare -a marked clean
for round in 1 2 3; do
  sync; marked+=("$(sync_rnd_job "$wvol" 21)")
  mkdir "$mnt/snapshots/track$round"
  "$snarf" backup --repo="$work/track-repo" -- "$mnt" "track$round" >/dev/null
  rmdir "$mnt/snapshots/track$round"
  sync; clean+=("$(sync_rnd_job "$wvol" 21)")
done
tm=$(median "${marked[@]}"); tc=$(median "${clean[@]}")
tcost=$(ratio "$tm" "$tc")
printf '%-52s %14s\n' "random 4 KiB + fdatasync, no snapshot, tracking off (regions marked)" "$tm IOPS"
printf '%-52s %14s\n' "random 4 KiB + fdatasync, no snapshot, tracking on (after a backup)" "$tc IOPS"
echo "target: crash-proof tracking on vs off, random 4 KiB + fdatasync, no snapshot: ${tcost}x (<= 1.05x): $(verdict "$tcost" 1.05)"
echo

peak=$(awk '/VmHWM/ { print $2, $3 }' "/proc/$daemon/status")

# ---------- live/ in direct I/O (the default) against the kernel's buffered path ----------
# The same jobs on a live volume under each mode, interleaved over three rounds (median kept):
# the mount is remounted between modes, so each round pays one remount per mode.
iofile=live/io.img
live_suite() { # → "seq_write_KiB/s rnd_write_iops rnd_sync_iops seq_read_s rnd_read_iops"
  local f=$mnt/$iofile a b c d e
  a=$(fio_job "$f" write 1M --io_size=256M --fdatasync=1 --end_fsync=1 | awk '{ print $1 }')
  b=$(fio_job "$f" randwrite 4k --time_based --runtime="$runtime" --randseed=11 | awk '{ print $2 }')
  c=$(fio_job "$f" randwrite 4k --time_based --runtime="$runtime" --randseed=12 --fdatasync=1 | awk '{ print $2 }')
  d=$(timed dd if="$f" of=/dev/null bs=1M status=none)
  e=$(fio_job "$f" randread 4k --time_based --runtime="$runtime" --randseed=13 | awk '{ print $2 }')
  echo "$a $b $c $d $e"
}
remount() { # live-io [snapshot-io]
  "$snarf" umount -- "$mnt" >/dev/null
  "$snarf" mount --live-io="$1" --snapshot-io="${2:-direct}" -- "$store" "$mnt" >/dev/null
}
dd if=/dev/urandom of="$mnt/$iofile" bs=1M count="$mib" status=none conv=fsync
declare -a dseq drnd dsync dread drr bseq brnd bsync bread brr
for round in 1 2 3; do
  remount direct; sync
  read -r a b c d e < <(live_suite); dseq+=("$a"); drnd+=("$b"); dsync+=("$c"); dread+=("$d"); drr+=("$e")
  remount buffered; sync
  read -r a b c d e < <(live_suite); bseq+=("$a"); brnd+=("$b"); bsync+=("$c"); bread+=("$d"); brr+=("$e")
done
printf '%-52s %14s %14s %10s\n' "live/ I/O mode" "direct" "buffered" "direct/buf"
row() { printf '%-52s %14s %14s %10s\n' "$1" "$2" "$3" "$(ratio "$4" "$5")x"; }
ds=$(median "${dseq[@]}"); bs=$(median "${bseq[@]}")
row "seq 1 MiB writes + fdatasync" "$(kib "$ds")" "$(kib "$bs")" "$ds" "$bs"
dr=$(median "${drnd[@]}"); br=$(median "${brnd[@]}")
row "random 4 KiB writes" "$dr IOPS" "$br IOPS" "$dr" "$br"
dy=$(median "${dsync[@]}"); by=$(median "${bsync[@]}")
row "random 4 KiB writes + fdatasync" "$dy IOPS" "$by IOPS" "$dy" "$by"
dd_=$(median3 "${dread[@]}"); bd_=$(median3 "${bread[@]}")
row "sequential read, dd bs=1M" "$(rate "$dd_") MiB/s" "$(rate "$bd_") MiB/s" "$bd_" "$dd_"
dq=$(median "${drr[@]}"); bq=$(median "${brr[@]}")
row "random 4 KiB reads" "$dq IOPS" "$bq IOPS" "$dq" "$bq"
echo "(direct/buf above 1.00x means direct I/O is faster; the rule: direct is the default if no row is below 0.90x)"
echo

# ---------- snapshots/ in direct I/O (the default) against the kernel's buffered path ----------
# Each round, under each --snapshot-io mode: two other snapshots of the same volume are read
# first (their pages fill the cache, as after a backup of other volumes), then a third is read
# with plain buffered read(2) (dd bs=1M, cat, tar) and with O_DIRECT (dd iflag=direct).
snap_suite() { # → "dd_s direct_s cat_s tar_s"
  local n=$1 s a b c d
  for other in a b; do
    mkdir "$mnt/snapshots/io-$other$n"
    cat "$mnt/snapshots/io-$other$n/vol.img" >/dev/null
  done
  mkdir "$mnt/snapshots/io-c$n"
  s=$mnt/snapshots/io-c$n/vol.img
  a=$(timed dd if="$s" of=/dev/null bs=1M status=none)
  b=$(timed dd if="$s" of=/dev/null bs=1M iflag=direct status=none)
  c=$(timed cat "$s")
  # tar writing to /dev/null skips reading file data; through a pipe it reads everything.
  d=$(timed sh -c 'tar -C "$1" -cf - vol.img | cat >/dev/null' tar "$(dirname "$s")")
  for x in a b c; do rmdir "$mnt/snapshots/io-$x$n"; done
  echo "$a $b $c $d"
}
declare -a sdd sdir scat star bdd bdir bcat btar
for round in 1 2 3; do
  remount direct direct; sync
  read -r a b c d < <(snap_suite "d$round"); sdd+=("$a"); sdir+=("$b"); scat+=("$c"); star+=("$d")
  remount direct buffered; sync
  read -r a b c d < <(snap_suite "b$round"); bdd+=("$a"); bdir+=("$b"); bcat+=("$c"); btar+=("$d")
done
remount direct direct
printf '%-52s %14s %14s\n' "snapshot read, after two other snapshots were read" "direct" "buffered"
srow() { printf '%-52s %14s %14s\n' "$1" "$(rate "$2") MiB/s" "$(rate "$3") MiB/s"; }
x1=$(median3 "${sdd[@]}"); y1=$(median3 "${bdd[@]}"); srow "dd bs=1M (buffered read(2))" "$x1" "$y1"
x2=$(median3 "${sdir[@]}"); y2=$(median3 "${bdir[@]}"); srow "dd bs=1M iflag=direct (O_DIRECT)" "$x2" "$y2"
x3=$(median3 "${scat[@]}"); y3=$(median3 "${bcat[@]}"); srow "cat" "$x3" "$y3"
x4=$(median3 "${star[@]}"); y4=$(median3 "${btar[@]}"); srow "tar -cf - | cat" "$x4" "$y4"
sratio=$(ratio "$x2" "$x1")
atleast() { awk -v x="$1" -v t="$2" 'BEGIN { print (x >= t) ? "PASS" : "MISS" }'; }
echo "target: buffered snapshot read (dd bs=1M) ${sratio}x of the O_DIRECT read of the same snapshot, default mode (>= 0.90x): $(atleast "$sratio" 0.9)"
echo "(with --snapshot-io buffered it is $(ratio "$y2" "$y1")x; a buffered read at $(rate "$x1") MiB/s against a warm raw read at $(rate "$raw_dd") MiB/s is $(ratio "$raw_dd" "$x1")x raw)"
echo
echo "daemon peak memory (VmHWM): $peak (pre-image memory budget 256 MiB)"
# A limit of this machine, for reading the first-pass figures: faulting in fresh memory.
t=$(timed dd if=/dev/zero of=/dev/null bs=1G count=1 status=none)
echo "machine: allocating and zeroing a fresh 1 GiB buffer takes $(awk -v s="$t" 'BEGIN { printf "%.2f", s }') s"
echo
echo "targets: snapshot read first pass >= 0.25x raw (cat and dd); buffered >= 0.9x O_DIRECT;"
echo "         live sequential writes without a snapshot >= 0.7x raw;"
echo "         first sequential writes with a snapshot cost <= 1.5x (rate >= 0.67x of no-snapshot);"
echo "         random 4 KiB writes with a snapshot keep >= 0.7x of the no-snapshot IOPS."
