# The repository server: gunicorn on a slim Python base, non-root, data on a volume.
# Build: docker build -t nso-repo .
# Run:   docker run -p 8420:8420 -v nso-repo-data:/data nso-repo
# The console's htmx and Pico CSS, from the npm registry at build time (integrity-checked by
# package-lock.json); the image never loads them from a CDN.
FROM node:20-slim AS console-assets
WORKDIR /src
COPY scripts/vendor_assets.sh scripts/
COPY repo_server/console/frontend repo_server/console/frontend
RUN bash scripts/vendor_assets.sh

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    NSO_REPO_DATA_DIR=/data \
    NSO_REPO_BIND=0.0.0.0:8420 \
    NSO_REPO_FIRST_ADMIN_TOKEN=never

RUN groupadd --system --gid 10001 nsorepo \
    && useradd --system --uid 10001 --gid nsorepo --home-dir /data --shell /usr/sbin/nologin nsorepo \
    && mkdir -p /data && chown nsorepo:nsorepo /data

WORKDIR /app
COPY pyproject.toml README.md gunicorn.conf.py alembic.ini ./
COPY repo_server ./repo_server
COPY --from=console-assets /src/repo_server/console/static/vendor ./repo_server/console/static/vendor
COPY nso_sim ./nso_sim
COPY migrations ./migrations
# Editable install: the Alembic scripts in /app/migrations are found beside the package.
RUN pip install -e '.[server]'

USER nsorepo
VOLUME ["/data"]
EXPOSE 8420
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8420/api/v1/health').status != 200)"
# gunicorn's master migrates the database. It prints no admin token, even under `docker run -t`
# (docker logs keeps a terminal's output too); make one with:
#   docker exec <container> nso-repo token create --role admin --name NAME
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
