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
set -euo pipefail
cd "$(dirname "$0")/.."
name="$1"
shift
SHORT="${SHORT:-5000}" LONG="${LONG:-25000}" CONNS="${CONNS:-100}"
out="bench-out/callgrind-lat"
mkdir -p "$out"
count() {
  local lines="$1" port pid
  shift
  port=$((21000 + RANDOM % 5000))
  [ "$port" -eq 40713 ] && port=21000
  rm -f "$out/$name.$lines".*
  valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$out/$name.$lines.%p" \
    "${@//@PORT@/$port}" >"$out/$name.$lines.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
  done
  target/release/rot13d-bench lat --conns "$CONNS" --line-len 64 --lines "$lines" \
    --addr "127.0.0.1:$port" --warmup 0 >/dev/null
  kill -TERM "$pid"
  wait "$pid" || true
  # One count per file (valgrind also repeats it as totals:).
  cat "$out/$name.$lines".[0-9]* | awk '/^summary:/ { s += $2 } END { print s + 0 }'
}
short="$(count "$SHORT" "$@")"
long="$(count "$LONG" "$@")"
echo "$name: $short Ir for $SHORT requests, $long for $LONG: $(( (long - short) / (LONG - SHORT) )) instructions per request"
