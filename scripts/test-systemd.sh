#!/usr/bin/env bash
# The package's hardened unit run by a real systemd. systemd is not PID 1 on
# this machine, so a privileged podman container boots one (from the
# debootstrap base of scripts/podman-lib.sh), the .deb of
# scripts/test-package.sh is installed there, and:
# - neither unit is enabled on install;
# - rot13d.service starts (Type=notify: READY=1), serves, and its processes
#   run as a dynamic user with no capabilities, no_new_privs and a seccomp
#   filter; the live exposure score is <= 2.0;
# - systemctl reload (ExecReload) starts a new generation;
# - with WatchdogSec=3s the master's WATCHDOG=1 pings keep it alive, with
#   workers and with workers = 0;
# - systemctl stop ends it with success;
# - rot13d.socket activates it on the first client, passing LISTEN_FDNAMES=rot13;
# - with rot13d-admin.socket beside it, a scrape is the first client: the
#   socket named "admin" is the admin endpoint (LISTEN_FDNAMES=rot13:admin),
#   the other one the rot13 listener.
# Skips (exit 0, saying why) only where podman cannot run at all.
#   scripts/test-systemd.sh
set -euo pipefail
cd "$(dirname "$0")/.."

STEP=systemd
source scripts/test-lib.sh

[ "$(id -u)" = 0 ] || die "needs root (rootful podman)"
command -v podman >/dev/null || die "podman is missing (scripts/test.sh installs it)"
deb=$(ls target/debian/rot13d_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || die "no target/debian/rot13d_*.deb: run scripts/test-package.sh first"

work=$(mktemp -d)
name="rot13d-test-systemd-$$"
cleanup() {
  podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

source scripts/podman-lib.sh
podman_ready

cp "$deb" "$work/rot13d.deb"
podman run -d --name "$name" --privileged --systemd=always --network none \
  -v "$work/rot13d.deb:/tmp/rot13d.deb:ro" "$BASE_SYSTEMD" /sbin/init >/dev/null 2>"$work/run.err" \
  || { cat "$work/run.err" >&2; die "podman run (systemd)"; }
inside() { podman exec "$name" "$@"; }
# Whether rot13d's journal gets a line matching the grep pattern within 10 s
# (journald stores what the daemon wrote to stderr a little later).
journal_has() {
  for _ in $(seq 100); do
    inside journalctl -u rot13d --no-pager -o cat | grep -q -- "$1" && return 0
    sleep 0.1
  done
  return 1
}
state=
for _ in $(seq 300); do
  state=$(inside systemctl is-system-running 2>/dev/null || true)
  case "$state" in running | degraded) break ;; esac
  sleep 0.1
done
case "$state" in running | degraded) ;; *) die "systemd did not boot: '$state'" ;; esac
ok "systemd booted in a container ($state)"

inside dpkg -i /tmp/rot13d.deb >"$work/dpkg" 2>&1 || { cat "$work/dpkg" >&2; die "dpkg -i"; }
for u in rot13d.service rot13d.socket rot13d-admin.socket; do
  [ "$(inside systemctl is-enabled "$u" 2>/dev/null || true)" = disabled ] || die "$u is enabled after install"
  [ "$(inside systemctl is-active "$u" 2>/dev/null || true)" = inactive ] || die "$u is running after install"
done
ok "installed; no unit enabled nor started"

inside systemctl start rot13d.service || { inside journalctl -u rot13d --no-pager -o cat >&2; die "systemctl start"; }
inside rot13d probe 127.0.0.1:40713 >/dev/null || die "probe of the started service"
pid=$(inside systemctl show -p MainPID --value rot13d.service)
status=$(inside cat "/proc/$pid/status")
field() { echo "$status" | awk -v f="$1:" '$1 == f {print $2}'; }
[ "$(field Uid)" != 0 ] || die "runs as root"
[ "$(field CapEff)" = 0000000000000000 ] && [ "$(field CapBnd)" = 0000000000000000 ] \
  || die "capabilities: CapEff $(field CapEff) CapBnd $(field CapBnd)"
[ "$(field NoNewPrivs)" = 1 ] && [ "$(field Seccomp)" = 2 ] || die "NoNewPrivs $(field NoNewPrivs) Seccomp $(field Seccomp)"
for w in $(inside pgrep -P "$pid"); do
  [ "$(inside awk '$1 == "Uid:" {print $2}' "/proc/$w/status")" = "$(field Uid)" ] || die "worker $w: another uid"
done
ok "active and serving; uid $(field Uid) (DynamicUser), no capabilities, no_new_privs, seccomp filter"

exposure=$(inside systemd-analyze security --no-pager rot13d.service | sed -n 's/.*Overall exposure level for rot13d.service: \([0-9.]*\).*/\1/p')
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }' || die "live exposure '$exposure' > 2.0"
ok "systemd-analyze security (live): $exposure"

inside systemctl reload rot13d.service || { inside journalctl -u rot13d --no-pager -o cat | tail -5 >&2; die "systemctl reload"; }
journal_has 'ready workers=[0-9]* generation=2' || die "no generation 2 after reload"
inside rot13d probe 127.0.0.1:40713 >/dev/null || die "probe after reload"
ok "systemctl reload: a new generation, still serving"

# The watchdog: 3 s instead of 20 s (pings every 1.5 s), so that missed
# pings show within the test; with workers and with the master serving
# alone (workers = 0), whose loop must ping too.
inside mkdir -p /run/systemd/system/rot13d.service.d
for workers in auto 0; do
  inside sh -c "printf '[Service]\\nWatchdogSec=3s\\nExecStart=\\nExecStart=/usr/bin/rot13d --config /etc/rot13d/rot13d.toml --workers $workers\\n' >/run/systemd/system/rot13d.service.d/watchdog.conf"
  inside systemctl daemon-reload
  inside systemctl restart rot13d.service
  inside sh -c "tr '\\0' ' ' </proc/\$(systemctl show -p MainPID --value rot13d)/cmdline" | grep -q -- "--workers $workers" \
    || die "watchdog, workers $workers: the drop-in's ExecStart is not the one running"
  t1=$(inside systemctl show -p WatchdogTimestampMonotonic --value rot13d.service)
  sleep 4 # longer than WatchdogSec: the service must still be the same one
  t2=$(inside systemctl show -p WatchdogTimestampMonotonic --value rot13d.service)
  [ "$(inside systemctl is-active rot13d.service)" = active ] && [ "$(inside systemctl show -p NRestarts --value rot13d.service)" = 0 ] \
    || { inside journalctl -u rot13d --no-pager -o cat | tail -5 >&2; die "watchdog, workers $workers: the service was killed or restarted"; }
  [ "$t2" -gt "$t1" ] || die "watchdog, workers $workers: no WATCHDOG=1 seen ($t1 -> $t2)"
done
inside rm -r /run/systemd/system/rot13d.service.d
inside systemctl daemon-reload
inside systemctl restart rot13d.service
ok "WatchdogSec=3s: pinged, alive after 4 s, with workers = auto and 0"

inside systemctl stop rot13d.service
[ "$(inside systemctl show -p Result --value rot13d.service)" = success ] \
  && [ "$(inside systemctl show -p ExecMainStatus --value rot13d.service)" = 0 ] \
  || die "stop: $(inside systemctl show -p Result -p ExecMainStatus rot13d.service | tr '\n' ' ')"
ok "systemctl stop: success, exit 0"

inside systemctl start rot13d.socket
[ "$(inside systemctl is-active rot13d.service || true)" = inactive ] || die "the service started with the socket"
inside rot13d probe '[::1]:40713' >/dev/null || die "probe through the activation socket"
[ "$(inside systemctl is-active rot13d.service)" = active ] || die "the first client did not start the service"
pid=$(inside systemctl show -p MainPID --value rot13d.service)
inside sh -c "tr '\0' '\n' </proc/$pid/environ" | grep -qx 'LISTEN_FDNAMES=rot13' || die "no LISTEN_FDNAMES=rot13"
# [::1] answered although the file listens on 0.0.0.0 only: the passed socket.
journal_has 'listening addr=\[::\]:40713 kind=rot13' || die "no 'listening addr=[::]:40713 kind=rot13' in the journal"
inside systemctl stop rot13d.socket rot13d.service
ok "rot13d.socket: activated by the first client, LISTEN_FDNAMES=rot13, serving [::]:40713"

# The admin socket: GET on 127.0.0.1:9100 inside the container, with bash's
# /dev/tcp (the base image has no HTTP client); the whole answer.
admin_get() {
  inside timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9100 && printf "GET %s HTTP/1.0\r\n\r\n" "$1" >&3 && cat <&3' _ "$1"
}
inside systemctl start rot13d.socket rot13d-admin.socket
[ "$(inside systemctl is-active rot13d.service || true)" = inactive ] || die "the service started with the sockets"
got=$(admin_get /metrics) || die "GET /metrics on the admin socket"
echo "$got" | head -1 | grep -q '^HTTP/1.1 200 ' && echo "$got" | grep -q '^rot13d_build_info{' \
  || die "the first scrape on rot13d-admin.socket: $(echo "$got" | head -3)"
[ "$(inside systemctl is-active rot13d.service)" = active ] || die "the scrape did not start the service"
healthy=
for _ in $(seq 100); do
  admin_get /healthz | head -1 | grep -q '^HTTP/1.1 200 ' && { healthy=1; break; }
  sleep 0.1
done
[ -n "$healthy" ] || die "/healthz on the admin socket: $(admin_get /healthz | tail -1)"
pid=$(inside systemctl show -p MainPID --value rot13d.service)
inside sh -c "tr '\0' '\n' </proc/$pid/environ" | grep -Eqx 'LISTEN_FDNAMES=(rot13:admin|admin:rot13)' \
  || die "LISTEN_FDNAMES: $(inside sh -c "tr '\0' '\n' </proc/$pid/environ" | grep LISTEN_FDNAMES)"
inside rot13d probe '[::1]:40713' >/dev/null || die "probe of the rot13 socket passed beside the admin one"
journal_has 'listening addr=127.0.0.1:9100 kind=admin' || die "no 'listening addr=127.0.0.1:9100 kind=admin' in the journal"
inside systemctl stop rot13d-admin.socket rot13d.socket rot13d.service
ok "rot13d-admin.socket: a scrape starts the service, the socket named admin serves /metrics and /healthz, rot13 on the other"

all_passed
