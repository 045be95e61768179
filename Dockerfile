# syntax=docker/dockerfile:1.7
# Sluice in a container: built in a Rust image, run in a distroless one as a
# non-root user with nothing else in it (no shell, no package manager).
#
#   docker build -t sluice .
#   docker run --read-only --tmpfs /tmp -v sluice-data:/var/lib/sluice \
#     -v $PWD/models:/models:ro -v $PWD/sluice.toml:/etc/sluice/sluice.toml:ro \
#     -e SLUICE_KEY_PEPPER=... -e SLUICE_ADMIN_KEY=... -p 8080:8080 sluice
#
# The root filesystem can be read-only: Sluice writes only its data dir
# (SLUICE_DATA_DIR, a volume) and /tmp. Model weights are mounted, not baked
# in. The Helm chart (deploy/helm/sluice) runs this image.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Extra cargo features, e.g. --build-arg FEATURES=cuda (then run on a CUDA
# base image with the driver mounted by the NVIDIA container toolkit).
ARG FEATURES=""
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sluice-gateway --bin sluice --features "${FEATURES}" \
    && install -D -m 0755 target/release/sluice /out/sluice \
    && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sluice /usr/local/bin/sluice
COPY --from=build --chown=65532:65532 /out/data /var/lib/sluice
ENV SLUICE_DATA_DIR=/var/lib/sluice \
    SLUICE_LISTEN=0.0.0.0:8080 \
    SLUICE_LOG=info
USER 65532:65532
VOLUME ["/var/lib/sluice"]
EXPOSE 8080 9100
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["serve", "--config", "/etc/sluice/sluice.toml"]
