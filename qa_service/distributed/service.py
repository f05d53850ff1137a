"""The answering service over an index split into shards (issue 28).

The shards are `query.sharded.Shard`s: searchers in this process, or proxies to Ray Serve
deployments (`serving.py`). The question path is the one-index pipeline's (`QueryPipeline`)
with the sharded retriever and answer builder, and the acronyms and lexicon summed over the
shards, so the answers, their scores and their citations are those one index would give.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from qa_service.corpus.acronyms import Acronyms
from qa_service.corpus.documents import Document
from qa_service.models import Mode
from qa_service.query.answering import Answer
from qa_service.query.pipeline import Encode, QueryPipeline
from qa_service.query.retrieval import DENSE_WEIGHT
from qa_service.query.sharded import (
    Shard,
    ShardCatalogue,
    ShardedAnswers,
    ShardedRetriever,
)
from qa_service.service import AnsweringService, Catalogue

WRITES_REFUSED = (
    "documents cannot be written through a sharded service yet: add them to the corpus folder "
    "and rebuild the shards with `qa index --ray --shards N`"
)


class ShardedService(AnsweringService):
    read_only_reason = WRITES_REFUSED

    def __init__(
        self,
        shards: Sequence[Shard],
        encode: Encode,
        min_score: float | None,
        top_k: int,
        mode: Mode = "hybrid",
        dense_weight: float = DENSE_WEIGHT,
        max_wait: float | None = None,
    ) -> None:
        """`encode` is the question encoder of the model the shards were built with."""
        retriever = ShardedRetriever(shards, dense_weight)
        super().__init__(retriever.model, encode, min_score, top_k, mode, max_wait, None)
        definitions = retriever.each(lambda s: s.acronyms())
        acronyms = Acronyms.from_definitions(d for shard in definitions for d in shard)

        def words() -> Counter[str]:
            return sum(retriever.each(lambda s: s.word_counts()), Counter[str]())

        self._catalogue = retriever.catalogue
        self._pipeline = QueryPipeline(
            retriever, ShardedAnswers(retriever), acronyms, retriever.model, words, self._encode
        )

    @property
    def index(self) -> ShardCatalogue:
        return self._catalogue

    def _snapshot(self) -> tuple[ShardCatalogue, QueryPipeline]:
        return self._catalogue, self._pipeline

    def _cited(self, catalogue: Catalogue, answers: Sequence[Answer]) -> Mapping[str, Document]:
        """Fetched from their shards, one call per shard."""
        ids = (p.hit.passage.document_id for a in answers for p in a.passages)
        return {doc_id: found[0] for doc_id, found in self._catalogue.fetch(ids).items()}
