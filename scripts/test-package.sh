#!/usr/bin/env bash
# The Debian package, built and used as an operator would: cargo deb,
# lintian (no errors), dpkg -i, the installed binary, configuration, man
# pages and units checked, then dpkg --purge, after which nothing of it is
# left on the machine. Needs root, cargo-deb, lintian (scripts/test.sh
# installs them). Leaves target/debian/*.deb behind.
#   scripts/test-package.sh
set -euo pipefail
cd "$(dirname "$0")/.."

STEP=package
source scripts/test-lib.sh

[ "$(id -u)" = 0 ] || die "needs root (dpkg -i)"
for t in cargo-deb lintian dpkg man systemd-analyze; do
  command -v "$t" >/dev/null || die "$t is missing (scripts/test.sh installs it)"
done
if dpkg-query -W -f='${Status}' rot13d 2>/dev/null | grep -q 'installed'; then
  die "rot13d is installed on this machine already; this test installs and purges it"
fi

# What the package may touch, to compare after the purge. (/var/cache and
# dpkg's own database change by design.)
snapshot() {
  find /etc /usr /opt /srv /var/lib /var/log /run -xdev \
    \( -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/lib/containers \
       -o -path /run/containers -o -path /run/libpod -o -path /run/user -o -path /run/runc \) -prune \
    -o -print 2>/dev/null | sort
}

cleanup() {
  if dpkg-query -W -f='${Status}' rot13d 2>/dev/null | grep -q 'installed'; then
    dpkg --purge rot13d >/dev/null 2>&1 || true
  fi
  [ -z "${daemon_pid:-}" ] || kill -KILL "$daemon_pid" 2>/dev/null || true
  [ -z "${work:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
work=$(mktemp -d)

# --- build ------------------------------------------------------------------
cargo xtask man target/man >/dev/null
rm -f target/debian/rot13d_*.deb target/debian/rot13d-dbgsym_*.ddeb
echo "package: cargo deb (a release build)..."
cargo deb --locked >"$work/deb.log" 2>&1 || { cat "$work/deb.log" >&2; die "cargo deb"; }
deb=$(ls target/debian/rot13d_*.deb)
version=$(dpkg-deb -f "$deb" Version)
ok "built $deb ($version)"

# --- lintian: no errors (warnings are printed) -------------------------------
lintian --fail-on error --suppress-tags initial-upload-closes-no-bugs "$deb" >"$work/lintian" 2>&1 \
  || { cat "$work/lintian" >&2; die "lintian reports errors"; }
grep -v '^running with root privileges' "$work/lintian" || true
ok "lintian: no errors"

# --- contents ---------------------------------------------------------------
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's,^\./,/,' >"$work/contents"
for f in /usr/bin/rot13d /etc/rot13d/rot13d.toml /usr/lib/systemd/system/rot13d.service \
         /usr/lib/systemd/system/rot13d.socket /usr/lib/systemd/system/rot13d-admin.socket \
         /usr/share/man/man8/rot13d.8.gz \
         /usr/share/man/man8/rot13d-probe.8.gz /usr/share/doc/rot13d/README.md \
         /usr/share/doc/rot13d/changelog.Debian.gz /usr/share/doc/rot13d/copyright; do
  grep -qx "$f" "$work/contents" || die "$f is not in the package"
done
ok "contents: binary, conffile, units, man pages, docs"

# --- install ----------------------------------------------------------------
snapshot >"$work/before"
dpkg -i "$deb" >"$work/dpkg-i" 2>&1 || { cat "$work/dpkg-i" >&2; die "dpkg -i"; }
[ "$(dpkg-query -W -f='${Conffiles}' rot13d | awk 'NF {print $1}')" = /etc/rot13d/rot13d.toml ] \
  || die "conffiles: $(dpkg-query -W -f='${Conffiles}' rot13d)"
cmp -s config/rot13d.toml /etc/rot13d/rot13d.toml || die "/etc/rot13d/rot13d.toml differs from config/rot13d.toml"
ok "installed; /etc/rot13d/rot13d.toml is the one conffile"

out=$(/usr/bin/rot13d --version)
[ "$out" = "rot13d ${version%-*}" ] || die "rot13d --version: $out"
/usr/bin/rot13d -c /etc/rot13d/rot13d.toml --check-config >"$work/check" 2>&1 \
  || { cat "$work/check" >&2; die "rot13d --check-config /etc/rot13d/rot13d.toml"; }
ok "rot13d -c /etc/rot13d/rot13d.toml --check-config: exit 0"

# The installed (stripped) binary serves with the installed configuration.
/usr/bin/rot13d -c /etc/rot13d/rot13d.toml --listen 127.0.0.1:0 --workers 1 2>"$work/log" &
daemon_pid=$!
for _ in $(seq 100); do grep -q 'ready' "$work/log" && break; sleep 0.1; done
addr=$(sed -n 's/.*listening addr=\([^ ]*\) kind=rot13.*/\1/p' "$work/log" | head -1)
[ -n "$addr" ] || { cat "$work/log" >&2; die "the installed daemon did not start"; }
/usr/bin/rot13d probe "$addr" >/dev/null || die "rot13d probe $addr"
kill -TERM "$daemon_pid"
wait "$daemon_pid" || die "graceful stop exit $?"
daemon_pid=
ok "installed daemon serves $addr, probe healthy, SIGTERM exit 0"

# --- man pages ----------------------------------------------------------------
for page in rot13d rot13d-probe; do
  MANWIDTH=80 man -l "/usr/share/man/man8/$page.8.gz" >"$work/$page.txt" 2>"$work/man.err" \
    || { cat "$work/man.err" >&2; die "man -l $page.8.gz"; }
  [ ! -s "$work/man.err" ] || { cat "$work/man.err" >&2; die "man -l $page.8.gz printed warnings"; }
done
for s in NAME SYNOPSIS OPTIONS 'EXIT STATUS' SIGNALS ENVIRONMENT FILES 'SEE ALSO'; do
  grep -q "^$s\$" "$work/rot13d.txt" || die "rot13d(8) has no $s section"
done
for w in SIGHUP SIGTERM 78 /etc/rot13d/rot13d.toml --check-config rot13d-probe; do
  grep -qF -- "$w" "$work/rot13d.txt" || die "rot13d(8) does not mention $w"
done
grep -q '^EXIT STATUS$' "$work/rot13d-probe.txt" || die "rot13d-probe(8) has no EXIT STATUS"
man -w rot13d >/dev/null 2>&1 || die "man rot13d does not find the page"
ok "man -l renders rot13d(8) and rot13d-probe(8) with signals, files, exit status"

# --- units ------------------------------------------------------------------
units=(/usr/lib/systemd/system/rot13d.service /usr/lib/systemd/system/rot13d.socket
       /usr/lib/systemd/system/rot13d-admin.socket)
systemd-analyze verify "${units[@]}" >"$work/verify" 2>&1 || { cat "$work/verify" >&2; die "systemd-analyze verify"; }
[ ! -s "$work/verify" ] || { cat "$work/verify" >&2; die "systemd-analyze verify printed warnings"; }
exposure=$(systemd-analyze security --offline=yes --no-pager "${units[0]}" | sed -n 's/.*Overall exposure level for rot13d.service: \([0-9.]*\).*/\1/p')
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }' || die "exposure '$exposure' > 2.0"
ok "systemd-analyze verify: clean; security: exposure $exposure"

# --- purge: nothing left ----------------------------------------------------
dpkg --purge rot13d >"$work/purge" 2>&1 || { cat "$work/purge" >&2; die "dpkg --purge"; }
snapshot >"$work/after"
if ! diff "$work/before" "$work/after" >"$work/left"; then
  cat "$work/left" >&2
  die "the purge left files behind (or removed some)"
fi
! dpkg-query -W -f='${Status}' rot13d 2>/dev/null | grep -q 'installed' || die "still installed"
ok "purged: no file of it left"

all_passed
