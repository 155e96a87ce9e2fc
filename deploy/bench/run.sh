#!/usr/bin/env bash
# CitySense benchmarks (issue 10): the gateway's hot path on one core (criterion), and the whole
# gateway against Mosquitto's own delivery rate to mosquitto_sub (throughput ratios at QoS 0 and
# 1, 1 and 4 publishers, interleaved, median of 3), publish → alert latency under load and
# unloaded (stock broker and TCP_NODELAY), publish → point visible in VictoriaMetrics, memory per
# tracked device at 10k and 100k devices, 10,000 simulated devices on a connection each, and the
# console (its first load in bytes; API p99 for 50 viewers, idle and at 1,000 reports/s), and
# the ingest ceiling of one partition against two, and at nominal load (10,000 loggers, 1,000
# reports/s) the bytes the gateway writes to disk and the CPU it uses per report, beside the CPU
# per report of `mosquitto_sub -q 1` on the same reports in the same run (receiving and
# acknowledging, nothing else: soak.sh --reference).
# Latency under load runs deploy/bench/soak.sh (the release gateway and `simulator load` in
# processes of their own) at half the QoS 1 ceiling, with a stock broker and with TCP_NODELAY,
# then with `latency-floor --mode durable` in the gateway's place (its baseline: one fdatasync'd
# append per batch before the alert, the least that keeps "accepted means durable").
# Mosquitto and VictoriaMetrics are started on free loopback ports by the measuring binaries and
# stopped by pid. The one-hour RSS soak is separate: deploy/bench/soak.sh.
# The disk's own fdatasync latency (fio, 4 KiB appends at 500 a second in target/bench, about the
# store's commit rate under that load) is printed as the floor under publish → alert latency:
# an alert is published only once the batch that raised it is fsync'd.
#
#   deploy/bench/run.sh           # full run (12–16 minutes on 2 cores)
#   deploy/bench/run.sh --quick   # a smaller run, within five minutes once built (183 s
#                                 # measured; compiling the benchmarks after a change adds
#                                 # 2–3 minutes)
#
# Each part's heading shows the seconds since the start.
#
# Prints a table per part, then one line per target, and appends the figures (date, machine,
# command) to target/bench/BENCHMARKS-rows.md for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

quick=false
for arg in "$@"; do
  case "$arg" in
    --quick) quick=true ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

for prog in mosquitto mosquitto_sub victoria-metrics fio; do
  command -v "$prog" >/dev/null || {
    echo "missing $prog: apt-get install mosquitto mosquitto-clients victoria-metrics fio" >&2; exit 1; }
done

out=target/bench
mkdir -p "$out"
# Each part's heading, with the seconds since the start.
step() { printf '==> %s  [%d s]\n' "$*" "$SECONDS"; }
if $quick; then
  criterion=(--warm-up-time 0.3 --measurement-time 1)
  throughput=(--messages 30000 --rounds 1 --visibility-samples 10 --memory 10000)
  samples=50
  console_s=15
  partition_devices=2000
  under_load_s=30
  fsync_s=10
  edge_s=60
else
  criterion=()
  throughput=(--messages 100000 --rounds 3 --visibility-samples 60 --memory 10000,100000)
  samples=200
  console_s=60
  partition_devices=10000
  under_load_s=120
  fsync_s=60
  edge_s=300
fi

step "hot path (criterion, one core, no I/O)"
cargo bench -p gateway --bench hot_path -- "${criterion[@]}" 2>&1 | tee "$out/hot_path.txt" \
  | grep -E '^[a-z_]+/|time:'

step "throughput, visibility, memory, connections"
cargo run --release -q -p system-tests --bin throughput -- "${throughput[@]}" \
  --report "$out/throughput.json" | tee "$out/throughput.txt"

step "disk: fdatasync after each 4 KiB append, 500 a second for ${fsync_s} s (fio), the floor under a commit"
floor_dir=$(mktemp -d "$out/fsync-floor.XXXXXX")
fio --name=fsync-floor --directory="$floor_dir" --rw=write --bs=4k --size=64m --ioengine=sync \
  --fdatasync=1 --rate_iops=500 --time_based --runtime="$fsync_s" --output-format=json \
  >"$out/fsync-floor.json"
rm -rf "$floor_dir"
python3 -c 'import json, sys
sync = json.load(open(sys.argv[1]))["jobs"][0]["sync"]["lat_ns"]
p50, p99, p999 = (sync["percentile"][k] / 1e6 for k in ("50.000000", "99.000000", "99.900000"))
print("disk floor: fdatasync p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms (%d syncs)"
      % (p50, p99, p999, sync["max"] / 1e6, sync["N"]))' \
  "$out/fsync-floor.json" | tee "$out/fsync-floor.txt"

# Half the ceiling: Mosquitto's QoS 1 rate to mosquitto_sub with one publisher, just measured.
half=$(python3 -c 'import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["throughput"] if r["qos"] == 1 and r["publishers"] == 1]
print(int(rows[0]["baseline_msg_s"] / 2) if rows else 5000)' "$out/throughput.json")
step "latency under load: publish → alert at $half reports/s (half the QoS 1 ceiling), gateway and load in processes of their own"
for broker in stock nodelay; do
  flag=()
  if [ "$broker" = nodelay ]; then flag=(--nodelay); fi
  deploy/bench/soak.sh --devices 1000 --rate "$half" --duration "$under_load_s" "${flag[@]}" \
    >"$out/under-load-$broker.txt"
  grep -E '^(latency under load|gateway disk writes|soak messages)' "$out/under-load-$broker.txt"
done
step "the floor under it: latency-floor --mode durable in the gateway's place (one fdatasync'd append per batch, nodelay broker)"
deploy/bench/soak.sh --devices 1000 --rate "$half" --duration "$under_load_s" --nodelay --floor durable \
  >"$out/under-load-floor.txt"
sed -n 's/^latency under load (nodelay broker)/latency under load floor (durable, nodelay broker)/p' \
  "$out/under-load-floor.txt" | tee "$out/under-load-floor-line.txt"

step "edge: nominal load (10,000 loggers, 1,000 reports/s) for $edge_s s: bytes written and CPU per report"
deploy/bench/soak.sh --devices 10000 --rate 1000 --duration "$edge_s" --reference >"$out/edge.txt"
grep -E '^(bytes written per report|CPU per report|reference CPU per report|bytes per report by cause|soak messages)' "$out/edge.txt"

step "latency: publish → alert on cs/v1/alerts/events"
cargo run --release -q -p system-tests --bin alert-latency -- --samples "$samples" \
  | tee "$out/latency.txt"

step "partitions: the ingest ceiling of one partition and of two"
cargo run --release -q -p system-tests --bin partitions -- --devices "$partition_devices" \
  --rounds 10 --runs 3 | tee "$out/partitions.txt"

step "the console: first load, API latency with 50 viewers idle and at 1,000 reports/s"
cargo run --release -q -p system-tests --bin console-load -- --viewers 50 --rate 1000 \
  --seconds "$console_s" | tee "$out/console.txt"

receive=$(awk '/^receive_path\//{f=1} f&&/time:/{print $4, $5; exit}' "$out/hot_path.txt")
echo
step "targets"
echo "cost per message (receive path): $receive (target ≤ 2 µs)"
grep '^throughput ratio' "$out/throughput.txt" | sed 's/$/ (target ≥ 0.90)/'
grep -h '^latency under load' "$out"/under-load-{stock,nodelay}.txt | sed 's/$/ (target p99: stock ≤ 50 ms, nodelay ≤ 5 ms)/'
sed 's/$/ (the floor: no design that keeps the contract does less)/' "$out/under-load-floor-line.txt"
sed 's/$/ (the floor under publish → alert)/' "$out/fsync-floor.txt"
awk '/^mosquitto \(/{print "latency p99 unloaded publish → alert " $2 ": " $5 " ms (target: stock ≤ 50 ms, nodelay ≤ 5 ms)"}' "$out/latency.txt"
grep '^visibility p99' "$out/throughput.txt" | sed 's/$/ (target ≤ 2000 ms)/'
grep '^bytes written per report' "$out/edge.txt" | sed 's/$/ at nominal load (target ≤ 1024 B)/'
grep '^CPU per report' "$out/edge.txt" | sed 's/$/ at nominal load (target ≤ 10 µs)/'
grep '^reference CPU per report' "$out/edge.txt"
grep '^memory per tracked device' "$out/throughput.txt" | sed 's/$/ (target ≤ 1024 B of state)/'
grep '^connections:.*devices on' "$out/throughput.txt"
grep '^all-route p99' "$out/console.txt"
grep '^median' "$out/partitions.txt" | sed 's/^/partitions: /'

{
  echo
  echo "### $(date -u +%Y-%m-%d) · $(nproc) cores, $(awk -F: '/model name/{print $2; exit}' /proc/cpuinfo | xargs) · \`deploy/bench/run.sh $*\`"
  echo
  echo "- receive path (verify + decode + aggregate + rules): $receive per message"
  grep -E '^(qos|visibility:|memory at|connections:.*devices on)' "$out/throughput.txt" | sed 's/^/- /'
  grep -h '^latency under load' "$out"/under-load-{stock,nodelay}.txt | sed 's/^/- /'
  sed 's/^/- /' "$out/under-load-floor-line.txt"
  sed 's/^/- /' "$out/fsync-floor.txt"
  grep -E '^(bytes written per report|CPU per report|reference CPU per report)' "$out/edge.txt" | sed 's/^/- at nominal load, /'
  awk '/^mosquitto \(/{print "- publish → alert " $2 ": p50 " $3 " ms, p99 " $5 " ms"}' "$out/latency.txt"
  awk '/^  total/{print "- console first load: " $2 " bytes"}' "$out/console.txt"
  grep '^all-route p99' "$out/console.txt" | sed 's/^/- console API, 50 viewers: /'
  grep '^median' "$out/partitions.txt" | sed 's/^median/- partitions, ingest ceiling/'
} >> "$out/BENCHMARKS-rows.md"
echo "rows appended to $out/BENCHMARKS-rows.md; done in $SECONDS s"
