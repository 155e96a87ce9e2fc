#!/usr/bin/env bash
# Runs every check CitySense has, on a fresh machine or a developer's: installs what the tests
# need when it is missing, then formatting, lints and all tests. `.ci/run` calls exactly this.
#
#   deploy/test-all.sh            everything
#   SKIP_INSTALL=1 deploy/test-all.sh   do not try to install missing packages
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# On CI every build starts clean: incremental artefacts only cost time and disk there.
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi

# Programs the tests start for real, and the Debian packages that provide them.
declare -A PACKAGES=(
  [mosquitto]=mosquitto
  [mosquitto_sub]=mosquitto-clients
  [mosquitto_passwd]=mosquitto
  [victoria-metrics]=victoria-metrics
  [promtool]=prometheus
  [prometheus-alertmanager]=prometheus-alertmanager
  [qemu-system-arm]=qemu-system-arm
  [llvm-size]=llvm
  # Counts a connection's TCP segments (the ingest session's acknowledgements test).
  [ss]=iproute2
  # The console's tests drive a real headless browser over WebDriver.
  [chromium]=chromium
  [chromedriver]=chromium-driver
  # Benchmarks only (deploy/bench/run.sh measures the disk with it); installed so a fresh
  # machine can run them.
  [fio]=fio
)

install_missing() {
  local missing=()
  for prog in "${!PACKAGES[@]}"; do
    command -v "$prog" >/dev/null 2>&1 || missing+=("${PACKAGES[$prog]}")
  done
  # A CJK font, so the console's screenshots under target/console are readable.
  [[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]] || missing+=(fonts-wqy-microhei)
  if ((${#missing[@]})); then
    step "installing Debian packages: ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then
      echo "need root to install ${missing[*]}: run 'sudo apt-get install ${missing[*]}'" >&2
      exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # The Debian packages are built with cargo-deb (deploy/debian/build.sh).
  if ! command -v cargo-deb >/dev/null 2>&1; then
    step "installing cargo-deb"
    cargo install cargo-deb --version 3.8.0 --locked --quiet
  fi
  if ! rustup target list --installed | grep -qx thumbv7em-none-eabihf; then
    step "installing the Rust target thumbv7em-none-eabihf"
    rustup target add thumbv7em-none-eabihf
  fi
}

[[ -n "${SKIP_INSTALL:-}" ]] || install_missing

log=$(mktemp)
trap 'rm -f "$log"' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check
(cd firmware/boards/qemu && cargo fmt -- --check)
(cd firmware/boards/stm32f407-w5500 && cargo fmt -- --check)

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "firmware/wire and firmware/node build for the Cortex-M4F target without std"
cargo build --locked -p wire --target thumbv7em-none-eabihf --release
cargo build --locked -p node --target thumbv7em-none-eabihf --release
cargo build --locked -p node --target thumbv7em-none-eabihf --release --no-default-features

step "the node's self-checks on an emulated Cortex-M4F (QEMU mps2-an386)"
(cd firmware/boards/qemu &&
  cargo clippy --locked --release --target-dir ../../../target -- -D warnings &&
  timeout 300 cargo run --locked --release --target-dir ../../../target) 2>&1 | tee -a "$log"

step "the wire fuzz target still builds"
cargo check --locked --manifest-path firmware/wire/fuzz/Cargo.toml --target-dir target

step "the STM32F407 + W5500 board image builds and fits its budget (256 KiB flash, 64 KiB RAM)"
(cd firmware/boards/stm32f407-w5500 &&
  cargo clippy --locked --release --target-dir ../../../target -- -D warnings &&
  cargo build --locked --release --target-dir ../../../target)
llvm-size target/thumbv7em-none-eabihf/release/board-stm32f407-w5500 |
  awk 'NR == 2 { flash = $1 + $2; ram = $2 + $3
         printf "flash %d B of 262144 (%.0f%%), static RAM %d B of 65536 (%.0f%%)\n", flash, flash / 2621.44, ram, ram / 655.36
         if (flash > 262144 || ram > 65536) { print "over budget"; exit 1 } }'

step "build the binaries the system tests run (gateway demo, check-config)"
cargo build --workspace --bins --locked

step "the Debian packages install, upgrade, remove and purge (deploy/debian/test.sh)"
deploy/debian/test.sh

step "cargo test"
cargo test --workspace --locked 2>&1 | tee -a "$log"

# One closing line for the whole run: cargo's test results and the QEMU run's own line.
awk '/^test result:/ || /^[0-9]+ passed, [0-9]+ failed$/ {
       gsub(/[;,]/, " ")
       for (i = 1; i < NF; i++) { if ($(i+1) == "passed") p += $i; if ($(i+1) == "failed") f += $i } }
     END { printf "\nsummary: %d passed, %d failed\n", p, f }' "$log"
