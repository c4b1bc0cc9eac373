# rot13d in a container: `docker build -t rot13d .` compiles the release
# binary in a Rust image (from Cargo.lock: --locked) and copies it into a
# small Debian image that runs it as a non-root user on port 40713.
#
# `--target prebuilt` skips the compile and takes a binary named `rot13d`
# from the build context instead (scripts/test-container.sh feeds it the
# host's release build); every other line of the image is the same.

# Build stage: the release binary, dependencies exactly as locked.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin rot13d \
 && objcopy --strip-debug target/release/rot13d /rot13d

# What the image is, whatever the binary came from.
FROM debian:bookworm-slim AS base
# A numeric USER, so that a runtime can tell it is not root without reading
# the image's /etc/passwd (Kubernetes runAsNonRoot).
RUN useradd --uid 10013 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin rot13d
# The defaults of config/rot13d.toml, but a grace that fits docker stop's
# 10 s, and the admin endpoint on the container's loopback. Replace it with
# a volume (-v my.toml:/etc/rot13d/rot13d.toml:ro) to configure.
COPY config/docker.toml /etc/rot13d/rot13d.toml
USER 10013:10013
EXPOSE 40713
# docker stop sends SIGTERM, waits 10 s, then SIGKILL: the daemon drains for
# at most [server] shutdown_grace = 8 s and exits 0.
STOPSIGNAL SIGTERM
# A ROT13 round trip through the daemon itself: no shell, no extra tools.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["rot13d", "probe", "127.0.0.1:40713", "--timeout", "2"]
CMD ["rot13d", "--config", "/etc/rot13d/rot13d.toml"]

# A binary built elsewhere (--target prebuilt).
FROM base AS prebuilt
COPY rot13d /usr/local/bin/rot13d

# The default target: the binary of the build stage.
FROM base AS runtime
COPY --from=build /rot13d /usr/local/bin/rot13d
