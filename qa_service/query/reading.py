"""Ranked candidates to read ones: the reader (embeddings/reader.py) reads the question with each
of the first few passages, which are then ordered by how likely each is to answer it.

Reading is meant to tell a passage that answers from one that is only on the question's topic:
whether to answer is decided on the reader's probability as well as on retrieval's score, and
the answer is the span the reader found. The model shipped so far does the second better than
the first, which is why it is off by default (docs/evaluation.md, "The reader"). Passages
below the `depth` read keep their retrieval order, after the read ones.

Questions that BM25 barely reads (in another language than the documents, for which the English
reader was not trained; measured in docs/evaluation.md) are not read: they are answered as
before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from embeddings.reader import Reader, Reading
from qa_service.query.retrieval import LEXICAL_SUPPORT_COVERAGE, Hit

# Passages read per question: the three the answer sentence has always been chosen among
# (answering.ANSWER_PASSAGES); what each costs is in docs/benchmarks.md, "The reader".
READ_PASSAGES = 3


@dataclass(frozen=True)
class ReadHits:
    hits: list[Hit]  # the read passages first, most likely to answer first
    readings: list[Reading | None]  # one per hit; None below the read depth


class PassageReader:
    def __init__(
        self, reader: Reader, depth: int = READ_PASSAGES, threshold: float | None = None
    ) -> None:
        """`threshold`: the probability from which a passage answers; None takes the one
        calibrated with the model."""
        if depth < 1:
            raise ValueError("the reader must read at least one passage")
        threshold = reader.manifest.answerable_threshold if threshold is None else threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("the reader's threshold is a probability, in [0, 1]")
        self.reader = reader
        self.depth = depth
        self.threshold = threshold

    @staticmethod
    def reads(coverage: float) -> bool:
        """Whether a question whose words BM25 reads in this share is read."""
        return coverage >= LEXICAL_SUPPORT_COVERAGE

    def run(self, questions: Sequence[str], hits: Sequence[list[Hit]]) -> list[ReadHits]:
        """Each question's hits reordered by the reader; all pairs go in one model call."""
        pairs = [(q, h.passage.text) for q, found in zip(questions, hits, strict=True)
                 for h in found[: self.depth]]  # fmt: skip
        readings = iter(self.reader.read(pairs))
        out = []
        for found in hits:
            read = [(h, next(readings)) for h in found[: self.depth]]
            # Stable: equally likely passages keep their retrieval order.
            read.sort(key=lambda pair: -pair[1].probability)
            rest = found[self.depth :]
            out.append(
                ReadHits([h for h, _ in read] + rest, [r for _, r in read] + [None] * len(rest))
            )
        return out
