# mmserve: the multimodal inference service in a container (docker-compose.yml runs it on a GPU).
#
# Stages: `deps` fills a virtual environment in /opt/venv, torch first, then the dependencies listed in
# pyproject.toml (which `requirements` extracts). `app` installs the package itself (model/ and service/,
# with the built-in weights as package data) into /opt/mmserve, which the venv has on its path. The
# runtime stage copies just those two folders onto a fresh slim image: no compiler, pip cache or source
# tree reaches it, and a code change rebuilds only the small /opt/mmserve layer, in seconds.
#
#   docker build -t mmserve .                                        # PyPI's torch: a CUDA build
#   docker build -t mmserve --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .   # CPU only

ARG PYTHON_IMAGE=python:3.11-slim

# The dependency list alone, out of pyproject.toml: a change elsewhere in that file (tool settings, the
# version) leaves requirements.txt as it was, so the layers that install it stay cached.
FROM ${PYTHON_IMAGE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt


FROM ${PYTHON_IMAGE} AS deps

# Which torch, from where. PyPI's Linux wheels are CUDA builds that bring their own CUDA libraries (the
# host needs only the NVIDIA driver and the container toolkit); pin the release your driver supports.
# An empty TORCH_INDEX_URL means PyPI; PyTorch's CPU index gives a far smaller CPU-only image.
ARG TORCH_REQUIREMENT="torch==2.13.0"
ARG TORCH_INDEX_URL=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# DL3013: the pin is TORCH_REQUIREMENT itself, which hadolint cannot see through.
# hadolint ignore=DL3013
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_REQUIREMENT"

# The dependencies: rebuilt only when the list changes. torch is already there, so its open range in
# pyproject is satisfied and not downloaded again. setuptools builds the package in `app` without network
# access (--no-build-isolation). The .pth file puts /opt/mmserve on the venv's path.
WORKDIR /src
COPY --from=requirements /src/requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt "setuptools>=70" \
 && python -c "import site; open(site.getsitepackages()[0] + '/mmserve.pth', 'w').write('/opt/mmserve\n')"


FROM deps AS app
COPY pyproject.toml README.md ./
COPY model/ model/
COPY service/ service/
WORKDIR /
RUN pip install --no-cache-dir --no-deps --no-build-isolation --target /opt/mmserve /src \
 && python -c "import service.cli, model.checkpoint as c; print('weights:', sorted(p.name for p in c.WEIGHTS_DIR.glob('*')))"


FROM ${PYTHON_IMAGE} AS runtime

# Nothing downloads by default: the built-in model ships in the image and its text tower in a package.
# A Hugging Face id in MMSERVE_MODEL still reaches the hub, into HF_HOME (mount a volume there to keep it).
ENV PATH=/opt/mmserve/bin:/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/home/mmserve/.cache/huggingface \
    MMSERVE_HOST=0.0.0.0 \
    MMSERVE_PORT=8000

RUN useradd --create-home --no-log-init --uid 10001 --user-group --shell /usr/sbin/nologin mmserve \
 && mkdir /models

COPY --from=deps /opt/venv /opt/venv
COPY --from=app /opt/mmserve /opt/mmserve

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /home/mmserve
EXPOSE 8000

# Readiness: /health answers 200 only once the model is loaded and warmed up (503 while loading or draining).
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('MMSERVE_PORT', '8000'), timeout=4)"]

# Exec form: mmserve is PID 1 and receives SIGTERM itself; it then stops admitting (503 with `Connection:
# close` for MMSERVE_DRAIN_GRACE_S), finishes the requests it accepted and exits 0 (within the grace plus
# MMSERVE_REQUEST_TIMEOUT_S + 5 s). A fatal state (a model that cannot load, a broken device, a dead
# inference thread) exits non-zero instead (README's exit statuses), so `restart:` policies act on it.
ENTRYPOINT ["mmserve"]
CMD ["serve"]
