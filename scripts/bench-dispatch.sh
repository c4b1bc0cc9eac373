#!/usr/bin/env bash
# Dispatch cost of rot13d's reactor against libevent 2.1, per backend, by
# libevent's test/bench.c method (see benches/dispatch.rs and
# benches/libevent_bench.c), printed as a markdown table; then the cost of
# re-arming timers through a common timeout against the heap.
#
#   scripts/bench-dispatch.sh [ROUNDS] [SIZES] [REPS] [BACKENDS]
#     ROUNDS    rounds per run (default 25; a run reports its median round)
#     SIZES     comma-separated N (default 100,1000,9900)
#     REPS      paired runs per cell (default 9): rot13d then libevent, back
#               to back, so that a change in machine load hits both alike
#     BACKENDS  comma-separated (default epoll,epoll_changelist,poll,select)
#
# The table shows, per cell, the median over the REPS runs of each run's
# median round, and the median of the REPS paired ratios rot13d / libevent
# (the robust figure on a shared machine). Both run pinned to the last CPU.
# The row "epoll, kept" runs the same without the untimed re-add of every
# event between rounds (the timed part alone, caches undisturbed).
#
# With VS=<path> the second column is another build of benches/dispatch.rs
# instead of libevent (an A/B of two rot13d builds, e.g. main's:
# `cargo bench --bench dispatch --no-run` in its worktree prints the path),
# run back to back with this one exactly as libevent would be.
#
# Needs libevent-dev and pkg-config (apt-get install -y libevent-dev
# pkg-config). Each N needs 2N fds: raise the hard RLIMIT_NOFILE for 9900.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

ROUNDS=${1:-25}
SIZES=${2:-100,1000,9900}
REPS=${3:-9}
BACKENDS=${4:-epoll,epoll_changelist,poll,select}
VS=${VS:-}
PEER=libevent
[ -n "$VS" ] && PEER="B ($VS)"
ACTIVE=100
WRITES=100
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

if ! pkg-config --exists libevent; then
  echo "libevent-dev not found: apt-get install -y libevent-dev pkg-config" >&2
  exit 1
fi
# shellcheck disable=SC2046
gcc -O2 -Wall -o "$OUT/libevent_bench" benches/libevent_bench.c $(pkg-config --cflags --libs libevent)

cargo bench --bench dispatch --no-run --quiet 2>/dev/null
RUST_BIN=$(cargo bench --bench dispatch --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "dispatch" and m.get("executable"):
        print(m["executable"])')
[ -x "$RUST_BIN" ] || { echo "dispatch bench binary not found" >&2; exit 1; }

PIN=()
if command -v taskset >/dev/null; then
  PIN=(taskset -c "$(($(nproc) - 1))")
fi
ulimit -n "$(ulimit -Hn)"

# One line per paired run: backend N rot13d_median libevent_median
: >"$OUT/pairs.txt"
for rep in $(seq "$REPS"); do
  for n in ${SIZES//,/ }; do
    for b in ${BACKENDS//,/ } epoll_kept; do
      if [ "$b" = epoll_kept ]; then
        [[ ",$BACKENDS," == *,epoll,* ]] || continue
        rargs=(--backends epoll --no-readd)
        cargs=(epoll "$n" "$ACTIVE" "$WRITES" "$ROUNDS" noreadd)
      else
        rargs=(--backends "$b")
        cargs=("$b" "$n" "$ACTIVE" "$WRITES" "$ROUNDS")
      fi
      r=$("${PIN[@]}" "$RUST_BIN" --bench --rounds "$ROUNDS" --active "$ACTIVE" --writes "$WRITES" \
        --sizes "$n" --no-timers "${rargs[@]}" | awk '$1 == "RESULT" { print $5 }')
      if [ -n "$VS" ]; then
        c=$("${PIN[@]}" "$VS" --bench --rounds "$ROUNDS" --active "$ACTIVE" --writes "$WRITES" \
          --sizes "$n" --no-timers "${rargs[@]}" | awk '$1 == "RESULT" { print $5 }')
      else
        c=$("${PIN[@]}" "$OUT/libevent_bench" "${cargs[@]}" 2>>"$OUT/c.err" | awk '$1 == "RESULT" { print $5 }')
      fi
      echo "$b $n ${r:-failed} ${c:-failed}" >>"$OUT/pairs.txt"
    done
  done
done
"$RUST_BIN" --bench --no-dispatch >"$OUT/timers.txt"

echo "### Dispatch: µs per round, A=$ACTIVE active, W=$WRITES writes, $REPS paired runs of $ROUNDS rounds"
echo
echo "second column: $PEER; libevent $(pkg-config --modversion libevent); $(uname -sr); $(nproc) CPUs; pinned with ${PIN[*]:-nothing}"
echo
col=libevent
[ -n "$VS" ] && col=B
echo "| N | backend | rot13d | $col | rot13d / $col (median of paired ratios) | paired ratios, min – max |"
echo "|---:|---|---:|---:|---:|---|"
python3 - "$OUT/pairs.txt" <<'EOF'
import statistics as st, sys
cells = {}
for line in open(sys.argv[1]):
    b, n, r, c = line.split()
    cells.setdefault((int(n), b), []).append((r, c))
order = ["epoll", "epoll_kept", "epoll_changelist", "poll", "select"]
for (n, b) in sorted(cells, key=lambda k: (k[0], order.index(k[1]) if k[1] in order else 99)):
    xs = cells[(n, b)]
    rs = [float(r) for r, _ in xs if r not in ("failed", "n/a")]
    cs = [float(c) for _, c in xs if c not in ("failed", "n/a")]
    ratios = [float(r) / float(c) for r, c in xs if r not in ("failed", "n/a") and c not in ("failed", "n/a")]
    name = "epoll, kept (no re-add)" if b == "epoll_kept" else b
    fmt = lambda v: "%.1f" % st.median(v) if v else "n/a"
    ratio = "%.2f" % st.median(ratios) if ratios else "-"
    spread = "%.2f – %.2f" % (min(ratios), max(ratios)) if ratios else "-"
    print(f"| {n} | {name} | {fmt(rs)} | {fmt(cs)} | {ratio} | {spread} |")
EOF
if [ -s "$OUT/c.err" ]; then
  echo
  sed 's/^/note: /' "$OUT/c.err" | sort -u
fi

echo
echo "### Re-arming 100,000 timers (shuffled order, ns per re-arm)"
echo
echo "| timeout kind | ns per re-arm |"
echo "|---|---:|"
awk '$1 == "TIMER" { printf "| %s | %s |\n", ($2 == "common" ? "common timeout (O(1) queue)" : "plain timeout (heap)"), $3 }' "$OUT/timers.txt"
