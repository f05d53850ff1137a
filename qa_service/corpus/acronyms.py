"""Acronyms the documents define, and questions searched with them spelled out.

Reports in this field name bodies by their initials once spelled out ("the Group of Experts on
Action against Trafficking in Human Beings (GRETA)") and by the initials alone after that. A
question such as "What is GRETA?" then matches best the passages that repeat GRETA most, not
the one that says what it is. Searching for "What is GRETA (Group of Experts on Action against
Trafficking in Human Beings)?" ranks the defining passage first. The definitions come from the
documents themselves, found with the algorithm of Schwartz and Hearst (2003): a short form in
parentheses whose letters occur in order in the words before it, the first one starting a word.

Only questions about the acronyms they use are expanded: where acronyms are at least a third of
the content words. In a longer question the other words carry the meaning and the long forms
only dilute them (measured on SciFact's claims, full of acronyms: nDCG@10 0.7211 without
expansion, 0.7149 expanding every defined acronym, 0.7209 with this rule).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable

from qa_service.corpus.words import STOPWORDS, WORD

# "(GRETA)", "(CoE)", "(REGM)": a short form of 2 to 10 letters, digits or hyphens, starting with
# a letter and holding at least two capitals, directly after the words it abbreviates.
_SHORT_FORM = re.compile(r"\(([A-Za-z][\w\-]{1,9})\)")
# A long form does not reach back over a sentence end, a clause break or another parenthesis.
_BOUNDARY = re.compile(r"[.;:!?()\[\]\n]")
_LONG_WORD = re.compile(r"\w[\w\-]*")
# Expand a question when at least this share of its content words are defined acronyms.
MIN_ACRONYM_SHARE = 1 / 3

Definition = tuple[str, str]  # (short form, long form)


def _long_form(short: str, before: str) -> str | None:
    """The words at the end of `before` that `short` abbreviates (Schwartz and Hearst's
    `findBestLongForm`), or None."""
    s, position = len(short) - 1, len(before) - 1
    while s >= 0:
        letter = short[s].lower()
        if not letter.isalnum():
            s -= 1
            continue
        # The first letter of the short form must start a word of the long form.
        while position >= 0 and (
            before[position].lower() != letter
            or (s == 0 and position > 0 and before[position - 1].isalnum())
        ):
            position -= 1
        if position < 0:
            return None
        position -= 1
        s -= 1
    start = before.rfind(" ", 0, position + 1) + 1
    return before[start:].strip()


def definitions(text: str) -> list[Definition]:
    """The acronyms `text` defines, in order of appearance."""
    found = []
    for match in _SHORT_FORM.finditer(text):
        short = match.group(1)
        if sum(c.isupper() for c in short) < 2:
            continue
        window = text[max(0, match.start() - 300) : match.start()]
        breaks = list(_BOUNDARY.finditer(window))
        words = list(_LONG_WORD.finditer(window, breaks[-1].end() if breaks else 0))
        # At most min(|A| + 5, 2|A|) words before it, as in the original algorithm.
        words = words[-min(len(short) + 5, 2 * len(short)) :]
        if not words:
            continue
        long = _long_form(short, window[words[0].start() :].rstrip())
        if long and short not in long and len(_LONG_WORD.findall(long)) > 1:
            found.append((short, " ".join(long.split())))
    return found


class Acronyms:
    """The acronyms a corpus defines, each with the long form its documents give most often."""

    def __init__(self, long_forms: dict[str, str]) -> None:
        self.long_forms = long_forms

    @classmethod
    def from_definitions(cls, per_document: Iterable[Iterable[Definition]]) -> Acronyms:
        seen: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for document in per_document:
            for short, long in document:
                seen[short][long] += 1
        # The most frequent long form, ties broken by the form itself: the same from any order of
        # documents (shards see theirs in another order than one index).
        return cls(
            {short: min(forms, key=lambda f: (-forms[f], f)) for short, forms in seen.items()}
        )

    def expand(self, question: str) -> str:
        """`question` with each defined acronym it uses followed by its long form in
        parentheses, where the question is about them (`MIN_ACRONYM_SHARE`) and does not spell
        them out already; otherwise `question` itself."""
        content = [w for w in WORD.findall(question) if w.lower() not in STOPWORDS]
        named = {w for w in content if w in self.long_forms}
        if not named or sum(w in named for w in content) < MIN_ACRONYM_SHARE * len(content):
            return question
        folded = question.casefold()
        todo = {w for w in named if self.long_forms[w].casefold() not in folded}

        def spelled_out(match: re.Match[str]) -> str:
            word = match.group()
            if word not in todo:
                return word
            todo.discard(word)  # the first use only
            return f"{word} ({self.long_forms[word]})"

        return WORD.sub(spelled_out, question)
