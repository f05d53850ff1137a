"""Write the SQuAD articles the reader was not trained on as SQuAD files of their own, so that
`qa eval` measures the service on them alone:

    python training/reader/held_out.py /tmp/held-out
    qa eval /tmp/held-out/squad2-held-out.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from train import HELD_OUT_SQUAD1, HELD_OUT_SQUAD2, SQUAD1, SQUAD2


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path(".")
    out.mkdir(parents=True, exist_ok=True)
    for source, titles, name in (
        (SQUAD2, HELD_OUT_SQUAD2, "squad2-held-out.json"),
        (SQUAD1, HELD_OUT_SQUAD1, "squad1-held-out.json"),
    ):
        data = json.loads(source.read_text(encoding="utf-8"))
        data["data"] = [a for a in data["data"] if a["title"] in titles]
        (out / name).write_text(json.dumps(data), encoding="utf-8")
        print(out / name, len(data["data"]), "articles")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
