"""The kind of answer a question asks for, and whether a sentence holds one.

"How many people attended it?" is answered by a sentence with a number in it, however close in
meaning a sentence without one is ("They have since begun attending school."). Two kinds only,
those that a pattern finds reliably: quantities and times, asked in English or in the languages
of the default corpus's readers (Albanian, Bosnian/Croatian/Serbian in either script,
Macedonian). A question in another language, or of another kind, expects none, and its sentences
are scored as before. The sentences are the documents' (English): numbers and dates in them.
"""

from __future__ import annotations

import re
from typing import Literal

AnswerKind = Literal["quantity", "time"]

# A clitic BCS and Macedonian put between "which" and its noun ("Koje je godine…").
_CLITIC = r"(?: (?:je|su|se|li|će|ће|је|су|се|ли|е|се))?"
_QUANTITY_QUESTION = re.compile(
    r"\bhow (?:many|much)\b|\b(?:what|which) (?:number|percentage|percent|proportion|share|amount"
    r"|total)\b"
    # Albanian "sa", BCS "koliko/koliki…" (and in Cyrillic), Macedonian "колку/колкав…", opening
    # the question: inside one "sa" is also "as much as". And "what share/percentage/number".
    r"|^\W*(?:sa|kolik\w*|колик\w*|колку\w*|колкав\w*)\b"
    r"|\b(?:çfarë|cil\w*) (?:pjes\w*|përqind\w*|numr\w*)"
    r"|\b(?:koj\w*|кој\w*)" + _CLITIC + r" (?:udio|udjel\w*|udeo|postot\w*|procen\w*|broj\w*"
    r"|удео|удио|удел\w*|дел|постот\w*|процен\w*|број\w*)",
    re.IGNORECASE,
)
_TIME_QUESTION = re.compile(
    r"^\W*when\b|\b(?:what|which) (?:year|month|day|date|century|decade)\b|\bsince when\b"
    # "when" opening the question (Albanian, BCS, Serbian Cyrillic, Macedonian), and "which
    # year/month/date" (BCS and Macedonian "koje godine/која година", Albanian "cilin vit").
    r"|^\W*(?:kur|kada|kad|када|кад|кога)\b"
    r"|\b(?:koj\w*|кој\w*)" + _CLITIC + r" (?:godin\w*|годин\w*|mjesec\w*|mesec\w*|месец\w*"
    r"|datum\w*|датум\w*)"
    r"|\bcil\w* (?:vit\w*|muaj\w*|dat\w*)",
    re.IGNORECASE,
)
# A figure that is not a year (1500-2099), a number word ("one" is left out: far more often a
# pronoun), or a percent sign.
_NUMBER_WORDS = (
    "two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen"
    "|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety"
    "|hundreds?|thousands?|millions?|billions?|dozens?|half|third|quarter"
)
_QUANTITY = re.compile(
    r"(?<![\d,.])(?!(?:1[5-9]|20)\d\d(?!\d))\d[\d,.]*|\b(?i:" + _NUMBER_WORDS + r")\b|%"
)
# A year, a month (capitalised: "may" is mostly the verb) or a century.
_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_TIME = re.compile(r"\b(?:1[5-9]\d\d|20\d\d)s?\b|\b(?:" + _MONTHS + r")\b|\b(?i:centur(?:y|ies))\b")


def expected_kind(question: str) -> AnswerKind | None:
    if _QUANTITY_QUESTION.search(question):
        return "quantity"
    if _TIME_QUESTION.search(question):
        return "time"
    return None


def holds(text: str, kind: AnswerKind) -> bool:
    """Whether `text` holds something of that kind (not that it is the right one)."""
    return (_QUANTITY if kind == "quantity" else _TIME).search(text) is not None
