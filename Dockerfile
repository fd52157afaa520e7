# One image for every role (gateway, worker, migrate, emulator); the command picks the role.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md requirements.lock ./
# The runtime dependencies exactly as locked (versions and hashes: a reproducible image), then the
# project itself without resolving anything again.
RUN pip install --require-hashes --no-deps -r requirements.lock
COPY medparse ./medparse
COPY gateway ./gateway
COPY workers ./workers
COPY db ./db
COPY emulator ./emulator
COPY migrations ./migrations
RUN pip install --no-deps .
USER nobody
CMD ["medparse", "serve"]
