# Citadel gateway image. CPU PyTorch by default; for NVIDIA GPUs build with
#   docker build --build-arg TORCH_VARIANT=cu126 .
# (the CUDA wheels bring their own CUDA runtime; the host needs the NVIDIA driver and
# container toolkit, and the container `--gpus all` or compose's device reservation).
# Stage 1 builds the wheel; the image installs only that wheel (no source tree, no test extras),
# exactly as a user's `pip install citadel-*.whl` would, migrations included in the package.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip wheel --no-cache-dir --no-deps -w /dist .

FROM python:3.11-slim

ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/citadel

# torch first, from the index of the chosen variant, in its own layer: it is the largest
# download, and installing the project keeps an installed torch that satisfies the requirement
# instead of pulling the CUDA build from PyPI.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch

COPY --from=wheel /dist /tmp/dist
RUN pip install /tmp/dist/citadel-*.whl && rm -rf /tmp/dist && citadel --help > /dev/null

# Unprivileged user; /data and /models become named volumes that inherit this ownership.
RUN useradd --create-home --uid 10001 --user-group citadel \
    && mkdir -p /data /models \
    && chown citadel:citadel /data /models
USER citadel

ENV CITADEL_DATA_DIR=/data \
    CITADEL_CACHE_DIR=/models \
    HF_HOME=/models/hf \
    CITADEL_SERVER__HOST=0.0.0.0 \
    CITADEL_SERVER__PORT=8000

VOLUME ["/data", "/models"]
EXPOSE 8000

# Liveness only; python is the one HTTP client this slim image is sure to have.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CITADEL_SERVER__PORT', '8000'), timeout=4)"]

CMD ["citadel", "serve"]
