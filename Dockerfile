# One image for every Python component of pgbust (api, invalidator, worker, beat, migrate,
# locust). Settings come from the environment at run time; nothing secret is baked in.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependency layer: rebuilt only when pyproject.toml or constraints.txt change, not on every
# code edit. The list is read from pyproject.toml itself, so image and `make install` agree.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md ./
COPY pgbust ./pgbust
COPY db ./db
COPY api ./api
COPY invalidator ./invalidator
COPY worker ./worker
COPY loadtest ./loadtest
# the declaration every component reads (what is captured, what a change invalidates)
COPY pgbust.toml ./
ENV PGBUST_CONFIG=/app/pgbust.toml
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 pgbust

USER pgbust
EXPOSE 8000
CMD ["python", "-m", "api", "--host", "0.0.0.0", "--port", "8000"]
