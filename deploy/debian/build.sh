#!/usr/bin/env bash
# Builds the Debian packages citysense-gateway and citysense-tools into target/debian/.
#
#   deploy/debian/build.sh                     release binaries, revision 1
#   deploy/debian/build.sh --profile dev       the debug binaries already built (tests)
#   deploy/debian/build.sh --revision 2        another revision (upgrade tests)
#
# Needs cargo-deb (`cargo install cargo-deb --locked`). The package's gateway.toml is the
# sample deploy/gateway/gateway.toml with the installed paths.
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=release
revision=1
while (($#)); do
  case $1 in
    --profile) profile=$2; shift 2 ;;
    --revision) revision=$2; shift 2 ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
command -v cargo-deb >/dev/null || { echo "cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 1; }

mkdir -p target/debian-staging
sed -e 's|^profiles = .*|profiles = "/usr/share/citysense/profiles"|' \
    -e 's|^site = .*|site = "sites/ganzhou.toml"|' \
    -e 's|^keys = .*|keys = "keys/keys.toml"|' \
    -e 's|^rule_files = .*|rule_files = ["rules/ganzhou.toml"]|' \
    deploy/gateway/gateway.toml > target/debian-staging/gateway.toml
for key in profiles site keys rule_files; do
  [[ $(grep -c "^$key = " target/debian-staging/gateway.toml) == 1 ]] ||
    { echo "deploy/gateway/gateway.toml needs one '$key = ' line for the package to set" >&2; exit 1; }
done

if [[ $profile == release ]]; then
  cargo build --locked --release -p gateway -p nodectl -p simulator
else
  # The binaries the test command built already, with the same features: nothing to rebuild.
  cargo build --locked --profile "$profile" --workspace --bins
fi
for package in gateway nodectl; do
  cargo deb --quiet --no-build --fast --profile "$profile" --deb-revision "$revision" -p "$package" -o target/debian/
done
