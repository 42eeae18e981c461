# Multi-stage build: compile with the Rust toolchain, run on a slim Debian as a non-root user.
# TLS roots are compiled in (webpki-roots), so the runtime image needs no ca-certificates.
# tools/check-image-context.sh (run by .ci/run) copies exactly what the COPY lines below copy
# into an empty directory and runs the same cargo build there: keep every build input listed.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY data ./data
COPY fixtures ./fixtures
COPY config ./config
RUN cargo build --release --locked --bin spgate

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/spgate --shell /usr/sbin/nologin spgate \
 && mkdir -p /var/lib/spgate /etc/spgate \
 && chown spgate:spgate /var/lib/spgate \
 && chmod 0700 /var/lib/spgate
COPY --from=build /src/target/release/spgate /usr/local/bin/spgate
# Mount your own config at /etc/spgate/spgate.toml: set server.listen to 0.0.0.0:8080,
# admin.listen to 0.0.0.0:9090 and store.data_dir to /var/lib/spgate; pass
# SPGATE_LWA_CLIENT_SECRET and SPGATE_MASTER_KEY as secrets (environment or files), never in the
# config. deploy/ has a complete example (two instances, Redis over TLS, certificates).
COPY config/spgate.example.toml /etc/spgate/spgate.example.toml
USER spgate:spgate
WORKDIR /var/lib/spgate
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
# Healthy while the admin listener answers /healthz (`spgate health` exits non-zero otherwise).
# Change the URL (or the HEALTHCHECK) when the admin listener is elsewhere.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/spgate", "health", "--url", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/spgate"]
CMD ["serve", "--config", "/etc/spgate/spgate.toml"]
