#!/usr/bin/env bash
# Installs the packages on this machine, checks what Debian users expect of them, upgrades,
# removes and purges them. Needs root; refuses to run where citysense-gateway is installed for
# real. deploy/test-all.sh runs it.
#
#   deploy/debian/test.sh            packages of the debug binaries (fast; what CI checks)
#   deploy/debian/test.sh release    packages of the release binaries
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${1:-dev}

fail() { echo "FAIL: $*" >&2; exit 1; }
check() { printf '  ok  %s\n' "$1"; }
if [[ $(id -u) != 0 ]]; then
  sudo -n true 2>/dev/null || fail "installing packages needs root: sudo $0"
  exec sudo -n "$0" "$@"
fi
dpkg-query -W -f='${Status}' citysense-gateway 2>/dev/null | grep -q installed &&
  fail "citysense-gateway is installed on this machine: the test would replace it (dpkg -P it first)"
for prog in dpkg systemd-analyze adduser runuser; do
  command -v $prog >/dev/null || fail "$prog is missing (apt-get install dpkg systemd adduser util-linux)"
done

work=$(mktemp -d)
cleanup() {
  dpkg --purge citysense-gateway citysense-tools >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

deploy/debian/build.sh --profile "$profile" --revision 1 >/dev/null
mv target/debian/citysense-*_0.1.0-1_*.deb "$work/"
deploy/debian/build.sh --profile "$profile" --revision 2 >/dev/null
mv target/debian/citysense-*_0.1.0-2_*.deb "$work/"

mode() { stat -c '%a %U:%G' "$1"; }
expect_mode() { [[ $(mode "$1") == "$2" ]] || fail "$1 is $(mode "$1"), expected $2"; }

echo "install"
dpkg -i "$work"/citysense-gateway_0.1.0-1_*.deb "$work"/citysense-tools_0.1.0-1_*.deb >/dev/null
user=$(getent passwd citysense) || fail "no citysense user after install"
IFS=: read -r _ _ uid _ _ home shell <<<"$user"
((uid < 1000)) || fail "citysense is not a system user (uid $uid)"
[[ $home == /var/lib/citysense && $shell == */nologin ]] || fail "citysense user: home $home, shell $shell"
check "system user citysense (uid $uid, home $home, no login)"
expect_mode /usr/bin/gateway "755 root:root"
expect_mode /usr/bin/nodectl "755 root:root"
expect_mode /usr/bin/simulator "755 root:root"
expect_mode /etc/citysense "750 root:citysense"
expect_mode /etc/citysense/gateway.toml "644 root:root"
expect_mode /etc/citysense/gateway.env "600 root:root"
expect_mode /etc/citysense/keys "700 citysense:citysense"
expect_mode /etc/citysense/keys/keys.toml "600 citysense:citysense"
expect_mode /var/lib/citysense "750 citysense:citysense"
[[ -f /usr/share/citysense/profiles/uhf-rfid-gate.toml && -f /usr/share/citysense/prometheus/citysense-rules.yml ]] ||
  fail "profiles or monitoring files missing under /usr/share/citysense"
check "binaries, config, secrets (600) and state folder with their owners and modes"
conffiles=$(dpkg-query -W -f='${Conffiles}' citysense-gateway)
for f in /etc/citysense/gateway.toml /etc/citysense/gateway.env /etc/citysense/sites/ganzhou.toml /etc/citysense/rules/ganzhou.toml; do
  grep -q " $f " <<<"$conffiles" || fail "$f is not a conffile"
done
check "the files under /etc are conffiles"
verify=$(systemd-analyze verify /usr/lib/systemd/system/citysense-gateway.service 2>&1) ||
  fail "systemd-analyze verify: $verify"
grep -q '^Type=notify' /usr/lib/systemd/system/citysense-gateway.service || fail "the unit is not Type=notify"
check "systemd-analyze verify citysense-gateway.service"
runuser -u citysense -- gateway check-config /etc/citysense/gateway.toml >"$work/check.txt" 2>&1 ||
  fail "the installed config does not check: $(cat "$work/check.txt")"
check "gateway check-config /etc/citysense/gateway.toml (as citysense)"
nodectl --version >/dev/null && simulator --help >/dev/null || fail "the tools do not run"
check "nodectl and simulator run"

echo "upgrade, keeping the operator's edits"
printf '# edited by the operator\n' >>/etc/citysense/gateway.toml
printf '[[device]]\nid = "kept"\nkey = "%064d"\n' 0 >>/etc/citysense/keys/keys.toml
echo state >/var/lib/citysense/gateway.db
DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "$work"/citysense-gateway_0.1.0-2_*.deb "$work"/citysense-tools_0.1.0-2_*.deb >/dev/null
[[ $(dpkg-query -W -f='${Version}' citysense-gateway) == 0.1.0-2 ]] || fail "not upgraded"
tail -n1 /etc/citysense/gateway.toml | grep -q 'edited by the operator' || fail "the upgrade lost the edited gateway.toml"
grep -q 'id = "kept"' /etc/citysense/keys/keys.toml || fail "the upgrade lost the keys"
expect_mode /etc/citysense/keys/keys.toml "600 citysense:citysense"
[[ -f /var/lib/citysense/gateway.db ]] || fail "the upgrade lost the store"
check "0.1.0-1 -> 0.1.0-2 keeps the edited config, the keys and the store"

echo "remove keeps configuration and state"
dpkg -r citysense-gateway >/dev/null
[[ ! -e /usr/bin/gateway ]] || fail "/usr/bin/gateway is still there after remove"
[[ -f /etc/citysense/gateway.toml && -f /etc/citysense/keys/keys.toml && -f /var/lib/citysense/gateway.db ]] ||
  fail "remove deleted configuration or state"
[[ $(dpkg-query -W -f='${db:Status-Abbrev}' citysense-gateway) == "rc " ]] || fail "not in state rc after remove"
check "dpkg -r: binary gone; config, keys and store kept"

echo "purge removes them"
dpkg -P citysense-gateway citysense-tools >/dev/null
[[ ! -e /etc/citysense && ! -e /var/lib/citysense ]] || fail "purge left $(ls -d /etc/citysense /var/lib/citysense 2>/dev/null)"
[[ ! -e /usr/bin/nodectl ]] || fail "purge left /usr/bin/nodectl"
getent passwd citysense >/dev/null || fail "purge removed the system user (Debian keeps it)"
check "dpkg -P: /etc/citysense and /var/lib/citysense gone, the user kept"
echo "packages: install, upgrade, remove and purge behave"
