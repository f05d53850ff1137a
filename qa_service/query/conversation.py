"""A conversation to one retrieval query: a follow-up borrows its subject from earlier questions.

No generative model ships with the service, so "How many people attended it?" cannot be
rewritten into a standalone question. Instead a follow-up is searched together with the user's
earlier questions back to the last one that stood on its own. The query is returned to the
client, so what was searched is always visible.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Role = Literal["user", "assistant"]

# Words that point back to something said before. "that" and "there" are left out: they are
# far more often a conjunction or "are there" than a reference.
_REFERRING = frozenset({
    "it", "its", "they", "them", "their", "theirs", "he", "him", "his", "she", "her", "hers",
    "this", "these", "those", "such",
})  # fmt: skip
_CONTINUATIONS = ("and ", "but ", "also ", "what about ", "how about ", "what else", "who else")
_WORD = re.compile(r"\w+")
# Earlier questions joined to a follow-up, at most: older ones drift off the subject.
MAX_CONTEXT_QUESTIONS = 2


@dataclass(frozen=True)
class Turn:
    role: Role
    content: str


def is_follow_up(question: str) -> bool:
    """Whether the question needs the conversation to be understood."""
    text = question.strip().lower()
    return text.startswith(_CONTINUATIONS) or any(
        word in _REFERRING for word in _WORD.findall(text)
    )


def retrieval_query(turns: Sequence[Turn]) -> str:
    """The text to search for the last user turn, given the turns before it."""
    questions = [t.content.strip() for t in turns if t.role == "user"]
    if not questions:
        raise ValueError("a conversation needs at least one user message")
    query = [questions[-1]]
    for earlier in reversed(questions[:-1]):
        if not is_follow_up(query[0]) or len(query) > MAX_CONTEXT_QUESTIONS:
            break
        query.insert(0, earlier)
    return " ".join(query)
