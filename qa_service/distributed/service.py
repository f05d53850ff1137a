"""The answering service over an index split into shards (issue 28).

The shards are `query.sharded.Shard`s: searchers in this process, or proxies to Ray Serve
deployments (`serving.py`). The question path is the one-index pipeline's (`QueryPipeline`)
with the sharded retriever and answer builder, and the acronyms and lexicon summed over the
shards, so the answers, their scores and their citations are those one index would give.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from qa_service.corpus.acronyms import Acronyms
from qa_service.models import Mode
from qa_service.query.pipeline import Encode, QueryPipeline
from qa_service.query.reading import PassageReader
from qa_service.query.retrieval import DENSE_WEIGHT
from qa_service.query.sharded import (
    Shard,
    ShardCatalogue,
    ShardedAnswers,
    ShardedRetriever,
)
from qa_service.service import AnsweringService

WRITES_REFUSED = (
    "shards served in one process are read only: serve them with `qa serve --ray`, which writes "
    "to the shard that owns the document, or add the documents to the corpus folder and rebuild "
    "the shards with `qa index --ray --shards N`"
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
        reader: PassageReader | None = None,
    ) -> None:
        """`encode` is the question encoder of the model the shards were built with; the
        `reader` reads the hits here, where their passages' texts already are."""
        if not shards:
            raise ValueError("at least one shard")
        model = shards[0].manifest.model
        super().__init__(model, encode, min_score, top_k, mode, max_wait, reader)
        self.shards = list(shards)
        self.dense_weight = dense_weight
        self._live = self._load()

    def _load(self, previous: QueryPipeline | None = None) -> tuple[ShardCatalogue, QueryPipeline]:
        """The statistics, catalogue, acronyms and lexicon of the shards as they are now; the
        words `previous`'s lexicon holds are not encoded again."""
        retriever = ShardedRetriever(self.shards, self.dense_weight)
        definitions = retriever.each(lambda s: s.acronyms())
        acronyms = Acronyms.from_definitions(d for shard in definitions for d in shard)

        def words() -> Counter[str]:
            return sum(retriever.each(lambda s: s.word_counts()), Counter[str]())

        pipeline = QueryPipeline(
            retriever, ShardedAnswers(retriever), acronyms, retriever.model, words, self._encode,
            previous,
        )  # fmt: skip
        return retriever.catalogue, pipeline

    def reload(self) -> None:
        """Take up what changed in the shards (a write): questions asked meanwhile are
        answered from the shards as they were."""
        self._live = self._load(self._live[1])

    @property
    def index(self) -> ShardCatalogue:
        return self._live[0]

    def _snapshot(self) -> tuple[ShardCatalogue, QueryPipeline]:
        return self._live
