# qsfs in a container: build the release binary, ship it on a slim Debian with fuse3 for fusermount3.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p qsfs

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/qsfs /usr/local/bin/qsfs
ENTRYPOINT ["qsfs"]
