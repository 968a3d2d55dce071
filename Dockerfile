# syntax=docker/dockerfile:1
# The meshlet image: one image for the control plane, the sidecar (`meshlet sidecar`), the init
# step that installs the capture rules (`meshlet iptables`, run as root with NET_ADMIN) and the
# CLI. Built from the same source and the same `pip` build the test suite installs, with the
# Cython fast path required (the build fails rather than fall back to the pure-Python twin).
#
#   docker build -t meshlet:latest .
#   docker run --rm meshlet:latest version        # -> fastpath: cython
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: compile the extension, collect every wheel ---------------------------------------
FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MESHLET_REQUIRE_EXTENSIONS=1
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY certs ./certs
COPY control_plane ./control_plane
COPY proxy ./proxy
# meshlet's own wheel (compiled) and wheels of all its dependencies, for an offline install
RUN pip wheel --wheel-dir /wheels . \
 && ls /wheels/meshlet-*.whl | grep -v -- '-none-any' >/dev/null

# --- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="meshlet" \
      org.opencontainers.image.description="meshlet service mesh: sidecar proxy, control plane, CLI" \
      org.opencontainers.image.licenses="Apache-2.0"
# iptables + iproute2: the init step (meshlet iptables); curl: the preStop drain and probes
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 1337 meshlet \
 && useradd --system --uid 1337 --gid 1337 --home-dir /var/lib/meshlet --create-home \
            --shell /usr/sbin/nologin meshlet \
 && install -d -o 1337 -g 1337 -m 0750 /var/lib/meshlet/control-plane /var/lib/meshlet/state \
 && install -d -o 1337 -g 1337 -m 0750 /var/run/meshlet /var/run/meshlet/tokens
COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --disable-pip-version-check --no-index --find-links=/wheels meshlet \
 && rm -rf /wheels \
 && MESHLET_REQUIRE_EXTENSIONS=1 meshlet version | grep -q "fastpath: cython"

ENV HOME=/var/lib/meshlet \
    MESHLET_DATA_DIR=/var/lib/meshlet/control-plane \
    PYTHONUNBUFFERED=1
WORKDIR /var/lib/meshlet
# The sidecar's UID: its own traffic is the one the capture rules leave alone. The init step
# overrides this with `user: "0"` / `runAsUser: 0`; apps must run as any other UID.
USER 1337:1337
# admin, outbound, inbound (sidecar); control plane
EXPOSE 15000 15001 15006 15012
# Ready means /healthz/ready answers 200 (a control plane container overrides this check)
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["meshlet", "wait", "--timeout", "2", "--quiet"]
ENTRYPOINT ["meshlet"]
CMD ["--help"]
