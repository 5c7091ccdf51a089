# syntax=docker/dockerfile:1
# One image per Cloud Run function: `docker build --build-arg BIN=<function> .`, where <function>
# is the package (= binary) name of a crate under functions/, e.g. BIN=bootstrap.
#
# The runtime base is distroless cc-debian12: glibc 2.36, libgcc_s, CA certificates, tzdata, no
# shell. The binaries need nothing else (TLS is rustls + aws-lc-rs, linked statically), and
# `.ci/infra-checks binaries` checks that a built binary asks for no other library and for no
# GLIBC symbol newer than 2.36. The builder is Debian 12 too, so it links against the same glibc.

FROM rust:1.95-bookworm AS builder
ARG BIN
WORKDIR /src
COPY . .
# The cache mounts keep the crates and the target dir between builds on the same BuildKit (in
# Cloud Build: the ten image steps of one build), so the dependencies compile once and each
# later function only compiles and links its own crate. sharing=locked: cargo's own lock for the
# registry lives in $CARGO_HOME, outside the mount, so concurrent builds take turns instead.
# The binary is copied out of the target mount in the same RUN, because the mount is gone after.
RUN --mount=type=cache,id=nodewire-cargo-registry,sharing=locked,target=/usr/local/cargo/registry \
    --mount=type=cache,id=nodewire-cargo-git,sharing=locked,target=/usr/local/cargo/git \
    --mount=type=cache,id=nodewire-target,sharing=locked,target=/src/target \
    if [ -z "${BIN}" ]; then \
      echo 'error: --build-arg BIN=<function> is required (e.g. BIN=bootstrap)' >&2; exit 1; \
    fi \
    && if [ ! -d "functions/${BIN}" ]; then \
      echo "error: BIN=${BIN}: no crate functions/${BIN}" >&2; exit 1; \
    fi \
    && cargo build --release --locked -p "${BIN}" --bin "${BIN}" \
    && install -D -m 0755 "target/release/${BIN}" /out/app

# Pinned by digest (the multi-arch index of gcr.io/distroless/cc-debian12:nonroot). Refresh with
#   crane digest gcr.io/distroless/cc-debian12:nonroot
# and keep the tag in front of it for readers.
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
# checkov:skip=CKV_DOCKER_2: Cloud Run ignores HEALTHCHECK; it probes the container on $PORT itself
ARG BIN
LABEL org.opencontainers.image.title="nodewire-${BIN}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder --chown=0:0 --chmod=0755 /out/app /usr/local/bin/app
# nonroot:nonroot of the distroless image, numeric so that runAsNonRoot-style checks can tell.
USER 65532:65532
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/app"]
