"""`qa add` and `qa remove` on an index folder: the writer alone, without the query service."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from embeddings import Encoder
from qa_service.cli import app
from qa_service.index.store import current_generation_name, load_index
from qa_service.service import QAService

runner = CliRunner()


def test_add_and_remove_write_the_index_without_starting_the_query_service(
    tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus, index_dir = tmp_path / "corpus", tmp_path / "idx"
    corpus.mkdir()
    (corpus / "rivers.txt").write_text("Rivers flow to the sea. The Drina is a river.")
    dirs = ["--corpus-dir", str(corpus), "--index-dir", str(index_dir)]
    monkeypatch.setenv("QA_ENCODER_BACKEND", "torch")  # the session's model, loaded already

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a document write started the query service")

    monkeypatch.setattr(QAService, "__init__", refuse)
    note = tmp_path / "kestrels.txt"
    note.write_text("Kestrels hover above the Prokletije.")

    added = runner.invoke(app, ["add", str(note), *dirs])
    assert added.exit_code == 0, added.output
    assert "Added kestrels: 1 passage(s)." in added.output
    assert (corpus / "kestrels.txt").read_bytes() == note.read_bytes()
    assert set(load_index(index_dir).documents) == {"rivers", "kestrels"}

    # An id in use is refused with the flag that replaces it, and nothing changes.
    generation = current_generation_name(index_dir)
    again = runner.invoke(app, ["add", str(note), *dirs])
    assert again.exit_code == 2
    assert "exists already; --replace replaces it" in again.output
    assert current_generation_name(index_dir) == generation

    note.write_text("Kestrels hover. Falcons stoop on their prey from great heights.")
    replaced = runner.invoke(app, ["add", str(note), "--replace", *dirs])
    assert replaced.exit_code == 0, replaced.output
    assert "Added kestrels (replaced)" in replaced.output
    document = load_index(index_dir).documents["kestrels"]
    assert document.text == note.read_text()

    removed = runner.invoke(app, ["remove", "kestrels", *dirs])
    assert removed.exit_code == 0, removed.output
    assert "Removed kestrels." in removed.output
    assert not (corpus / "kestrels.txt").exists()
    assert set(load_index(index_dir).documents) == {"rivers"}
