# syntax=docker/dockerfile:1
#
# pullsecret-injector container image.
#
#   docker build -t ghcr.io/pullsecret-injector/pullsecret-injector:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# Stage 1 builds a wheel of this project (from pyproject.toml) and installs it
# with its dependencies into a virtualenv. Stage 2 copies only that virtualenv
# onto a clean python:slim base: no compiler, no pip, no sources, no tests.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# Only what the package build needs (.dockerignore allow-lists the same files).
# README.md* : the readme is optional for the build context.
COPY pyproject.toml README.md* ./
COPY webhook/ ./webhook/
# The three token providers' SDKs (extras gcp, aws, azure) are part of the image.
RUN /opt/venv/bin/pip wheel --wheel-dir /wheels '.[gcp,aws,azure]' \
 && /opt/venv/bin/pip install --no-index --find-links /wheels 'pullsecret-injector[gcp,aws,azure]' \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/venv/bin/pullsecret-injector --help >/dev/null

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="pullsecret-injector" \
      org.opencontainers.image.description="Kubernetes mutating admission webhook that injects imagePullSecrets and keeps the Secrets they name in sync" \
      org.opencontainers.image.source="https://github.com/pullsecret-injector/pullsecret-injector" \
      org.opencontainers.image.url="https://github.com/pullsecret-injector/pullsecret-injector" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="pullsecret-injector" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric non-root user (the Helm chart sets runAsUser/runAsGroup 65532 and a
# read-only root filesystem; self-signed certificates go to the /tmp emptyDir).
USER 65532:65532
WORKDIR /tmp
# 8443: HTTPS (POST /mutate, GET /healthz, GET /readyz); 9090: plain-HTTP /metrics.
EXPOSE 8443 9090
ENTRYPOINT ["pullsecret-injector"]
CMD ["serve"]
