# syntax=docker/dockerfile:1
# mlsidecar container image.
#
#   docker build -t mlsidecar .
#   docker run --rm -p 9877:9877 -v "$PWD/logs:/logs:ro" mlsidecar run --tail '/logs/*.jsonl'
#
# Two stages: "build" makes a virtualenv from pinned wheels (deploy/docker/requirements.lock)
# and the project; the runtime stage copies only that virtualenv onto a clean slim base.
# Runs as UID/GID 10001 (no root, no shell login); state in the /var/lib/mlsidecar volume.
# Pin the base by digest for reproducible builds: --build-arg PYTHON_IMAGE=python:3.12-slim@sha256:...
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY deploy/docker/requirements.lock /tmp/requirements.lock
# Binary wheels only: no compiler is needed, in this stage or the next.
RUN /opt/venv/bin/pip install --only-binary=:all: --no-deps -r /tmp/requirements.lock
COPY pyproject.toml README.md ./
COPY mlsidecar ./mlsidecar
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m pip uninstall -y pip \
    && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} + \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
ARG GID=10001
LABEL org.opencontainers.image.title="mlsidecar" \
      org.opencontainers.image.description="ML workload events, GPU and process readings as Prometheus metrics on one port" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid "${GID}" mlsidecar \
    && useradd --system --uid "${UID}" --gid "${GID}" --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin mlsidecar \
    && install -d -o "${UID}" -g "${GID}" -m 0700 /var/lib/mlsidecar
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLSIDECAR_HEALTHCHECK_URL=http://127.0.0.1:9877/healthz
USER ${UID}:${GID}
WORKDIR /var/lib/mlsidecar
VOLUME ["/var/lib/mlsidecar"]
EXPOSE 9877
# No curl in slim: Python's urllib. Set MLSIDECAR_HEALTHCHECK_URL when --listen or TLS changes
# the address (an https URL is checked without verifying the certificate; /healthz needs no auth).
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os,ssl,sys,urllib.request as u; url=os.environ['MLSIDECAR_HEALTHCHECK_URL']; ctx=ssl._create_unverified_context() if url.startswith('https') else None; sys.exit(0 if u.urlopen(url, timeout=4, context=ctx).status == 200 else 1)"]
# Exec form: the daemon is PID 1 and gets SIGTERM (flush, then exit) and SIGHUP (reload) itself.
ENTRYPOINT ["mlsidecar"]
CMD ["run"]
