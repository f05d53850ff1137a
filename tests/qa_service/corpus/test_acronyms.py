"""Acronym definitions found in documents, questions expanded with them, and what it changes."""

from __future__ import annotations

import json
from pathlib import Path

from embeddings import Encoder
from embeddings.files import file_sha256
from qa_service.corpus.acronyms import Acronyms, definitions
from qa_service.corpus.chunking import PassageSplitter
from qa_service.corpus.documents import Document
from qa_service.index.build import index_documents
from qa_service.index.store import current_generation, load_index, save_index
from qa_service.index.update import update_index
from qa_service.query.retrieval import Retriever, SearchQuery
from qa_service.service import QAService

GRETA = "Group of Experts on Action against Trafficking in Human Beings"
TEXT = (
    f"Reports from the CoE's {GRETA} (GRETA) highlight it. The United Nations Office on Drugs "
    "and Crime (UNODC) convened the Regional Expert Group Meeting (REGM) in 2023 (see annex). "
    "Figures rose (2022). A joint investigation team (JIT) was set up in Bosnia & Herzegovina "
    "(BiH). Something unrelated (ABC)."
)


def test_definitions_are_found_with_their_exact_long_form() -> None:
    assert definitions(TEXT) == [
        ("GRETA", GRETA),
        ("UNODC", "United Nations Office on Drugs and Crime"),
        ("REGM", "Regional Expert Group Meeting"),
        ("JIT", "joint investigation team"),
        ("BiH", "Bosnia & Herzegovina"),
    ]  # not "(see annex)", "(2022)", nor "(ABC)", whose letters the words before it lack


def test_a_question_about_an_acronym_is_expanded_and_a_longer_one_is_not() -> None:
    acronyms = Acronyms.from_definitions([definitions(TEXT)])
    assert acronyms.expand("What is GRETA?") == f"What is GRETA ({GRETA})?"
    assert acronyms.expand("Çfarë është GRETA?") == f"Çfarë është GRETA ({GRETA})?"
    assert acronyms.expand("What did UNODC say about GRETA?") == (
        f"What did UNODC (United Nations Office on Drugs and Crime) say about GRETA ({GRETA})?"
    )
    longer = "What did UNODC report about child trafficking in the region in 2023?"
    assert acronyms.expand(longer) == longer
    for unchanged in (f"What is GRETA ({GRETA})?", "What is greta?", "What is the WHO?"):
        assert acronyms.expand(unchanged) == unchanged


def test_the_most_frequent_long_form_wins() -> None:
    acronyms = Acronyms.from_definitions(
        [[("ART", "antiretroviral therapy")], [("ART", "assisted reproductive technology")] * 2]
    )
    assert acronyms.long_forms == {"ART": "assisted reproductive technology"}


def test_definitions_are_kept_with_the_index_and_follow_its_updates(
    tmp_path: Path, encoder: Encoder
) -> None:
    splitter = PassageSplitter(encoder, 32, 0)
    data = index_documents([Document("a", TEXT)], encoder, splitter, fingerprint="f")
    save_index(tmp_path, data)
    assert load_index(tmp_path).acronyms == {"a": definitions(TEXT)}

    other = Document("b", "The International Organization for Migration (IOM) trained them.")
    updated = update_index(data, encoder, splitter, remove=["a"], add=[other])
    assert updated.acronyms == {"b": [("IOM", "International Organization for Migration")]}

    # An index saved before definitions were kept: found again from the documents' text.
    documents = current_generation(tmp_path) / "documents.jsonl"
    rows = [json.loads(line) for line in documents.read_text().splitlines()]
    for row in rows:
        del row["acronyms"]
    documents.write_text("".join(json.dumps(row) + "\n" for row in rows))
    manifest_path = current_generation(tmp_path) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["documents.jsonl"] = file_sha256(documents)
    manifest_path.write_text(json.dumps(manifest))
    assert load_index(tmp_path).acronyms == {"a": definitions(TEXT)}


def test_what_is_greta_finds_the_passage_that_defines_it(service: QAService) -> None:
    question = "What is GRETA?"
    # Searched as asked, the passages that repeat "GRETA" most outrank the definition.
    vectors = service.encoder.encode_queries([question])
    retriever = Retriever(service.index)
    query = SearchQuery(question, vectors, retriever.lexical_coverage(question))
    (plain,) = retriever.retrieve([query], 5, "hybrid")
    assert f"{GRETA} (GRETA)" not in plain[0].passage.text

    answer = service.ask(question).answer
    assert answer.answerable
    assert f"{GRETA} (GRETA)" in answer.passages[0].hit.passage.text
    assert answer.answer_text is not None and f"{GRETA} (GRETA)" in answer.answer_text
    assert answer.question == question
