#!/usr/bin/env bash
# Syscalls per 1,000 lines on one connection (issue 14's method): each server
# runs under `strace -f -c`, pinned to CPU 0, while `rot13d-bench tput
# --conns 1 --line-len 64` (pinned to CPU 1) streams LINES lines through it;
# then it is stopped with SIGTERM (by pid) and strace's summary is read.
# Counts do not depend on machine load the way times do, but they depend on
# how the kernel batches the stream into reads, so each server runs REPS
# times and the table shows the median and the range.
#
#   scripts/bench-syscalls.sh [LINES] [REPS] [SERVERS]
#     LINES    lines per run (default 1000000)
#     REPS     runs per server (default 3), round-robin over the servers
#     SERVERS  default "ceiling-uring rot13d-uring-w0 ceiling rot13d-w0"
#
# "all" counts every call of the server's process tree, start-up included;
# "loop" counts the calls of the data path only (io_uring_enter, epoll_wait,
# read, write, sendmsg, recvfrom, sendto, writev, readv), which is what a
# longer run converges to.
set -euo pipefail
export LC_ALL=C
TOP="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$TOP"
LINES=${1:-1000000}
REPS=${2:-3}
SERVERS=${3:-ceiling-uring rot13d-uring-w0 ceiling rot13d-w0}
BENCH="$TOP/target/release/rot13d-bench"
ROT13D="$TOP/target/release/rot13d"
PEERS_BIN="$TOP/peers-bin"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
command -v strace >/dev/null || { echo "strace missing: apt-get install -y strace" >&2; exit 1; }
[ -x "$BENCH" ] && [ -x "$ROT13D" ] || cargo build --release --quiet --bins

cmd_of() { # server port
  case "$1" in
    ceiling) echo "$PEERS_BIN/rot13-ceiling $2 127.0.0.1" ;;
    ceiling-uring) echo "$PEERS_BIN/rot13-ceiling-uring $2 127.0.0.1" ;;
    rot13d-w0) echo "$ROT13D --listen 127.0.0.1:$2 --workers 0" ;;
    rot13d-uring-w0) echo "$ROT13D --listen 127.0.0.1:$2 --workers 0 --backend uring" ;;
    *) echo "unknown server $1" >&2; return 1 ;;
  esac
}

wait_port() { # port
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

: >"$OUT/rows"
for rep in $(seq "$REPS"); do
  for s in $SERVERS; do
    port=$((20000 + RANDOM % 10000))
    # shellcheck disable=SC2046
    taskset -c 0 strace -f -c -o "$OUT/$s.$rep" $(cmd_of "$s" "$port") >"$OUT/$s.$rep.log" 2>&1 &
    spid=$!
    if ! wait_port "$port"; then
      echo "$s: not listening" >&2
      kill "$spid" 2>/dev/null || true
      wait "$spid" 2>/dev/null || true
      continue
    fi
    "$BENCH" tput --addr "127.0.0.1:$port" --conns 1 --line-len 64 --lines "$LINES" --warmup 0 --cpu 1 >"$OUT/$s.$rep.tput"
    # The server is strace's child: signal it, not strace.
    srv=$(pgrep -P "$spid" | head -1)
    kill -TERM "$srv"
    wait "$spid" || true
    python3 - "$OUT/$s.$rep" "$s" "$LINES" >>"$OUT/rows" <<'EOF'
import sys
path, name, lines = sys.argv[1], sys.argv[2], int(sys.argv[3])
loop_calls = {"io_uring_enter", "epoll_wait", "epoll_pwait", "read", "write", "sendmsg", "recvfrom", "sendto", "writev", "readv"}
total = loop = 0
for l in open(path):
    f = l.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        calls = int(f[3])
        total += calls
        if f[-1] in loop_calls:
            loop += calls
print(name, total * 1000 / lines, loop * 1000 / lines)
EOF
  done
done

echo "### Syscalls per 1,000 lines: 1 conn, $LINES lines of 64 B, strace -f -c, $REPS runs each"
echo
echo "| server | all calls / 1k lines (median, min – max) | data path / 1k lines (median, min – max) |"
echo "|---|---:|---:|"
python3 - "$OUT/rows" <<'EOF'
import statistics as st, sys
rows = {}
for l in open(sys.argv[1]):
    n, a, b = l.split()
    rows.setdefault(n, []).append((float(a), float(b)))
for n, xs in rows.items():
    a = [x for x, _ in xs]
    b = [y for _, y in xs]
    print(f"| {n} | {st.median(a):.2f} ({min(a):.2f} – {max(a):.2f}) | {st.median(b):.2f} ({min(b):.2f} – {max(b):.2f}) |")
EOF
