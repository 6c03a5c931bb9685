# One image for every exo-gpu component; the command line picks the component:
#   exo-gpu exporter ... | exo-gpu controller ... | exo-gpu extender ...
# Build:  docker build -t <registry>/exo-gpu:0.1.0 .
#         docker build --build-arg EXTRAS=nvidia,amd -t <registry>/exo-gpu:0.1.0-amd .
#         make image   (podman, no Docker engine; see docs/install.md)
# Behind a TLS-intercepting proxy, give the build its CA bundle as a secret (never kept in the
# image):  docker build --secret id=ca-bundle,src=/path/to/proxy-ca.pem ...
# Without registry access, PYTHON_IMAGE may name any Debian bookworm image with Python 3.11
# (`make image` builds one from Debian packages).
# The amd and intel backends also need their vendor runtime libraries (ROCm's libamd_smi,
# Level Zero) in the image or mounted from the host; the default image carries NVML's Python
# binding only (the driver library comes from the host through the NVIDIA container runtime).
# tests/test_dockerfile.py checks the promises below (pinned bases, non-root, exec entrypoint).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with exo-gpu and its runtime dependencies -----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/exo-gpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
ARG EXTRAS=nvidia
# Not editable: the sources stay in this stage. pip compiles the bytecode at install time, so
# the runtime never writes .pyc files (read-only root filesystem). The optional ca-bundle
# secret is mounted for this step only.
RUN --mount=type=secret,id=ca-bundle,required=false \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && /opt/exo-gpu/bin/pip install ".[${EXTRAS}]" \
    && /opt/exo-gpu/bin/exo-gpu --help > /dev/null \
    && /opt/exo-gpu/bin/pip uninstall --quiet --yes pip setuptools

# ---- runtime: the same base, the environment, nothing else ----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="exo-gpu" \
      org.opencontainers.image.description="GPU clustering and scheduling for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/exo-gpu /opt/exo-gpu
ENV PATH=/opt/exo-gpu/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The nobody-like uid/gid the chart's securityContext sets too; no home, no shell login. It has
# a name: libraries ask for one (kopf names its operator "<user>@<host>" through getpwuid).
RUN echo "exo-gpu:x:65532:65532:exo-gpu:/nonexistent:/usr/sbin/nologin" >> /etc/passwd \
    && echo "exo-gpu:x:65532:" >> /etc/group
USER 65532:65532
WORKDIR /tmp
# Exporter metrics (9400), extender (8888), controller metrics and health (8080, 8081).
EXPOSE 9400 8888 8080 8081
ENTRYPOINT ["exo-gpu"]
CMD ["--help"]
