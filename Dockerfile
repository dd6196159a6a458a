# syntax=docker/dockerfile:1
# authgate: multi-stage build, small non-root runtime image.
#   docker build -t authgate .
#   docker run -p 8443:8443 -v $PWD/prod:/etc/authgate:ro -e AUTHGATE_JWT_SECRET authgate
# Mount /etc/authgate with config.toml, users.toml and certs/ (never bake keys
# into the image). The config's listen address must be 0.0.0.0:8443 in a container.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin authgate

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/authgate --create-home authgate
COPY --from=build /src/target/release/authgate /usr/local/bin/authgate
USER 10001:10001
WORKDIR /var/lib/authgate
ENV AUTHGATE_CONFIG=/etc/authgate/config.toml
EXPOSE 8443 9901
# Needs server.admin_listen = "0.0.0.0:9901" (or 127.0.0.1:9901) in the config.
HEALTHCHECK --interval=10s --timeout=2s --retries=3 CMD curl -fsS http://127.0.0.1:9901/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/authgate"]
CMD ["serve"]
