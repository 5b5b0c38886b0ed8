# syntax=docker/dockerfile:1
#
# pullsecret-injector container image.
#
#   docker build -t ghcr.io/pullsecret-injector/pullsecret-injector:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# Stage 1 builds a wheel of this project (from pyproject.toml) and installs it
# with its dependencies into a virtualenv. Stage 2 copies only that virtualenv
# onto a clean base: no compiler, no pip, no sources, no tests, no caches.
#
# Hermetic / offline build: put wheels of the project's dependencies (and of
# setuptools, wheel, packaging) into wheelhouse/ of the build context and the
# build installs from there with --no-index, reaching no package index at all.
# hack/build-image.sh does that, makes a Debian base with mmdebstrap and builds
# with buildah, without a container daemon:
#
#   bash hack/build-image.sh     # -> build/image/pullsecret-injector.tar
#
# With an empty wheelhouse/ (the default checkout) pip uses the package index.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# Only what the package build needs (.dockerignore allow-lists the same files).
# README.md* : the readme is optional for the build context.
COPY wheelhouse/ /wheelhouse/
COPY pyproject.toml README.md* ./
COPY webhook/ ./webhook/
# The three token providers' SDKs (extras gcp, aws, azure) are part of the image.
RUN set -eu; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then \
      echo "offline build from the wheelhouse"; \
      offline="--no-index --find-links /wheelhouse"; \
      /opt/venv/bin/pip install --quiet $offline setuptools wheel packaging; \
      /opt/venv/bin/pip wheel --quiet $offline --no-build-isolation --no-deps --wheel-dir /wheels .; \
      /opt/venv/bin/pip install --quiet $offline --find-links /wheels 'pullsecret-injector[gcp,aws,azure]'; \
    else \
      /opt/venv/bin/pip wheel --quiet --wheel-dir /wheels '.[gcp,aws,azure]'; \
      /opt/venv/bin/pip install --quiet --no-index --find-links /wheels 'pullsecret-injector[gcp,aws,azure]'; \
    fi; \
    /opt/venv/bin/pip uninstall --quiet --yes pip setuptools wheel packaging; \
    find /opt/venv -name __pycache__ -prune -exec rm -rf {} +; \
    /opt/venv/bin/pullsecret-injector --help >/dev/null

FROM ${PYTHON_IMAGE}
# No package installer in the running image: the base's own pip (python:slim) and
# ensurepip's bundled wheels (Debian's python3-venv) go.
RUN (python -m pip uninstall --yes --quiet pip setuptools wheel 2>/dev/null || true) \
 && rm -rf /usr/share/python-wheels /root/.cache
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
