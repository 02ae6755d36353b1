#!/usr/bin/env bash
# Engine write benchmark: snarf's write path with and without snapshots, as ratios to plain
# pwrite on a file of the same size, all measured in this one run.
#   SNARF_BENCH_SIZE (default 1G)   volume size
#   SNARF_BENCH_SNARF (default 64K) snarf size
#   SNARF_BENCH_DIR                 where to put the files (default: a temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --bench engine
