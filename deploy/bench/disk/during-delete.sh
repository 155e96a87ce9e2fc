#!/usr/bin/env bash
# fdatasync latency (fio, 500 a second for 20 s) with and without a 1 GiB file deleted in the
# middle: on a file system mounted with online discard the delete stalls the disk's fsyncs
# (BENCHMARKS.md, sixth pass). Run it on the store's disk:
#   deploy/bench/disk/during-delete.sh [DIR]     # DIR defaults to target/
set -euo pipefail
cd "$(dirname "$0")/../../.."
dir=${1:-target}
command -v fio >/dev/null || { echo "missing fio: apt-get install fio" >&2; exit 1; }
mkdir -p "$dir/fsync-during-delete" && cd "$dir/fsync-during-delete"
trap 'rm -f big fsync-probe ./*.json' EXIT
for mode in delete none; do
  dd if=/dev/zero of=big bs=1M count=1024 conv=fsync status=none
  sync
  fio --name=probe --filename=fsync-probe --size=64m --rw=write --bs=4k --fdatasync=1 \
    --rate_iops=500 --time_based --runtime=20 --output-format=json --output="$mode.json" >/dev/null &
  probe=$!
  sleep 8
  if [ "$mode" = delete ]; then rm big; fi
  wait "$probe"
  rm -f big
  python3 - "$mode" <<'PY'
import json, sys
mode = sys.argv[1]
lat = json.load(open(mode + ".json"))["jobs"][0]["sync"]["lat_ns"]
p = {k: v / 1e6 for k, v in lat["percentile"].items()}
print(f"{mode:>6}: fdatasync p50 {p['50.000000']:.2f} ms, p99 {p['99.000000']:.2f} ms, "
      f"p99.9 {p['99.900000']:.2f} ms, max {lat['max'] / 1e6:.1f} ms")
PY
done
