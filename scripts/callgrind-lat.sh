#!/usr/bin/env bash
# Instructions per request of a server in the closed-loop case (`lat --conns
# 100`, 64 B): callgrind counts over the server's process tree for two runs
# of different length, whose difference over the extra requests leaves
# start-up and shutdown out. Noise-free: the count does not depend on other
# load on the machine.
#   scripts/callgrind-lat.sh NAME CMD...    (@PORT@ in CMD is the port)
#   scripts/callgrind-lat.sh rot13d target/release/rot13d --listen 127.0.0.1:@PORT@ --workers 0
#   scripts/callgrind-lat.sh ceiling peers-bin/rot13-ceiling @PORT@ 127.0.0.1
#   SHORT=5000 LONG=25000 CONNS=100 (the defaults)
#
# STRACE=1: system calls instead, counted by `strace -f -c` attached to the
# running server for LONG requests (attached after start-up, detached
# before shutdown), per request and per kind (bench-out/callgrind-lat/NAME.strace).
set -euo pipefail
cd "$(dirname "$0")/.."
name="$1"
shift
SHORT="${SHORT:-5000}" LONG="${LONG:-25000}" CONNS="${CONNS:-100}" STRACE="${STRACE:-}"
out="bench-out/callgrind-lat"
mkdir -p "$out"
# Waits (30 s at most) for a listener on port $1; fails, killing $2 (the
# server's pid), when none comes (a timeout must not pass for a start).
wait_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.05
  done
  echo "$name: nothing listens on 127.0.0.1:$1 (server exited or 30 s passed)" >&2
  kill -KILL "$2" 2>/dev/null || true
  wait "$2" 2>/dev/null || true
  return 1
}
pick_port() {
  local port=$((21000 + RANDOM % 5000))
  [ "$port" -eq 40713 ] && port=21000
  echo "$port"
}
drive() {
  target/release/rot13d-bench lat --conns "$CONNS" --line-len 64 --lines "$1" \
    --addr "127.0.0.1:$2" --warmup 0 >/dev/null
}
count() {
  local lines="$1" port pid
  shift
  port="$(pick_port)"
  rm -f "$out/$name.$lines".*
  valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out/$name.$lines.%p" \
    "${@//@PORT@/$port}" >"$out/$name.$lines.log" 2>&1 &
  pid=$!
  wait_port "$port" "$pid"
  drive "$lines" "$port"
  kill -TERM "$pid"
  wait "$pid" || true
  # One count per file (valgrind also repeats it as totals:).
  cat "$out/$name.$lines".[0-9]* | awk '/^summary:/ { s += $2 } END { print s + 0 }'
}
syscalls() {
  local port pid spid
  port="$(pick_port)"
  "${@//@PORT@/$port}" >"$out/$name.log" 2>&1 &
  pid=$!
  wait_port "$port" "$pid"
  strace -f -c -o "$out/$name.strace" -p "$pid" 2>"$out/$name.strace.err" &
  spid=$!
  # strace says on stderr when it has attached: await that, not a guess.
  for _ in $(seq 1 200); do
    grep -q attached "$out/$name.strace.err" && break
    sleep 0.05
  done
  if ! grep -q attached "$out/$name.strace.err"; then
    echo "$name: strace did not attach to $pid within 10 s: $(cat "$out/$name.strace.err")" >&2
    kill -KILL "$spid" "$pid" 2>/dev/null || true
    wait "$spid" "$pid" 2>/dev/null || true
    return 1
  fi
  drive "$LONG" "$port"
  # SIGINT detaches strace, which then writes its table.
  kill -INT "$spid"
  wait "$spid" || true
  kill -TERM "$pid"
  wait "$pid" || true
  # strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall.
  awk -v n="$LONG" -v who="$name" '
    $1 ~ /^[0-9.]+$/ && $4 ~ /^[0-9]+$/ { if ($NF == "total") t = $4; else c[$NF] = $4 }
    END {
      printf "%s: %.3f system calls per request over %d requests (", who, t / n, n
      sep = ""
      for (k in c) { printf "%s%s %.4f", sep, k, c[k] / n; sep = ", " }
      print ")"
    }' "$out/$name.strace"
}
if [ -n "$STRACE" ]; then
  syscalls "$@"
  exit 0
fi
short="$(count "$SHORT" "$@")"
long="$(count "$LONG" "$@")"
echo "$name: $short Ir for $SHORT requests, $long for $LONG: $(( (long - short) / (LONG - SHORT) )) instructions per request"
