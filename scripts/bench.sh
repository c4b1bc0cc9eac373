#!/usr/bin/env bash
# Benchmarks rot13d against its peers (ceiling, tokio multi/current, libevent)
# with rot13d-bench, and writes markdown tables ready for BENCHMARKS.md.
#
#   scripts/bench.sh              throughput, latency, lanes, connections, slow readers
#   scripts/bench.sh efficiency   instructions per line (callgrind) and syscalls per
#                                 1,000 lines (strace -f -c): one connection, 200,000
#                                 lines of 63 printable bytes + LF, half-close,
#                                 start-up included
#
# Each server runs pinned to CPU 0 (taskset -c 0) on a free port in 20000-30000,
# the generator pinned to CPU 1; every case runs RUNS times, round-robin over
# the servers, each run on a fresh server, and the tables show
# medians, the min-max of the first column, and ratios against the ceiling and
# tokio multi. Output: bench-out/results.md (+ results.jsonl, the raw lines),
# bench-out/efficiency.md (+ efficiency.jsonl).
#
# Environment:
#   RUNS=3                runs per case
#   DURATION=5            seconds measured per run (plus WARMUP=0.5)
#   SERVERS="ceiling tokio-multi tokio-current libevent rot13d-w0 rot13d-w1"
#                         also: ceiling-uring (the io_uring ceiling, needs liburing-dev),
#                         rot13d-uring-w0 / rot13d-uring-w1 (--backend uring),
#                         rot13d-w0-pp2, rot13d-w1-pp2: proxy_protocol = "v2",
#                         every client connection begun with a v2 header
#   CASES="tput64 tput4k lat1 lat100 mixed conns slow"
#   CONNS=10000           connections of the conns case
#   SLOW_MIB=64           MiB each of the 10 clients of the slow case sends
#   EFF_LINES=200000      lines of the efficiency run
#   BENCH_NICE=           e.g. -5: run servers and generator at that niceness
#                         (fewer preemptions on a shared machine)
#   ROT13D=               the rot13d binary of rot13d-w0/-w1 (default: this tree's release build)
#   ROT13D_B=             a second rot13d binary, run as rot13d-b-w0/-w1/-uring-w0 (add them to
#                         SERVERS): an A/B of two builds in one round-robin run
#   SHARED=               the shared folder holding peers/ (default: found
#                         beside the repository)
set -euo pipefail
export LC_ALL=C
TOP="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$TOP"
MODE="${1:-main}"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-5}"
WARMUP="${WARMUP:-0.5}"
SERVERS="${SERVERS:-ceiling tokio-multi tokio-current libevent rot13d-w0 rot13d-w1}"
CASES="${CASES:-tput64 tput4k lat1 lat100 mixed conns slow}"
CONNS="${CONNS:-10000}"
SLOW_MIB="${SLOW_MIB:-64}"
EFF_LINES="${EFF_LINES:-200000}"
OUT="$TOP/bench-out"
PEERS_BIN="$TOP/peers-bin"
BENCH="$TOP/target/release/rot13d-bench"
ROT13D="${ROT13D:-$TOP/target/release/rot13d}"
ROT13D_B="${ROT13D_B:-}"
mkdir -p "$OUT"

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- prerequisites ----------------------------------------------------------

apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "need $*: install it (no apt-get here)"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing $*"
  $sudo apt-get install -y "$@" >/dev/null 2>&1 || {
    $sudo apt-get update >/dev/null 2>&1
    $sudo apt-get install -y "$@" >/dev/null
  }
}

find_shared() {
  local d
  for d in "${SHARED:-}" "$(git rev-parse --show-toplevel 2>/dev/null)/../shared" "$TOP/../shared" "$TOP/../../shared"; do
    [ -n "$d" ] && [ -x "$d/peers/build.sh" ] && { (cd "$d" && pwd); return; }
  done
  die "cannot find the shared folder with peers/build.sh (set SHARED=)"
}

build_all() {
  pkg-config --exists libevent 2>/dev/null || apt_install libevent-dev pkg-config
  [ -e /usr/include/liburing.h ] || apt_install liburing-dev
  command -v taskset >/dev/null 2>&1 || apt_install util-linux
  local shared
  shared="$(find_shared)"
  log "building peers from $shared/peers into $PEERS_BIN"
  "$shared/peers/build.sh" "$PEERS_BIN" >/dev/null
  log "building rot13d and rot13d-bench (release)"
  cargo build --release --bins --quiet
}

# --- servers ----------------------------------------------------------------

NCPU="$(nproc)"
if [ "$NCPU" -ge 2 ]; then SRV_CPU=0; GEN_CPU=1; else SRV_CPU=0; GEN_CPU=0; fi
NICE=()
[ -n "${BENCH_NICE:-}" ] && NICE=(nice -n "$BENCH_NICE")

port_busy() {
  if command -v ss >/dev/null 2>&1; then
    [ -n "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

free_port() {
  local p _
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 10000))
    [ "$p" -eq 40713 ] && continue
    port_busy "$p" || { echo "$p"; return; }
  done
  die "no free port in 20000-30000"
}

# A configuration with proxy_protocol = "v2" (for the *-pp2 servers).
proxy_config() {
  printf '[server]\nproxy_protocol = "v2"\n' >"$OUT/proxy-v2.toml"
  echo "$OUT/proxy-v2.toml"
}

# What the client adds for a server: a PROXY v2 header first for *-pp2.
client_args() {
  case "$1" in *-pp2) echo "--proxy v2" ;; *) echo "" ;; esac
}

# The command line of a server on a port.
server_cmd() {
  local name="$1" port="$2"
  case "$name" in
    ceiling) echo "$PEERS_BIN/rot13-ceiling $port 127.0.0.1" ;;
    ceiling-uring) echo "$PEERS_BIN/rot13-ceiling-uring $port 127.0.0.1" ;;
    libevent) echo "$PEERS_BIN/rot13-libevent $port 127.0.0.1" ;;
    tokio-multi) echo "$PEERS_BIN/rot13-tokio --runtime multi $port 127.0.0.1" ;;
    tokio-current) echo "$PEERS_BIN/rot13-tokio --runtime current $port 127.0.0.1" ;;
    rot13d-w0) echo "$ROT13D --listen 127.0.0.1:$port --workers 0" ;;
    rot13d-w1) echo "$ROT13D --listen 127.0.0.1:$port --workers 1" ;;
    rot13d-uring-w0) echo "$ROT13D --listen 127.0.0.1:$port --workers 0 --backend uring" ;;
    rot13d-uring-w1) echo "$ROT13D --listen 127.0.0.1:$port --workers 1 --backend uring" ;;
    rot13d-b-w0) echo "$ROT13D_B --listen 127.0.0.1:$port --workers 0" ;;
    rot13d-b-w1) echo "$ROT13D_B --listen 127.0.0.1:$port --workers 1" ;;
    rot13d-b-uring-w0) echo "$ROT13D_B --listen 127.0.0.1:$port --workers 0 --backend uring" ;;
    # proxy_protocol = "v2": the client begins each connection with a v2
    # header (client_args).
    rot13d-w0-pp2) echo "$ROT13D --listen 127.0.0.1:$port --workers 0 -c $(proxy_config)" ;;
    rot13d-w1-pp2) echo "$ROT13D --listen 127.0.0.1:$port --workers 1 -c $(proxy_config)" ;;
    *) die "unknown server $name" ;;
  esac
}

SRV_PID=""
SRV_PORT=""
SRV_LOG=""

# Waits until the server accepts connections (a probe connection, which
# every server closes at once) or its process is gone.
wait_ready() {
  local pid="$1" port="$2" secs="$3" _
  for _ in $(seq 1 $((secs * 20))); do
    kill -0 "$pid" 2>/dev/null || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  return 1
}

# start_server NAME [WRAPPER...]: runs it on CPU $SRV_CPU; sets SRV_PID/SRV_PORT.
start_server() {
  local name="$1"
  shift
  SRV_PORT="$(free_port)"
  SRV_LOG="$OUT/server-$name.log"
  local cmd
  cmd="$(server_cmd "$name" "$SRV_PORT")"
  # shellcheck disable=SC2086 # cmd is a word list built above
  "${NICE[@]}" taskset -c "$SRV_CPU" "$@" $cmd >"$SRV_LOG" 2>&1 &
  SRV_PID=$!
  if ! wait_ready "$SRV_PID" "$SRV_PORT" "${READY_SECS:-10}"; then
    log "$name did not start (see $SRV_LOG): skipped"
    stop_server
    return 1
  fi
}

stop_server() {
  [ -n "$SRV_PID" ] || return 0
  kill -TERM "$SRV_PID" 2>/dev/null || true
  local _
  for _ in $(seq 1 100); do
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$SRV_PID" 2>/dev/null || true
  wait "$SRV_PID" 2>/dev/null || true
  SRV_PID=""
}
trap stop_server EXIT

gen() { "${NICE[@]}" "$BENCH" "$@" --cpu "$GEN_CPU" --json; }

# --- main mode --------------------------------------------------------------

case_args() {
  case "$1" in
    tput64) echo "tput --conns 64 --line-len 64" ;;
    tput4k) echo "tput --conns 64 --line-len 4096" ;;
    lat1) echo "lat --conns 1 --line-len 64" ;;
    lat100) echo "lat --conns 100 --line-len 64" ;;
    mixed) echo "mixed --bulk 4 --interactive 16 --line-len 64 --bulk-line-len 4096" ;;
    conns) echo "conns --conns $CONNS --line-len 64 --settle 1" ;;
    slow) echo "slow --conns 10 --mib $SLOW_MIB --line-len 64" ;;
    *) die "unknown case $1" ;;
  esac
}

case_title() {
  case "$1" in
    tput64) echo "throughput: 64 conns × 64 B lines" ;;
    tput4k) echo "throughput: 64 conns × 4 KiB lines" ;;
    lat1) echo "latency: 1 conn closed loop, 64 B" ;;
    lat100) echo "latency: 100 conns closed loop, 64 B" ;;
    mixed) echo "lanes: 4 bulk conns (4 KiB lines) + 16 interactive (64 B)" ;;
    conns) echo "memory: $CONNS idle connections" ;;
    slow) echo "slow readers: 10 clients × $SLOW_MIB MiB unread" ;;
  esac
}

# Cases that measure one state rather than a rate run once.
case_runs() {
  case "$1" in conns | slow) echo 1 ;; *) echo "$RUNS" ;; esac
}

header() {
  echo "_$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(uname -sr), ${NCPU} CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average at start: $1._"
  echo
  echo "_Server pinned to CPU $SRV_CPU, rot13d-bench to CPU $GEN_CPU; medians of $RUNS runs of ${DURATION} s (after ${WARMUP} s warm-up); ratios compare the first column's medians. CPU-µs per 1,000 lines is the server's utime+stime (process tree) over the lines answered: it depends far less on other load than the rates do._"
}

run_main() {
  build_all
  local raw="$OUT/results.jsonl" load0
  load0="$(cut -d' ' -f1-3 /proc/loadavg)"
  : >"$raw"
  local s c r servers=""
  for s in $SERVERS; do
    case "$s" in
      rot13d-b-*) [ -x "$ROT13D_B" ] || { log "no ROT13D_B binary: $s skipped"; continue; } ;;
      rot13d-*) [ -x "$ROT13D" ] || { log "no $ROT13D: $s skipped"; continue; } ;;
    esac
    servers="$servers $s"
  done
  # Runs go round-robin over the servers (run 1 of each, then run 2 of
  # each, ...) so that every server samples the same spells of outside load;
  # each run gets a fresh server (RSS must not inherit another run's heap,
  # a crash stays within its run).
  for c in $CASES; do
    for r in $(seq 1 "$(case_runs "$c")"); do
      for s in $servers; do
        start_server "$s" || continue
        local args line
        args="$(case_args "$c")"
        # shellcheck disable=SC2086
        if line="$(gen $args $(client_args "$s") --addr "127.0.0.1:$SRV_PORT" --server-pid "$SRV_PID" \
          --duration "$DURATION" --warmup "$WARMUP" --label "$s" --case "$(case_title "$c")")"; then
          echo "$line" >>"$raw"
          log "$s $c run $r: $line"
        else
          log "$s $c run $r: FAILED (exit $?)"
          echo "{\"scenario\":\"failed\",\"label\":\"$s\",\"case\":\"failures\",\"$c\":1}" >>"$raw"
        fi
        kill -0 "$SRV_PID" 2>/dev/null || log "$s died during $c run $r"
        stop_server
      done
    done
  done
  {
    echo "## rot13d and its peers (scripts/bench.sh)"
    echo
    header "$load0"
    echo
    echo "_Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg). Noisy when other work shares the CPUs._"
    "$BENCH" summarize "$raw" --baseline ceiling --baseline tokio-multi
  } >"$OUT/results.md"
  cat "$OUT/results.md"
  log "wrote $OUT/results.md"
}

# --- efficiency mode --------------------------------------------------------

oneshot() {
  # shellcheck disable=SC2046 # client_args is a word list
  "$BENCH" oneshot --addr "127.0.0.1:$SRV_PORT" --lines "$EFF_LINES" --line-len 64 --cpu "$GEN_CPU" --json \
    $(client_args "$1")
}

# The server process under a wrapper (valgrind replaces itself, strace forks it).
traced_pid() {
  local p="$1" c
  c="$(pgrep -P "$p" | head -n1 || true)"
  echo "${c:-$p}"
}

run_efficiency() {
  build_all
  command -v valgrind >/dev/null 2>&1 || apt_install valgrind
  command -v strace >/dev/null 2>&1 || apt_install strace
  local raw="$OUT/efficiency.jsonl" load0 s
  load0="$(cut -d' ' -f1-3 /proc/loadavg)"
  : >"$raw"
  mkdir -p "$OUT/callgrind" "$OUT/strace"
  for s in $SERVERS; do
    case "$s" in
      rot13d-b-*) [ -x "$ROT13D_B" ] || { log "no ROT13D_B binary: $s skipped"; continue; } ;;
      rot13d-*) [ -x "$ROT13D" ] || { log "no $ROT13D: $s skipped"; continue; } ;;
    esac
    # callgrind: every process of the tree writes its own file.
    rm -f "$OUT/callgrind/$s".*
    READY_SECS=60 start_server "$s" valgrind --tool=callgrind --trace-children=yes \
      --callgrind-out-file="$OUT/callgrind/$s.%p" || continue
    oneshot "$s" >/dev/null || log "$s: oneshot under callgrind failed"
    stop_server
    local ir
    # Each file states its count twice (summary: and totals:, valgrind
    # 3.19): one per file, or every figure comes out doubled.
    ir="$(cat "$OUT/callgrind/$s".* 2>/dev/null | awk '/^summary:/ { s += $2 } END { print s + 0 }')"
    # strace -f -c: the summary is written when the traced tree exits.
    local st="$OUT/strace/$s.txt" wrapper sp
    READY_SECS=30 start_server "$s" strace -f -c -o "$st" || continue
    wrapper="$SRV_PID"
    oneshot "$s" >/dev/null || log "$s: oneshot under strace failed"
    sp="$(traced_pid "$wrapper")"
    kill -TERM "$sp" 2>/dev/null || true
    stop_server
    local calls
    # The "total" row reads: 100.00 SECONDS USECS/CALL CALLS [ERRORS] total.
    calls="$(awk '$NF == "total" { print $4 + 0 }' "$st" 2>/dev/null | tail -n1)"
    echo "{\"scenario\":\"efficiency\",\"label\":\"$s\",\"case\":\"efficiency: 1 conn, $EFF_LINES lines of 63 B + LF, half-close, start-up included\",\"ir_total\":${ir:-0},\"ir_per_line\":$(awk -v a="${ir:-0}" -v n="$EFF_LINES" 'BEGIN { printf "%.1f", a / n }'),\"syscalls_total\":${calls:-0},\"syscalls_per_kline\":$(awk -v a="${calls:-0}" -v n="$EFF_LINES" 'BEGIN { printf "%.2f", a * 1000 / n }')}" >>"$raw"
    log "$s: Ir $ir, syscalls $calls"
  done
  {
    echo "## Efficiency: instructions and syscalls per line (scripts/bench.sh efficiency)"
    echo
    echo "_$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'). Server side only: callgrind Ir of the whole server process tree (start-up included) / $EFF_LINES lines; strace -f -c calls (start-up included) per 1,000 lines. Client: rot13d-bench oneshot (one connection, all lines pipelined within a 256 KiB window, then half-close). Instruction counts do not depend on other load; syscall counts vary by up to ±25% with how the kernel batches the stream into reads._"
    "$BENCH" summarize "$raw" --baseline ceiling --baseline tokio-multi
  } >"$OUT/efficiency.md"
  cat "$OUT/efficiency.md"
  log "wrote $OUT/efficiency.md"
}

case "$MODE" in
  main | all) run_main ;;
  efficiency) run_efficiency ;;
  *) die "usage: scripts/bench.sh [efficiency]" ;;
esac
