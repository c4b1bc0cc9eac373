# Sourced by scripts/test-{package,container,systemd}.sh, after setting STEP
# (the name in their messages): one line per check passed, the first
# failure ends the script.
pass=0
ok() { pass=$((pass + 1)); echo "$STEP: ok: $*"; }
die() { echo "$STEP: FAILED: $*" >&2; exit 1; }
all_passed() { echo "$STEP: all $pass checks passed"; }
