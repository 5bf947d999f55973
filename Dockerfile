# xdsd: a file-backed xDS control plane. Build: docker build -t xdsd .
# Run:   docker run -v "$PWD/config:/etc/xdsd/config:ro" -p 18000:18000 -p 19001:19001 xdsd
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install from a copy of the sources, then drop them: the image holds the installed package.
COPY pyproject.toml README.md /tmp/xdsd-src/
COPY xdsd /tmp/xdsd-src/xdsd
RUN pip install /tmp/xdsd-src && rm -rf /tmp/xdsd-src

# A dedicated unprivileged user; the config directory is read-only to it.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin xdsd
COPY docker/settings.toml /etc/xdsd/settings.toml
# The example mesh, so that the image starts as it is; mount your own directory over it.
COPY config /etc/xdsd/config
VOLUME ["/etc/xdsd/config"]

USER xdsd

# xDS over gRPC (ADS), xDS over REST-JSON, admin (/healthz, /readyz, /debug/...)
EXPOSE 18000 18001 19001

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:19001/healthz', timeout=2)"]

ENTRYPOINT ["xdsd", "serve", "--config-dir", "/etc/xdsd/config", "--settings", "/etc/xdsd/settings.toml"]
