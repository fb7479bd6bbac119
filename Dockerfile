# syntax=docker/dockerfile:1
# The Turnpike operator image: `turnpike run`, as a non-root user.
#
#   docker build -t ghcr.io/turnpike-dev/turnpike:0.1.0 .
#
# Pin PYTHON_IMAGE to a digest (python:3.11-slim@sha256:...) in release builds.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Everything the package needs, nothing else (see .dockerignore).
COPY pyproject.toml ./
COPY operator/ ./operator/
# A self-contained virtual environment: the runtime stage copies only it.
RUN python -m venv /opt/turnpike \
 && /opt/turnpike/bin/pip install . \
 && /opt/turnpike/bin/turnpike run --help >/dev/null
# A passwd entry for the runtime user (copied below; the runtime stage runs nothing).
RUN groupadd --system --gid 65532 turnpike \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin turnpike

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="turnpike" \
      org.opencontainers.image.description="Kubernetes operator serving models with NVIDIA Triton on GPUs" \
      org.opencontainers.image.version="0.1.0"
ENV PATH=/opt/turnpike/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/turnpike /opt/turnpike
# The same numeric user as the Helm chart's securityContext (runAsUser 65532). It needs a
# passwd entry: kopf names itself user@host with getpass.getuser(), a pod has no $USER, and
# without one `turnpike run` stops at once ("getpwuid(): uid not found: 65532").
# The root filesystem can be read-only.
COPY --from=build /etc/passwd /etc/group /etc/
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["turnpike", "run"]
