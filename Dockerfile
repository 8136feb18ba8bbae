# syntax=docker/dockerfile:1
# The greeter gRPC server. Two stages: `build` installs the package into a virtualenv,
# the final stage copies only that virtualenv (no pip cache, no build tools, no sources).
#
#   docker build -t greeter .
#   docker run --rm -p 50051:50051 greeter
#   grpcurl -plaintext localhost:50051 list
#
# BASE_IMAGE must provide python3 (3.11+) with the venv module at the same path in both stages:
# the default official slim image does; so does a Debian bookworm rootfs with python3-venv
# (the offline image test builds from one).
ARG BASE_IMAGE=python:3.11-slim-bookworm
# checkov:skip=CKV_DOCKER_7: the base is a build argument whose default is a pinned version tag (3.11-slim-bookworm); checkov cannot see through ARG

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
# A build behind a TLS-inspecting proxy can mount its CA bundle at /etc/ssl/certs/build-ca.crt
# (read-only, build time only); it is never copied into the image.
RUN python3 -m venv /opt/greeter \
 && if [ -f /etc/ssl/certs/build-ca.crt ]; then export PIP_CERT=/etc/ssl/certs/build-ca.crt; fi \
 && /opt/greeter/bin/pip install --no-compile /src \
 && /opt/greeter/bin/python -m compileall -q /opt/greeter/lib \
 && /opt/greeter/bin/pip uninstall -y pip setuptools \
 && /opt/greeter/bin/greeter --help > /dev/null

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
# Where this image's source lives; set by the build (e.g. --build-arg SOURCE=<repository URL>).
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="greeter" \
      org.opencontainers.image.description="gRPC Greeter service (helloworld.Greeter, health, reflection) and load tester" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}"
COPY --from=build /opt/greeter /opt/greeter
# No writes to the root filesystem at run time: bytecode was compiled at build time, HOME and
# temporary files go to /tmp (an emptyDir or tmpfs when the root filesystem is read-only).
ENV PATH=/opt/greeter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    GREETER_HOST=[::] \
    GREETER_PORT=50051 \
    GREETER_METRICS_PORT=9090
# A numeric non-root user: Kubernetes runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["greeter", "health", "localhost:50051", "-t", "3"]
# Exec form: the server is PID 1 and gets SIGTERM itself, so it drains and exits 0.
ENTRYPOINT ["greeter"]
CMD ["serve"]
