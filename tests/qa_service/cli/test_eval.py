"""`qa eval` end to end with the real model: a tiny BEIR folder, a question set, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from embeddings import Encoder
from qa_service.cli import app
from qa_service.config import Settings
from qa_service.evaluation.datasets import EvaluationDataError, load_beir, load_question_set
from qa_service.evaluation.metrics import query_metrics
from qa_service.evaluation.runner import contains_answer, normalize
from qa_service.service import QAService
from tests.conftest import DEV_QUESTIONS

# fmt: off
DOCS = {
    "volcano": ("Volcanoes", "A volcano is a rupture in the crust of a planet where lava, ash and "
                "gases escape. Mount Etna in Sicily is one of the most active volcanoes."),
    "bees": ("Honey bees", "Honey bees live in colonies with a single queen. Worker bees collect "
             "nectar and pollen and turn nectar into honey."),
    "chess": ("Chess", "Chess is a board game for two players. Each player starts with sixteen "
              "pieces, and the goal is to checkmate the opposing king."),
    "bread": ("Sourdough", "Sourdough bread is leavened by wild yeast and lactic acid bacteria. "
              "The starter is fed with flour and water every day."),
    "tides": ("Tides", "Tides are the rise and fall of sea levels caused by the gravity of the "
              "Moon and the Sun acting on the oceans."),
    "python": ("Python", "Python is a programming language created by Guido van Rossum. It "
               "emphasises readable code and has a large standard library."),
    "violin": ("Violin", "The violin is a string instrument played with a bow. It has four "
               "strings tuned in perfect fifths."),
    "malaria": ("Malaria", "Malaria is a disease caused by Plasmodium parasites and spread by "
                "the bites of infected Anopheles mosquitoes."),
    "bridge": ("Golden Gate", "The Golden Gate Bridge is a suspension bridge in San Francisco, "
               "opened in 1937 and painted in international orange."),
    "coffee": ("Coffee", "Coffee is brewed from roasted coffee beans, the seeds of berries from "
               "the Coffea plant, and contains caffeine."),
}
QUERIES = {
    "q1": "Which insects make honey?",
    "q2": "What causes ocean tides?",
    "q3": "Who created the Python programming language?",
    "q4": "How is malaria transmitted?",
    "q5": "When did the Golden Gate Bridge open?",
}
# fmt: on
QRELS = [
    ("q1", "bees", 1),
    ("q2", "tides", 2),
    ("q2", "volcano", 0),
    ("q3", "python", 1),
    ("q4", "malaria", 1),
    ("q5", "bridge", 1),
]  # fmt: skip

runner = CliRunner()


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("beir") / "tiny"
    (folder / "qrels").mkdir(parents=True)
    _write_jsonl(
        folder / "corpus.jsonl",
        [{"_id": k, "title": t, "text": x} for k, (t, x) in DOCS.items()],
    )
    _write_jsonl(folder / "queries.jsonl", [{"_id": k, "text": v} for k, v in QUERIES.items()])
    lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{s}" for q, d, s in QRELS)]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _eval(*args: str | Path) -> Result:
    return runner.invoke(app, ["eval", *map(str, args)])


def _fails_with(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    message = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in message, message


def test_beir_folder_end_to_end(beir: Path, tmp_path: Path, encoder: Encoder) -> None:
    cache, out = tmp_path / "cache", tmp_path / "out"
    result = _eval(beir, "--output", out, "--cache-dir", cache, "--index-dir", tmp_path / "i")
    assert result.exit_code == 0, result.output
    assert "ndcg@10" in result.output

    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "benchmark"
    assert report["counts"]["questions"] == 5
    assert report["counts"]["documents"] == 10
    assert report["settings"]["split"] == "test"
    assert report["settings"]["index_cached"] is False
    # Every query is easy: the relevant abstract is ranked first.
    assert report["metrics"]["accuracy@1"] == 1.0
    assert report["metrics"]["ndcg@10"] == pytest.approx(1.0)
    assert report["metrics"]["recall@100"] == 1.0
    assert set(report["latency"]) >= {"p50_ms", "p95_ms", "questions_per_second"}

    rows = [json.loads(line) for line in (out / "per_question.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(QUERIES)
    qrels = {q: {d: s} for q, d, s in QRELS if s > 0}
    for row in rows:
        # Document ids, each once, best first, all 10 ranked.
        assert sorted(row["retrieved"]) == sorted(DOCS)
        assert row["scores"] == sorted(row["scores"], reverse=True)
        assert row["first_relevant_rank"] == 1
        assert row["metrics"] == pytest.approx(query_metrics(row["retrieved"], qrels[row["id"]]))

    page = (out / "report.html").read_text()
    assert page.count("<svg") == 2
    # One inline script (the table's sorting), nothing loaded from elsewhere.
    assert page.count("<script>") == 1 and "src=" not in page and "href=" not in page
    assert all(f"<td>{q}</td>" in page for q in QUERIES)  # a table row per question

    # The second run reuses the cached index and gives the same numbers.
    again = _eval(beir, "--json", "--cache-dir", cache, "--index-dir", tmp_path / "i")
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert data["settings"]["index_cached"] is True
    assert data["metrics"] == pytest.approx(report["metrics"])


def test_whole_documents_and_compare(beir: Path, tmp_path: Path, encoder: Encoder) -> None:
    common = ("--cache-dir", tmp_path / "cache", "--index-dir", tmp_path / "i")
    whole = _eval(beir, "--whole-documents", "--top-k", "3", "--output", tmp_path / "a", *common)
    assert whole.exit_code == 0, whole.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["settings"]["splitter"] == "WholeDocumentSplitter"
    assert report["counts"]["passages"] == 10
    rows = (tmp_path / "a" / "per_question.jsonl").read_text().splitlines()
    assert all(len(json.loads(r)["retrieved"]) == 3 for r in rows)
    # With three documents ranked, recall@100 can only count what was retrieved.
    assert any("fewer than 100 documents" in n for n in report["notes"])

    passages = _eval(beir, "--output", tmp_path / "b", *common)
    assert passages.exit_code == 0, passages.output
    compared = _eval("--compare", tmp_path / "a" / "report.json", tmp_path / "b", "--json")
    assert compared.exit_code == 0, compared.output
    data = json.loads(compared.stdout)
    assert data["settings_differ"]["splitter"] == {
        "a": "WholeDocumentSplitter",
        "b": "PassageSplitter",
    }
    assert data["rows"]["ndcg@10"]["diff"] == pytest.approx(
        data["rows"]["ndcg@10"]["b"] - data["rows"]["ndcg@10"]["a"]
    )
    table = _eval("--compare", tmp_path / "a", tmp_path / "b")
    assert table.exit_code == 0 and "B − A" in table.output


def test_question_set_against_the_corpus(
    settings: Settings, service: QAService, tmp_path: Path, dev_questions: list[dict[str, Any]]
) -> None:
    flags = ("--corpus-dir", settings.corpus_dir, "--index-dir", settings.index_dir)
    result = _eval(DEV_QUESTIONS, "--json", "--output", tmp_path / "out", *flags)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "question-set"
    assert report["counts"] == {
        "questions": 16, "judged": 14, "answer_checked": 14, "unanswerable": 2,
        "documents": 5, "passages": len(service.index.passages),
    }  # fmt: skip
    metrics = report["metrics"]
    for name in ("answer_hit_rate", "abstention_precision", "abstention_recall", "mrr@10"):
        assert 0.0 <= metrics[name] <= 1.0
    assert metrics["accuracy@10"] >= 0.8  # the seed set is answerable from this corpus
    assert len(report["top_scores"]["unanswerable"]) == 2
    rows = {
        r["id"]: r
        for r in map(
            json.loads, (tmp_path / "out" / "per_question.jsonl").read_text().split("\n")[:-1]
        )
    }
    windows = {p.id: p for p in service.index.passages}

    def text_of(passage_id: str) -> str:
        """A window's text, or that of windows `doc#a-b` that retrieval merged into one."""
        document, _, ordinals = passage_id.partition("#")
        first, _, last = ordinals.partition("-")
        start = windows[f"{document}#{first}"].start
        end = windows[f"{document}#{last or first}"].end
        return service.index.documents[document].text[start:end]

    for row in rows.values():
        if row["first_relevant_rank"] is not None:
            # Passage (chunk) ids; the first relevant one holds the answer, in any spacing/case.
            first = text_of(row["retrieved"][row["first_relevant_rank"] - 1])
            answers = next(q["answers"] for q in dev_questions if q["id"] == row["id"])
            assert contains_answer(first, answers), row["id"]
        assert all(0.0 <= v <= 1.0 for v in row["metrics"].values())
    assert rows["d15"]["unanswerable"] and rows["d15"]["metrics"] == {}


def test_whitespace_and_case_insensitive_answers() -> None:
    assert normalize("Petya\u00a0 NESTOROVA\n") == "petya nestorova"
    assert contains_answer("…by Petya\u00a0Nestorova, the", ["petya  nestorova"])
    assert not contains_answer("Petya", ["Petya Nestorova"])


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"question": "ok"}\n{"question": "broken"\n', "line 2: invalid JSON"),
        ('{"question": "ok"}\n\n{"id": "x", "answers": []}\n', "line 3: missing `question`"),
        ('{"question": "ok", "answers": "Paris"}\n', "line 1: `answers` must be a list"),
        ('["a question"]\n', "line 1: expected a JSON object"),
        ('{"id": "a", "question": "x"}\n{"id": "a", "question": "y"}\n', "already used on line 1"),
    ],
)
def test_bad_question_file_names_the_line(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "questions.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(EvaluationDataError, match=fragment.replace("[", r"\[")):
        load_question_set(path)
    _fails_with(_eval(path, "--index-dir", tmp_path / "i"), "questions.jsonl", fragment)


def test_bad_beir_folder_errors(beir: Path, tmp_path: Path) -> None:
    _fails_with(_eval(beir, "--split", "dev"), "no qrels for split 'dev'", "available: test")
    broken = tmp_path / "broken"
    (broken / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (broken / name).write_text((beir / name).read_text())
    (broken / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\tbees\t1\nq1\tnope\t1\n"
    )
    _fails_with(_eval(broken), "test.tsv, line 3: unknown corpus id 'nope'")
    (broken / "qrels" / "test.tsv").write_text("q9\tbees\t1\n")
    with pytest.raises(EvaluationDataError, match="line 1: unknown query id 'q9'"):
        load_beir(broken, "test")
    (broken / "corpus.jsonl").unlink()
    _fails_with(_eval(broken), "corpus.jsonl is missing")
    _fails_with(_eval(tmp_path / "missing.jsonl"), "does not exist")
    _fails_with(_eval(), "question file")
