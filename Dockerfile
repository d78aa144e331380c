# syntax=docker/dockerfile:1
#
# celeriac: celeriac-worker and celeriac-beat in one minimal image.
#
#   docker build -t celeriac .
#   docker run --read-only --cap-drop ALL -e CELERY_BROKER_URL=redis://redis:6379/0 celeriac
#
# The entrypoint is the worker; beat's pods set `command: ["/usr/local/bin/celeriac-beat"]`.
# Every setting comes from the environment (README, "Configuration"). There is no shell in the
# runtime stage: the entrypoint is exec-form, so the binary is PID 1 and receives SIGTERM itself
# (warm shutdown: running tasks get CELERIAC_SHUTDOWN_TIMEOUT, 25 s by default, then up to 20 s
# more to store results and hand messages back; terminationGracePeriodSeconds must exceed that).
#
# tests/test_image.py runs this runtime stage's layout, assembled from locally built binaries
# (the CI machines cannot pull base images), under podman with --read-only --cap-drop ALL.

# The oldest toolchain that builds Cargo.lock (Cargo.toml's rust-version, which the locked AWS SDK
# crates set). Debian 12 (bookworm) on purpose: its glibc (2.36) is the one of the distroless
# cc-debian12 runtime below, so the binaries never need newer symbols than the runtime has.
ARG RUST_VERSION=1.94.1

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# cmake and nasm build libjpeg-turbo (the `turbojpeg` crate) with its SIMD code; the C compiler
# comes with the image. Versions pinned to bookworm's.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake=3.25.1-1 nasm=2.16.01-1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and the target directory are cache mounts (BuildKit), so a rebuild after a source
# change recompiles only the workspace's crates. The target directory is not part of the layer,
# hence the copy to /out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p celeriac-worker -p celeriac-beat \
 && install -D -m 0755 -t /out target/release/celeriac-worker target/release/celeriac-beat

# What the binaries need at run time (`ldd` and `readelf -d` of both, built on bookworm; the
# release profile links the same libraries, they come from the crates, not the optimisation):
#   ld-linux-x86-64.so.2, libc.so.6, libm.so.6 (glibc; symbols up to GLIBC_2.34) and libgcc_s.so.1
#   (unwinding). No libstdc++ (libjpeg-turbo and aws-lc are C, linked statically), no libssl: TLS
#   is rustls, for Redis and MySQL with the webpki root certificates compiled in; the S3 client
#   (rustls-native-certs) reads the system's CA bundle, /etc/ssl/certs/ca-certificates.crt. Time
#   zones are compiled in (chrono-tz), so no tzdata either.
# distroless cc-debian12 has all of it: glibc and libgcc_s (plus libstdc++ and libgomp, unused),
# ca-certificates, /etc/passwd and /etc/group entries for nonroot (65532), no shell, no package
# manager.
# Pinned by tag. In production pin the digest too (`cc-debian12:nonroot@sha256:...`, from
# `crane digest` or the registry's UI); it is not written here because these machines cannot reach
# the registry to verify one, and an unverified digest is worse than none.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="celeriac" \
      org.opencontainers.image.description="Celery-compatible task worker (celeriac-worker) and beat scheduler (celeriac-beat) in Rust" \
      org.opencontainers.image.source="https://github.com/celeriac/celeriac" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
# Owned by root and not writable by the user that runs them.
COPY --from=build /out/celeriac-worker /out/celeriac-beat /usr/local/bin/
# distroless' nonroot, numerically, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 65532:65532
# The HTTP endpoints (/healthz, /readyz, /metrics) when CELERIAC_HTTP_ADDR=0.0.0.0:9808 is set.
EXPOSE 9808
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/celeriac-worker"]
