# Build stage: release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin rot13d

# Run stage: a small Debian with a non-root user.
FROM debian:bookworm-slim
RUN useradd --system --no-create-home --shell /usr/sbin/nologin rot13d
COPY --from=build /src/target/release/rot13d /usr/local/bin/rot13d
COPY config/docker.toml /etc/rot13d/rot13d.toml
USER rot13d
EXPOSE 40713
# docker stop sends SIGTERM and waits 10 s: keep the drain inside that.
STOPSIGNAL SIGTERM
# Healthy = the admin endpoint answers and a ROT13 round trip works.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/40713 && printf 'uryyb\\n' >&3 && read -t 2 l <&3 && [ \"$l\" = hello ]"]
CMD ["rot13d", "--config", "/etc/rot13d/rot13d.toml"]
