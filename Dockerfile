# syntax=docker/dockerfile:1
# The hms-bus application image: the hms-bus command, the framework and the reference
# app (step_handlers, schemas), with OTLP export. Every role runs from this one image:
#   docker run --rm hms-bus:local worker step_handlers.hms:mgmt --dry-run
# It also runs the reference HMS-SVC and HMS-ACH (the `services` extra: uvicorn), a
# stand-in for the real services in development and demos:
#   docker run --rm -p 8088:8088 --entrypoint python hms-bus:local \
#     -m step_handlers.reference_services --host 0.0.0.0 --port 8088
# The reference app lives in /app, the working directory, which `hms-bus …
# module:attribute` imports from (the wheel ships the framework only). Build your own
# app on top of it: FROM this image, COPY your package into /app.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/hms
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hms_bus ./hms_bus
RUN /opt/hms/bin/pip install ".[otlp,services]"

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/hms/bin:$PATH
RUN groupadd --system --gid 10001 hms \
    && useradd --system --uid 10001 --gid hms --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin hms
COPY --from=build /opt/hms /opt/hms
WORKDIR /app
COPY step_handlers ./step_handlers
COPY schemas ./schemas
USER 10001:10001
# Role commands serve /healthz and Prometheus /metrics here when given --http-port 9464
# (or HMS_TELEMETRY__HTTP_PORT=9464); the reference services listen on --port 8088.
EXPOSE 9464 8088
ENTRYPOINT ["hms-bus"]
CMD ["--help"]
