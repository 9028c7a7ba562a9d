# syntax=docker/dockerfile:1
# CPU deployment of an `mtasr export`: the project with its serve extra (onnxruntime for the python-backend models,
# and the nvidia-pytriton wheel, which carries the real tritonserver) on Python 3.11, running `mtasr serve`.
# Built by the `triton-cpu` service of docker-compose.yml with the repository root as context; what the context
# may contain is listed in cpu.Dockerfile.dockerignore beside this file.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 \
    MTASR_CACHE_DIR=/opt/mtasr/cache

# curl: the healthcheck (GET /v2/health/ready), the same one as in NVIDIA's image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mtasr/src
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY mtasr mtasr
COPY export export
COPY client client
COPY training training
COPY bench bench
RUN pip install -c requirements/constraints.txt ".[serve]" \
    && rm -rf build mtasr.egg-info

# Assemble tritonserver's backend directory (the wheel's backends plus the python 3.11 stub) now, into
# MTASR_CACHE_DIR, so the server starts without writing outside /tmp; fail the build if the wheel has no server.
RUN python -c "from mtasr.triton_install import find_tritonserver; print(find_tritonserver())" \
    && chmod -R a+rX "$MTASR_CACHE_DIR"

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin mtasr
USER mtasr
WORKDIR /home/mtasr
EXPOSE 8000 8001 8002
# docker-compose.yml mounts the export at /export; bind 0.0.0.0 inside the container (publish on the host with care).
CMD ["mtasr", "serve", "/export/model_repository", "--host", "0.0.0.0"]
