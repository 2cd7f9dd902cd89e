# syntax=docker/dockerfile:1
#
# One image for every bss-sync process (docs/architecture.md §8), chosen by the command:
#
#   python -m services.dispatcher          the dispatcher
#   python -m services.pusher              the pusher
#   python -m sandbox serve --host 0.0.0.0 the sandbox BSS (demo, tests)
#   bss-sync …                             the CLI (db upgrade, topology declare, apply, audit…)
#
# configured by the environment (AMQP_URL, DATABASE_URL, BSS_API_URL, …; shared/settings.py).
# `docker build .` builds it (the last stage). The Acme CRM stand-in of the demo is the
# `acme-crm` stage (Node.js: json-server with demo/acme_crm/), built by docker-compose.yml:
#
#   docker build -t bss-sync .
#   docker build --target acme-crm -t bss-sync-acme-crm .

ARG PYTHON_IMAGE=python:3.11-slim
ARG NODE_IMAGE=node:20-slim

# --------------------------------------------------------------------------- Acme CRM stand-in
FROM ${NODE_IMAGE} AS acme-crm
WORKDIR /app
# The repository's lock file: the same json-server the end-to-end tests run.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error && npm cache clean --force
COPY demo/acme_crm/ demo/acme_crm/
USER node
EXPOSE 3000
# ACME_API_KEY (the X-Api-Key every request must carry) comes from the environment.
CMD ["node", "demo/acme_crm/server.js", "demo/acme_crm/db.json", "3000", "0.0.0.0"]

# --------------------------------------------------------------------------- the wheel
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY services/ services/
COPY sandbox/ sandbox/
COPY schemas/ schemas/
RUN pip wheel --no-deps --wheel-dir /wheels .

# --------------------------------------------------------------------------- bss-sync
FROM ${PYTHON_IMAGE} AS bss-sync
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LOG_FORMAT=json
# Dependencies first, in a layer of their own: a code change does not reinstall them.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/pyproject.toml /tmp/requirements.txt
COPY --from=build /wheels/ /tmp/wheels/
RUN pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/bss-sync bss-sync
WORKDIR /app
# The example connectors and the demo's installation file (docker-compose.yml's `apply`);
# a deployment mounts its own installation file and connectors instead.
COPY connectors/ connectors/
COPY demo/installation.compose.json demo/installation.compose.json
USER bss-sync
CMD ["bss-sync", "--help"]
