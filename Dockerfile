# driftwarden daemon image: `driftwarden run` as a non-root user.
# Config and policies are mounted at /etc/driftwarden, state at /var/lib/driftwarden.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DRIFTWARDEN_CONFIG=/etc/driftwarden/driftwarden.yaml \
    DRIFTWARDEN_POLICIES=/etc/driftwarden/policies \
    DRIFTWARDEN_STATE__DIR=/var/lib/driftwarden \
    DRIFTWARDEN_HTTP__HOST=0.0.0.0 \
    DRIFTWARDEN_HTTP__PORT=9308

WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY detectors ./detectors
COPY policies ./policies
COPY retrain ./retrain
COPY config/examples ./config/examples
RUN pip install . && rm -rf /src

RUN useradd --system --uid 10001 --home-dir /var/lib/driftwarden --shell /usr/sbin/nologin driftwarden \
    && mkdir -p /etc/driftwarden/policies /var/lib/driftwarden \
    && chown -R driftwarden /var/lib/driftwarden
COPY config/driftwarden.yaml /etc/driftwarden/driftwarden.yaml

USER driftwarden
WORKDIR /var/lib/driftwarden
VOLUME ["/var/lib/driftwarden"]
EXPOSE 9308

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9308/healthz', timeout=3).status == 200 else 1)"

ENTRYPOINT ["driftwarden"]
CMD ["run"]
