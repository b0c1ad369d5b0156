# syntax=docker/dockerfile:1
# One image for the runtime (`loom worker|router|pipeline|scheduler ...`) and the operator
# (`loom operator`).
#
#   docker build -t ghcr.io/loom-dev/loom:0.1.0 .
#   docker build --build-arg LOOM_EXTRAS=local -t loom:local .   # + embedded llama.cpp backend
#
# The base is pinned by tag. For reproducible builds pin it by digest as well, e.g.
#   FROM python:3.11.13-slim-bookworm@sha256:<digest> AS builder
# (`docker buildx imagetools inspect python:3.11.13-slim-bookworm` prints the digest), and
# let a bot such as Renovate keep tag and digest current.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG LOOM_EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Compilers only when an extra needs them (llama-cpp-python builds from source); never in the final stage.
RUN if [ -n "${LOOM_EXTRAS}" ]; then \
      apt-get update && apt-get install -y --no-install-recommends build-essential cmake && \
      rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
# Dependencies first, in layers of their own that only a change of pyproject.toml rebuilds: a
# wheel of the project's metadata alone (no packages yet, a placeholder README) pulls every
# dependency of the chosen extras into the venv. The build backend is installed once, so the
# wheel builds below need no network (--no-build-isolation).
COPY pyproject.toml ./
RUN python -m pip install "setuptools>=69" wheel && \
    touch README.md && \
    python -m pip wheel --no-deps --no-build-isolation --wheel-dir /deps . && \
    python -m venv /opt/loom && \
    WHEEL="$(ls /deps/*.whl)" && \
    if [ -n "${LOOM_EXTRAS}" ]; then SPEC="${WHEEL}[${LOOM_EXTRAS}]"; else SPEC="${WHEEL}"; fi && \
    /opt/loom/bin/pip install "${SPEC}"
# Then the source: build the project's wheel and install it over the metadata-only one.
COPY README.md ./
COPY runtime/ runtime/
COPY operator/ operator/
RUN python -m pip wheel --no-deps --no-build-isolation --wheel-dir /dist . && \
    /opt/loom/bin/pip install --no-deps --force-reinstall /dist/*.whl && \
    /opt/loom/bin/pip check && \
    /opt/loom/bin/pip uninstall -y pip setuptools wheel && \
    /opt/loom/bin/python -m compileall -q /opt/loom/lib && \
    /opt/loom/bin/loom --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="loom" \
      org.opencontainers.image.description="Loom runtime and operator: multi-LLM workflows over NATS JetStream" \
      org.opencontainers.image.source="https://github.com/loom-dev/loom" \
      org.opencontainers.image.licenses="Apache-2.0"
# No shell is needed at run time: the entrypoint is the loom executable itself. Package
# managers and pip go, so nothing can be installed into a running container.
RUN groupadd --system --gid 10001 loom && \
    useradd --system --uid 10001 --gid loom --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin loom && \
    rm -rf /usr/local/lib/python3.11/site-packages/pip /usr/local/bin/pip* \
      /usr/local/lib/python3.11/ensurepip /var/lib/apt/lists/* /var/cache/apt/*
COPY --from=builder --chown=0:0 /opt/loom /opt/loom
ENV PATH=/opt/loom/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /tmp
USER 10001:10001
# 9090: /metrics, /healthz, /readyz of runtime roles; 8080: the operator's metrics and /healthz.
EXPOSE 9090 8080
ENTRYPOINT ["loom"]
CMD ["--help"]
