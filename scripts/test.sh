#!/usr/bin/env bash
# Installs what the tests need (if missing) and runs every test.
#   scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

cargo nextest run --no-fail-fast --profile ci
