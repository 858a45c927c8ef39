# syntax=docker/dockerfile:1
# Three images from one file:
#   docker build -t graph-distill-serve .                    # default (last stage): the service, no torch
#   docker build --target distill -t graph-distill-job .     # the offline job (torch CPU + PyG)
#   docker build --target bench -t graph-distill-locust .    # locust + bench/locustfile.py
# docker-compose.yml wires them together around one bundle volume.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# One unprivileged user for every image; the same uid owns the bundle volume.
RUN useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin app
WORKDIR /app

# ---- the offline job: torch CPU wheels first and alone, so pip never pulls a CUDA build ----
FROM base AS distill
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
# The job checks the bundle it writes through the service's own loading and scoring code.
COPY bundle ./bundle
COPY serve ./serve
COPY distill ./distill
RUN /opt/venv/bin/pip install '.[distill]'
ENV PATH=/opt/venv/bin:$PATH
# An empty named volume mounted here inherits this ownership, so the job can write bundles.
RUN mkdir /bundles && chown app:app /bundles
USER app
ENTRYPOINT ["distill"]
CMD ["run", "--dataset", "synthetic", "--out", "/bundles/current", "--force"]

# ---- the service's runtime deps only: `pip install .` installs [project] dependencies, no extras ----
FROM base AS serve-build
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY bundle ./bundle
COPY serve ./serve
RUN /opt/venv/bin/pip install . \
 && ! /opt/venv/bin/python -c "import torch" 2>/dev/null

# ---- locust, on top of the service's deps (the locustfile reads the bundle with numpy) ----
FROM serve-build AS bench
RUN /opt/venv/bin/pip install '.[bench]'
COPY bench/locustfile.py ./bench/locustfile.py
ENV PATH=/opt/venv/bin:$PATH
USER app
CMD ["locust", "-f", "bench/locustfile.py", "--headless", "--users", "20", "--spawn-rate", "20", \
     "--run-time", "60s", "--only-summary", "--host", "http://serve:8000"]

# ---- the service (default target) ----
FROM base AS serve
COPY --from=serve-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
USER app
EXPOSE 8000
# python is PID 1 and installs its own handlers: SIGTERM drains (/readyz 503), finishes in-flight
# requests and exits 0 within SERVE_DRAIN_SECONDS + SERVE_GRACEFUL_TIMEOUT_SECONDS (serve/README.md).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=60 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
# 0.0.0.0 so that other containers reach it: publish a proxy's port, not this one (docker-compose.yml
# puts nginx with deploy/nginx.conf in front); the service's own HTTP limits are the second line.
CMD ["python", "-m", "serve", "--bundle", "/bundle", "--host", "0.0.0.0"]
