#!/bin/sh
# A nightly backup of a mounted store, for cron(8). For example, in /etc/cron.d/snarf:
#
#   15 2 * * *  root  /path/to/snarf/scripts/cron-example.sh /mnt/snarf /srv/backups
#
# It takes a snapshot, hands its backup to the mount as a `cron` job (so a user's backup
# never stops it as idle) and waits for it, releases the snapshot, then prunes old backups.
# Everything goes through the mount's control files, as any script of yours can.
# The mount can also run backups itself from STORE/schedule (`snarf schedule --help`); this
# script is for cron(8) or systemd timers (snarf-backup@.timer runs it), and it prunes too.
set -eu
mountpoint=${1:?usage: cron-example.sh MOUNTPOINT REPOSITORY}
repo=${2:?usage: cron-example.sh MOUNTPOINT REPOSITORY}
snarf=${SNARF_BIN:-snarf}
name=cron-$(date -u +%Y%m%d-%H%M%S)

export SNARF_PROCESS_TYPE=cron
"$snarf" snapshot create -- "$mountpoint" "$name"
status=0
"$snarf" backup "--repo=$repo" --wait -- "$mountpoint" "$name" || status=$?
"$snarf" snapshot release -- "$mountpoint" "$name"
[ "$status" -eq 0 ] || exit "$status"
"$snarf" prune --keep-last 7 --keep-daily 14 --keep-weekly 8 --keep-monthly 12 -- "$repo"
