# ZMirror — Docker/OCI registry pull proxy.  Multi-stage build:
#   1. web:   Node builds the admin UI (web/ → zmirror/webui)
#   2. wheel: a wheel of the Python package with the built UI inside
#   3. final: python slim + the wheel in a venv, non-root, data in /app/data
#
#   docker build -t zmirror .
#   docker run -d --name zmirror -p 8080:8080 -v "$PWD/data:/app/data" zmirror
#
# The base images can be swapped (mirrors, air-gapped builds):
#   docker build --build-arg NODE_IMAGE=... --build-arg PYTHON_IMAGE=... .
# PYTHON_IMAGE needs python3 (>= 3.9) with the venv module; NODE_IMAGE needs node >= 20.19 and npm.
ARG NODE_IMAGE=node:20-bookworm-slim
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- 1. the web UI ------------------------------------------------------------------
FROM ${NODE_IMAGE} AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
# vite writes to ../zmirror/webui, i.e. /src/zmirror/webui
RUN npm run build && test -f /src/zmirror/webui/index.html

# --- 2. the wheel -------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY setup.py MANIFEST.in README.md LICENSE zmirror.tac ./
COPY twisted/ twisted/
COPY zmirror/ zmirror/
COPY --from=web /src/zmirror/webui/ zmirror/webui/
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --quiet --upgrade pip wheel setuptools \
 && /opt/build/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
 && ls -l /dist

# --- 3. the runtime -------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="zmirror" \
      org.opencontainers.image.description="Docker/OCI registry pull proxy / Docker 镜像拉取代理" \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/zmirror/bin:$PATH \
    ZMIRROR_DATA=/app/data \
    ZMIRROR_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
# tzdata: the TZ variable (compose) needs the zone files
RUN apt-get update \
 && apt-get install -y --no-install-recommends tzdata ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 zmirror \
 && useradd --system --uid 10001 --gid zmirror --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin zmirror
COPY --from=wheel /dist/ /tmp/dist/
# The twistd plugin cache (dropin.cache) is written here: the runtime user cannot
# write site-packages.
RUN python3 -m venv /opt/zmirror \
 && /opt/zmirror/bin/pip install --no-cache-dir --quiet /tmp/dist/*.whl \
 && rm -rf /tmp/dist \
 && /opt/zmirror/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
 && /opt/zmirror/bin/zmirror --help >/dev/null \
 && mkdir -p /app/data && chown zmirror:zmirror /app/data && chmod 0700 /app/data
WORKDIR /app
USER zmirror
VOLUME /app/data
EXPOSE 8080
# /healthz answers without credentials (/v2/ answers 401 once access control is on).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, sys, urllib.request; r = urllib.request.urlopen(os.environ['ZMIRROR_HEALTHCHECK_URL'], timeout=4); sys.exit(0 if r.status == 200 else 1)"]
# SIGTERM: graceful shutdown (in-flight pulls drain, access log flushed).  SIGHUP: reload.
STOPSIGNAL SIGTERM
CMD ["twistd", "-n", "--pidfile=", "zmirror", "--data", "/app/data"]
