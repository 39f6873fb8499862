# Two images, one per kind of process (the compose service picks the target and the command):
#   docker build --target bot    -t zhenjia-bot:latest .     the bot: chat adapters + web page, no TensorFlow
#   docker build --target worker -t zhenjia-worker:latest .  inference workers and the trainer (TensorFlow)
# The bot stage comes first, so that even a builder without BuildKit builds nothing else for `--target bot`.
# Worker CPU by default. GPU (NVIDIA) workers/training: `--build-arg EXTRAS=gpu` installs TensorFlow with its CUDA
# libraries as pip wheels (tensorflow[and-cuda]), so the python base works on any host with the NVIDIA driver
# and Container Toolkit; a CUDA base (BASE=nvidia/cuda:...-cudnn-runtime-...) also works if it has Python 3.11.
# BASE and EXTRAS apply to the worker stage only.
ARG BASE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- bot: pip install .[bot], code from core/ and bot/
FROM python:3.11-slim-bookworm AS bot

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Dependencies first so that code edits do not reinstall them. The project is built from empty package folders
# only to resolve `.[bot]` (base + bot extra), then uninstalled: the code is copied below.
COPY pyproject.toml README.md .env.example ./
RUN mkdir -p core bot/static inference_worker trainer \
    && touch core/__init__.py bot/__init__.py inference_worker/__init__.py trainer/__init__.py \
    && pip install ".[bot]" && pip uninstall -y zhenjia \
    && rm -rf core bot inference_worker trainer build *.egg-info \
    && useradd --create-home --uid 10001 zhenjia
# The bot needs only these two packages (no models/, no worker or trainer code); PYTHONPATH finds them.
COPY core ./core
COPY bot ./bot
USER zhenjia

ENV PYTHONPATH=/app WEB_HOST=0.0.0.0 WEB_PORT=8080
EXPOSE 8080
CMD ["python", "-m", "bot"]

# ---------------------------------------------------------------- worker: pip install .[train] (worker + trainer)
FROM ${BASE} AS worker

ARG EXTRAS=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app
# Dependencies first so that code edits do not reinstall TensorFlow. `.[train]` is the worker's stack plus the
# trainer's, so one image runs both. With EXTRAS=gpu the CUDA build of TensorFlow replaces tensorflow-cpu
# (which x86_64 pulls by default) so that it owns the module.
COPY pyproject.toml README.md .env.example ./
RUN mkdir -p core bot/static inference_worker trainer \
    && touch core/__init__.py bot/__init__.py inference_worker/__init__.py trainer/__init__.py \
    && pip install ".[train${EXTRAS:+,$EXTRAS}]" && pip uninstall -y zhenjia \
    && if [ "$EXTRAS" = "gpu" ]; then \
         pip uninstall -y tensorflow-cpu && pip install --no-deps --force-reinstall "tensorflow==2.21.*"; \
       fi
# bot/ stays the empty package made above (the editable install lists it); this image never runs the bot.
COPY core ./core
COPY inference_worker ./inference_worker
COPY trainer ./trainer
COPY models ./models
# Editable, so that the repo-relative defaults (models/) point at /app.
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 10001 zhenjia && chown -R zhenjia /app/models
USER zhenjia

ENV MODELS_DIR=/app/models
CMD ["python", "-m", "inference_worker"]
