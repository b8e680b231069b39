# The revisor image: `revisor serve --backend knative` in deploy/deployment.yaml, and
# `revisor model-server` in a model revision (args: [model-server, --model, https://...]).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p revisor && cp target/release/revisor /revisor

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --home-dir /home/revisor revisor
COPY --from=build /revisor /usr/local/bin/revisor
USER 10001
ENV HOME=/home/revisor
EXPOSE 7070 8080
ENTRYPOINT ["/usr/local/bin/revisor"]
