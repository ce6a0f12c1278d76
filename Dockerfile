# syntax=docker/dockerfile:1
# One image with both binaries: portcullis-operator and portcullis-proxy (the Helm chart runs
# each with an explicit command). Build from the repository root:
#
#   docker build -t portcullis:0.1.0 .
#
# Not built in this project's CI (its machines have no container engine); the chart's checks
# only assume the paths and the user below.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The registry and target caches only speed up rebuilds (BuildKit); the result is the same.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p portcullis-operator -p portcullis-proxy --bins \
 && install -D -m 0755 target/release/portcullis-operator /out/portcullis-operator \
 && install -D -m 0755 target/release/portcullis-proxy /out/portcullis-proxy

# Minimal runtime: glibc, CA certificates (upstream TLS, the Kubernetes API) and /bin/sleep for
# the proxy's preStop pause on clusters older than 1.30 (no sleep action there).
FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# Non-root, numeric so that Kubernetes' runAsNonRoot can verify it (the chart's runAsUser).
USER 65532:65532
EXPOSE 8080 8443 9901 9902 9443
ENTRYPOINT ["/usr/local/bin/portcullis-proxy"]
CMD ["--help"]
