# Build: docker build -t keyward .
# Run:   docker run -p 6380:6380 -p 9898:9898 keyward
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin keyward

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home keyward
COPY --from=build /src/target/release/keyward /usr/local/bin/keyward
COPY config/container.toml /etc/keyward/keyward.toml
USER 10001
EXPOSE 6380 9898
ENTRYPOINT ["/usr/local/bin/keyward"]
CMD ["--config", "/etc/keyward/keyward.toml"]
