# syntax=docker/dockerfile:1@sha256:ecfaec9ed6d810b56388c508f4121597bfbba70d41a6dfeee4d8cad5f295fc32
# Three images from one file:
#   docker build -t graph-distill-serve .                    # default (last stage): the service, no torch
#   docker build --target distill -t graph-distill-job .     # the offline job (torch CPU + PyG)
#   docker build --target bench -t graph-distill-locust .    # locust + bench/locustfile.py
# docker-compose.yml wires them together around one bundle volume.
#
# Reproducible: the base image is pinned by digest (the tag says what it is), and every image installs from
# its hash-locked file in requirements/ (`make lock`), nothing else from an index, and only wheels (the slim
# image has no compiler); then the project itself without dependencies. `pip check` fails the build when a
# lock misses a dependency. README "Container" says how to refresh the digest and the locks.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:db3ff2e1800a8581e2c48a27c3995339d47bdf046da21c7627accd3d51053a93

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# One unprivileged user for every image; the same uid owns the bundle volume. `USER` names it by number,
# so a runtime that checks for a non-root user (Kubernetes runAsNonRoot) can tell without /etc/passwd.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --create-home --shell /usr/sbin/nologin app
WORKDIR /app

# ---- the offline job: its lock holds torch's CPU build (+cpu), which only PyTorch's index serves ----
FROM base AS distill
COPY requirements/distill.txt ./requirements/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-deps --require-hashes --only-binary=:all: \
        --extra-index-url https://download.pytorch.org/whl/cpu -r requirements/distill.txt
COPY pyproject.toml README.md ./
# The job checks the bundle it writes through the service's own loading and scoring code.
COPY bundle ./bundle
COPY serve ./serve
COPY distill ./distill
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation . \
 && /opt/venv/bin/pip check
ENV PATH=/opt/venv/bin:$PATH
# An empty named volume mounted here inherits this ownership, so the job can write bundles.
RUN mkdir /bundles && chown app:app /bundles
USER 10001:10001
ENTRYPOINT ["distill"]
CMD ["run", "--dataset", "synthetic", "--out", "/bundles/current", "--force"]

# ---- the service's runtime deps only: the lock of the [project] dependencies, no extras ----
FROM base AS serve-build
COPY requirements/serve.txt ./requirements/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-deps --require-hashes --only-binary=:all: -r requirements/serve.txt
COPY pyproject.toml README.md ./
COPY bundle ./bundle
COPY serve ./serve
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation . \
 && /opt/venv/bin/pip check \
 && ! /opt/venv/bin/python -c "import torch" 2>/dev/null

# ---- locust, on top of the service's deps (the locustfile reads the bundle with numpy) ----
FROM serve-build AS bench
# bench.txt holds the packages it shares with serve.txt at serve.txt's versions: pip keeps those installed.
COPY requirements/bench.txt ./requirements/
RUN /opt/venv/bin/pip install --no-deps --require-hashes --only-binary=:all: -r requirements/bench.txt \
 && /opt/venv/bin/pip check
COPY bench/locustfile.py ./bench/locustfile.py
ENV PATH=/opt/venv/bin:$PATH
USER 10001:10001
CMD ["locust", "-f", "bench/locustfile.py", "--headless", "--users", "20", "--spawn-rate", "20", \
     "--run-time", "60s", "--only-summary", "--host", "http://serve:8000"]

# ---- the service (default target) ----
FROM base AS serve
COPY --from=serve-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
USER 10001:10001
EXPOSE 8000
# python is PID 1 and installs its own handlers: SIGTERM drains (/readyz 503), finishes in-flight
# requests and exits 0 within SERVE_DRAIN_SECONDS + SERVE_GRACEFUL_TIMEOUT_SECONDS (serve/README.md).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=60 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
# 0.0.0.0 so that other containers reach it: publish a proxy's port, not this one (docker-compose.yml
# puts nginx with deploy/nginx.conf in front); the service's own HTTP limits are the second line.
CMD ["python", "-m", "serve", "--bundle", "/bundle", "--host", "0.0.0.0"]
