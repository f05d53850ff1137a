"""The answer sentence and abstention, on a small real index with hits whose scores we set."""

from __future__ import annotations

import pytest

from embeddings import Encoder
from qa_service.corpus.chunking import Passage, PassageSplitter
from qa_service.corpus.documents import Document
from qa_service.index.build import index_documents
from qa_service.index.store import IndexData
from qa_service.query.answering import (
    ANSWER_PASSAGES,
    HIGHLIGHTED_PASSAGES,
    PASSAGE_WEIGHT,
    Answer,
    AnswerBuilder,
    Asked,
    content_terms,
)
from qa_service.query.retrieval import Hit

# Short sentences, so that 16 word pieces hold two of them: "lighthouse#0" and "lake#0" each
# hold two sentences, and only one of the two answers a given question.
DOCS = [
    Document(
        "lighthouse",
        "Gulls nest on the lighthouse. The lighthouse was built in 1887. Its lamp is electric. "
        "The keeper retired in 1990.",
    ),
    Document(
        "bakery",
        "The bakery opens at six. Its sourdough loaves sell out by noon. "
        "The owner trained in Lyon.",
    ),
    Document(
        "lake",
        "The lake freezes in January. Skaters gather on the ice. Fishermen drill holes for trout.",
    ),
]
BUILT = "When was the lighthouse built?"


@pytest.fixture(scope="module")
def index(encoder: Encoder) -> IndexData:
    return index_documents(DOCS, encoder, PassageSplitter(encoder, 16, 0), fingerprint="f")


@pytest.fixture(scope="module")
def builder(index: IndexData) -> AnswerBuilder:
    return AnswerBuilder(index)


def hit(index: IndexData, passage_id: str, score: float = 0.5, support: float = 0.5) -> Hit:
    """A hit on the indexed passage `passage_id`, with the scores we choose."""
    row = next(i for i, p in enumerate(index.passages) if p.id == passage_id)
    return Hit(index.passages[row], score, support, row=row)


def sentences(index: IndexData, passage: Passage) -> list[tuple[int, int]]:
    """The passage's sentences as offsets into its own text."""
    units = index.units[passage.document_id][passage.first_unit : passage.last_unit]
    return [(a - passage.start, b - passage.start) for a, b in units]


def ask(
    encoder: Encoder, builder: AnswerBuilder, question: str, hits: list[Hit], threshold: float = 0.3
) -> Answer:
    return builder.build(question, encoder.encode_queries([question]), hits, threshold)


def test_the_fixture_passages_hold_two_sentences(index: IndexData) -> None:
    # What the sentence-choice tests below rely on.
    for passage_id in ("lighthouse#0", "lake#0"):
        assert len(sentences(index, hit(index, passage_id).passage)) == 2


@pytest.mark.parametrize(
    ("offset", "answerable"), [(-1e-6, True), (0.0, True), (1e-6, False)]
)  # fmt: skip
def test_answerable_follows_the_first_hits_support(
    encoder: Encoder, builder: AnswerBuilder, index: IndexData, offset: float, answerable: bool
) -> None:
    support = 0.42
    hits = [hit(index, "lighthouse#0", 0.9, support), hit(index, "bakery#0", 0.2, 0.2)]
    answer = ask(encoder, builder, BUILT, hits, threshold=support + offset)
    assert answer.answerable is answerable
    assert (answer.answer_rank is not None) is answerable


def test_only_the_first_hits_support_counts(
    encoder: Encoder, builder: AnswerBuilder, index: IndexData
) -> None:
    # A later hit with high support does not make the question answerable.
    hits = [hit(index, "bakery#0", 0.3, support=0.1), hit(index, "lighthouse#0", 0.2, support=0.9)]
    assert not ask(encoder, builder, BUILT, hits, threshold=0.5).answerable


def test_an_abstention_has_no_answer_but_keeps_the_passages(
    encoder: Encoder, builder: AnswerBuilder, index: IndexData
) -> None:
    hits = [hit(index, "lighthouse#0", 0.4, 0.1), hit(index, "lake#0", 0.3, 0.1)]
    answer = ask(encoder, builder, BUILT, hits, threshold=0.5)
    assert not answer.answerable
    assert answer.answer_rank is None and answer.answer_text is None
    assert answer.question == BUILT
    assert [r.hit for r in answer.passages] == hits
    assert [r.rank for r in answer.passages] == [1, 2]
    # The passages are still highlighted for the reader.
    assert all(r.highlight is not None for r in answer.passages)


def test_no_hits_is_an_abstention(encoder: Encoder, builder: AnswerBuilder) -> None:
    answer = ask(encoder, builder, BUILT, [], threshold=0.0)
    assert not answer.answerable
    assert answer.passages == [] and answer.answer_rank is None and answer.answer_text is None


@pytest.mark.parametrize(
    "question", [BUILT, "Where do gulls nest?", "When does the bakery open?", "Who fishes?"]
)
def test_each_highlight_is_one_of_its_passages_sentences(
    encoder: Encoder, builder: AnswerBuilder, index: IndexData, question: str
) -> None:
    hits = [Hit(p, 0.5, 0.5, row=i) for i, p in enumerate(index.passages)]
    answer = ask(encoder, builder, question, hits)
    assert len(answer.passages) == len(index.passages)
    for ranked in answer.passages:
        highlight = ranked.highlight
        assert highlight is not None
        passage = ranked.hit.passage
        assert (highlight.start, highlight.end) in sentences(index, passage)
        assert 0 <= highlight.start < highlight.end <= len(passage.text)


@pytest.mark.parametrize(
    ("question", "passage_id", "expected"),
    [
        (BUILT, "lighthouse#0", "The lighthouse was built in 1887."),
        ("Where do gulls nest?", "lighthouse#0", "Gulls nest on the lighthouse."),
        ("When does the lake freeze?", "lake#0", "The lake freezes in January."),
        ("What do skaters do on the lake?", "lake#0", "Skaters gather on the ice."),
    ],
)
def test_the_answer_is_the_sentence_holding_the_fact(
    encoder: Encoder,
    builder: AnswerBuilder,
    index: IndexData,
    question: str,
    passage_id: str,
    expected: str,
) -> None:
    # Both sentences of the passage share the question's subject; only one answers it. The
    # passage ranks second, behind an unrelated one that scores a little higher.
    distractor = "bakery#1"
    hits = [hit(index, distractor, 0.60), hit(index, passage_id, 0.55), hit(index, "bakery#2", 0.5)]
    answer = ask(encoder, builder, question, hits)
    assert answer.answerable
    assert answer.answer_rank == 2
    assert answer.answer_text == expected


def test_answer_text_is_the_passage_sliced_by_the_highlight(
    encoder: Encoder, builder: AnswerBuilder, index: IndexData
) -> None:
    hits = [hit(index, "lake#0", 0.7), hit(index, "lighthouse#0", 0.6), hit(index, "bakery#0")]
    answer = ask(encoder, builder, BUILT, hits)
    assert answer.answer_rank is not None
    ranked = answer.passages[answer.answer_rank - 1]
    assert ranked.rank == answer.answer_rank
    assert ranked.highlight is not None
    passage = ranked.hit.passage
    text = passage.text[ranked.highlight.start : ranked.highlight.end]
    assert answer.answer_text == text
    # The same characters in the document: the offsets cite it exactly.
    document = index.documents[passage.document_id]
    start = passage.start + ranked.highlight.start
    assert document.text[start : start + len(text)] == text


def test_the_answer_comes_only_from_the_top_passages(
    encoder: Encoder, builder: AnswerBuilder, index: IndexData
) -> None:
    distractors = ["bakery#0", "bakery#1", "bakery#2", "lake#1"][:ANSWER_PASSAGES]
    assert len(distractors) == ANSWER_PASSAGES
    above = [hit(index, d, 0.50 - 0.01 * i) for i, d in enumerate(distractors)]
    low = hit(index, "lighthouse#0", 0.40)

    answer = ask(encoder, builder, BUILT, [*above, low])
    ranked = answer.passages[ANSWER_PASSAGES]
    assert ranked.hit == low and ranked.highlight is not None
    # The passage just below the cut holds the best sentence by far, and would win on the
    # combined score: it is still not taken.
    combined = [
        r.highlight.score + PASSAGE_WEIGHT * r.hit.score for r in answer.passages if r.highlight
    ]
    assert max(combined) == combined[ANSWER_PASSAGES]
    assert answer.answer_rank is not None and answer.answer_rank <= ANSWER_PASSAGES
    assert answer.answer_text != "The lighthouse was built in 1887."

    # One place higher, inside the cut, it is the answer.
    answer = ask(encoder, builder, BUILT, [*above[:-1], low, above[-1]])
    assert answer.answer_rank == ANSWER_PASSAGES
    assert answer.answer_text == "The lighthouse was built in 1887."


def test_the_passage_score_weighs_in_the_choice(
    encoder: Encoder, builder: AnswerBuilder, index: IndexData
) -> None:
    vectors = encoder.encode_queries([BUILT])
    asked = Asked.of(BUILT)
    best, weaker = hit(index, "lighthouse#0", 0.0), hit(index, "lighthouse#1", 0.0)
    best_sentence = builder.best_sentence(best.passage, vectors, asked)
    weaker_sentence = builder.best_sentence(weaker.passage, vectors, asked)
    assert best_sentence is not None and weaker_sentence is not None
    gap = best_sentence.score - weaker_sentence.score
    assert gap > 0.2

    # The weaker sentence's passage leads by a little less than the sentence gap is worth...
    lead = gap / PASSAGE_WEIGHT
    hits = [hit(index, "lighthouse#1", lead - 0.05), hit(index, "lighthouse#0", 0.0)]
    assert ask(encoder, builder, BUILT, hits).answer_rank == 2
    # ...or by a little more: then its sentence is the answer.
    hits = [hit(index, "lighthouse#1", lead + 0.05), hit(index, "lighthouse#0", 0.0)]
    answer = ask(encoder, builder, BUILT, hits)
    assert answer.answer_rank == 1
    assert answer.answer_text == weaker.passage.text[weaker_sentence.start : weaker_sentence.end]


def test_a_sentence_scores_with_the_best_spelling_of_the_question(
    encoder: Encoder, builder: AnswerBuilder, index: IndexData
) -> None:
    # Each row of the question vectors is one spelling; an unrelated row must not hurt.
    asked = Asked.of(BUILT)
    target = hit(index, "lighthouse#0")
    alone = builder.best_sentence(target.passage, encoder.encode_queries([BUILT]), asked)
    both = builder.best_sentence(
        target.passage, encoder.encode_queries(["bread and cakes", BUILT]), asked
    )
    assert alone is not None and both is not None
    assert (both.start, both.end) == (alone.start, alone.end)
    assert both.score == pytest.approx(alone.score, abs=1e-5)


def test_without_sentence_vectors_there_is_no_answer_sentence(encoder: Encoder) -> None:
    # Indexes built for benchmarks have no sentence vectors: the passages come back unhighlighted,
    # and an answerable question gets no answer sentence.
    bare = index_documents(
        DOCS[:1], encoder, PassageSplitter(encoder, 16, 0), fingerprint="f", sentence_vectors=False
    )
    assert bare.unit_vectors is None
    hits = [Hit(p, 0.9, 0.9, row=i) for i, p in enumerate(bare.passages)]
    answer = ask(encoder, AnswerBuilder(bare), BUILT, hits)
    assert answer.answerable
    assert all(r.highlight is None for r in answer.passages)
    assert answer.answer_rank is None and answer.answer_text is None


def test_only_the_first_passages_are_highlighted(
    encoder: Encoder, builder: AnswerBuilder, index: IndexData
) -> None:
    # Deeper evaluation runs ask for more passages than are highlighted.
    count = HIGHLIGHTED_PASSAGES + 2
    hits = [Hit(index.passages[i % len(index.passages)], 0.5, 0.5, row=i) for i in range(count)]
    answer = ask(encoder, builder, BUILT, hits)
    assert len(answer.passages) == count
    assert all(r.highlight is not None for r in answer.passages[:HIGHLIGHTED_PASSAGES])
    assert all(r.highlight is None for r in answer.passages[HIGHLIGHTED_PASSAGES:])


def test_content_terms_drop_stop_words_and_meet_other_forms_of_a_word() -> None:
    # Lower-cased, stemmed words without English stop words; figures stay.
    assert content_terms("What is the Capital of France, and who runs it in 2024?") == {
        "capit", "franc", "run", "2024",
    }  # fmt: skip
    assert content_terms("Who is it?") == set()
    asked = content_terms("Which girls were trafficked?")
    assert asked == content_terms("the trafficking of a girl") == {"girl", "traffick"}


def test_a_translated_question_is_matched_on_its_translation_too(
    encoder: Encoder, builder: AnswerBuilder, index: IndexData
) -> None:
    # Albanian, "What do the skaters do on the ice?": MiniLM reads little of it, and none of its
    # words is in the English sentences; the corpus words it was searched by are.
    question = "Çfarë bëjnë patinatorët mbi akull?"
    vectors = encoder.encode_queries([question])
    hits = [hit(index, "lake#0")]
    chosen = {
        translation: builder.build(question, vectors, hits, 0.3, translation=translation)
        for translation in (None, "skaters gather")
    }
    text = hits[0].passage.text
    highlights = {t: a.passages[0].highlight for t, a in chosen.items()}
    assert all(h is not None for h in highlights.values())
    spans = {t: text[h.start : h.end] for t, h in highlights.items() if h is not None}
    assert spans == {
        None: "The lake freezes in January.",
        "skaters gather": "Skaters gather on the ice.",
    }
    assert Asked.of(question, "skaters gather").terms == Asked.of(question).terms | {
        "skater",
        "gather",
    }
