"""Whether a saved index still fits its corpus, model and settings; loading it, rebuilt first if
it does not."""

from __future__ import annotations

import logging

from qa_service.corpus.fingerprint import MEMO_FILE, corpus_fingerprint
from qa_service.errors import IndexNotFoundError, IndexStaleError
from qa_service.index.build import IndexSpec, build_index, passage_settings
from qa_service.index.encode import ProgressFactory
from qa_service.index.store import IndexData, Manifest, index_lock, load_index, read_manifest

logger = logging.getLogger(__name__)


def settings_reasons(manifest: Manifest, spec: IndexSpec) -> list[str]:
    """How the index was built otherwise than its spec says: model, passages, vector index."""
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
    return reasons


def stale_reasons(manifest: Manifest, spec: IndexSpec) -> list[str]:
    """Why a saved index no longer matches its spec or its corpus; empty when it does. The
    corpus check reuses the hashes of unchanged files (corpus/fingerprint.py)."""
    reasons = settings_reasons(manifest, spec)
    corpus_dir = spec.corpus_dir
    memo = spec.index_dir / MEMO_FILE
    if corpus_dir.is_dir() and manifest.corpus_fingerprint != corpus_fingerprint(corpus_dir, memo):
        reasons.append(f"the files in {corpus_dir} changed since it was built")
    return reasons


def ensure_index(
    spec: IndexSpec,
    rebuild_stale: bool = True,
    progress: ProgressFactory | None = None,
    rebuild_for_settings: bool = True,
) -> IndexData:
    """Load the index, building it first when there is none or it no longer fits its spec
    (with `rebuild_stale` false, a stale index is refused instead).

    `rebuild_for_settings` false: an index built with another model or other passage or vector
    settings is refused, whatever `rebuild_stale` says. Commands that only read or write
    documents pass it, so that they never rebuild, behind a server's back, an index it serves
    with another model; a changed corpus is rebuilt with the same settings, which a server
    takes up as it takes up any write."""
    # Under the lock: no write lands between the check and the load, and no writer deletes
    # the generation being read.
    with index_lock(spec.index_dir):
        try:
            manifest = read_manifest(spec.index_dir)
        except IndexNotFoundError:
            logger.info("no index in %s yet: building it from %s", spec.index_dir,
                        spec.corpus_dir)  # fmt: skip
            return build_index(spec, progress)[0]
        if not rebuild_for_settings and (mismatch := settings_reasons(manifest, spec)):
            raise IndexStaleError(
                f"the index in {spec.index_dir} was {'; '.join(mismatch)}. Use it with the "
                "settings it was built with (leave QA_MODEL unset to take its model), or "
                "rebuild it with `qa index` and restart any server that serves it."
            )
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
