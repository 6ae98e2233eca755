# The pipeline daemon, CPU-only torch. Not built here (no Docker engine on the development machines).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HOME=/models
WORKDIR /app

# CPU build of torch first, so sentence-transformers does not pull the CUDA wheels.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY requirements.txt pyproject.toml README.md ./
COPY pipeline ./pipeline
RUN pip install -r requirements.txt -e .

RUN useradd --system --home /app pipeline && mkdir -p /models && chown pipeline /models
USER pipeline
# The multilingual default model, baked in at build time (HF_HOME=/models): the container starts offline.
RUN pipeline model download
VOLUME ["/models"]

CMD ["sh", "-c", "pipeline migrate && exec pipeline run"]
