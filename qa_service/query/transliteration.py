"""Serbian and Macedonian Cyrillic to Latin letters, for questions asked in Cyrillic.

Both scripts are official for Serbian, and its Latin spelling is a letter-for-letter mapping.
The multilingual model matches a Serbian question in Latin letters against the English reports
far better than the same question in Cyrillic (right passage first for 28 rather than 20 of 36
questions, docs/evaluation.md), and names written in Latin (Budva, Nestorova) are what the
documents contain. Macedonian gains nothing from it alone, so a question in Cyrillic is searched
in both spellings and each passage keeps its better score (retrieval.py).
"""

from __future__ import annotations

import re

_LOWER = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "ђ": "đ", "е": "e", "ж": "ž", "з": "z",
    "и": "i", "ј": "j", "к": "k", "л": "l", "љ": "lj", "м": "m", "н": "n", "њ": "nj", "о": "o",
    "п": "p", "р": "r", "с": "s", "т": "t", "ћ": "ć", "у": "u", "ф": "f", "х": "h", "ц": "c",
    "ч": "č", "џ": "dž", "ш": "š",
    # Macedonian's own letters, as in its official romanisation.
    "ѓ": "gj", "ќ": "kj", "ѕ": "dz",
}  # fmt: skip
_TABLE = str.maketrans(
    {
        **_LOWER,
        **{c.upper(): (v[0].upper() + v[1:]) for c, v in _LOWER.items()},
    }
)
_CYRILLIC = re.compile("[\u0400-\u04ff]")


def latin_spelling(text: str) -> str | None:
    """`text` with Serbian and Macedonian Cyrillic letters in Latin; None when it has none."""
    if not _CYRILLIC.search(text):
        return None
    return text.translate(_TABLE)


def spellings(text: str) -> list[str]:
    """The spellings a question is searched in: itself, and its Latin form if it has one."""
    latin = latin_spelling(text)
    return [text] if latin is None or latin == text else [text, latin]
