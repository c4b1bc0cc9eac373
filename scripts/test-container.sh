#!/usr/bin/env bash
# The Docker image, linted and then built and run for real with podman (no
# Docker engine or registry here):
# - the Dockerfile passes hadolint;
# - the base image debian:bookworm-slim is made locally with debootstrap
#   (scripts/podman-lib.sh; cached in podman's storage) and the image is
#   built with `--target prebuilt` from the host's release binary (the
#   builder stage would need a Rust image from a registry);
# - the container runs as a non-root user, answers ROT13 on a published
#   127.0.0.1 port, uses /etc/rot13d/rot13d.toml, starts one worker under
#   --cpus 1, its HEALTHCHECK is healthy, unhealthy while the daemon is
#   frozen, healthy again after, and `podman stop` ends it within docker
#   stop's 10 s with exit 0 even with a busy client.
# Skips (exit 0, saying why) only where podman cannot run at all. Needs
# root, podman, runc, debootstrap, hadolint (scripts/test.sh installs them).
#   scripts/test-container.sh
set -euo pipefail
cd "$(dirname "$0")/.."

STEP=container
source scripts/test-lib.sh

# --- lint ---------------------------------------------------------------------
hadolint=${HADOLINT:-$(command -v hadolint || echo target/tools/hadolint/bin/hadolint)}
[ -x "$hadolint" ] || die "hadolint is missing (scripts/test.sh installs it)"
"$hadolint" --failure-threshold info Dockerfile || die "hadolint Dockerfile"
ok "hadolint: Dockerfile clean"

[ "$(id -u)" = 0 ] || die "needs root (rootful podman, debootstrap)"
for t in podman runc debootstrap python3 objcopy; do
  command -v "$t" >/dev/null || die "$t is missing (scripts/test.sh installs it)"
done

work=$(mktemp -d)
tag="rot13d-test-$$"
image="localhost/$tag:latest"
containers=()
cleanup() {
  for c in "${containers[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  podman rmi -f "$image" >/dev/null 2>&1 || true
  [ -z "${client_pid:-}" ] || kill "$client_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

source scripts/podman-lib.sh
podman_ready

# --- build --------------------------------------------------------------------
cargo build --release --locked --bin rot13d --quiet
mkdir -p "$work/ctx/config"
cp config/docker.toml "$work/ctx/config/"
objcopy --strip-debug target/release/rot13d "$work/ctx/rot13d"
podman build --quiet --format docker --pull=never --target prebuilt -t "$image" -f Dockerfile "$work/ctx" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; die "podman build"; }
ok "podman build --format docker --target prebuilt"

podman image inspect "$image" >"$work/image.json"
python3 - "$work/image.json" <<'EOF' || die "image configuration"
import json, sys
img = json.load(open(sys.argv[1]))[0]
cfg = img["Config"]
user = cfg.get("User", "")
uid = user.split(":")[0]
assert uid.isdigit() and int(uid) != 0, f"USER {user!r}: not a numeric non-root user"
assert "40713/tcp" in cfg.get("ExposedPorts", {}), f"EXPOSE: {cfg.get('ExposedPorts')}"
assert cfg.get("StopSignal") == "SIGTERM", f"STOPSIGNAL {cfg.get('StopSignal')}"
hc = img.get("Healthcheck") or {}
test = hc.get("Test", [])
assert test[:3] == ["CMD", "rot13d", "probe"], f"HEALTHCHECK {test}: not the exec form of rot13d probe"
assert cfg.get("Cmd") == ["rot13d", "--config", "/etc/rot13d/rot13d.toml"], f"CMD {cfg.get('Cmd')}"
EOF
ok "image: numeric non-root USER, EXPOSE 40713, STOPSIGNAL SIGTERM, HEALTHCHECK exec rot13d probe"

# --- helpers ----------------------------------------------------------------------
# Starts a container (extra podman run options in "$@"); waits for `ready`.
start() {
  local name=$1; shift
  containers+=("$name")
  # No systemd here to schedule health checks: `podman healthcheck run` does.
  podman run -d --name "$name" -p 127.0.0.1::40713 "$@" "$image" >/dev/null 2>"$work/run.err" \
    || { cat "$work/run.err" >&2; die "podman run $name"; }
  for _ in $(seq 300); do podman logs "$name" 2>&1 | grep -q ' ready ' && return 0; sleep 0.1; done
  podman logs "$name" >&2 || true
  die "$name: no 'ready' within 30 s"
}
host_port() { podman port "$1" 40713/tcp | sed 's/.*://'; }
# Sends stdin's bytes to 127.0.0.1:$1, half-closes, prints what came back (repr).
roundtrip() {
  python3 -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 5)
s.settimeout(20)
s.sendall(sys.stdin.buffer.read())
s.shutdown(socket.SHUT_WR)
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    out += b
print(repr(out))' "$1"
}
health() { podman healthcheck run "$1" >/dev/null 2>&1; }
health_log() { podman inspect -f '{{json .State.Health}}' "$1" 2>/dev/null || podman inspect -f '{{json .State.Healthcheck}}' "$1"; }

# --- the image with its own configuration -----------------------------------------
c1="$tag-default"
start "$c1" --cpus 1
port=$(host_port "$c1")
log=$(podman logs "$c1" 2>&1)
echo "$log" | grep -q 'listening addr=127.0.0.1:9100 kind=admin' \
  || { echo "$log" >&2; die "the log does not show config/docker.toml's admin listener"; }
ok "serves with /etc/rot13d/rot13d.toml (config/docker.toml: admin on 127.0.0.1:9100)"

if [ "$(nproc)" -ge 2 ]; then
  echo "$log" | grep -q 'master running workers=1 ' || { echo "$log" >&2; die "--cpus 1 on $(nproc) CPUs: not 1 worker"; }
  ok "workers = auto under --cpus 1 on a $(nproc)-CPU host: 1 worker"
else
  echo "container: note: 1 CPU here, the --cpus 1 worker count proves nothing"
fi

hpids=$(podman top "$c1" hpid | tail -n +2)
for p in $hpids; do
  uid=$(awk '/^Uid:/ {print $2}' "/proc/$p/status")
  [ "$uid" != 0 ] || die "process $p runs as root"
done
ok "every process runs as uid $uid, not root"

got=$(printf 'Hello, World!\r\n' | roundtrip "$port")
[ "$got" = "b'Uryyb, Jbeyq!\\r\\n'" ] || die "127.0.0.1:$port answered $got"
ok "published 127.0.0.1:$port answers ROT13"

health "$c1" || { health_log "$c1" >&2; die "healthcheck: not healthy"; }
ok "podman healthcheck run: healthy"

# Frozen daemon (a hung process still holding the port): the probe times out.
kill -STOP $hpids
if health "$c1"; then kill -CONT $hpids; die "healthcheck: healthy while the daemon is stopped"; fi
kill -CONT $hpids
health_log "$c1" | grep -q 'unhealthy: 127.0.0.1:40713: timed out' || { health_log "$c1" >&2; die "no probe reason in the health log"; }
health "$c1" || { health_log "$c1" >&2; die "healthcheck: not healthy again after SIGCONT"; }
ok "unhealthy while the daemon is stopped (reason in the health log), healthy again after"

# Graceful stop with a busy client: drained within shutdown_grace = 8 s,
# its partial line answered, exit 0, all inside docker stop's 10 s.
# The client sends a line and a partial one in one write and says `ready`
# once the line's answer is back: the daemon has read both by then.
python3 -c '
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 5)
s.settimeout(30)
s.sendall(b"ping\nbusy partial")
out = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    if not out:
        open(sys.argv[2], "w").write("ready")
    out += b
print(repr(out))' "$port" "$work/busy.ready" >"$work/busy" &
client_pid=$!
for _ in $(seq 100); do [ -s "$work/busy.ready" ] && break; sleep 0.1; done
[ -s "$work/busy.ready" ] || die "the busy client got no answer"
t0=$(date +%s.%N)
podman stop -t 10 "$c1" >/dev/null 2>"$work/stop.err" || { cat "$work/stop.err" >&2; die "podman stop"; }
t1=$(date +%s.%N)
wait "$client_pid" || die "busy client failed"
client_pid=
# Exit 0 means the daemon ended by itself before the SIGKILL 10 s after the
# SIGTERM (137 otherwise); its log says how long the drain took.
code=$(podman inspect -f '{{.State.ExitCode}}' "$c1")
[ "$code" = 0 ] || { podman logs "$c1" >&2; die "exit code $code after podman stop -t 10 (137 = killed)"; }
stop_log=$(podman logs "$c1" 2>&1)
at() { date -d "$(echo "$stop_log" | grep -m1 "INFO rot13d: $1" | cut -d' ' -f1)" +%s.%N; }
drain=$(awk -v a="$(at 'graceful stop')" -v b="$(at 'stopped')" 'BEGIN { printf "%.1f", b - a }')
awk -v t="$drain" 'BEGIN { exit !(t >= 7.5 && t < 9.5) }' || die "SIGTERM to exit took $drain s (shutdown_grace = 8)"
echo "$stop_log" | grep -q 'grace period over' || die "no drain in the log"
[ "$(cat "$work/busy")" = "b'cvat\\nohfl cnegvny'" ] || die "busy client got $(cat "$work/busy")"
took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
ok "podman stop -t 10 with a busy client: drained in $drain s (podman stop $took s), exit 0, partial line answered"

# --- a configuration mounted at /etc/rot13d/rot13d.toml is the one used --------
cat >"$work/custom.toml" <<'EOF'
[server]
listen = ["0.0.0.0:40713"]
max_line = 4
shutdown_grace = 1
EOF
chmod 644 "$work/custom.toml"
c2="$tag-mounted"
start "$c2" -v "$work/custom.toml:/etc/rot13d/rot13d.toml:ro"
got=$(printf 'abcdefghij\n' | roundtrip "$(host_port "$c2")")
[ "$got" = "b'nopq\\nrstu\\nvw\\n'" ] || die "max_line = 4 from the mounted file not applied: $got"
health "$c2" || die "healthcheck with the mounted configuration"
podman stop -t 10 "$c2" >/dev/null 2>&1
[ "$(podman inspect -f '{{.State.ExitCode}}' "$c2")" = 0 ] || die "exit code after stop"
ok "a file mounted at /etc/rot13d/rot13d.toml is the configuration (max_line = 4 applied)"

all_passed
