"""An index split into shards, for collections one machine cannot hold (issue 28).

Each shard is a normal index folder (store.py: generations, a current one, its lock) holding the
documents whose id hashes to it, so a shard is built, loaded, written and checked like any index.
A build writes its shards into a folder of its own, `<index_dir>/shards/<build>/000 …`, and then
`<index_dir>/shards.json`, which names that folder: so the layout only ever names shards that
were complete, and a failed build leaves the served ones alone.

A document goes to `shard_of(id, count)`: a stable hash (sha256, not Python's salted `hash`), so
the same id always lands in the same shard, on every machine and after every restart, and a
write or delete of a document reaches the shard that holds it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from embeddings.files import replace_file
from qa_service.errors import ClusterError, IndexCorruptError, IndexNotFoundError
from qa_service.index.store import Manifest, read_manifest

SHARDS_FILE = "shards.json"
SHARDS_DIR = "shards"
LAYOUT_VERSION = 1


def shard_of(document_id: str, count: int) -> int:
    """The shard that holds `document_id` among `count`."""
    if count < 1:
        raise ValueError("an index has at least one shard")
    digest = hashlib.sha256(document_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class ShardLayout:
    """What `<index_dir>/shards.json` records: how many shards and where, the model and passage
    settings every shard was built with, and the corpus they were built from."""

    count: int
    model: str
    passage_settings: dict[str, Any]
    corpus_fingerprint: str
    folder: str  # of the shards, below the index folder
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    version: int = LAYOUT_VERSION

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("an index has at least one shard")

    def folders(self, index_dir: Path) -> list[Path]:
        return [index_dir / self.folder / f"{n:03d}" for n in range(self.count)]

    def save(self, index_dir: Path) -> None:
        data = orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)
        replace_file(index_dir / SHARDS_FILE, data)

    @classmethod
    def read(cls, index_dir: Path) -> ShardLayout:
        path = index_dir / SHARDS_FILE
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise IndexNotFoundError(
                f"no sharded index in {index_dir} (no {SHARDS_FILE}); build one with "
                "`qa index --ray --shards N`"
            ) from None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ClusterError(f"{path} is unreadable ({exc}); {_REBUILD}") from exc
        try:
            if data.pop("version") != LAYOUT_VERSION:
                raise ValueError("an unknown layout version")
            return cls(**data, version=LAYOUT_VERSION)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ClusterError(f"{path} is not a shard layout ({exc}); {_REBUILD}") from exc

    def manifests(self, index_dir: Path) -> list[Manifest]:
        """Every shard's manifest, checked against the layout: a shard that is missing, damaged
        or built otherwise than the layout says fails here, before anything is served."""
        manifests = []
        for n, folder in enumerate(self.folders(index_dir)):
            where = f"shard {n} of {self.count} ({folder})"
            try:
                manifest = read_manifest(folder)
            except (IndexNotFoundError, IndexCorruptError) as exc:
                raise ClusterError(f"{where} is missing or damaged: {exc}; {_REBUILD}") from exc
            if (manifest.model, manifest.passage_settings) != (self.model, self.passage_settings):
                raise ClusterError(
                    f"{where} was built with model {manifest.model} or passage settings other "
                    f"than {SHARDS_FILE} records; {_REBUILD}"
                )
            manifests.append(manifest)
        return manifests


_REBUILD = "rebuild the shards with `qa index --ray --shards N`"
