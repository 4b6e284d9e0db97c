# syntax=docker/dockerfile:1
# triage-loop in two stages: a Rust builder, then a small runtime image (distroless, glibc +
# libgcc, no shell) holding only the binary and a default config. Build from the repo root:
#   docker build -t triage-loop .
# or `docker compose -f deploy/docker-compose.yml up --build` (see README, "Deploying it").

ARG RUST_VERSION=1
FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied out of
# the cache mount so the next stage can take it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin triage-loop \
 && install -D -m 0755 target/release/triage-loop /out/triage-loop
# The repo's collector-config.yaml (the built-in default) with its listeners on all interfaces, as
# a container needs; the store goes to /var/lib/triage-loop/triage-data (the working directory).
RUN sed -e 's/endpoint: 127\.0\.0\.1:4317/endpoint: 0.0.0.0:4317/' \
        -e 's/endpoint: 127\.0\.0\.1:4318/endpoint: 0.0.0.0:4318/' \
        -e 's/endpoint: 127\.0\.0\.1:9464/endpoint: 0.0.0.0:9464/' \
        collector-config.yaml > /out/collector-config.yaml \
 && grep -q 'endpoint: 0.0.0.0:9464' /out/collector-config.yaml \
 && mkdir -p /out/data/triage-data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/triage-loop /usr/local/bin/triage-loop
COPY --from=builder /out/collector-config.yaml /etc/triage-loop/collector-config.yaml
# The SQLite store lives here; mount a volume on it to keep issues across restarts.
COPY --from=builder --chown=65532:65532 /out/data /var/lib/triage-loop
WORKDIR /var/lib/triage-loop
USER 65532:65532
# OTLP/gRPC, OTLP/HTTP, admin (/metrics, /healthz, /api/v1, /ui)
EXPOSE 4317 4318 9464
ENTRYPOINT ["/usr/local/bin/triage-loop"]
CMD ["serve", "--config", "/etc/triage-loop/collector-config.yaml"]
