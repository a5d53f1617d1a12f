# syntax=docker/dockerfile:1
# One image for every role: the gateway, the four services and the `topsmile` command
# (keys rotate, seed) side by side in /usr/local/bin. Each Deployment picks its binary
# with `command`. Why side by side: each service binary links only its own crate, so a
# pod runs no code of the others, and one image still means one build, one scan, one
# tag to roll.
#
#   docker build -t topsmile:dev .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.73
WORKDIR /src

# The dependency graph only: this layer, and the cooked dependencies below it, are
# reused until Cargo.toml or Cargo.lock change.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked \
      -p topsmile -p topsmile-gateway -p topsmile-identity -p topsmile-patients \
      -p topsmile-providers -p topsmile-appointments

# glibc and libgcc, nothing else; uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder \
     /src/target/release/topsmile \
     /src/target/release/topsmile-gateway \
     /src/target/release/topsmile-identity \
     /src/target/release/topsmile-patients \
     /src/target/release/topsmile-providers \
     /src/target/release/topsmile-appointments \
     /usr/local/bin/
USER 65532:65532
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/topsmile-gateway"]
