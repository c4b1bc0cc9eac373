#!/usr/bin/env bash
# Dispatch cost of rot13d's reactor against libevent 2.1, per backend, by
# libevent's test/bench.c method (see benches/dispatch.rs and
# benches/libevent_bench.c), printed as a markdown table; then the cost of
# re-arming timers through a common timeout against the heap.
#
#   scripts/bench-dispatch.sh [ROUNDS] [SIZES]
#     ROUNDS  rounds per cell (default 25; the median and best are shown)
#     SIZES   comma-separated N (default 100,1000,9900)
#
# Needs libevent-dev and pkg-config (apt-get install -y libevent-dev
# pkg-config). Each N needs 2N fds: raise the hard RLIMIT_NOFILE for 9900.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

ROUNDS=${1:-25}
SIZES=${2:-100,1000,9900}
BACKENDS=(epoll epoll_changelist poll select)
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

# Build once; then run the two implementations cell by cell, back to back,
# so that a change in machine load hits both alike.
cargo bench --bench dispatch --no-run --quiet
rust_bench() {
  cargo bench --bench dispatch --quiet -- --rounds "$ROUNDS" --active "$ACTIVE" --writes "$WRITES" "$@"
}

ulimit -n "$(ulimit -Hn)"
: >"$OUT/rust.txt"
: >"$OUT/c.txt"
for n in ${SIZES//,/ }; do
  for b in "${BACKENDS[@]}"; do
    rust_bench --sizes "$n" --backends "$b" --no-timers | grep '^RESULT' >>"$OUT/rust.txt" ||
      echo "RESULT rot13d $b $n failed failed" >>"$OUT/rust.txt"
    "$OUT/libevent_bench" "$b" "$n" "$ACTIVE" "$WRITES" "$ROUNDS" >>"$OUT/c.txt" 2>>"$OUT/c.err" ||
      echo "RESULT libevent $b $n failed failed" >>"$OUT/c.txt"
  done
done
rust_bench --no-dispatch >>"$OUT/rust.txt"

echo "### Dispatch: µs per round (median / best of $ROUNDS), A=$ACTIVE active, W=$WRITES writes"
echo
echo "libevent $(pkg-config --modversion libevent); $(uname -sr); $(nproc) CPUs"
echo
echo "| N | backend | rot13d median | rot13d best | libevent median | libevent best | rot13d / libevent (median) |"
echo "|---:|---|---:|---:|---:|---:|---:|"
cat "$OUT/rust.txt" "$OUT/c.txt" | awk '
  $1 == "RESULT" { key = $4 " " $3; if ($2 == "rot13d") { r[key] = $5; rb[key] = $6 } else { c[key] = $5; cb[key] = $6 }; keys[key] = 1 }
  END {
    n = split("epoll epoll_changelist poll select", bs, " ")
    m = split(sizes, ns, ",")
    for (i = 1; i <= m; i++) for (j = 1; j <= n; j++) {
      key = ns[i] " " bs[j]
      if (!(key in keys)) continue
      ratio = (r[key] + 0 > 0 && c[key] + 0 > 0) ? sprintf("%.2f", r[key] / c[key]) : "-"
      printf "| %s | %s | %s | %s | %s | %s | %s |\n", ns[i], bs[j], r[key], rb[key], c[key], cb[key], ratio
    }
  }' sizes="$SIZES"
if [ -s "$OUT/c.err" ]; then
  echo
  sed 's/^/note: /' "$OUT/c.err" | sort -u
fi

echo
echo "### Re-arming 100,000 timers (shuffled order, ns per re-arm)"
echo
echo "| timeout kind | ns per re-arm |"
echo "|---|---:|"
awk '$1 == "TIMER" { printf "| %s | %s |\n", ($2 == "common" ? "common timeout (O(1) queue)" : "plain timeout (heap)"), $3 }' "$OUT/rust.txt"
