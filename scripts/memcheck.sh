#!/usr/bin/env bash
# valgrind memcheck over the daemon under a short workload: the master and
# every worker it forks (valgrind follows fork) run under memcheck while
# scripts/soak.py drives SESSIONS verifying and resetting connections (and
# slow and idle clients beside them), one reload halfway, then SIGTERM;
# once with two workers, once with workers = 0.
# Passes when every process's log says 0 errors (an invalid read or write,
# a use of uninitialised memory, a bad free, a definite leak: leaks of that
# kind count as errors) and the daemon exited 0.
#   scripts/memcheck.sh [SESSIONS]          (default 3000)
# ROT13D=path overrides the binary (default: the release build, built if
# missing; its debug info gives the stacks line numbers).
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${1:-3000}
if ! command -v valgrind >/dev/null 2>&1; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind
fi
bin=${ROT13D:-target/release/rot13d}
if [ -z "${ROT13D:-}" ]; then
  cargo build --release --locked --bin rot13d
fi
out=$(mktemp -d "${TMPDIR:-/tmp}/rot13d-memcheck.XXXXXX")
vg="valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite"
vg="$vg --error-exitcode=99 --num-callers=30 --log-file=$out/vg.%p.log"
start=$(date +%s)
status=0
# Two workers (forked, a reload forks a new generation) and workers = 0
# (the master serves in-process and reloads in place).
for workers in 2 0; do
  python3 scripts/soak.py --binary "$bin" --workers "$workers" --sessions "$sessions" --start-timeout 120 \
    --wrapper "$vg" --json "$out/figures-w$workers.json" || status=$?
done
took=$(($(date +%s) - start))

shopt -s nullglob
logs=("$out"/vg.*.log)
bad=0
[ ${#logs[@]} -gt 0 ] || { echo "memcheck: no valgrind log in $out" >&2; bad=1; }
for f in "${logs[@]}"; do
  summary=$(grep -h "ERROR SUMMARY" "$f" || true)
  if ! grep -q "ERROR SUMMARY: 0 errors" "$f"; then
    echo "memcheck: $f: ${summary:-no summary (the process did not exit?)}" >&2
    bad=1
  fi
done
definite=$(grep -h "definitely lost:" "${logs[@]}" | grep -vc "definitely lost: 0 bytes" || true)
echo "memcheck: 2 x $sessions sessions (workers 2 and 0), ${#logs[@]} processes under memcheck, $took s;" \
  "processes with errors: $(grep -L 'ERROR SUMMARY: 0 errors' "${logs[@]}" | wc -l);" \
  "with a definite leak: $definite; soak.py exit $status; logs in $out"
if [ "$bad" -ne 0 ] || [ "$status" -ne 0 ]; then
  for f in "${logs[@]}"; do
    grep -q "ERROR SUMMARY: 0 errors" "$f" || sed -n '1,200p' "$f" >&2
  done
  exit 1
fi
rm -rf "$out"
