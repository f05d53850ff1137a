"""A question in another language than the documents, read by BM25 through the documents' words.

BM25 reads hardly any word of an Albanian or Macedonian question, so hybrid retrieval ranks such
a question by the embedding alone. A multilingual model also places a single word near its
translations ("djeci" near "children", "objektivi" near "objective", "konvencija" near
"convention"), so every word of the corpus is encoded once, and each word of a question BM25
barely reads is replaced by the nearest corpus word where they are close enough. BM25 then
searches those words as an English question, at a lower weight than words it reads itself:
translation by nearest word is noisy. Function words land on unrelated words at lower cosines
and are left out by `MIN_COSINE`.

Measured with multilingual-e5-small on the seed sets in four languages (docs/evaluation.md):
dev acc@1 0.821 -> 0.857, extra 0.875 -> 0.898; English questions are not translated.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from embeddings import Vectors
from embeddings.files import replace_file
from qa_service.corpus.documents import Document
from qa_service.corpus.words import STOPWORDS, WORD

# A question word is replaced by its nearest corpus word at this cosine or above (a plateau from
# 0.86 to 0.89 on the seed sets; function words reach 0.87-0.89 with unrelated words, so the
# range above it also keeps most of them out).
MIN_COSINE = 0.88
# A translated word counts as this share of a word BM25 reads itself (0.4 gained less on the
# seed sets, 0.6 or more lost the gain).
TRANSLATED_WEIGHT = 0.5
# The corpus's most frequent words are encoded, at most this many (the default corpus has 718).
MAX_WORDS = 20_000
_WORD = re.compile(r"[^\W\d_]{3,}")  # words of three letters or more

logger = logging.getLogger(__name__)


def words_of(text: str) -> list[str]:
    """The words of `text` that are looked up: lower-cased, three letters or more."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Translation:
    query: str  # corpus words, for BM25
    coverage: float  # the share of the question BM25 counts as read: sets the lexical weight


class Lexicon:
    """The corpus's words and their vectors, from the multilingual model's query encoder."""

    def __init__(self, words: Sequence[str], vectors: Vectors) -> None:
        if len(words) != len(vectors):
            raise ValueError("one vector per word")
        self.words = list(words)
        self.vectors = vectors

    @classmethod
    def build(
        cls,
        documents: Iterable[Document],
        encode: Callable[[Sequence[str]], Vectors],
        previous: Lexicon | None = None,
    ) -> Lexicon:
        """The lexicon of `documents`; words `previous` already holds are not encoded again."""
        return cls.from_counts(word_counts(documents), encode, previous)

    @classmethod
    def from_counts(
        cls,
        counts: Counter[str],
        encode: Callable[[Sequence[str]], Vectors],
        previous: Lexicon | None = None,
    ) -> Lexicon:
        """The lexicon of the words counted in `counts` (`word_counts`, summed over shards)."""
        # Ties broken by the word, so that counts summed in any order choose the same words.
        words = sorted(sorted(counts, key=lambda w: (-counts[w], w))[:MAX_WORDS])
        known: dict[str, npt.NDArray[np.float32]] = {}
        if previous is not None:
            known = dict(zip(previous.words, previous.vectors, strict=True))
        new = [w for w in words if w not in known]
        if new:
            known.update(zip(new, encode(new), strict=True))
        if not words:
            return cls([], np.zeros((0, 0), dtype=np.float32))
        return cls(words, np.vstack([known[w] for w in words]).astype(np.float32, copy=False))

    def translate(self, question: str, word_vectors: Vectors) -> Translation:
        """The corpus words nearest to the question's words (`words_of(question)`, encoded);
        they count as `TRANSLATED_WEIGHT` of a read word each, among all the question's words."""
        total = len(WORD.findall(question))
        if total == 0 or len(self.words) == 0 or len(word_vectors) == 0:
            return Translation("", 0.0)
        cosines = word_vectors @ self.vectors.T
        best = cosines.argmax(axis=1)
        found = [self.words[j] for i, j in enumerate(best) if cosines[i, j] >= MIN_COSINE]
        return Translation(" ".join(found), TRANSLATED_WEIGHT * len(found) / total)


def word_counts(documents: Iterable[Document]) -> Counter[str]:
    """How often each word a lexicon may hold occurs in `documents`."""
    return Counter(w for d in documents for w in words_of(d.text) if w not in STOPWORDS)


def cache_path(folder: Path, model: str) -> Path:
    """Where the lexicon of `model` is kept between loads (one file per model)."""
    return folder / f"lexicon-{hashlib.sha256(model.encode()).hexdigest()[:16]}.npz"


def read_cached(path: Path, model: str) -> Lexicon | None:
    """The lexicon saved by `save_cached` for `model`, or None (none yet, another model's, or
    unreadable: it is then rebuilt, never trusted)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            if str(saved["model"]) != model:
                return None
            return Lexicon([str(w) for w in saved["words"]], saved["vectors"].astype(np.float32))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("ignoring the cached lexicon %s: %s", path, exc)
        return None


def save_cached(path: Path, model: str, lexicon: Lexicon) -> None:
    """Written atomically, so a crash leaves the old file or the new one."""
    buffer = io.BytesIO()
    np.savez(buffer, model=np.str_(model), words=np.array(lexicon.words, dtype=np.str_),
             vectors=lexicon.vectors)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, buffer.getvalue())
