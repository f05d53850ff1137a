"""What the service has measured about each embedding model, in one profile per model.

Every figure here was measured on the seed question sets (and SciFact and SQuAD where said) and
is explained in docs/evaluation.md. A model without a profile (a local sentence-transformers
folder) gets `DEFAULT_PROFILE`: all-MiniLM-L6-v2's behaviour, with thresholds to calibrate with
`qa eval` and QA_MIN_SCORE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from embeddings import E5_MODEL, MINILM_MODEL

Mode = Literal["dense", "lexical", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "lexical", "hybrid")


@dataclass(frozen=True)
class ModelProfile:
    # Abstention thresholds on the best passage's support, per retrieval mode.
    min_score: Mapping[Mode, float] = field(
        default_factory=lambda: {"dense": 0.25, "lexical": 0.27, "hybrid": 0.25}
    )
    # A passage's dense score is the better of its own cosine and its best sentence's.
    sentence_evidence: bool = True
    # Cosine of unrelated texts: hybrid fusion rescales [floor, 1] to [0, 1].
    floor: float = 0.0
    # Weight, in a passage's dense score, of the passage read after the one before it (0: such
    # vectors are not built). Recorded in the index's passage settings.
    preceding_context: float = 0.0
    # Its single-word vectors translate: questions BM25 barely reads are searched through the
    # corpus words nearest to their words (query/lexicon.py).
    lexicon: bool = False


DEFAULT_PROFILE = ModelProfile()

PROFILES: dict[str, ModelProfile] = {
    # Thresholds: the midpoint between the highest-scoring off-topic question and the
    # lowest-scoring answerable one. Its sentence vectors already carry their passage's context,
    # and reading a passage after the one before it gained nothing.
    MINILM_MODEL: ModelProfile(),
    E5_MODEL: ModelProfile(
        # Its answerable and off-topic questions overlap across the five languages: the
        # thresholds with the fewest errors.
        min_score={"dense": 0.801, "lexical": 0.27, "hybrid": 0.337},
        # Every text scores 0.7 or more against every question, short ones (titles, a rule of
        # underscores) highest of all, so a passage's best sentence says little: measured worse
        # on the seed sets in every language.
        sentence_evidence=False,
        floor=0.7,
        # It then finds a passage that does not name its subject, named one passage earlier,
        # and loses nothing in English.
        preceding_context=0.2,
        lexicon=True,
    ),
}


def profile_for(model: str) -> ModelProfile:
    """The model's profile; another build of it (`…@onnx`, `…@onnx-int8`) shares it."""
    return PROFILES.get(model) or PROFILES.get(model.split("@", 1)[0], DEFAULT_PROFILE)
