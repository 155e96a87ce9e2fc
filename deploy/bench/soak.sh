#!/usr/bin/env bash
# CitySense soak (issue 10, target 4): the release gateway at nominal load for an hour, its
# resident memory sampled every 30 s. Mosquitto and VictoriaMetrics run on free loopback ports
# from a temporary directory and are stopped by pid; `simulator load` drives generated pressure
# loggers (one connection, QoS 1) against the gateway with every stage on, the InfluxDB sink
# writing to VictoriaMetrics.
#
#   deploy/bench/soak.sh                          # 10,000 devices, 1,000 reports/s, 1 hour
#   deploy/bench/soak.sh --devices 2000 --rate 500 --duration 600
#   deploy/bench/soak.sh --devices 1000 --rate 12000 --duration 120 --nodelay
#                                   # publish → alert under load, broker with TCP_NODELAY
#   deploy/bench/soak.sh --gateway /tmp/gateway-before ...
#                                   # another gateway binary (A/B against a build kept aside;
#                                   # absolute, or relative to the repository)
#   deploy/bench/soak.sh --simulator /tmp/simulator-before ...
#                                   # another load generator (A/B of the probe itself)
#   deploy/bench/soak.sh --commit-interval 50 ...
#                                   # the gateway's store.commit_interval_ms (default: the
#                                   # gateway's own, 200 ms)
#   deploy/bench/soak.sh --reference ...
#                                   # also `mosquitto_sub -q 1` on the same reports beside the
#                                   # gateway: its CPU per report is what receiving and
#                                   # acknowledging a report costs on this machine with the
#                                   # reference client and nothing else, measured in the same
#                                   # run (mosquitto-clients)
#   deploy/bench/soak.sh --confine 1,256M ...
#                                   # the gateway confined to one CPU's time and 256 MiB
#                                   # (deploy/bench/edge.sh: systemd-run, else a cgroup)
#   deploy/bench/soak.sh --devices 1000 --rate 11500 --duration 120 --nodelay --floor durable
#                                   # the floor under that latency: `latency-floor` in the
#                                   # gateway's place (relay: publish the alert at once;
#                                   # durable: after one fdatasync'd append per batch)
#
# Prints one line per sample (every 30 s; a sixth of a shorter run), then the RSS at the end
# of warm-up (10 % of the run, at least ten minutes, at most half), the last sample, the slope
# after warm-up, whether it is flat (≤ 5 % growth after warm-up), and the growth over the
# second half, and the CPU the gateway, the broker and the load generator used (in cores) and
# how busy the machine was, and the bytes written to disk and CPU used per report (each on a
# line of its own, with where the bytes went).
# Samples go to target/bench/soak.csv, the gateway's metrics at the end to
# target/bench/soak-metrics.prom (commit, batch and alert delivery histograms printed, and
# the commits and maintenance passes of 100 ms or more, with where their time went), its log
# to target/bench/soak-gateway.log; the summary line is appended to
# target/bench/BENCHMARKS-rows.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

devices=10000
rate=1000
duration=3600
nodelay=false
gateway=target/release/gateway
simulator=target/release/simulator
floor=
confine=
commit_interval=
reference=false
reference_line=
while [ $# -gt 0 ]; do
  case "$1" in
    --devices) devices=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --nodelay) nodelay=true; shift ;;
    --reference) reference=true; shift ;;
    --gateway) gateway=$2; shift 2 ;;
    --simulator) simulator=$2; shift 2 ;;
    --confine) confine=$2; shift 2 ;;
    --commit-interval) commit_interval=$2; shift 2
      case "$commit_interval" in ''|*[!0-9]*) echo "--commit-interval takes milliseconds, not $commit_interval" >&2; exit 2 ;; esac ;;
    --floor) floor=$2; shift 2
      case "$floor" in relay|durable) ;; *) echo "--floor relay or durable, not $floor" >&2; exit 2 ;; esac ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
done

for prog in mosquitto victoria-metrics curl; do
  command -v "$prog" >/dev/null || {
    echo "missing $prog: apt-get install mosquitto victoria-metrics curl" >&2; exit 1; }
done
if $reference && ! command -v mosquitto_sub >/dev/null; then
  echo "--reference needs mosquitto_sub: apt-get install mosquitto-clients" >&2; exit 1
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# The pid listening on 127.0.0.1:$1 must be ours.
owns_port() {
  local pid=$1 port=$2 i
  for i in $(seq 100); do
    if ss -Hltnp "sport = :$port" | grep -q "pid=$pid,"; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { echo "process $pid exited before listening on $port" >&2; return 1; }
    sleep 0.1
  done
  echo "port $port is not owned by pid $pid" >&2
  return 1
}

# The gateway's confinement (--confine CPUS,MEMORY): a command to run it under (systemd), or
# cgroups its shell joins before it becomes the gateway.
confine_cmd=() cg_cpu= cg_mem=
if [ -n "$confine" ]; then
  cpus=${confine%%,*} mem_bytes=$(numfmt --from=iec "${confine#*,}")
  quota_us=$(python3 -c 'import sys; print(int(float(sys.argv[1]) * 100000))' "$cpus")
  if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null; then
    confine_cmd=(systemd-run --scope --quiet -p "CPUQuota=$((quota_us / 1000))%" -p "MemoryMax=$mem_bytes")
  elif [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
    cg_cpu=/sys/fs/cgroup/citysense-edge-$$ cg_mem=$cg_cpu
    mkdir "$cg_cpu"
    echo "$quota_us 100000" >"$cg_cpu/cpu.max"
    echo "$mem_bytes" >"$cg_cpu/memory.max"
  elif [ -w /sys/fs/cgroup/cpu ] && [ -w /sys/fs/cgroup/memory ]; then
    cg_cpu=/sys/fs/cgroup/cpu/citysense-edge-$$ cg_mem=/sys/fs/cgroup/memory/citysense-edge-$$
    mkdir "$cg_cpu" "$cg_mem"
    echo 100000 >"$cg_cpu/cpu.cfs_period_us"
    echo "$quota_us" >"$cg_cpu/cpu.cfs_quota_us"
    echo "$mem_bytes" >"$cg_mem/memory.limit_in_bytes"
  else
    echo "--confine: no systemd here and no writable cgroup cpu and memory controllers (run as root)" >&2
    exit 2
  fi
fi

cargo build --release -q -p gateway -p simulator
if [ -n "$floor" ]; then cargo build --release -q -p system-tests --bin latency-floor; fi
[ -x "$gateway" ] || { echo "no gateway binary at $gateway" >&2; exit 2; }
[ -x "$simulator" ] || { echo "no simulator binary at $simulator" >&2; exit 2; }
work=$(mktemp -d)
vm_data="$work/vm"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  mkdir -p target/bench && cp "$work/gateway.log" target/bench/soak-gateway.log 2>/dev/null || true
  rm -rf "$work" "$vm_data"
  if [ -n "$cg_cpu" ]; then rmdir "$cg_cpu" "$cg_mem" 2>/dev/null || true; fi
}
trap cleanup EXIT

mqtt_port=$(free_port)
vm_port=$(free_port)
http_port=$(free_port)
chmod 777 "$work"
cat >"$work/mosquitto.conf" <<EOF
listener $mqtt_port 127.0.0.1
allow_anonymous true
max_queued_messages 1000000
max_inflight_messages 100
EOF
if $nodelay; then echo "set_tcp_nodelay true" >>"$work/mosquitto.conf"; fi
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!); owns_port "${pids[-1]}" "$mqtt_port"
# VictoriaMetrics keeps its data in memory (/dev/shm where there is one): it stands for the
# city's time-series server, which has a disk of its own in the field, and here it would write
# and merge its parts on the disk whose fsync latency the gateway's commits measure. The
# gateway's store stays on the disk.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then vm_data=$(mktemp -d -p /dev/shm citysense-soak-vm.XXXXXX); fi
victoria-metrics -httpListenAddr=127.0.0.1:"$vm_port" -storageDataPath="$vm_data" \
  -retentionPeriod=100y >"$work/vm.log" 2>&1 &
pids+=($!); owns_port "${pids[-1]}" "$vm_port"

target/release/simulator load --write-site "$work/site" --devices "$devices" \
  --mqtt "127.0.0.1:$mqtt_port" >/dev/null
sed -i "s|^listen = .*|listen = \"127.0.0.1:$http_port\"|" "$work/site/gateway.toml"
if [ -n "$commit_interval" ]; then
  sed -i "/^\[store\]/a commit_interval_ms = $commit_interval" "$work/site/gateway.toml"
fi
cat >>"$work/site/gateway.toml" <<EOF

[influxdb]
url = "http://127.0.0.1:$vm_port"
org = "soak"
bucket = "soak"
EOF
gateway=$(realpath "$gateway")
if [ -n "$floor" ]; then
  mkdir -p "$work/floor"
  gateway=$(realpath target/release/latency-floor)
  "$gateway" --mqtt "127.0.0.1:$mqtt_port" --listen "127.0.0.1:$http_port" --mode "$floor" \
    --dir "$work/floor" >"$work/gateway.log" 2>&1 &
else
  (if [ -n "$cg_cpu" ]; then
     echo "$BASHPID" >"$cg_cpu/cgroup.procs"
     echo "$BASHPID" >"$cg_mem/cgroup.procs"
   fi
   cd "$work/site" && exec "${confine_cmd[@]}" "$gateway" run --config gateway.toml) \
    >"$work/gateway.log" 2>&1 &
fi
gateway_pid=$!
pids+=("$gateway_pid")
owns_port "$gateway_pid" "$http_port"
until curl -fs "http://127.0.0.1:$http_port/readyz" >/dev/null; do sleep 0.2; done

# The reference consumer: the same reports at QoS 1, each acknowledged, the topic printed (to a
# file, block-buffered) and nothing else done. Started before the load; its figure is its CPU
# over the reports it received, so a report published before it subscribed changes nothing.
if $reference; then
  mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -V mqttv5 -q 1 -t 'cs/v1/+/+/+/up' -F '%t' \
    >"$work/reference.txt" 2>&1 &
  reference_pid=$!
  pids+=("$reference_pid")
fi

"$simulator" load --devices "$devices" --rate "$rate" --duration "$duration" --connections 1 \
  --mqtt "127.0.0.1:$mqtt_port" --gateway "http://127.0.0.1:$http_port" \
  --report "$work/load.json" >"$work/load.log" 2>&1 &
load_pid=$!
pids+=("$load_pid")

out=target/bench
mkdir -p "$out"
echo "elapsed_s,rss_kib,received" >"$out/soak.csv"
broker=stock; if $nodelay; then broker=nodelay; fi
consumer=$gateway; if [ -n "$floor" ]; then consumer="latency-floor --mode $floor"; fi
echo "soak: $consumer, $devices devices, $rate reports/s, ${duration}s, $broker broker; gateway pid $gateway_pid"
# CPU time of a process in clock ticks (user + system), and of the machine (busy, all).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
machine() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat; }
broker_pid=${pids[0]}
cpu0=("$(ticks "$gateway_pid")" "$(ticks "$broker_pid")" "$(ticks "$load_pid")" "$(machine)")
if $reference; then reference0=$(ticks "$reference_pid"); fi
load_ticks=${cpu0[2]} load_secs=1
started=$(date +%s)
# Every 30 s, or more often for a short run (so its end is noticed soon after).
every=$(( duration / 6 < 30 ? (duration / 6 > 2 ? duration / 6 : 2) : 30 ))
while kill -0 "$load_pid" 2>/dev/null; do
  rss=$(awk '/^VmRSS/{print $2}' "/proc/$gateway_pid/status")
  received=$(curl -fs "http://127.0.0.1:$http_port/metrics" \
    | awk '/^citysense_mqtt_messages_received_total\{stream="up"\}/{print $2}')
  elapsed=$(( $(date +%s) - started ))
  echo "$elapsed,$rss,${received:-0}" >>"$out/soak.csv"
  printf '%6ss  rss %8s KiB  received %s\n' "$elapsed" "$rss" "${received:-0}"
  now_ticks=$(ticks "$load_pid")
  if [ "$now_ticks" -gt 0 ]; then load_ticks=$now_ticks load_secs=$(( elapsed > 0 ? elapsed : 1 )); fi
  sleep "$every" & wait $! || true
done
cpu=$(python3 -c 'import os, sys
a = [int(x) for x in sys.argv[1:]]
hz, secs, load_secs = os.sysconf("SC_CLK_TCK"), max(a[0], 1), a[1]
(g0, b0, l0, m0b, m0a), (g1, b1, l1, m1b, m1a) = a[2:7], a[7:12]
print(f"cpu over the run (cores): gateway {(g1 - g0) / hz / secs:.2f}, broker {(b1 - b0) / hz / secs:.2f}, "
      f"load generator {(l1 - l0) / hz / load_secs:.2f}; machine busy {(m1b - m0b) / max(m1a - m0a, 1) * 100:.0f} % of {os.cpu_count()} cores")' \
  "$(( $(date +%s) - started ))" "$load_secs" ${cpu0[0]} ${cpu0[1]} ${cpu0[2]} ${cpu0[3]} \
  "$(ticks "$gateway_pid")" "$(ticks "$broker_pid")" "$load_ticks" $(machine))
gateway_ticks=$(( $(ticks "$gateway_pid") - cpu0[0] ))
if $reference; then reference_ticks=$(( $(ticks "$reference_pid") - reference0 )); fi
wait "$load_pid" || { echo "simulator load failed:"; tail -5 "$work/load.log"; exit 1; }
curl -fs "http://127.0.0.1:$http_port/metrics" >"$out/soak-metrics.prom" || true
# What the gateway wrote to disk (the store's WAL and database, logs) per report received.
written=$(awk '/^write_bytes/{print $2}' "/proc/$gateway_pid/io")
received=$(awk '/^citysense_mqtt_messages_received_total\{stream="up"\}/{print $2}' "$out/soak-metrics.prom")
python3 -c 'import sys; w, n = int(sys.argv[1]), float(sys.argv[2] or 1); print(f"gateway disk writes: {w/2**20:.0f} MiB, {w/max(n,1):.0f} B per report")' "$written" "${received:-0}"
per_report=$(python3 -c 'import os, sys
w, n, ticks = int(sys.argv[1]), max(float(sys.argv[2] or 1), 1), int(sys.argv[3])
hz = os.sysconf("SC_CLK_TCK")
print(f"bytes written per report: {w / n:.0f} B")
print(f"CPU per report: {ticks / hz / n * 1e6:.1f} µs (gateway user + system)")' \
  "$written" "${received:-0}" "$gateway_ticks")
echo "$per_report"
if $reference; then
  # Stopped now (it flushes its output as it exits): every report has reached both.
  kill "$reference_pid"; wait "$reference_pid" 2>/dev/null || true
  reference_line=$(python3 -c 'import os, sys
ticks, n, gateway_ticks, gateway_n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), max(float(sys.argv[4] or 1), 1)
hz = os.sysconf("SC_CLK_TCK")
ours, theirs = gateway_ticks / hz / gateway_n * 1e6, ticks / hz / max(n, 1) * 1e6
print(f"reference CPU per report: {theirs:.1f} µs (mosquitto_sub -q 1 beside the gateway, {n} reports received"
      f" and acknowledged, nothing else done); the gateway: {ours:.1f} µs, {ours / max(theirs, 1e-9):.2f}× the reference")' \
    "$reference_ticks" "$(grep -c '^cs/v1/' "$work/reference.txt" || true)" "$gateway_ticks" "${received:-0}")
  echo "$reference_line"
fi
awk '/^citysense_(store_commit|batch_accept|alert_delivery)_duration_seconds_bucket/' "$out/soak-metrics.prom"
# Where those bytes went (store/volume.rs): the WAL by cause, the checkpoints, and the rest
# (whole-block rounding of partial writes, other files), each per report.
python3 - "$out/soak-metrics.prom" "$written" "${received:-0}" <<'EOF'
import re, sys
text, written, n = open(sys.argv[1]).read(), int(sys.argv[2]), max(float(sys.argv[3] or 1), 1)
def value(name):
    return sum(float(v) for v in re.findall(r"^" + name + r" (\S+)$", text, re.M))
wal = {c: float(v) for c, v in re.findall(r'^citysense_store_wal_bytes_total\{cause="(\w+)"\} (\S+)$', text, re.M)}
ckpt = value("citysense_store_checkpoint_bytes_total")
commits = value("citysense_store_commit_duration_seconds_count")
parts = ", ".join(f"{c} {b / n:.0f}" for c, b in sorted(wal.items(), key=lambda kv: -kv[1]) if b)
rest = written - sum(wal.values()) - ckpt
print(f"bytes per report by cause: WAL ({parts}), checkpoints {ckpt / n:.0f}, block rounding and other files {rest / n:.0f}")
print(f"commits per report: {commits / n:.3f} ({n / max(commits, 1):.1f} reports per commit)")
EOF
# What the store holds, by table and index (net of the WAL): bytes per row, per report.
if command -v sqlite3 >/dev/null; then
  sqlite3 -readonly "$work/site/gateway.db" \
    "SELECT name, SUM(pgsize), SUM(ncell) FROM dbstat WHERE pagetype = 'leaf' GROUP BY name ORDER BY 2 DESC LIMIT 8" 2>/dev/null \
    | awk -F'|' -v n="${received:-1}" '{ printf "%s %.0f B/report (%s rows, %.0f B/row)%s", $1, $2 / n, $3, ($3 > 0 ? $2 / $3 : 0), (NR < 8 ? "; " : "") } END { print "" }' \
    | sed 's/^/store leaf pages by table: /'
fi
# What the confinement did: the gateway's peak memory, how often its CPU quota held it back.
if [ -n "$confine" ]; then
  cpu_dir=$cg_cpu mem_dir=$cg_mem
  if [ -z "$cpu_dir" ]; then # systemd's scope, in its cgroup v2 hierarchy
    cpu_dir=/sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$gateway_pid/cgroup") mem_dir=$cpu_dir
  fi
  peak=$(cat "$mem_dir/memory.peak" "$mem_dir/memory.max_usage_in_bytes" 2>/dev/null | head -1 || true)
  throttled=$(awk '$1 == "nr_throttled" {t = $2} $1 == "nr_periods" {p = $2} END {if (p) print t " of " p " periods"}' "$cpu_dir/cpu.stat" 2>/dev/null || true)
  echo "confined to ${confine%%,*} CPU and ${confine#*,}: gateway peak memory $(numfmt --to=iec "${peak:-0}")B, CPU quota throttled ${throttled:-?}"
fi
# Commits and maintenance passes of 100 ms or more, each logged with where its time went.
slow=$(grep -c "slow store" "$work/gateway.log" || true)
echo "slow store commits and maintenance passes (≥ 100 ms): $slow"
grep "slow store" "$work/gateway.log" | tail -5 || true
tail -3 "$work/load.log"

summary=$(python3 - "$out/soak.csv" "$duration" <<'EOF'
import csv, sys
rows = [(int(r["elapsed_s"]), int(r["rss_kib"])) for r in csv.DictReader(open(sys.argv[1]))]
# Warm-up: the longest windows (5-minute device health, 10-minute rule history) fill first.
duration = int(sys.argv[2])
warm = [r for r in rows if r[0] >= min(max(0.1 * duration, 600), duration / 2)] or rows
half = [r for r in rows if r[0] >= duration / 2] or rows
t0, r0 = warm[0]
t1, r1 = warm[-1]
n = len(warm)
mt = sum(t for t, _ in warm) / n
mr = sum(r for _, r in warm) / n
var = sum((t - mt) ** 2 for t, _ in warm) or 1
slope = sum((t - mt) * (r - mr) for t, r in warm) / var * 3600
growth = (r1 - r0) / r0
late = (half[-1][1] - half[0][1]) / half[0][1]
flat = "flat" if growth <= 0.05 else "NOT flat"
print(f"soak rss after warm-up ({t0} s) {r0/1024:.1f} MiB, at end {r1/1024:.1f} MiB, max {max(r for _, r in rows)/1024:.1f} MiB, "
      f"slope {slope/1024:+.2f} MiB/h, growth {growth*100:+.1f}% ({flat}), second half {late*100:+.1f}%")
EOF
)
echo "$summary"
lost=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r.get("lost"), "lost of", r.get("published"))' "$work/load.json" 2>/dev/null || echo "?")
echo "soak messages: $lost"
latency=$(python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
p50, p99, n, rate = (r[k] for k in ("alert_p50_ms", "alert_p99_ms", "alert_samples", "publish_rate"))
line = f"publish → alert p50 {p50:.1f} ms, p99 {p99:.1f} ms ({n} samples) at {rate:.0f} reports/s"
if "alert_max_ms" in r:
    mx, t50, t99, f50, f99 = (r[k] for k in ("alert_max_ms", "alert_to_broker_p50_ms", "alert_to_broker_p99_ms",
                                             "alert_from_broker_p50_ms", "alert_from_broker_p99_ms"))
    line += (f"; max {mx:.1f} ms; publish → the broker delivers it beside the gateway p50 {t50:.1f} / p99 {t99:.1f} ms, "
             f"from there → alert p50 {f50:.1f} / p99 {f99:.1f} ms")
print(line)' \
  "$work/load.json" 2>/dev/null || echo "?")
echo "latency under load ($broker broker): $latency"
echo "$cpu"
{
  echo
  echo "### $(date -u +%Y-%m-%d) · $(nproc) cores · \`deploy/bench/soak.sh --devices $devices --rate $rate --duration $duration$($nodelay && echo ' --nodelay')$([ -n "$floor" ] && echo " --floor $floor")$([ -n "$confine" ] && echo " --confine $confine")$($reference && echo ' --reference')\`"
  echo
  echo "- $summary; messages: $lost; latency ($broker broker): $latency; $cpu; $(echo "$per_report" | paste -sd ';' | sed 's/;/; /')$([ -n "$reference_line" ] && echo "; $reference_line")$([ -n "$confine" ] && echo "; confined to $confine")"
} >>"$out/BENCHMARKS-rows.md"
