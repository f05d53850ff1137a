"""Evaluation data: JSON Lines question sets, BEIR folders and SQuAD (v1.1 and v2.0) files.

Every loader checks its input line by line, so a broken file fails with the file and line to fix
rather than a traceback from deep inside the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embeddings.files import file_sha256
from qa_service.corpus.documents import Document

BEIR_FILES = ("corpus.jsonl", "queries.jsonl")


class EvaluationDataError(ValueError):
    """An evaluation file cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    answers: tuple[str, ...] = ()
    documents: tuple[str, ...] = ()
    unanswerable: bool = False
    language: str | None = None  # a question set's optional tag; reports break metrics down by it


@dataclass(frozen=True)
class QuestionSet:
    """Questions to ask the configured corpus; relevance is decided per passage at run time."""

    name: str
    questions: list[Question]


@dataclass(frozen=True)
class Benchmark:
    """A corpus with its own questions and graded document relevance (BEIR layout in memory).

    `fingerprint` identifies the corpus file, so a cached index is reused only for the same data.
    """

    name: str
    documents: list[Document]
    questions: list[Question]
    qrels: dict[str, dict[str, int]]
    fingerprint: str
    split: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line, or an error naming the bad line."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise EvaluationDataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EvaluationDataError(
                        f"{path}, line {number}: invalid JSON: {exc.msg} (column {exc.colno})"
                    ) from None
                if not isinstance(row, dict):
                    raise EvaluationDataError(
                        f"{path}, line {number}: expected a JSON object, got {type(row).__name__}"
                    )
                yield number, row
        except UnicodeDecodeError as exc:
            raise EvaluationDataError(f"{path}: not valid UTF-8 (byte {exc.start})") from None


def _string_list(value: Any, name: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EvaluationDataError(f"{where}: `{name}` must be a list of strings")
    return tuple(value)


def load_question_set(path: Path) -> QuestionSet:
    """A JSON Lines file of `{"id", "question", "answers", "documents", "unanswerable"}`, with
    an optional `language` tag; other fields are ignored."""
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for number, row in _json_lines(path):
        where = f"{path}, line {number}"
        text = row.get("question")
        if text is None:
            raise EvaluationDataError(f"{where}: missing `question`")
        if not isinstance(text, str) or not text.strip():
            raise EvaluationDataError(f"{where}: `question` must be a non-empty string")
        qid = row.get("id", f"line-{number}")
        if not isinstance(qid, str | int) or isinstance(qid, bool):
            raise EvaluationDataError(f"{where}: `id` must be a string")
        qid = str(qid)
        if qid in seen:
            raise EvaluationDataError(f"{where}: id {qid!r} already used on line {seen[qid]}")
        seen[qid] = number
        unanswerable = row.get("unanswerable", False)
        if not isinstance(unanswerable, bool):
            raise EvaluationDataError(f"{where}: `unanswerable` must be true or false")
        answers = _string_list(row.get("answers"), "answers", where)
        documents = _string_list(row.get("documents"), "documents", where)
        if unanswerable and (answers or documents):
            raise EvaluationDataError(
                f"{where}: an unanswerable question cannot have `answers` or `documents`"
            )
        language = row.get("language")
        if language is not None and (not isinstance(language, str) or not language.strip()):
            raise EvaluationDataError(f"{where}: `language` must be a non-empty string")
        questions.append(Question(qid, text, answers, documents, unanswerable, language))
    if not questions:
        raise EvaluationDataError(f"{path}: no questions")
    return QuestionSet(path.stem, questions)


def beir_document(doc_id: str, title: str, text: str, joiner: str = " ") -> Document:
    """MTEB's document text: title and text joined (by a space), so both are retrievable."""
    return Document(id=doc_id, text=joiner.join(p for p in (title, text) if p).strip(),
                    title=title or None)  # fmt: skip


def available_splits(folder: Path) -> list[str]:
    return sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))


def load_beir(folder: Path, split: str = "test", joiner: str = " ") -> Benchmark:
    """A BEIR folder: corpus.jsonl, queries.jsonl and qrels/<split>.tsv.

    Only queries with at least one judged document are evaluated, as in BEIR and MTEB.
    """
    for name in BEIR_FILES:
        if not (folder / name).is_file():
            raise EvaluationDataError(f"{folder} is not a BEIR folder: {name} is missing")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = available_splits(folder)
        have = ", ".join(splits) if splits else "none"
        raise EvaluationDataError(
            f"{folder}: no qrels for split {split!r} ({qrels_path} is missing); "
            f"splits available: {have}"
        )
    corpus_path = folder / "corpus.jsonl"
    documents: list[Document] = []
    doc_ids: set[str] = set()
    for number, row in _json_lines(corpus_path):
        where = f"{corpus_path}, line {number}"
        doc_id, title, text = row.get("_id"), row.get("title") or "", row.get("text")
        if not isinstance(doc_id, str | int) or isinstance(doc_id, bool):
            raise EvaluationDataError(f"{where}: missing or invalid `_id`")
        if not isinstance(text, str) or not isinstance(title, str):
            raise EvaluationDataError(f"{where}: `text` and `title` must be strings")
        doc_id = str(doc_id)
        if doc_id in doc_ids:
            raise EvaluationDataError(f"{where}: duplicate document id {doc_id!r}")
        doc_ids.add(doc_id)
        documents.append(beir_document(doc_id, title, text, joiner))

    queries_path = folder / "queries.jsonl"
    texts: dict[str, str] = {}
    for number, row in _json_lines(queries_path):
        where = f"{queries_path}, line {number}"
        qid, text = row.get("_id"), row.get("text")
        if not isinstance(qid, str | int) or isinstance(qid, bool):
            raise EvaluationDataError(f"{where}: missing or invalid `_id`")
        if not isinstance(text, str) or not text.strip():
            raise EvaluationDataError(f"{where}: `text` must be a non-empty string")
        texts[str(qid)] = text

    qrels = load_qrels(qrels_path, set(texts), doc_ids)
    questions = [Question(qid, texts[qid]) for qid in texts if qid in qrels]
    if not questions:
        raise EvaluationDataError(f"{qrels_path}: no query has a relevant document")
    return Benchmark(
        name=folder.name, documents=documents, questions=questions, qrels=qrels,
        fingerprint=file_sha256(corpus_path), split=split,
    )  # fmt: skip


def load_qrels(path: Path, query_ids: set[str], doc_ids: set[str]) -> dict[str, dict[str, int]]:
    """query id -> document id -> graded relevance; ids must exist in the queries and corpus."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.rstrip("\n").split("\t")
            if not line.strip() or (number == 1 and fields[0] == "query-id"):
                continue
            where = f"{path}, line {number}"
            if len(fields) != 3:
                raise EvaluationDataError(
                    f"{where}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                    f"got {len(fields)}"
                )
            qid, doc_id, score = fields
            if qid not in query_ids:
                raise EvaluationDataError(f"{where}: unknown query id {qid!r}")
            if doc_id not in doc_ids:
                raise EvaluationDataError(f"{where}: unknown corpus id {doc_id!r}")
            try:
                relevance = int(score)
            except ValueError:
                raise EvaluationDataError(f"{where}: score {score!r} is not an integer") from None
            if relevance > 0:
                qrels.setdefault(qid, {})[doc_id] = relevance
    return qrels


def load_squad(path: Path) -> Benchmark:
    """SQuAD as passage retrieval: every paragraph a document, its questions relevant to it.

    The gold answer texts are kept, so the answer can be checked as well. A SQuAD 2.0 question
    marked `is_impossible` is unanswerable: no gold answer (its `plausible_answers` are what a
    wrong answer would look like, not answers) and no relevant paragraph, so it counts in the
    answer and abstention figures and not in the retrieval metrics.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        articles = data["data"]
        documents: list[Document] = []
        questions: list[Question] = []
        qrels: dict[str, dict[str, int]] = {}
        doc_ids: set[str] = set()
        seen: set[str] = set()
        for a, article in enumerate(articles):
            title = str(article.get("title", f"article-{a}"))
            for p, paragraph in enumerate(article["paragraphs"]):
                doc_id = f"{title}/{p}"
                where = f"{path}: article {a} ({title!r}), paragraph {p}"
                context = paragraph["context"]
                if not isinstance(context, str) or not context.strip():
                    raise EvaluationDataError(f"{where}: `context` must be non-empty text")
                if doc_id in doc_ids:
                    raise EvaluationDataError(f"{where}: article title used twice")
                doc_ids.add(doc_id)
                documents.append(Document(id=doc_id, text=context, title=title))
                for qa in paragraph["qas"]:
                    qid, question = str(qa["id"]), qa["question"]
                    if not isinstance(question, str) or not question.strip():
                        raise EvaluationDataError(f"{where}: question {qid!r} has no text")
                    if qid in seen:
                        raise EvaluationDataError(f"{where}: question id {qid!r} used twice")
                    seen.add(qid)
                    impossible = qa.get("is_impossible", False)
                    if not isinstance(impossible, bool):
                        raise EvaluationDataError(
                            f"{where}: question {qid!r}: `is_impossible` must be true or false"
                        )
                    answers = tuple(dict.fromkeys(str(x["text"]) for x in qa["answers"]))
                    if impossible and answers:
                        raise EvaluationDataError(
                            f"{where}: question {qid!r} is marked `is_impossible` but has answers"
                        )
                    questions.append(Question(qid, question, answers, unanswerable=impossible))
                    if not impossible:
                        qrels[qid] = {doc_id: 1}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvaluationDataError(f"cannot read {path}: {exc}") from exc
    except KeyError as exc:
        raise EvaluationDataError(
            f"{path} is not in SQuAD format (data/paragraphs/qas): missing {exc}"
        ) from exc
    except (TypeError, AttributeError) as exc:
        raise EvaluationDataError(
            f"{path} is not in SQuAD format (data/paragraphs/qas): a value of the wrong "
            f"type ({exc})"
        ) from exc
    if not questions:
        raise EvaluationDataError(f"{path}: no questions")
    return Benchmark(
        name=path.stem, documents=documents, questions=questions, qrels=qrels,
        fingerprint=file_sha256(path), info={"format": f"SQuAD {data.get('version', '?')}"},
    )  # fmt: skip


def is_squad_file(path: Path) -> bool:
    """A `.json` file (not JSON Lines) is taken as SQuAD; question sets are `.jsonl`."""
    return path.is_file() and path.suffix.lower() == ".json"
