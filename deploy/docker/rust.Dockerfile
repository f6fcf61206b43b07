# The Rust parts of the compose stack: the sample skills, the tickets MCP
# skill, the agent CLI and the fleet-wide rate limit service. (The filter itself is not an image here: Envoy
# mounts target/agentplane.wasm; see docs/deploying.md.)
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p agentplane-skills --bins \
 && cargo build --release --locked -p agentplane-agent --bin agentplane-agent \
 && cargo build --release --locked -p agentplane-ratelimit

FROM debian:bookworm-20251117-slim AS skills
COPY --from=build /src/target/release/agentplane-skill-samples /src/target/release/agentplane-skill-tickets /usr/local/bin/
USER 65534
CMD ["agentplane-skill-samples", "0.0.0.0:8080"]

FROM debian:bookworm-20251117-slim AS agent
COPY --from=build /src/target/release/agentplane-agent /usr/local/bin/
COPY examples/workflows /workflows
COPY deploy/docker/demo-agent.sh deploy/docker/demo-register.sh /usr/local/bin/
# The demo agent's credentials volume (docker-compose.yml) starts as a copy
# of this directory: owned by the user that demo-register writes them as.
RUN mkdir -p /run/agentplane/demo-agent && chown 65534:65534 /run/agentplane/demo-agent
USER 65534
ENTRYPOINT ["/bin/sh", "/usr/local/bin/demo-agent.sh"]

FROM debian:bookworm-20251117-slim AS ratelimit
COPY --from=build /src/target/release/agentplane-ratelimit /usr/local/bin/
COPY envoy/ratelimit/limits.json /etc/agentplane/limits.json
USER 65534
ENTRYPOINT ["agentplane-ratelimit", "--config", "/etc/agentplane/limits.json"]
