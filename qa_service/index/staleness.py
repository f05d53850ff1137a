"""Whether a saved index still fits its corpus, model and settings; loading it, rebuilt first if
it does not."""

from __future__ import annotations

import logging

from qa_service.corpus.fingerprint import (
    MEMO_FILE,
    corpus_fingerprint,
)
from qa_service.errors import IndexNotFoundError, IndexStaleError
from qa_service.index.build import IndexSpec, build_index, passage_settings
from qa_service.index.encode import ProgressFactory
from qa_service.index.store import (
    IndexData,
    Manifest,
    index_lock,
    load_index,
    read_manifest,
)

logger = logging.getLogger(__name__)


def stale_reasons(manifest: Manifest, spec: IndexSpec) -> list[str]:
    """Why a saved index no longer matches its spec; empty when it does. The corpus check reuses
    the hashes of unchanged files (corpus/fingerprint.py)."""
    encoder = spec.encoder
    reasons = []
    wanted = spec.index_config.build_params(manifest.passages)
    if manifest.vector_index != wanted:
        reasons.append(f"built with vector index {manifest.vector_index}, configured {wanted}")
    if manifest.model != encoder.name or manifest.dimension != encoder.dimension:
        reasons.append(f"built with model {manifest.model}, configured {encoder.name}")
    configured = passage_settings(spec.splitter, encoder.name)
    if manifest.passage_settings != configured:
        reasons.append(
            f"built with passage settings {manifest.passage_settings}, configured {configured}"
        )
    corpus_dir = spec.corpus_dir
    memo = spec.index_dir / MEMO_FILE
    if corpus_dir.is_dir() and manifest.corpus_fingerprint != corpus_fingerprint(corpus_dir, memo):
        reasons.append(f"the files in {corpus_dir} changed since it was built")
    return reasons


def ensure_index(
    spec: IndexSpec, rebuild_stale: bool = True, progress: ProgressFactory | None = None
) -> IndexData:
    """Load the index, building it first when there is none or it no longer fits its spec
    (with `rebuild_stale` false, a stale index is refused instead)."""
    # Under the lock: no write lands between the check and the load, and no writer deletes
    # the generation being read.
    with index_lock(spec.index_dir):
        try:
            manifest = read_manifest(spec.index_dir)
        except IndexNotFoundError:
            logger.info("no index in %s yet: building it from %s", spec.index_dir,
                        spec.corpus_dir)  # fmt: skip
            return build_index(spec, progress)[0]
        reasons = stale_reasons(manifest, spec)
        if reasons:
            if not rebuild_stale:
                raise IndexStaleError(
                    f"the index in {spec.index_dir} is out of date: {'; '.join(reasons)}. "
                    "Run `qa index` to rebuild it."
                )
            logger.warning("rebuilding the index: %s", "; ".join(reasons))
            return build_index(spec, progress)[0]
        return load_index(spec.index_dir, spec.index_config)
