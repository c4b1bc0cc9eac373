#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) with cargo-fuzz for SECONDS
# each (default 60), then merges what the run found into a working corpus.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   FUZZ_SAVE=1 scripts/fuzz.sh 300   # also merge new coverage into fuzz/corpus
#
# Needs a nightly toolchain (`rustup toolchain install nightly`; it cannot be
# downloaded on a machine that reaches only package registries) and
# cargo-fuzz (installed from crates.io here if missing).
#
# Corpora:
# - fuzz/corpus/TARGET: the committed seeds, replayed on stable in every CI
#   run by tests/fuzz_replay.rs. Read-only for a run.
# - fuzz/target/corpus/TARGET: the working corpus (not committed), kept
#   between runs and minimised after each (libFuzzer -merge=1), so that a
#   later run starts where this one stopped.
# - With FUZZ_SAVE=1 the entries that add coverage beyond the seeds are
#   merged into fuzz/corpus/TARGET; review `git status fuzz/corpus` and
#   commit the few worth keeping (the seeds stay small).
# - fuzz/dict/TARGET.dict, if present, is the target's libFuzzer dictionary.
# - A crash lands in fuzz/artifacts/TARGET/ (cargo-fuzz's default) and the
#   run stops with its reproduction command. Fix the bug, keep the file:
#   the replay test runs it from then on.
#
# Builds use cargo-fuzz's defaults: optimised, with debug assertions,
# overflow checks and AddressSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: no nightly toolchain (rustup toolchain install nightly); the corpora are still" >&2
  echo "replayed on stable by: cargo nextest run -E 'test(fuzz_replay)'" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

for t in "${targets[@]}"; do
  work=fuzz/target/corpus/$t
  mkdir -p "$work" "fuzz/artifacts/$t"
  echo "== $t: ${secs}s"
  log=fuzz/target/fuzz-$t.log
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  # New inputs go to the first directory; the seeds are only read.
  if ! cargo +nightly fuzz run "$t" "$work" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 -max_len=4096 "${dict[@]}" >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz.sh: $t failed; the input is in fuzz/artifacts/$t/ (log: $log)" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|stat::peak_rss_mb)' "$log" || true
  grep -E '^#[0-9]+.*DONE' "$log" | tail -n 1 || true
  # Minimise the working corpus: keep only inputs that add coverage.
  rm -rf "$work.min"
  mkdir -p "$work.min"
  cargo +nightly fuzz run "$t" "$work.min" "$work" -- -merge=1 >>"$log" 2>&1
  rm -rf "$work"
  mv "$work.min" "$work"
  echo "working corpus: $(find "$work" -type f | wc -l) inputs"
  if [ "${FUZZ_SAVE:-0}" = 1 ]; then
    before=$(find "fuzz/corpus/$t" -type f | wc -l)
    cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "$work" -- -merge=1 >>"$log" 2>&1
    echo "fuzz/corpus/$t: $before -> $(find "fuzz/corpus/$t" -type f | wc -l) inputs"
  fi
done
