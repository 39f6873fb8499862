# One image for every role (bot, inference-worker, trainer); the compose service picks the command.
# CPU by default. GPU (NVIDIA) workers/training: `--build-arg EXTRAS=gpu` installs TensorFlow with its CUDA
# libraries as pip wheels (tensorflow[and-cuda]), so the python base works on any host with the NVIDIA driver
# and Container Toolkit; a CUDA base (BASE=nvidia/cuda:...-cudnn-runtime-...) also works if it has Python 3.11.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG EXTRAS=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app
# Dependencies first so that code edits do not reinstall TensorFlow. With EXTRAS=gpu the CUDA build of
# TensorFlow replaces tensorflow-cpu (which x86_64 pulls by default) so that it owns the module.
COPY pyproject.toml README.md .env.example ./
RUN mkdir -p bot/static inference_worker trainer && touch bot/__init__.py inference_worker/__init__.py trainer/__init__.py \
    && pip install ".${EXTRAS:+[$EXTRAS]}" && pip uninstall -y zhenjia \
    && if [ "$EXTRAS" = "gpu" ]; then \
         pip uninstall -y tensorflow-cpu && pip install --no-deps --force-reinstall "tensorflow==2.21.*"; \
       fi
COPY bot ./bot
COPY inference_worker ./inference_worker
COPY trainer ./trainer
COPY models ./models
# Editable, so that the repo-relative defaults (models/) point at /app.
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 10001 zhenjia && chown -R zhenjia /app/models
USER zhenjia

ENV WEB_HOST=0.0.0.0 WEB_PORT=8080 MODELS_DIR=/app/models
EXPOSE 8080
CMD ["python", "-m", "bot"]
