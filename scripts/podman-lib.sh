# Sourced by scripts/test-container.sh and scripts/test-systemd.sh: podman
# as it works on this machine, and the local base image (no registry here).
# The caller sets `work` (a temp dir it removes) and sources test-lib.sh.

# runc (crun fails on this machine's hybrid cgroups); root lacks
# CAP_SYS_RESOURCE, so every container gets limits within the hard ones.
# Returns 1 when podman cannot run at all here.
podman_setup() {
  cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
  export CONTAINERS_CONF="$work/containers.conf"
  podman info >"$work/podman-info" 2>&1
}

# podman set up and the base image there, or exit 0 saying why podman
# cannot run here (the only reason to skip).
podman_ready() {
  if ! podman_setup; then
    echo "$STEP: SKIPPED: podman cannot run here: $(tail -1 "$work/podman-info")"
    exit 0
  fi
  base_image
}

# A Debian bookworm made with debootstrap (minbase, plus systemd and procps
# for scripts/test-systemd.sh), imported as BASE_SYSTEMD and tagged
# debian:bookworm-slim, the Dockerfile's runtime base, so that
# `--pull=never` finds it. Made once (about 50 s), then cached in podman's
# storage.
BASE_SYSTEMD=localhost/rot13d-test-base:bookworm
BASE_SLIM=docker.io/library/debian:bookworm-slim
base_image() {
  if podman image exists "$BASE_SYSTEMD"; then
    podman tag "$BASE_SYSTEMD" "$BASE_SLIM"
    ok "base image $BASE_SYSTEMD (cached)"
    return
  fi
  # The Debian mirror apt uses (deb822 or one-line sources).
  local mirror
  mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 ~ /^bookworm/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
  echo "debootstrap --variant=minbase bookworm from $mirror..."
  debootstrap --variant=minbase --include=systemd,systemd-sysv,procps bookworm "$work/root" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap"; }
  rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
  tar -C "$work/root" -c . | podman import - "$BASE_SYSTEMD" >"$work/import.log" 2>&1 || { cat "$work/import.log" >&2; die "podman import"; }
  rm -rf "$work/root"
  podman tag "$BASE_SYSTEMD" "$BASE_SLIM"
  ok "base image $BASE_SYSTEMD made with debootstrap, tagged $BASE_SLIM"
}
