# Multi-stage build: compile against Debian's RocksDB, run as a non-root user.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev librocksdb-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# setup.sh writes .cargo/config.toml with this architecture's library directory.
RUN ./scripts/setup.sh && cargo build --release --bin tollgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends librocksdb7.8 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /data tollgate \
    && mkdir -p /data /etc/tollgate && chown tollgate /data
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
COPY config/default.toml /etc/tollgate/tollgate.toml
USER tollgate
VOLUME /data
ENV TOLLGATE__STORAGE__DATA_DIR=/data TOLLGATE__HTTP__LISTEN=0.0.0.0:8080
EXPOSE 8080
# /ready answers 200 once recovery is done and work is accepted (no curl in the slim image).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf "GET /ready HTTP/1.0\r\n\r\n" >&3 && head -n1 <&3 | grep -q " 200 "'
# The image listens on all interfaces: give it your own tokens (the development token is
# refused there), e.g. docker run -e TOLLGATE__AUTH__TOKENS=your-token ...
ENTRYPOINT ["tollgate", "serve", "--config", "/etc/tollgate/tollgate.toml"]
