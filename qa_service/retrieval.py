"""Question vectors to ranked candidate passages."""

from __future__ import annotations

from dataclasses import dataclass

from embeddings import Vectors
from qa_service.chunking import Passage
from qa_service.store import IndexData


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float  # cosine similarity of question and passage


class DenseRetriever:
    def __init__(self, index: IndexData) -> None:
        self._index = index

    def retrieve(self, question_vectors: Vectors, k: int) -> list[list[Hit]]:
        """The `k` best passages for each question vector, best first."""
        if k < 1:
            raise ValueError("k must be at least 1")
        k = min(k, len(self._index.passages))
        if k == 0:
            return [[] for _ in range(len(question_vectors))]
        scores, ids = self._index.vectors.search(question_vectors, k)
        passages = self._index.passages
        return [
            [Hit(passages[i], float(s)) for s, i in zip(row_scores, row_ids, strict=True) if i >= 0]
            for row_scores, row_ids in zip(scores, ids, strict=True)
        ]
