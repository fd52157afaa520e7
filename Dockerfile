# One image for every role (gateway, worker, migrate, emulator); the command picks the role.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY medparse ./medparse
COPY gateway ./gateway
COPY workers ./workers
COPY db ./db
COPY emulator ./emulator
COPY migrations ./migrations
RUN pip install .
USER nobody
CMD ["medparse", "serve"]
