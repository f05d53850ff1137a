"""The reader: one pass over (question, passage) says whether the passage answers, and where.

The service's embedding models score how near a passage is to a question's topic; they cannot
tell a passage that answers from one that only talks about the same thing. The reader can: a
small model trained for it (training/reader/train.py, from all-MiniLM-L6-v2's weights) and
shipped with the project, int8, in `embeddings/weights/reader/`. It is run by onnxruntime with
its own `tokenizer.json`, offline, and loads only if its files match the sha256 sums its
manifest (`reader.json`) records, so a damaged or half-copied model fails at start-up with the
fix rather than answering wrongly.

A passage longer than the model's input is read in overlapping windows; its reading is its most
confident window's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embeddings.base import ModelNotAvailableError
from embeddings.files import file_sha256
from embeddings.onnx import _core_count, _session

READER_DIR = Path(__file__).resolve().parent / "weights" / "reader"
MANIFEST = "reader.json"
# Word pieces of the question read at most: longer ones are cut (the passage needs the room).
MAX_QUESTION_PIECES = 64
_OUTPUTS = ("start_logits", "end_logits", "answerable_logit")


@dataclass(frozen=True)
class Reading:
    probability: float  # that the passage answers the question
    start: int  # the answer, as characters of the passage
    end: int


@dataclass(frozen=True)
class ReaderManifest:
    name: str
    version: int
    max_length: int  # word pieces of one window, question and special pieces included
    stride: int  # word pieces two windows of a long passage share
    max_answer_pieces: int
    files: dict[str, str]  # file name to sha256
    # The probability from which a passage is taken to answer: calibrated by the training
    # script on held-out answerable questions (training/reader/README.md).
    answerable_threshold: float

    @classmethod
    def read(cls, folder: Path) -> ReaderManifest:
        path = folder / MANIFEST
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                name=str(raw["name"]), version=int(raw["version"]),
                max_length=int(raw["max_length"]), stride=int(raw["stride"]),
                max_answer_pieces=int(raw["max_answer_pieces"]),
                files={str(k): str(v) for k, v in raw["files"].items()},
                answerable_threshold=float(raw["answerable_threshold"]),
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelNotAvailableError(_broken(folder, f"cannot read {path}: {exc}")) from exc


def _broken(folder: Path, why: str) -> str:
    return (
        f"the reader model in {folder} cannot be loaded: {why}. Restore the folder from the "
        "project (git checkout -- embeddings/weights/reader), retrain it with "
        "training/reader/train.py, or set QA_READER=false to answer without it."
    )


class Reader:
    """Calls are serialised: one already uses every core."""

    def __init__(self, folder: Path = READER_DIR, threads: int | None = None) -> None:
        from tokenizers import Tokenizer

        self.folder = folder
        self.manifest = ReaderManifest.read(folder)
        for name, digest in self.manifest.files.items():
            path = folder / name
            if not path.is_file():
                raise ModelNotAvailableError(_broken(folder, f"{path} is missing"))
            if file_sha256(path) != digest:
                raise ModelNotAvailableError(
                    _broken(folder, f"{path} does not match its sha256 in {MANIFEST}")
                )
        try:
            self._session = _session(
                (folder / "reader.onnx").read_bytes(), threads or _core_count()
            )
            self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # onnxruntime and tokenizers raise their own types
            raise ModelNotAvailableError(_broken(folder, str(exc))) from exc
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(
            self.manifest.max_length, stride=self.manifest.stride, strategy="only_second"
        )
        self._question = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self._question.no_padding()
        self._question.no_truncation()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """Name and version, as reports and health checks show it."""
        return f"{self.manifest.name}-v{self.manifest.version}"

    def read(self, pairs: Sequence[tuple[str, str]]) -> list[Reading]:
        """One reading per (question, passage) pair, in one model call."""
        if not pairs:
            return []
        windows: list[Any] = []
        owners: list[int] = []
        for n, (question, passage) in enumerate(pairs):
            encoding = self._tokenizer.encode(self._shortened(question), passage)
            for window in (encoding, *encoding.overflowing):
                windows.append(window)
                owners.append(n)
        length = max(len(w.ids) for w in windows)
        ids = np.zeros((len(windows), length), dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for row, window in enumerate(windows):
            ids[row, : len(window.ids)] = window.ids
            types[row, : len(window.ids)] = window.type_ids
            mask[row, : len(window.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        with self._lock:
            starts, ends, answerable = self._session.run(list(_OUTPUTS), feed)
        best: list[Reading | None] = [None] * len(pairs)
        for row, window in enumerate(windows):
            probability = float(1 / (1 + np.exp(-answerable[row])))
            owner = owners[row]
            current = best[owner]
            if current is None or probability > current.probability:
                start, end = self._span(starts[row], ends[row], window)
                best[owner] = Reading(probability, start, end)
        return [r for r in best if r is not None]

    def _shortened(self, question: str) -> str:
        offsets = self._question.encode(question, add_special_tokens=False).offsets
        if len(offsets) <= MAX_QUESTION_PIECES:
            return question
        return question[: offsets[MAX_QUESTION_PIECES - 1][1]]

    def _span(
        self, starts: npt.NDArray[np.float32], ends: npt.NDArray[np.float32], window: Any
    ) -> tuple[int, int]:
        """The passage characters of the best-scoring answer the window holds: start before
        end, at most `max_answer_pieces` long."""
        inside = np.array([s == 1 for s in window.sequence_ids])
        n = len(inside)
        start_scores = np.where(inside, starts[:n], -np.inf)
        end_scores = np.where(inside, ends[:n], -np.inf)
        scores = start_scores[:, None] + end_scores[None, :]
        upper = np.triu(np.ones((n, n), dtype=bool))
        allowed = upper & ~np.triu(upper, self.manifest.max_answer_pieces)
        i, j = np.unravel_index(int(np.argmax(np.where(allowed, scores, -np.inf))), scores.shape)
        return int(window.offsets[i][0]), int(window.offsets[j][1])
