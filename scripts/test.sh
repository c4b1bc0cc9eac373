#!/usr/bin/env bash
# Installs what the tests need (if missing) and runs every check CI runs:
# formatting, clippy with warnings as errors, then every test.
#   scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# tests/haproxy.rs runs a real HAProxy (Debian's package) in front of rot13d.
if ! [ -x /usr/sbin/haproxy ] && ! command -v haproxy >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get install -y haproxy >/dev/null 2>&1 || {
    $sudo apt-get update >/dev/null
    $sudo apt-get install -y haproxy >/dev/null
  }
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo nextest run --no-fail-fast --profile ci --locked
