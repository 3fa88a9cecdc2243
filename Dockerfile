# The ledger's image: every `ledger` command (serve, projections, ingest, dlq, ...).
# docker-compose.yml runs it as api-1, api-2, projections and ingest; docs/deployment.md.
#
#   docker build -t inventory-ledger .
#   docker run --rm inventory-ledger --help
#
# Configuration is environment only (LEDGER_*, `ledger <command> --help`). The default
# command, `serve`, listens on 0.0.0.0:50051 and so refuses to start in open mode: give it
# LEDGER_TOKEN_FILE (docs/security.md), or LEDGER_INSECURE=1 on a private network.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what `pip install .` reads (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY entrypoints entrypoints
COPY ledger ledger
COPY projections projections
COPY ingest ingest
COPY tools tools
COPY clients/python/src clients/python/src
# A virtual environment is one directory to copy into the runtime stage; it uses that
# stage's interpreter (the same base image).
RUN python -m venv /opt/ledger \
    && /opt/ledger/bin/pip install . \
    && /opt/ledger/bin/ledger --help > /dev/null

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/ledger/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LEDGER_LISTEN=0.0.0.0:50051
RUN groupadd --system --gid 10001 ledger \
    && useradd --system --uid 10001 --gid ledger --home-dir /var/lib/ledger --create-home \
       --shell /usr/sbin/nologin ledger
COPY --from=build /opt/ledger /opt/ledger
COPY deploy/healthcheck.py /opt/ledger/bin/ledger-healthcheck
RUN chmod 0755 /opt/ledger/bin/ledger-healthcheck
# Non-root, numerically (so runAsNonRoot-style checks can verify it). The working directory
# holds the embedded default's SQLite file when no LEDGER_DATABASE_URL is given.
USER 10001:10001
WORKDIR /var/lib/ledger
# gRPC, and the metrics port docs/operations.md suggests for `serve`.
EXPOSE 50051 9464
# For the default command; other commands bring their own (docker-compose.yml does).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["ledger-healthcheck", "grpc"]
ENTRYPOINT ["ledger"]
CMD ["serve"]
