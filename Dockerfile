# syntax=docker/dockerfile:1
# ultra-gateway: `docker build -t ultra-gateway .`, then see docs/deployment.md.
# The builder compiles with the same command CI uses (`cargo build --release --locked`); the
# runtime image holds the binary and conf/ only, and runs as a non-root user.

ARG RUST_VERSION=1.88

FROM rust:${RUST_VERSION}-bookworm AS builder
# Pingora builds zlib-ng, which needs cmake.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies in their own layer: stub sources with the real manifest and lock file, so that a
# change under src/ rebuilds the gateway alone, not its few hundred dependencies.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches/load \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for b in auth quota hot_path; do echo 'fn main() {}' > benches/$b.rs; done \
    && echo 'fn main() {}' > benches/load/main.rs \
    && cargo build --release --locked \
    && rm -rf src benches

COPY src src
COPY benches benches
# The embedded development configuration is compiled in (src/embedded.rs).
COPY conf conf
# COPY keeps the files' own times, which can be older than the stub build: make them newer.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/ultra-gateway /usr/local/bin/ultra-gateway

# glibc and CA certificates (for https:// providers and JWKS), no shell, no package manager.
FROM gcr.io/distroless/cc-debian12

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="ultra-gateway" \
      org.opencontainers.image.description="An OpenAI-compatible LLM API gateway on Cloudflare Pingora" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/ultra-gateway/ultra-gateway"

COPY --from=builder /usr/local/bin/ultra-gateway /usr/local/bin/ultra-gateway
# The development configuration, replaced in production by mounting your own over it:
# -v ./ultra.yaml:/etc/ultra-gateway/ultra.yaml:ro
COPY conf /etc/ultra-gateway

USER 10001:10001
# 8080: the gateway; 9464: metrics, when `metrics.listen` serves them on their own listener.
EXPOSE 8080 9464
HEALTHCHECK --interval=10s --timeout=4s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/ultra-gateway", "healthcheck", "--url", "http://127.0.0.1:8080/health"]
ENTRYPOINT ["/usr/local/bin/ultra-gateway"]
# Inside a container the listener must take connections from outside it: --listen overrides
# the configuration's `server.listen`.
CMD ["run", "-c", "/etc/ultra-gateway/ultra.yaml", "--listen", "0.0.0.0:8080"]
