# Multi-stage build: compile with the Rust toolchain, run on a slim Debian as a non-root user.
# TLS roots are compiled in (webpki-roots), so the runtime image needs no ca-certificates.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY data ./data
COPY config ./config
RUN cargo build --release --locked --bin spgate

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/spgate --shell /usr/sbin/nologin spgate \
 && mkdir -p /var/lib/spgate /etc/spgate \
 && chown spgate:spgate /var/lib/spgate \
 && chmod 0700 /var/lib/spgate
COPY --from=build /src/target/release/spgate /usr/local/bin/spgate
# Mount your own config at /etc/spgate/spgate.toml: set server.listen to 0.0.0.0:8080 and
# store.data_dir to /var/lib/spgate; pass SPGATE_LWA_CLIENT_SECRET and SPGATE_MASTER_KEY as
# secrets (environment or files), never in the config.
COPY config/spgate.example.toml /etc/spgate/spgate.example.toml
USER spgate:spgate
WORKDIR /var/lib/spgate
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/spgate"]
CMD ["serve", "--config", "/etc/spgate/spgate.toml"]
