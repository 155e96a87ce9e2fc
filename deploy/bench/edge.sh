#!/usr/bin/env bash
# CitySense on edge hardware (issue 25): the nominal soak (10,000 pressure loggers at 1,000
# reports/s, stock Mosquitto, the InfluxDB sink to VictoriaMetrics) with the gateway confined to
# one CPU's worth of time and 256 MiB of memory, the box a district puts in a street cabinet.
# Prints what deploy/bench/soak.sh prints (lost reports, publish → alert, bytes written and CPU
# per report), then what the confinement did: the gateway's peak memory and how often its CPU
# quota throttled it.
#
#   deploy/bench/edge.sh                        # 10 minutes
#   deploy/bench/edge.sh --duration 120         # shorter
#   deploy/bench/edge.sh --cpus 0.5 --memory 128M --rate 500
#   deploy/bench/edge.sh --reference            # also mosquitto_sub -q 1's CPU per report on
#                                               # the same reports (soak.sh --reference)
#
# The confinement: `systemd-run --scope -p CPUQuota=… -p MemoryMax=…` where systemd runs the
# machine, else a cgroup made here directly (v2, or v1's cpu and memory controllers; root).
# The broker and the load generator are not confined: they stand for other machines.
set -euo pipefail
cd "$(dirname "$0")/../.."

cpus=1
memory=256M
duration=600
rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cpus) cpus=$2; shift 2 ;;
    --memory) memory=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    *) rest+=("$1"); shift ;;
  esac
done

exec deploy/bench/soak.sh --devices 10000 --rate 1000 --duration "$duration" \
  --confine "$cpus,$memory" "${rest[@]}"
