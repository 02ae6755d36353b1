#!/usr/bin/env bash
# Backup benchmark: snarf against restic and borg on the same reproducible volume, measured
# in this one run, with the machine's own limits (raw read, blake3, zstd) on the same data.
#
#   * a seeded volume (scripts/bench-data.py): zero, text, log, table-row and random regions
#     of 16-512 KiB;
#   * full backup; incremental backup after 1% of the volume is rewritten in scattered 4-64 KiB
#     writes (the same bytes for every tool); restore of the incremental to a fresh directory;
#     `cat` of the backed-up volume through each tool's FUSE mount; repository size (du -sb)
#     after each backup; peak memory (/usr/bin/time -v, and VmHWM of long-running daemons);
#   * every restore and every mount read is checked against the source's checksum: a wrong
#     byte fails the run;
#   * the ssh row: the same full and incremental backups again, into a repository on the far
#     side of an sshd this script starts on loopback (its own host key, user key, config and
#     port; killed by its pid at the end): snarf to ssh:// (snarf serve), restic's sftp
#     backend, borg over ssh (borg serve). The snarf ssh:// backups are restored and checked.
#   * the encrypted row: the same full backup into an encrypted snarf repository (restic's
#     local repository, always encrypted, is its peer), against snarf's plain one;
#   * the S3 row: the same full and incremental backups into an S3 bucket on a loopback S3
#     server this script starts (moto, installed by scripts/install-moto.sh; killed by its
#     pid at the end), snarf's s3:// against restic's S3 backend on the same server. The
#     snarf S3 incremental is restored and checked.
#
# snarf backs up a snapshot of a live volume on a snarf mount (its real use); restic and borg
# back up the same bytes from a plain file on local disk. Page cache warm for all of them.
# Prints a table with ratios (>1 means snarf is better) and the targets with PASS/MISS. Exits
# non-zero only on an error or a verification failure, never on a missed target.
#
# Needs root (FUSE mounts). Installs restic, borgbackup (+python3-llfuse for borg mount), b3sum,
# zstd, time, fuse3, python3 and openssh-server/-client from Debian when missing.
#   SNARF_BENCH_SIZE  volume size (default 2G; 128M is enough while developing)
#   SNARF_BENCH_SEED  data seed (default 1)
#   SNARF_BENCH_DIR   where to work (default: a new directory under /var/tmp, on disk, not
#                     tmpfs); everything the run makes goes there and is removed at the end
#   SNARF_BENCH_KEEP  set to 1 to keep SNARF_BENCH_DIR (repositories, logs) afterwards
#   SNARF_BIN         a snarf binary to use instead of building target/release/snarf
set -euo pipefail
cd "$(dirname "$0")/.."
repo_root=$PWD

size_arg=${SNARF_BENCH_SIZE:-2G}
seed=${SNARF_BENCH_SEED:-1}
started=$(date +%s)
load_start=$(cut -d" " -f1-3 /proc/loadavg)

say() { printf '[bench-backup %4ss] %s\n' "$(($(date +%s) - started))" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (FUSE mounts for snarf, restic and borg)"
[ -e /dev/fuse ] || die "/dev/fuse is missing: FUSE is needed for the mounts"

# ---------- tools ----------
need=()
command -v restic >/dev/null 2>&1 || need+=(restic)
command -v borg >/dev/null 2>&1 || need+=(borgbackup)
command -v b3sum >/dev/null 2>&1 || need+=(b3sum)
command -v zstd >/dev/null 2>&1 || need+=(zstd)
[ -x /usr/bin/time ] || need+=(time)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v python3 >/dev/null 2>&1 || need+=(python3)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
# borg mount needs llfuse (or pyfuse3) in the Python borg runs with.
if ! command -v borg >/dev/null 2>&1 || ! /usr/bin/python3 -c 'import llfuse' >/dev/null 2>&1; then
  /usr/bin/python3 -c 'import pyfuse3' >/dev/null 2>&1 || need+=(python3-llfuse)
fi
if [ "${#need[@]}" -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
python3 -c 'import random; random.Random(1).randbytes' 2>/dev/null || die "python3 is older than 3.9 (no random.randbytes)"

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
  work=$(mktemp -d "$SNARF_BENCH_DIR/bench-backup.XXXXXX")
else
  work=$(mktemp -d /var/tmp/snarf-bench-backup.XXXXXX)
fi
fstype=$(stat -f -c %T "$work")
[ "$fstype" != tmpfs ] || die "$work is on tmpfs; point SNARF_BENCH_DIR at a disk"

data=$work/data # the plain volume file restic and borg back up
src=$data/vol.img
store=$work/snarf-store
mnt=$work/snarf-mnt
srepo=$work/repo-snarf
srepo1=$work/repo-snarf-zstd1
rrepo=$work/repo-restic
brepo=$work/repo-borg
rmnt=$work/mnt-restic
bmnt=$work/mnt-borg
logs=$work/logs
sshdir=$work/sshd        # the loopback sshd's keys, config and log
far=$work/far            # where the ssh repositories live ("the far host", same disk)
srepo_ssh=$far/repo-snarf
rrepo_ssh=$far/repo-restic
brepo_ssh=$far/repo-borg
srepo_enc=$work/repo-snarf-enc
s3dir=$work/s3           # the loopback S3 server's log
mkdir -p "$data" "$mnt" "$rmnt" "$bmnt" "$logs" "$work/cache" "$sshdir" "$far" "$s3dir"

export RESTIC_PASSWORD=snarf-bench
export RESTIC_CACHE_DIR=$work/cache/restic
export BORG_BASE_DIR=$work/cache/borg
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_CHECK_I_KNOW_WHAT_I_AM_DOING=NO
export BORG_DELETE_I_KNOW_WHAT_I_AM_DOING=NO

restic_mount_pid=
borg_mount_pid=
daemon=
sshd_pid=
s3_pid=

is_mounted() { grep -qF " $1 " /proc/self/mountinfo 2>/dev/null; }

# Unmounts a FUSE mount served by a process we started and waits for that process. The
# process may still be starting (not mounted yet), so this keeps trying; then it interrupts
# the process (restic and borg unmount on SIGINT), then terminates it, by its pid only, and
# detaches a mount that outlived it.
unmount_now() { fusermount3 -u "$1" 2>/dev/null || umount "$1" 2>/dev/null; }
stop_fuse() { # mountpoint pid
  local mp=$1 pid=$2 i sig
  for i in $(seq 50); do
    is_mounted "$mp" && unmount_now "$mp"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  for sig in INT TERM KILL; do
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
    kill -"$sig" "$pid" 2>/dev/null || true
    for i in $(seq 25); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
  done
  [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  if is_mounted "$mp"; then
    unmount_now "$mp" || umount -l "$mp" 2>/dev/null || true
  fi
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [ -n "$restic_mount_pid" ] && stop_fuse "$rmnt" "$restic_mount_pid"
  [ -n "$borg_mount_pid" ] && stop_fuse "$bmnt" "$borg_mount_pid"
  if [ -n "$sshd_pid" ]; then
    kill "$sshd_pid" 2>/dev/null
    wait "$sshd_pid" 2>/dev/null
  fi
  if [ -n "$s3_pid" ]; then
    kill "$s3_pid" 2>/dev/null
    wait "$s3_pid" 2>/dev/null
  fi
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
declare -A T   # seconds, by key
declare -A M   # peak memory in KiB, by key
declare -A SZ  # bytes, by key
declare -A C   # CPU seconds (user + system), by key
declare -A IDLE # share of the machine's CPU time left idle during the step, by key
declare -A NOTE
hz=$(getconf CLK_TCK)

# Runs a command with /usr/bin/time -v; T[key] = wall seconds, M[key] = max RSS (KiB).
# Its stdout and stderr go to $logs/key.out and $logs/key.err; a failure stops the run.
timed() {
  local key=$1 t0 t1 c0; shift
  c0=$(cpu_stat)
  t0=$(now)
  if ! /usr/bin/time -v -o "$logs/$key.time" "$@" >"$logs/$key.out" 2>"$logs/$key.err"; then
    say "command failed: $*"
    tail -n 20 "$logs/$key.err" >&2 || true
    die "$key failed"
  fi
  t1=$(now)
  T[$key]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  M[$key]=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$logs/$key.time")
  C[$key]=$(awk -F': ' '/User time|System time/ { s += $2 } END { printf "%.2f", s }' "$logs/$key.time")
  IDLE[$key]=$(idle_since "$c0")
}
# The same, timed until the data written is on disk: the command, then sync (snarf fsyncs
# what it writes itself; restic and borg are charged the same flush). Dirty data of earlier
# steps is flushed before, untimed.
synced() {
  local key=$1 t0 c0; shift
  sync
  c0=$(cpu_stat)
  timed "$key" "$@"
  t0=$(now)
  sync
  T[$key]=$(awk -v a="$t0" -v b="$(now)" -v t="${T[$key]}" 'BEGIN { printf "%.3f", t + b - a }')
  IDLE[$key]=$(idle_since "$c0")
}
# Times a command without /usr/bin/time (for pipelines and cat); output discarded.
wall() {
  local key=$1 t0 t1 c0; shift
  c0=$(cpu_stat)
  t0=$(now)
  "$@" >/dev/null
  t1=$(now)
  T[$key]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  IDLE[$key]=$(idle_since "$c0")
}
# "idle total" jiffies of the whole machine, for how busy it was (others compile here too).
cpu_stat() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print $5, t }' /proc/stat; }
idle_since() { # "idle total" from cpu_stat → percent idle since
  local i0 t0 i1 t1
  read -r i0 t0 <<<"$1"
  read -r i1 t1 < <(cpu_stat)
  awk -v i="$((i1 - i0))" -v t="$((t1 - t0))" 'BEGIN { printf "%.0f%%", (t > 0 ? 100 * i / t : 0) }'
}
hwm() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status"; } # KiB
reset_hwm() { echo 5 >"/proc/$1/clear_refs"; }
cpu_s() { awk -v hz="$hz" '{ sub(/.*\) /, ""); split($0, f, " "); printf "%.2f", (f[12] + f[13]) / hz }' "/proc/$1/stat"; }
plus() { awk -v a="$1" -v b="$2" -v c="${3:-0}" 'BEGIN { printf "%.2f", a + b - c }'; }
dirsize() { du -sb "$1" | awk '{ print $1 }'; }
sum() { sha256sum "$1" | awk '{ print $1 }'; }
# Fails the run unless FILE's checksum is the source's at that point.
verify() { # what file expected
  local got
  got=$(sum "$2")
  if [ "$got" != "$3" ]; then
    die "VERIFICATION FAILED: $1: $2 has sha256 $got, the source has $3"
  fi
  say "verified $1: sha256 equal to the source"
}
wait_for() { # path seconds
  local i
  for i in $(seq $(($2 * 5))); do
    [ -e "$1" ] && return 0
    sleep 0.2
  done
  return 1
}

# ---------- data ----------
say "work directory $work ($fstype); volume $mib MiB, seed $seed"
say "generating the volume (scripts/bench-data.py)"
gen=$(python3 scripts/bench-data.py generate "$bytes" "$seed" "$src")
say "$gen"
sum_full=$(sum "$src")

# ---------- machine limits, on the same data ----------
say "machine limits: raw read, blake3, zstd"
cat "$src" >/dev/null
wall lim_cat cat "$src"
wall lim_b3 b3sum --num-threads 2 "$src"
wall lim_b3_1 b3sum --num-threads 1 "$src"
wall lim_zstd zstd -q -3 -T2 -o "$work/limit.zst" "$src"
zst_bytes=$(stat -c %s "$work/limit.zst")
wall lim_unzstd zstd -q -d -c "$work/limit.zst"
rm -f "$work/limit.zst"
wall lim_zstd1 zstd -q -1 -T2 -c "$src"
sync
wall lim_cp sh -c 'cp "$1" "$2" && sync' sh "$src" "$work/limit.copy"
rm -f "$work/limit.copy"

# ---------- snarf: store, mount, live volume ----------
say "snarf: repository, store, mount; copying the volume into live/"
"$snarf" repo init --compression 3 -- "$srepo" >"$logs/snarf-repo-init.out"
"$snarf" init "--repo=$srepo" -- "$store" >"$logs/snarf-init.out"
mount_args=()
if "$snarf" mount --help 2>/dev/null | grep -q -- '--repo'; then
  mount_args=("--repo=$srepo")
fi
# The daemon reads freed snarfs back from the repository a backup writes to, the encrypted
# one too: it takes that repository's passphrase from the environment the mount started in.
out=$(SNARF_PASSWORD=snarf-bench "$snarf" mount "${mount_args[@]}" -- "$store" "$mnt")
daemon=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out")
[ -n "$daemon" ] || die "could not read the daemon pid from: $out"
vol=$mnt/live/vol.img
dd if="$src" of="$vol" bs=1M status=none conv=fsync
restic -r "$rrepo" init --repository-version 2 >"$logs/restic-init.out" 2>&1
borg init --encryption=none "$brepo" >"$logs/borg-init.out" 2>&1


# ---------- a loopback sshd of our own, for the ssh row ----------
# Its own host key, user key, config and port on 127.0.0.1; started here, killed by its pid in
# cleanup. The sftp subsystem is for restic; borg runs `borg serve` and snarf `snarf serve`.
say "starting an sshd on loopback (own keys, config and port) for the ssh row"
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -C snarf-bench -f "$sshdir/host_key" </dev/null
ssh-keygen -q -t ed25519 -N '' -C snarf-bench -f "$sshdir/user_key" </dev/null
cp "$sshdir/user_key.pub" "$sshdir/authorized_keys"
for try in 1 2 3 4 5; do
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$sshdir/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $sshdir/host_key
PidFile $sshdir/sshd.pid
AuthorizedKeysFile $sshdir/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
LogLevel ERROR
MaxStartups 50
MaxSessions 50
CONF
  /usr/sbin/sshd -D -e -f "$sshdir/sshd_config" </dev/null >/dev/null 2>>"$sshdir/sshd.log" &
  sshd_pid=$!
  up=
  for i in $(seq 50); do
    kill -0 "$sshd_pid" 2>/dev/null || break
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then up=1; break; fi
    sleep 0.1
  done
  [ -n "$up" ] && break
  kill "$sshd_pid" 2>/dev/null; wait "$sshd_pid" 2>/dev/null || true
  sshd_pid=
done
[ -n "$sshd_pid" ] || die "sshd did not start: $(cat "$sshdir/sshd.log")"
echo "[127.0.0.1]:$port $(cat "$sshdir/host_key.pub")" >"$sshdir/known_hosts"
# One ssh command line for all three tools: the same key, cipher and host checking. The
# cipher is AES-GCM, which this CPU does in hardware (the README recommends it for backup
# hosts); OpenSSH's default chacha20-poly1305 costs both ends several times the CPU per byte.
cat >"$sshdir/ssh_config" <<CONF
Host bench
  HostName 127.0.0.1
  Port $port
  User root
Host *
  IdentityFile $sshdir/user_key
  IdentitiesOnly yes
  UserKnownHostsFile $sshdir/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
  Ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com
  Compression no
CONF
ssh_cmd="ssh -F $sshdir/ssh_config"
ssh -F "$sshdir/ssh_config" bench true || die "ssh to the loopback sshd failed: $(cat "$sshdir/sshd.log")"
export SNARF_RSH=$ssh_cmd SNARF_REMOTE_PATH=$snarf
export BORG_RSH=$ssh_cmd
surl=ssh://root@127.0.0.1:$port$srepo_ssh
rurl=sftp:bench:$rrepo_ssh
restic_ssh=(restic -r "$rurl" -o "sftp.command=ssh -F $sshdir/ssh_config bench -s sftp")
burl=ssh://root@127.0.0.1:$port$brepo_ssh

# ---------- a loopback S3 server of our own, for the S3 row ----------
# moto's server (in memory), on a free port of 127.0.0.1, started here and killed by its pid
# in cleanup; one bucket, a prefix per tool.
say "starting an S3 server on loopback (moto) for the S3 row"
moto=$(bash scripts/install-moto.sh) || die "could not install the S3 test server (scripts/install-moto.sh)"
s3_http() { curl -s -o /dev/null -w '%{http_code}' -X "$1" "http://127.0.0.1:$s3port$2" 2>/dev/null || true; }
for try in 1 2 3 4 5; do
  s3port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$moto" -H 127.0.0.1 -p "$s3port" </dev/null >>"$s3dir/server.log" 2>&1 &
  s3_pid=$!
  up=
  for i in $(seq 300); do
    kill -0 "$s3_pid" 2>/dev/null || break
    # An HTTP status from our own child, not just a listening port.
    code=$(s3_http GET /)
    if [ -n "$code" ] && [ "$code" != 000 ]; then up=1; break; fi
    sleep 0.1
  done
  [ -n "$up" ] && break
  kill "$s3_pid" 2>/dev/null; wait "$s3_pid" 2>/dev/null || true
  s3_pid=
done
[ -n "$s3_pid" ] || die "the S3 server did not start: $(tail -n 20 "$s3dir/server.log")"
code=$(s3_http PUT /bench)
[ "$code" = 200 ] || die "creating the S3 bucket failed (HTTP $code): $(tail -n 20 "$s3dir/server.log")"
s3env=(env AWS_ENDPOINT_URL="http://127.0.0.1:$s3port" AWS_ACCESS_KEY_ID=snarf-bench AWS_SECRET_ACCESS_KEY=snarf-bench-secret AWS_REGION=us-east-1)
s3url=s3://bench/snarf
restic_s3=("${s3env[@]}" restic -r "s3:http://127.0.0.1:$s3port/bench/restic")
"${s3env[@]}" "$snarf" repo init --compression 3 -- "$s3url" >"$logs/snarf-s3-init.out" 2>&1 || die "snarf repo init $s3url: $(cat "$logs/snarf-s3-init.out")"
"${restic_s3[@]}" init --repository-version 2 >"$logs/restic-s3-init.out" 2>&1 || die "restic init on S3: $(cat "$logs/restic-s3-init.out")"
encenv=(env SNARF_PASSWORD=snarf-bench)
"${encenv[@]}" "$snarf" repo init --encryption --compression 3 -- "$srepo_enc" >"$logs/snarf-enc-init.out" 2>&1 || die "snarf repo init --encryption: $(cat "$logs/snarf-enc-init.out")"
"$snarf" repo init --compression 3 -- "$surl" >"$logs/snarf-ssh-init.out" 2>&1 || die "snarf repo init $surl: $(cat "$logs/snarf-ssh-init.out")"
"${restic_ssh[@]}" init --repository-version 2 >"$logs/restic-ssh-init.out" 2>&1 || die "restic sftp init: $(cat "$logs/restic-ssh-init.out")"
borg init --encryption=none "$burl" >"$logs/borg-ssh-init.out" 2>&1 || die "borg ssh init: $(cat "$logs/borg-ssh-init.out")"

# ---------- full backups ----------
sync
say "snarf: snapshot 'full', read once through the mount (warm cache, checks the copy)"
mkdir "$mnt/snapshots/full"
cmp "$mnt/snapshots/full/vol.img" "$src" || die "the snapshot of the live volume differs from the source"
reset_hwm "$daemon"
dcpu=$(cpu_s "$daemon")
say "snarf: full backup"
synced snarf_full "$snarf" backup "--repo=$srepo" -- "$mnt" full
M[snarf_full_daemon]=$(hwm "$daemon")
C[snarf_full_daemon]=$(plus "$(cpu_s "$daemon")" 0 "$dcpu")
C[snarf_full]=$(plus "${C[snarf_full]}" "${C[snarf_full_daemon]}")
id_full=$(awk '/^backup .* of snapshot/ { print $2; exit }' "$logs/snarf_full.out")
[ -n "$id_full" ] || die "no backup id in snarf's output: $(cat "$logs/snarf_full.out")"
SZ[snarf_full]=$(dirsize "$srepo")
dcpu=$(cpu_s "$daemon")
say "snarf: full backup into the ssh:// repository"
synced snarf_sshfull "$snarf" backup "--repo=$surl" -- "$mnt" full
C[snarf_sshfull]=$(plus "${C[snarf_sshfull]}" "$(plus "$(cpu_s "$daemon")" 0 "$dcpu")")
SZ[snarf_sshfull]=$(dirsize "$srepo_ssh")
sid_full=$(awk '/^backup .* of snapshot/ { print $2; exit }' "$logs/snarf_sshfull.out")
[ -n "$sid_full" ] || die "no backup id in snarf's ssh output: $(cat "$logs/snarf_sshfull.out")"
# The same snapshot again at zstd -1 into a second repository: the speed/size trade-off of
# the compression level (the incremental and restores below use the zstd -3 repository).
"$snarf" repo init --compression 1 -- "$srepo1" >"$logs/snarf-init-zstd1.out"
dcpu=$(cpu_s "$daemon")
say "snarf: full backup at zstd -1 into a second repository"
synced snarf_full1 "$snarf" backup "--repo=$srepo1" -- "$mnt" full
C[snarf_full1]=$(plus "${C[snarf_full1]}" "$(plus "$(cpu_s "$daemon")" 0 "$dcpu")")
SZ[snarf_full1]=$(dirsize "$srepo1")
rm -rf "$srepo1"
dcpu=$(cpu_s "$daemon")
say "snarf: full backup into an encrypted repository"
synced snarf_encfull "${encenv[@]}" "$snarf" backup "--repo=$srepo_enc" -- "$mnt" full
C[snarf_encfull]=$(plus "${C[snarf_encfull]}" "$(plus "$(cpu_s "$daemon")" 0 "$dcpu")")
SZ[snarf_encfull]=$(dirsize "$srepo_enc")
rm -rf "$srepo_enc"
dcpu=$(cpu_s "$daemon")
say "snarf: full backup into the S3 repository"
synced snarf_s3full "${s3env[@]}" "$snarf" backup "--repo=$s3url" -- "$mnt" full
C[snarf_s3full]=$(plus "${C[snarf_s3full]}" "$(plus "$(cpu_s "$daemon")" 0 "$dcpu")")
rmdir "$mnt/snapshots/full"

cd "$data"
cat vol.img >/dev/null
say "restic: full backup"
synced restic_full restic -r "$rrepo" backup --host bench vol.img
SZ[restic_full]=$(dirsize "$rrepo")
cat vol.img >/dev/null
say "restic: full backup over sftp"
synced restic_sshfull "${restic_ssh[@]}" backup --host bench vol.img
SZ[restic_sshfull]=$(dirsize "$rrepo_ssh")
cat vol.img >/dev/null
say "restic: full backup to S3"
synced restic_s3full "${restic_s3[@]}" backup --host bench vol.img
cat vol.img >/dev/null
say "borg: full backup (lz4)"
synced borg_full borg create --compression lz4 "$brepo::full" vol.img
SZ[borg_full]=$(dirsize "$brepo")
cat vol.img >/dev/null
say "borg: full backup over ssh (lz4)"
synced borg_sshfull borg create --compression lz4 "$burl::full" vol.img
SZ[borg_sshfull]=$(dirsize "$brepo_ssh")
cd "$repo_root"

# ---------- 1% rewrite, incremental backups ----------
say "rewriting 1% of the volume in scattered places (same bytes in the live volume and the file)"
rw=$(python3 scripts/bench-data.py rewrite "$bytes" "$seed" "$vol" "$src")
read -r rw_writes rw_bytes rw_blocks <<<"$rw"
sum_incr=$(sum "$src")
[ "$sum_incr" != "$sum_full" ] || die "the rewrite changed nothing"
sync
mkdir "$mnt/snapshots/incr"
cmp "$mnt/snapshots/incr/vol.img" "$src" || die "after the rewrite, the snapshot of the live volume differs from the file"
reset_hwm "$daemon"
dcpu=$(cpu_s "$daemon")
say "snarf: incremental backup"
synced snarf_incr "$snarf" backup "--repo=$srepo" -- "$mnt" incr
M[snarf_incr_daemon]=$(hwm "$daemon")
C[snarf_incr_daemon]=$(plus "$(cpu_s "$daemon")" 0 "$dcpu")
C[snarf_incr]=$(plus "${C[snarf_incr]}" "${C[snarf_incr_daemon]}")
id_incr=$(awk '/^backup .* of snapshot/ { print $2; exit }' "$logs/snarf_incr.out")
[ -n "$id_incr" ] || die "no backup id in snarf's output: $(cat "$logs/snarf_incr.out")"
if ! grep -q 'incremental from' "$logs/snarf_incr.out"; then
  NOTE[incr]="snarf's second backup was not incremental: $(grep 'volume vol.img' "$logs/snarf_incr.out" || true)"
fi
snarf_incr_read=$(grep -o 'read [0-9]* of [0-9]* snarfs' "$logs/snarf_incr.out" || true)
dcpu=$(cpu_s "$daemon")
say "snarf: incremental backup into the ssh:// repository"
synced snarf_sshincr "$snarf" backup "--repo=$surl" -- "$mnt" incr
C[snarf_sshincr]=$(plus "${C[snarf_sshincr]}" "$(plus "$(cpu_s "$daemon")" 0 "$dcpu")")
sid_incr=$(awk '/^backup .* of snapshot/ { print $2; exit }' "$logs/snarf_sshincr.out")
[ -n "$sid_incr" ] || die "no backup id in snarf's ssh output: $(cat "$logs/snarf_sshincr.out")"
if ! grep -q 'incremental from' "$logs/snarf_sshincr.out"; then
  NOTE[sshincr]="snarf's second ssh:// backup was not incremental: $(grep 'volume vol.img' "$logs/snarf_sshincr.out" || true)"
fi
dcpu=$(cpu_s "$daemon")
say "snarf: incremental backup into the S3 repository"
synced snarf_s3incr "${s3env[@]}" "$snarf" backup "--repo=$s3url" -- "$mnt" incr
C[snarf_s3incr]=$(plus "${C[snarf_s3incr]}" "$(plus "$(cpu_s "$daemon")" 0 "$dcpu")")
s3id_incr=$(awk '/^backup .* of snapshot/ { print $2; exit }' "$logs/snarf_s3incr.out")
[ -n "$s3id_incr" ] || die "no backup id in snarf's S3 output: $(cat "$logs/snarf_s3incr.out")"
if ! grep -q 'incremental from' "$logs/snarf_s3incr.out"; then
  NOTE[s3incr]="snarf's second S3 backup was not incremental: $(grep 'volume vol.img' "$logs/snarf_s3incr.out" || true)"
fi
rmdir "$mnt/snapshots/incr"
SZ[snarf_incr]=$(dirsize "$srepo")

cd "$data"
cat vol.img >/dev/null
say "restic: incremental backup (rescans the whole file)"
synced restic_incr restic -r "$rrepo" backup --host bench vol.img
SZ[restic_incr]=$(dirsize "$rrepo")
cat vol.img >/dev/null
say "restic: incremental backup over sftp"
synced restic_sshincr "${restic_ssh[@]}" backup --host bench vol.img
cat vol.img >/dev/null
say "restic: incremental backup to S3"
synced restic_s3incr "${restic_s3[@]}" backup --host bench vol.img
cat vol.img >/dev/null
say "borg: incremental backup (rescans the whole file)"
synced borg_incr borg create --compression lz4 "$brepo::incr" vol.img
SZ[borg_incr]=$(dirsize "$brepo")
cat vol.img >/dev/null
say "borg: incremental backup over ssh"
synced borg_sshincr borg create --compression lz4 "$burl::incr" vol.img
cd "$repo_root"

# ---------- restores of the incremental backups ----------
sync
say "snarf: restore"
synced snarf_restore "$snarf" restore -- "$srepo" "$id_incr" "$work/restore-snarf"
verify "snarf restore" "$work/restore-snarf/vol.img" "$sum_incr"
rm -rf "$work/restore-snarf"
sync
say "restic: restore"
synced restic_restore restic -r "$rrepo" restore latest --target "$work/restore-restic"
f=$(find "$work/restore-restic" -type f -name vol.img | head -n 1)
[ -n "$f" ] || die "restic restored no vol.img"
verify "restic restore" "$f" "$sum_incr"
rm -rf "$work/restore-restic"
sync
say "borg: restore (extract --sparse)"
mkdir "$work/restore-borg"
synced borg_restore env -C "$work/restore-borg" borg extract --sparse "$brepo::incr"
verify "borg restore" "$work/restore-borg/vol.img" "$sum_incr"
rm -rf "$work/restore-borg"
sync

say "snarf: restore of the ssh:// incremental (checks the far repository)"
synced snarf_sshrestore "$snarf" restore -- "$surl" "$sid_incr" "$work/restore-snarf-ssh"
verify "snarf restore from ssh://" "$work/restore-snarf-ssh/vol.img" "$sum_incr"
rm -rf "$work/restore-snarf-ssh"
sync
say "snarf: restore of the S3 incremental (checks the S3 repository)"
synced snarf_s3restore "${s3env[@]}" "$snarf" restore -- "$s3url" "$s3id_incr" "$work/restore-snarf-s3"
verify "snarf restore from S3" "$work/restore-snarf-s3/vol.img" "$sum_incr"
rm -rf "$work/restore-snarf-s3"
sync

# ---------- reading the backed-up volume through each tool's mount ----------
snarf_mount_file=$mnt/backups/$id_incr/vol.img
# A build whose mount takes --repo shows committed backups under backups/ (its listing may lag
# a few seconds behind a commit); an older one has an empty backups/.
if [ "${#mount_args[@]}" -gt 0 ] && wait_for "$snarf_mount_file" 20; then
  say "snarf: cat backups/$id_incr/vol.img on the mount"
  reset_hwm "$daemon"
  c0=$(cpu_s "$daemon")
  wall snarf_mount cat "$snarf_mount_file"
  M[snarf_mount]=$(hwm "$daemon")
  C[snarf_mount]=$(plus "$(cpu_s "$daemon")" 0 "$c0")
  cmp "$snarf_mount_file" "$src" || die "VERIFICATION FAILED: $snarf_mount_file differs from the source"
  say "verified snarf mount read: equal to the source"
else
  NOTE[mount]="this snarf build's mount shows no backups/ID/VOLUME (backups/$id_incr/vol.img is missing), so snarf's mount read is not measured"
  say "snarf: ${NOTE[mount]}"
fi

say "restic: mount, cat the volume"
restic -r "$rrepo" mount "$rmnt" >"$logs/restic-mount.out" 2>&1 &
restic_mount_pid=$!
# restic keeps a lone file at the top of its snapshot's tree (older versions: the full path).
wait_for "$rmnt/snapshots/latest" 120 || die "restic mount did not show snapshots/latest (see $logs/restic-mount.out)"
rfile=$rmnt/snapshots/latest/vol.img
[ -e "$rfile" ] || rfile=$rmnt/snapshots/latest$data/vol.img
[ -e "$rfile" ] || die "restic mount has no vol.img in snapshots/latest (see $logs/restic-mount.out)"
c0=$(cpu_s "$restic_mount_pid")
wall restic_mount cat "$rfile"
M[restic_mount]=$(hwm "$restic_mount_pid")
C[restic_mount]=$(plus "$(cpu_s "$restic_mount_pid")" 0 "$c0")
cmp "$rfile" "$src" || die "VERIFICATION FAILED: $rfile differs from the source"
say "verified restic mount read: equal to the source"
stop_fuse "$rmnt" "$restic_mount_pid"
restic_mount_pid=

say "borg: mount, cat the volume"
borg mount -f "$brepo::incr" "$bmnt" >"$logs/borg-mount.out" 2>&1 &
borg_mount_pid=$!
bfile=$bmnt/vol.img
wait_for "$bfile" 120 || die "borg mount did not show $bfile (see $logs/borg-mount.out)"
c0=$(cpu_s "$borg_mount_pid")
wall borg_mount cat "$bfile"
M[borg_mount]=$(hwm "$borg_mount_pid")
C[borg_mount]=$(plus "$(cpu_s "$borg_mount_pid")" 0 "$c0")
cmp "$bfile" "$src" || die "VERIFICATION FAILED: $bfile differs from the source"
say "verified borg mount read: equal to the source"
stop_fuse "$bmnt" "$borg_mount_pid"
borg_mount_pid=

M[snarf_daemon_total]=$(hwm "$daemon")
"$snarf" umount -- "$mnt" >"$logs/snarf-umount.out" 2>&1 || die "snarf umount failed: $(cat "$logs/snarf-umount.out")"
daemon=
elapsed=$(($(date +%s) - started))
say "done in ${elapsed}s; printing the results"

# ---------- report ----------
fmt_rate() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.0f MiB/s", b / 1048576 / s }'; }
fmt_s() { awk -v s="$1" 'BEGIN { printf (s < 10 ? "%.2f s" : "%.1f s"), s }'; }
fmt_mib() { awk -v b="$1" 'BEGIN { printf (b < 10485760 ? "%.2f MiB" : "%.0f MiB"), b / 1048576 }'; }
fmt_kib() { awk -v k="$1" 'BEGIN { printf "%.0f MiB", k / 1024 }'; }
# Ratio oriented so that >1 means snarf is better: other/snarf for times, sizes and memory.
adv() { # snarf other
  [ -n "$1" ] && [ -n "$2" ] || { echo "n/a"; return; }
  awk -v s="$1" -v o="$2" 'BEGIN { if (s <= 0) print "inf"; else printf "%.2fx", o / s }'
}
advn() { adv "$@" | tr -d x; } # plain number for the targets
row() { printf '%-44s %16s %16s %16s %13s %11s\n' "$@"; }
cell_t() { [ -n "${T[$1]:-}" ] && fmt_s "${T[$1]}" || echo "n/a"; }
cell_r() { [ -n "${T[$1]:-}" ] && fmt_rate "${T[$1]}" || echo "n/a"; }
cell_m() { [ -n "${M[$1]:-}" ] && fmt_kib "${M[$1]}" || echo "n/a"; }
trow() { # label key-suffix: time row and rate row
  row "$1, time" "$(cell_t "snarf_$2")" "$(cell_t "restic_$2")" "$(cell_t "borg_$2")" \
    "$(adv "${T[snarf_$2]:-}" "${T[restic_$2]:-}")" "$(adv "${T[snarf_$2]:-}" "${T[borg_$2]:-}")"
  row "$1, MiB/s" "$(cell_r "snarf_$2")" "$(cell_r "restic_$2")" "$(cell_r "borg_$2")" "" ""
}
cell_c() { [ -n "${C[$1]:-}" ] && awk -v c="${C[$1]}" 'BEGIN { printf "%.1f s", c }' || echo "n/a"; }
irow() {
  row "$1" "${IDLE[snarf_$2]:-n/a}" "${IDLE[restic_$2]:-n/a}" "${IDLE[borg_$2]:-n/a}" "" ""
}
crow() {
  row "$1" "$(cell_c "snarf_$2")" "$(cell_c "restic_$2")" "$(cell_c "borg_$2")" \
    "$(adv "${C[snarf_$2]:-}" "${C[restic_$2]:-}")" "$(adv "${C[snarf_$2]:-}" "${C[borg_$2]:-}")"
}
mrow() {
  row "$1" "$(cell_m "snarf_$2")" "$(cell_m "restic_$2")" "$(cell_m "borg_$2")" \
    "$(adv "${M[snarf_$2]:-}" "${M[restic_$2]:-}")" "$(adv "${M[snarf_$2]:-}" "${M[borg_$2]:-}")"
}
grow() { echo $((SZ[${1}_incr] - SZ[${1}_full])); }
SZ[snarf_grow]=$(grow snarf); SZ[restic_grow]=$(grow restic); SZ[borg_grow]=$(grow borg)
srow() {
  row "$1" "$(fmt_mib "${SZ[snarf_$2]}")" "$(fmt_mib "${SZ[restic_$2]}")" "$(fmt_mib "${SZ[borg_$2]}")" \
    "$(adv "${SZ[snarf_$2]}" "${SZ[restic_$2]}")" "$(adv "${SZ[snarf_$2]}" "${SZ[borg_$2]}")"
}

echo "snarf backup benchmark: $mib MiB volume (seed $seed), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) memory"
echo "data: $gen"
echo "1% rewrite: $rw_writes scattered writes of 4-64 KiB, $(fmt_mib "$rw_bytes") in total, touching $rw_blocks of $((bytes / 65536)) 64 KiB blocks"
echo "setup: snarf $("$snarf" --version | awk '{ print $2 }') backs up a snapshot of the live volume on a snarf mount (snarf backup MOUNTPOINT,"
echo "       zstd -3, not encrypted); $(restic version | awk '{ print $1, $2 }') (repository v2, compression auto, always encrypted)"
echo "       and borg $(borg --version | awk '{ print $2 }') (--encryption=none, --compression lz4) back up the same bytes from a plain file on"
echo "       a local disk ($fstype); page cache warm for every tool (source read once before each backup)"
echo "ssh row: a loopback sshd started by this run (same disk); snarf to ssh://root@127.0.0.1 (snarf serve),"
echo "       restic's sftp backend (-o sftp.command=ssh ... -s sftp), borg over ssh (BORG_RSH, borg serve),"
echo "       all three with the same ssh command line and key; local repositories are the rows above"
echo "encrypted row: snarf repo init --encryption (AES-256-GCM, keyed blake3 ids) against restic's local"
echo "       repository (always encrypted) and snarf's plain one"
echo "S3 row: a loopback S3 server started by this run (moto $(cat target/s3-test-server/version 2>/dev/null), in memory);"
echo "       snarf to s3://bench/snarf, restic's S3 backend to s3:.../bench/restic"
echo "timing: each backup and restore until its data is on disk: the command, then sync (snarf fsyncs"
echo "       itself; earlier dirty data is flushed before, untimed); restores of the incremental go to a fresh"
echo "       directory on the same disk (snarf and borg --sparse leave zeros as holes, restic 0.14 cannot);"
echo "       mount reads: cat of the incremental's volume through each tool's FUSE mount, first read"
echo "load average at start/end: $load_start / $(cut -d' ' -f1-3 /proc/loadavg); run took ${elapsed} s"
echo
echo "ratios: snarf's advantage, the other tool's time, size or memory over snarf's (>1 = snarf better);"
echo "MiB/s rows are the volume size over the time"
row "figure" "snarf" "restic" "borg" "snarf/restic" "snarf/borg"
trow "full backup" full
crow "full backup, CPU time (user+sys)" full
srow "repository after full backup" full
mrow "full backup, peak RSS of the job" full
irow "full backup, machine CPU left idle" full
row "full backup at zstd -1, time" "$(cell_t snarf_full1)" "" "" "$(adv "${T[snarf_full1]}" "${T[restic_full]}")" "$(adv "${T[snarf_full1]}" "${T[borg_full]}")"
row "full backup at zstd -1, MiB/s" "$(cell_r snarf_full1)" "" "" "" ""
row "full backup at zstd -1, CPU time (user+sys)" "$(cell_c snarf_full1)" "" "" "$(adv "${C[snarf_full1]}" "${C[restic_full]}")" "$(adv "${C[snarf_full1]}" "${C[borg_full]}")"
row "repository after full backup at zstd -1" "$(fmt_mib "${SZ[snarf_full1]}")" "" "" "$(adv "${SZ[snarf_full1]}" "${SZ[restic_full]}")" "$(adv "${SZ[snarf_full1]}" "${SZ[borg_full]}")"
trow "incremental (1% rewritten)" incr
crow "incremental, CPU time (user+sys)" incr
srow "repository growth by incremental" grow
srow "repository after incremental" incr
mrow "incremental, peak RSS of the job" incr
irow "incremental, machine CPU left idle" incr
trow "full backup over ssh (loopback)" sshfull
crow "full backup over ssh, CPU time (user+sys)" sshfull
srow "ssh repository after full backup" sshfull
trow "incremental over ssh (loopback)" sshincr
crow "incremental over ssh, CPU time (user+sys)" sshincr
ratio_of() { awk -v a="${T[$1]:-}" -v b="${T[$2]:-}" 'BEGIN { if (a == "" || b == "" || b <= 0) print "n/a"; else printf "%.2f", a / b }'; }
row "full backup, ssh time / local time" "$(ratio_of snarf_sshfull snarf_full)" "$(ratio_of restic_sshfull restic_full)" "$(ratio_of borg_sshfull borg_full)" "" ""
row "incremental, ssh time / local time" "$(ratio_of snarf_sshincr snarf_incr)" "$(ratio_of restic_sshincr restic_incr)" "$(ratio_of borg_sshincr borg_incr)" "" ""
row "full backup, encrypted repository, time" "$(cell_t snarf_encfull)" "$(cell_t restic_full)" "" "$(adv "${T[snarf_encfull]:-}" "${T[restic_full]:-}")" ""
row "full backup, encrypted, CPU time (user+sys)" "$(cell_c snarf_encfull)" "$(cell_c restic_full)" "" "$(adv "${C[snarf_encfull]:-}" "${C[restic_full]:-}")" ""
row "encrypted repository after full backup" "$(fmt_mib "${SZ[snarf_encfull]}")" "$(fmt_mib "${SZ[restic_full]}")" "" "$(adv "${SZ[snarf_encfull]}" "${SZ[restic_full]}")" ""
row "full backup, encrypted time / plain time" "$(ratio_of snarf_encfull snarf_full)" "" "" "" ""
row "full backup to S3 (loopback), time" "$(cell_t snarf_s3full)" "$(cell_t restic_s3full)" "" "$(adv "${T[snarf_s3full]:-}" "${T[restic_s3full]:-}")" ""
row "full backup to S3, CPU time (user+sys)" "$(cell_c snarf_s3full)" "$(cell_c restic_s3full)" "" "$(adv "${C[snarf_s3full]:-}" "${C[restic_s3full]:-}")" ""
row "incremental to S3 (loopback), time" "$(cell_t snarf_s3incr)" "$(cell_t restic_s3incr)" "" "$(adv "${T[snarf_s3incr]:-}" "${T[restic_s3incr]:-}")" ""
row "full backup, S3 time / local time" "$(ratio_of snarf_s3full snarf_full)" "$(ratio_of restic_s3full restic_full)" "" "" ""
row "incremental, S3 time / local time" "$(ratio_of snarf_s3incr snarf_incr)" "$(ratio_of restic_s3incr restic_incr)" "" "" ""
trow "restore of the incremental" restore
crow "restore, CPU time (user+sys)" restore
mrow "restore, peak RSS" restore
irow "restore, machine CPU left idle" restore
trow "cat of the backup through the mount" mount
crow "mount read, CPU time of the mount process" mount
mrow "mount read, peak RSS of the mount process" mount
irow "mount read, machine CPU left idle" mount
row "snarf mount daemon CPU, full backup" "$(cell_c snarf_full_daemon)" "" "" "" ""
row "snarf mount daemon CPU, incremental" "$(cell_c snarf_incr_daemon)" "" "" "" ""
row "snarf mount daemon VmHWM, full backup" "$(cell_m snarf_full_daemon)" "" "" "" ""
row "snarf mount daemon VmHWM, incremental" "$(cell_m snarf_incr_daemon)" "" "" "" ""
row "snarf mount daemon VmHWM, whole run" "$(cell_m snarf_daemon_total)" "" "" "" ""
echo "(job CPU and peak RSS from /usr/bin/time -v; snarf's backup CPU adds its mount daemon's, which"
echo " serves the snarfs; mount read figures are the mount process's (snarf: the daemon) during the cat,"
echo " from /proc/PID/stat and VmHWM, reset before; daemon VmHWM also reset before each backup;"
echo " 'machine CPU left idle': share of both cores idle during the step, low when others use them)"
[ -n "$snarf_incr_read" ] && echo "(snarf's incremental $snarf_incr_read)"
echo
zratio=$(awk -v a="$zst_bytes" -v b="$bytes" 'BEGIN { printf "%.2f", a / b }')
echo "machine limits on the same data (this run)"
printf '%-52s %12s %16s %8s\n' "limit" "rate" "snarf full/limit" "idle"
lrow() { printf '%-52s %12s %16s %8s\n' "$1" "$(fmt_rate "${T[$2]}")" "$(awk -v s="${T[snarf_full]}" -v l="${T[$2]}" 'BEGIN { printf "%.2f", l / s }')" "${IDLE[$2]:-}"; }
lrow "raw read, cat of the file (warm)" lim_cat
lrow "blake3, b3sum --num-threads 2" lim_b3
lrow "blake3, b3sum --num-threads 1" lim_b3_1
lrow "zstd -3 -T2 compress (output $zratio of input)" lim_zstd
lrow "zstd -1 -T2 compress" lim_zstd1
lrow "zstd decompress" lim_unzstd
lrow "cp of the file to the same disk, then sync" lim_cp
echo

# ---------- targets ----------
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "n/a" && a + 0 >= b + 0) }'; }
target() { # description value threshold
  local verdict
  if [ "$2" = "n/a" ] || [ -z "$2" ]; then verdict="n/a"
  elif ge "$2" "$3"; then verdict=PASS
  else verdict=MISS; fi
  printf '%-4s  %-74s %s\n' "$verdict" "$1" "$2"
}
zstd_frac=$(awk -v s="${T[snarf_full]}" -v l="${T[lim_zstd]}" 'BEGIN { printf "%.2f", l / s }')
snarf_peak=0; snarf_peak_what=
for k in snarf_full snarf_incr snarf_restore snarf_full_daemon snarf_incr_daemon snarf_mount snarf_daemon_total; do
  v=${M[$k]:-0}
  if [ "$v" -gt "$snarf_peak" ]; then snarf_peak=$v; snarf_peak_what=$k; fi
done
echo "targets (value: snarf's ratio, or the figure named)"
target "full backup >= 3x restic's throughput" "$(advn "${T[snarf_full]}" "${T[restic_full]}")" 3
target "full backup at zstd -1 >= 3x restic's throughput" "$(advn "${T[snarf_full1]}" "${T[restic_full]}")" 3
target "full backup >= 1.3x borg's (lz4) throughput" "$(advn "${T[snarf_full]}" "${T[borg_full]}")" 1.3
target "full backup >= 0.9x the zstd -3 -T2 limit (snarf rate / zstd rate)" "$zstd_frac" 0.9
target "incremental >= 20x faster than restic's" "$(advn "${T[snarf_incr]}" "${T[restic_incr]}")" 20
target "incremental >= 15x faster than borg's" "$(advn "${T[snarf_incr]}" "${T[borg_incr]}")" 15
target "incremental repository growth <= 1/3 of restic's (restic's/snarf's >= 3)" "$(advn "${SZ[snarf_grow]}" "${SZ[restic_grow]}")" 3
target "full repository no larger than restic's (restic's/snarf's >= 1)" "$(advn "${SZ[snarf_full]}" "${SZ[restic_full]}")" 1
target "restore >= 1.5x restic's" "$(advn "${T[snarf_restore]}" "${T[restic_restore]}")" 1.5
target "backups/ID/VOL read through the mount >= 2x restic's mount" "$(advn "${T[snarf_mount]:-}" "${T[restic_mount]}")" 2
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "n/a" && a + 0 <= b + 0) }'; }
target_le() { # description value threshold: PASS when value <= threshold
  local verdict
  if [ "$2" = "n/a" ] || [ -z "$2" ]; then verdict="n/a"
  elif le "$2" "$3"; then verdict=PASS
  else verdict=MISS; fi
  printf '%-4s  %-74s %s\n' "$verdict" "$1" "$2"
}
target_le "full backup to ssh:// <= 1.2x snarf's local-repository time (ssh/local)" "$(ratio_of snarf_sshfull snarf_full)" 1.2
target_le "incremental to ssh:// <= 1.2x snarf's local-repository time (ssh/local)" "$(ratio_of snarf_sshincr snarf_incr)" 1.2
target "full backup to ssh:// ahead of restic's sftp backend (restic/snarf >= 1)" "$(advn "${T[snarf_sshfull]}" "${T[restic_sshfull]}")" 1
target "full backup to ssh:// ahead of borg over ssh (borg/snarf >= 1)" "$(advn "${T[snarf_sshfull]}" "${T[borg_sshfull]}")" 1
target "incremental to ssh:// ahead of restic's sftp backend (restic/snarf >= 1)" "$(advn "${T[snarf_sshincr]}" "${T[restic_sshincr]}")" 1
target "incremental to ssh:// ahead of borg over ssh (borg/snarf >= 1)" "$(advn "${T[snarf_sshincr]}" "${T[borg_sshincr]}")" 1
target_le "full backup to an encrypted repository <= 1.1x the plain one (encrypted/plain)" "$(ratio_of snarf_encfull snarf_full)" 1.1
target "full backup to an encrypted repository ahead of restic's (restic/snarf >= 1)" "$(advn "${T[snarf_encfull]:-}" "${T[restic_full]:-}")" 1
target_le "full backup to S3 on loopback <= 1.5x snarf's local-repository time (S3/local)" "$(ratio_of snarf_s3full snarf_full)" 1.5
target "full backup to S3 ahead of restic's S3 backend (restic/snarf >= 1)" "$(advn "${T[snarf_s3full]:-}" "${T[restic_s3full]:-}")" 1
target "incremental to S3 ahead of restic's S3 backend (restic/snarf >= 1)" "$(advn "${T[snarf_s3incr]:-}" "${T[restic_s3incr]:-}")" 1
if [ "$snarf_peak" -lt $((256 * 1024)) ]; then verdict=PASS; else verdict=MISS; fi
printf '%-4s  %-74s %s\n' "$verdict" "snarf's peak memory < 256 MiB (largest: ${snarf_peak_what#snarf_})" "$(fmt_kib "$snarf_peak")"
for k in "${!NOTE[@]}"; do echo "note: ${NOTE[$k]}"; done
echo "all restores and mount reads verified equal to the source (sha256 / cmp)"
