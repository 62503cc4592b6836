# Multi-stage build: compile against Debian's RocksDB, run as a non-root user.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libclang-dev librocksdb-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --bin tollgate

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
ENTRYPOINT ["tollgate", "serve", "--config", "/etc/tollgate/tollgate.toml"]
