"""BM25 over a handful of sentences: the analyser, the absolute 0..1 score scale, the bound for
words the corpus lacks, and saving and rebuilding the index."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

from qa_service.corpus.words import WORD
from qa_service.index.lexical import Analyzer, LexicalIndex

# Every content word but "valley"/"valleys" occurs in one sentence only, so a question made of
# one sentence's own words reaches the best score each of its terms reaches anywhere.
TEXTS = [
    "Rivers flood the valley every spring after the snow melts.",
    "The harbour of Valletta shelters fishing boats.",
    "Glaciers carve deep valleys over thousands of years.",
    "Bees pollinate almond orchards in California.",
    "Article 7 b of the treaty was signed in 2024.",
]
RIVER, HARBOUR, GLACIER, BEES, TREATY = range(len(TEXTS))
# Words that occur in none of the sentences.
ABSENT = "quantum chromodynamics lattice"
QUESTIONS = [
    "When do rivers flood the valley?",
    "valley",
    "Which boats shelter in the harbour of Valletta?",
    "almond harbour",
    "What does article 7 b of the treaty say?",
    f"{ABSENT} valley",
    "Were the glaciers carving valleys for years?",
]


@pytest.fixture(scope="module")
def index() -> LexicalIndex:
    return LexicalIndex.build(TEXTS)


def test_analyser_lower_cases_drops_stop_words_and_stems() -> None:
    assert Analyzer().terms("The Rivers were FLOODING the valleys") == ["river", "flood", "valley"]


def test_analyser_keeps_digits_and_single_letters() -> None:
    # Figures and case codes are what lexical search is for; only stop-word letters ("a") go.
    assert Analyzer().terms("Article 7 b of case X-12, a 2024 ruling") == [
        "articl", "7", "b", "case", "x", "12", "2024", "rule",
    ]  # fmt: skip


def test_analyser_of_stop_words_alone_is_empty() -> None:
    assert Analyzer().terms("What is it that they have been doing?") == []


def test_scores_lie_on_zero_to_one(index: LexicalIndex) -> None:
    for question in QUESTIONS:
        scores = index.scores(question)
        assert scores.shape == (index.size,) == (len(TEXTS),)
        assert scores.dtype == np.float32
        assert (scores >= 0).all() and (scores <= 1 + 1e-6).all(), question


def test_a_passage_holding_every_term_at_its_best_scores_one(index: LexicalIndex) -> None:
    # Each of these terms occurs in one passage only, so that passage reaches every term's best.
    scores = index.scores("Which boats shelter in the harbour of Valletta?")
    assert scores[HARBOUR] == pytest.approx(1.0, abs=1e-6)
    assert np.count_nonzero(scores) == 1  # the others share no term with the question
    assert index.scores("almond bees")[BEES] == pytest.approx(1.0, abs=1e-6)


def test_terms_found_in_different_passages_share_the_scale(index: LexicalIndex) -> None:
    # "almond" is only in one passage and "harbour" only in another: each passage scores its
    # term's share of the bound, neither reaches 1, and together they make it up exactly.
    scores = index.scores("almond harbour")
    assert 0 < scores[BEES] < 1 and 0 < scores[HARBOUR] < 1
    assert scores[BEES] + scores[HARBOUR] == pytest.approx(1.0, abs=1e-6)
    assert scores[RIVER] == scores[GLACIER] == scores[TREATY] == 0


def test_a_term_in_several_passages_ranks_them_below_the_best(index: LexicalIndex) -> None:
    scores = index.scores("valley")
    assert scores[RIVER] > 0 and scores[GLACIER] > 0  # "valleys" stems to the same term
    assert max(scores[RIVER], scores[GLACIER]) == pytest.approx(1.0, abs=1e-6)
    assert scores[HARBOUR] == scores[BEES] == scores[TREATY] == 0


def test_an_absent_term_counts_at_the_highest_term_weight(index: LexicalIndex) -> None:
    # The bound of one absent word equals the largest bound of any single known word.
    known_words = {w for text in TEXTS for w in WORD.findall(text)}
    highest = max(index.query_ids(word)[1] for word in known_words)
    assert highest > 0
    assert index.query_ids("zyzzyva")[1] == pytest.approx(highest)
    # And each absent word adds it to the bound of a question.
    with_absent = index.query_ids(f"{ABSENT} valley")[1]
    assert with_absent == pytest.approx(index.query_ids("valley")[1] + 3 * highest)


def test_mostly_absent_words_cannot_score_high_on_one_common_word(index: LexicalIndex) -> None:
    alone = index.scores("valley")
    diluted = index.scores(f"{ABSENT} valley")
    assert alone.max() == pytest.approx(1.0, abs=1e-6)
    # One known term out of four distinct terms, each absent one weighing at least as much as
    # any known term could: at most a quarter of the scale.
    assert 0 < diluted.max() <= 0.25 + 1e-6
    # Same ranking, lower level.
    assert list(np.argsort(-diluted, kind="stable")) == list(np.argsort(-alone, kind="stable"))


def test_a_question_without_known_terms_scores_zero(index: LexicalIndex) -> None:
    for question in [ABSENT, "What is it that they have been doing?", "", "?!"]:
        scores = index.scores(question)
        assert scores.shape == (index.size,)
        assert not scores.any(), question


def test_query_ids_report_the_known_terms_once(index: LexicalIndex) -> None:
    ids, bound = index.query_ids(f"Rivers {ABSENT} flood")
    assert len(ids) == len(set(ids)) == 2  # "river" and "flood"; the absent words are not ids
    assert bound > 0
    # Repeated words and their inflections are one term, counted once in the bound.
    assert index.query_ids("valley Valleys VALLEY") == index.query_ids("valley")
    assert len(index.query_ids("valley")[0]) == 1
    # Stop words are neither ids nor bound.
    assert index.query_ids("the of which") == ([], 0.0)
    # Different terms have different ids.
    assert set(index.query_ids("river")[0]).isdisjoint(index.query_ids("flood")[0])


def test_save_and_load_keep_the_scores(index: LexicalIndex, tmp_path: Path) -> None:
    index.save(tmp_path)
    loaded = LexicalIndex.load(tmp_path)
    assert loaded.size == index.size
    for question in [*QUESTIONS, ABSENT, "zyzzyva"]:
        assert loaded.query_ids(question) == index.query_ids(question)
        np.testing.assert_array_equal(loaded.scores(question), index.scores(question))


def test_from_terms_equals_build_on_the_same_texts(index: LexicalIndex) -> None:
    analyzer = Analyzer()
    rebuilt = LexicalIndex.from_terms([analyzer.terms(text) for text in TEXTS])
    assert rebuilt.size == index.size
    for question in [*QUESTIONS, ABSENT]:
        assert rebuilt.query_ids(question) == index.query_ids(question)
        np.testing.assert_array_equal(rebuilt.scores(question), index.scores(question))


def test_a_passage_of_stop_words_only_is_indexed_and_never_matches() -> None:
    index = LexicalIndex.build(["It is what it is.", "Rivers flood."])
    assert index.size == 2
    scores = index.scores("rivers")
    assert scores[0] == 0 and scores[1] == pytest.approx(1.0, abs=1e-6)


def test_a_collection_of_stop_words_only_builds_an_index_that_matches_nothing(
    tmp_path: Path,
) -> None:
    """bm25s cannot index a corpus without a single term; such a collection is still served
    (by its vectors), and its lexical scores are all zero, saved or not."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index = LexicalIndex.build(["It is what it is.", "And then, of the ..."])
    assert index.size == 2
    for question in ("what is it", "rivers", ""):
        assert index.query_ids(question)[0] == []
        np.testing.assert_array_equal(index.scores(question), [0, 0])
    index.save(tmp_path)
    np.testing.assert_array_equal(LexicalIndex.load(tmp_path).scores("rivers"), [0, 0])


def test_building_logs_nothing_below_warning(caplog: pytest.LogCaptureFixture) -> None:
    """bm25s sets its logger to DEBUG itself; a server's INFO log must not get a line per build."""
    with caplog.at_level(logging.INFO):
        LexicalIndex.build(["Rivers flow to the sea.", "Mountains are high."])
    assert not [r for r in caplog.records if r.name.startswith("bm25s")]
