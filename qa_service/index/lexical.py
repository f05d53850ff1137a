"""BM25 over passage texts (bm25s), with scores on an absolute 0..1 scale.

Raw BM25 scores are not comparable across questions, which makes them useless for fusion weights
or an abstention threshold. Each score is divided by the most any passage could score for that
question: the sum, over its distinct terms, of the best score the term reaches in any passage.
A term found in no passage counts at the corpus's highest term weight, so that a question whose
words are mostly absent cannot score high by matching one common word.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np
import numpy.typing as npt
import Stemmer

from qa_service.corpus.words import STOPWORDS, WORD

Scores = npt.NDArray[np.float32]

# bm25s sets its own logger to DEBUG on import, so every index build logged a DEBUG line past
# an INFO root; its warnings still get through.
logging.getLogger("bm25s").setLevel(logging.WARNING)


class Analyzer:
    """Lower-cased, stop words removed, Snowball-stemmed words (single letters and digits kept:
    figures and case codes are exactly what lexical search is for)."""

    def __init__(self) -> None:
        self._stemmer = Stemmer.Stemmer("english")

    def terms(self, text: str) -> list[str]:
        words = [w for w in WORD.findall(text.lower()) if w not in STOPWORDS]
        return list(self._stemmer.stemWords(words))


class LexicalIndex:
    def __init__(self, bm25: bm25s.BM25, vocab: dict[str, int]) -> None:
        self._bm25 = bm25
        self._vocab = vocab  # term -> column of bm25's score matrix
        self._analyzer = Analyzer()
        scores = bm25.scores
        data, indptr = scores["data"], scores["indptr"]
        # Best score each term reaches in any passage (its column maximum in the CSC matrix).
        self._term_max = np.zeros(len(indptr) - 1, dtype=np.float32)
        filled = np.diff(indptr) > 0
        if data.size:
            self._term_max[filled] = np.maximum.reduceat(data, indptr[:-1][filled])
        self._unknown_weight = float(self._term_max.max()) if self._term_max.size else 1.0
        self.size = int(scores["num_docs"])

    @classmethod
    def build(cls, texts: Sequence[str]) -> LexicalIndex:
        analyzer = Analyzer()
        return cls.from_terms([analyzer.terms(text) for text in texts])

    @classmethod
    def from_terms(cls, terms: Sequence[Sequence[str]]) -> LexicalIndex:
        """From each passage's analysed terms (`Analyzer.terms`), so that a document write
        re-analyses only its own passages."""
        vocab: dict[str, int] = {}
        corpus = [[vocab.setdefault(t, len(vocab)) for t in passage] for passage in terms]
        bm25 = bm25s.BM25()
        tokenized = bm25s.tokenization.Tokenized(ids=corpus, vocab=vocab)
        if vocab:
            bm25.index(tokenized, show_progress=False)
        else:  # only stop words: bm25s cannot add its empty token, nor average no lengths
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                bm25.index(tokenized, show_progress=False, create_empty_token=False)
        return cls(bm25, vocab)

    def query_ids(self, question: str) -> tuple[list[int], float]:
        """Known term ids of the question and the most any passage could score for it."""
        ids: list[int] = []
        bound = 0.0
        for term in dict.fromkeys(self._analyzer.terms(question)):
            term_id = self._vocab.get(term)
            if term_id is None:
                bound += self._unknown_weight
            else:
                ids.append(term_id)
                bound += float(self._term_max[term_id])
        return ids, bound

    def scores(self, question: str) -> Scores:
        """Normalised score of every passage for the question (0 where no term matches)."""
        ids, bound = self.query_ids(question)
        if not ids or bound <= 0:
            return np.zeros(self.size, dtype=np.float32)
        raw = self._bm25.get_scores(ids)
        return np.asarray(raw / bound, dtype=np.float32)

    def save(self, folder: Path) -> None:
        self._bm25.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        bm25 = bm25s.BM25.load(str(folder), show_progress=False)
        return cls(bm25, bm25.vocab_dict)
