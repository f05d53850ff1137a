"""Words as every stage reads them: BM25's analyser, acronym definitions, the answer sentence's
word overlap and the lexicon all split text and drop stop words the same way."""

from __future__ import annotations

import re

from bm25s.stopwords import STOPWORDS_EN_PLUS

WORD = re.compile(r"\w+")
STOPWORDS = frozenset(STOPWORDS_EN_PLUS)
