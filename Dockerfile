# syntax=docker/dockerfile:1
# frappe-realtime: a drop-in for the `websocket` service of frappe_docker (or any container that
# runs `node apps/frappe/socketio.js`). See docs/deploy.md.
#
#   docker build -t frappe-realtime .
#   docker run --rm -v sites:/home/frappe/frappe-bench/sites -p 9000:9000 frappe-realtime

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
# A workspace member must be present for cargo to read the workspace; only the server is built.
COPY loadgen ./loadgen
# The registry and target dirs are cache mounts, so the binary is copied out of target/.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p frappe-realtime \
 && install -D -m 0755 target/release/frappe-realtime /out/frappe-realtime

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 frappe \
 && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash frappe \
 && mkdir -p /home/frappe/frappe-bench/sites /home/frappe/frappe-bench/logs \
 && chown -R frappe:frappe /home/frappe/frappe-bench
COPY --from=build /out/frappe-realtime /usr/local/bin/frappe-realtime
USER frappe
# The bench directory, as in frappe_docker's images: mount the `sites` volume at ./sites.
WORKDIR /home/frappe/frappe-bench
# socketio_port (sites/common_site_config.json or FRAPPE_SOCKETIO_PORT); /health, /ready and
# /metrics answer on it too. No HEALTHCHECK here (the slim image has no HTTP client); see
# docs/deploy.md for a compose healthcheck.
EXPOSE 9000
ENTRYPOINT ["/usr/local/bin/frappe-realtime"]
