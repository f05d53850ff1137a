"""The shipped reader model, loaded and run as the service runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from embeddings import ModelNotAvailableError
from embeddings.reader import MAX_QUESTION_PIECES, READER_DIR, Reader

PASSAGE = (
    "The regional meeting took place in Skopje on 14 May 2024. It was attended by 29 "
    "participants from police, prosecution and social services of five countries, who "
    "discussed the identification of child victims of trafficking."
)


@pytest.fixture(scope="module")
def reader() -> Reader:
    return Reader()


def test_finds_the_answer_as_exact_characters_of_the_passage(reader: Reader) -> None:
    (reading,) = reader.read([("How many participants attended the meeting?", PASSAGE)])
    assert "29" in PASSAGE[reading.start : reading.end]
    assert reading.end - reading.start < 40  # a span, not the whole passage
    assert reading.probability >= reader.manifest.answerable_threshold


def test_a_passage_on_the_topic_that_does_not_answer_scores_lower(reader: Reader) -> None:
    answers, misses = reader.read([
        ("Where did the regional meeting take place?", PASSAGE),
        ("Who financed the regional meeting?", PASSAGE),
    ])  # fmt: skip
    assert PASSAGE[answers.start : answers.end].strip(" .") == "Skopje"
    assert misses.probability < answers.probability


def test_an_unrelated_passage_scores_below_the_one_that_answers(reader: Reader) -> None:
    unrelated = "Steam engines convert the heat of burning coal into mechanical work."
    question = "How many participants attended the meeting?"
    miss, hit = reader.read([(question, unrelated), (question, PASSAGE)])
    assert miss.probability < hit.probability


def test_a_long_passage_is_read_in_windows(reader: Reader) -> None:
    filler = "Officials met many times over the years to discuss cooperation. " * 60
    text = filler + PASSAGE
    (reading,) = reader.read([("How many participants attended the meeting in Skopje?", text)])
    assert reading.start > len(filler) - 1
    assert "29" in text[reading.start : reading.end]


def test_a_very_long_question_is_cut_rather_than_refused(reader: Reader) -> None:
    question = "Where did the regional meeting take place " + "and when " * MAX_QUESTION_PIECES
    (reading,) = reader.read([(question + "?", PASSAGE)])
    assert 0 <= reading.start < reading.end <= len(PASSAGE)


def test_no_pairs_no_call(reader: Reader) -> None:
    assert reader.read([]) == []


def test_readings_keep_the_order_of_their_pairs(reader: Reader) -> None:
    pairs = [("Where did the regional meeting take place?", PASSAGE)] * 3
    pairs.insert(1, ("How many participants attended the meeting?", PASSAGE))
    readings = reader.read(pairs)
    assert PASSAGE[readings[0].start : readings[0].end].strip(" .") == "Skopje"
    assert "29" in PASSAGE[readings[1].start : readings[1].end]
    assert readings[0] == readings[2] == readings[3]


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "reader"
    shutil.copytree(READER_DIR, target)
    return target


def test_a_damaged_model_fails_at_load_with_the_fix(copy: Path) -> None:
    model = copy / "reader.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ModelNotAvailableError, match=r"does not match its sha256.*QA_READER=false"):
        Reader(copy)


def test_a_missing_file_or_manifest_fails_at_load(copy: Path) -> None:
    (copy / "tokenizer.json").unlink()
    with pytest.raises(ModelNotAvailableError, match=r"tokenizer\.json is missing"):
        Reader(copy)
    (copy / "reader.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ModelNotAvailableError, match="cannot read"):
        Reader(copy)
