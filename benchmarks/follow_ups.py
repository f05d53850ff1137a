"""How well follow-up questions are answered, on synthetic conversations made from SQuAD.

No public multi-turn set over our documents is at hand, so conversations are made from SQuAD
(`../shared/eval`): a question q2 that names a subject (a capitalised phrase) also named in
another question q1 of the same article, after a preposition or verb ("in Warsaw", "did Tesla"),
becomes a follow-up by putting "it" ("its") in the subject's place: "How many people live in
it?" asked after q1. Two sets: q1 taken from another paragraph of the article (the follow-up's
answer is not where the subject was named: the hard case) and from q2's own paragraph. At most
two follow-ups per paragraph; the phrase rules make a few ungrammatical ones ("during it
halftime show"), kept as they come.

Each conversation is asked as the chat routes ask it (`retrieval_query` over the user turns), and
scored as `qa eval` scores SQuAD: the answer sentence holds a gold answer, and the answer passage
is q2's paragraph. The same questions asked standalone (q2 as written) are the reference. The
service is measured as it is and with its follow-up and answer-kind weights set to 0 (as before
them), in one run over one index. A few seed-report conversations are asked too.

    python benchmarks/follow_ups.py [--model NAME] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_EVAL = ROOT.parent / "shared" / "eval"
SQUAD = [
    SHARED_EVAL / "squad" / "dev-v1.1.first24.json",
    SHARED_EVAL / "squad2" / "dev-v2.0.last6.json",
]

from qa_service.config import Settings  # noqa: E402
from qa_service.evaluation.datasets import load_squad  # noqa: E402
from qa_service.evaluation.runner import benchmark_index, contains_answer  # noqa: E402
from qa_service.query import answering, pipeline  # noqa: E402
from qa_service.query.conversation import Turn, is_follow_up, retrieval_query  # noqa: E402
from qa_service.service import (  # noqa: E402
    QAService,
    TimedAnswer,
    load_configured_encoder,
    make_splitter,
)

# Conversations over the seed reports: (earlier question, follow-up, the answer's words).
SEED = [
    ("Where was the Second Country Workshop held?", "How many people attended it?",
     "29 participants"),
    ("What was the Regional Expert Group Meeting in Skopje about?",
     "How many participants did it bring together?", "over 70 participants"),
    ("What was the online regional conference of June 2021 about?",
     "How many participants attended it?", "over 130 participants"),
    ("Who took part in the Regional Expert Group Meeting in Skopje?",
     "How many jurisdictions were they from?", "approximately 20 jurisdictions"),
    ("What was the training session in Sarajevo on cyber-trafficking?",
     "How many participants did it have?", "36 participants"),
    ("Which operation dismantled the trafficking network in France and Bosnia?",
     "How many people were arrested in it?", "twelve people"),
]  # fmt: skip

_LEADING = {"What", "Which", "Who", "Whom", "Whose", "When", "Where", "Why", "How", "In", "On",
            "At", "The", "A", "An", "Of", "For", "To", "By", "From", "During", "After", "Before",
            "As", "Is", "Was", "Are", "Were", "Did", "Does", "Do"}  # fmt: skip
_PHRASE = re.compile(r"\b([A-Z][\w'’-]*(?:\s+(?:(?:of|the|de|and)\s+)?(?:[A-Z][\w'’-]*|\d+))*)")
_BEFORE = (r"(?:in|of|at|on|for|by|from|to|about|with|during|did|does|do|was|is|were|are|has|"
           r"have|had|against|into|within)")  # fmt: skip


@dataclass(frozen=True)
class Conversation:
    earlier: str
    follow_up: str
    standalone: str
    answers: tuple[str, ...]
    paragraph: str  # SQuAD's document id of the follow-up's paragraph; "" for the seed


def _subjects(question: str) -> list[str]:
    found = []
    for match in _PHRASE.finditer(question):
        words = match.group(1).split()
        if match.start() == 0 and words[0] in _LEADING:
            words = words[1:]
        phrase = " ".join(words)
        if len(phrase) >= 3 and phrase not in _LEADING:
            found.append(phrase)
    return found


def _as_follow_up(question: str, earlier: str) -> str | None:
    shared = [s for s in _subjects(question) if s in earlier]
    if not shared:
        return None
    subject = re.escape(max(shared, key=len))
    pattern = rf"\b({_BEFORE})\s+(?:the\s+)?{subject}(?![\w'’])('s|’s)?"
    made = re.sub(
        pattern, lambda m: f"{m.group(1)} {'its' if m.group(2) else 'it'}", question, count=1
    )
    return made if made != question and is_follow_up(made) else None


def conversations(path: Path, other_paragraph: bool, per_paragraph: int = 2) -> list[Conversation]:
    data = json.loads(path.read_text(encoding="utf-8"))
    rng = random.Random(7)
    made = []
    for article in data["data"]:
        title = article["title"]
        asked = [(p, qa) for p, par in enumerate(article["paragraphs"]) for qa in par["qas"]
                 if qa["answers"] and not qa.get("is_impossible")]  # fmt: skip
        for p in range(len(article["paragraphs"])):
            pool = [qa for pp, qa in asked if (pp != p) == other_paragraph]
            rng.shuffle(pool)
            count = 0
            for _, qa in ((pp, qa) for pp, qa in asked if pp == p):
                if count == per_paragraph:
                    break
                for earlier in pool:
                    if earlier is qa:
                        continue
                    follow_up = _as_follow_up(qa["question"], earlier["question"])
                    if follow_up is not None:
                        answers = tuple(a["text"] for a in qa["answers"])
                        made.append(Conversation(earlier["question"], follow_up, qa["question"],
                                                 answers, f"{title}/{p}"))  # fmt: skip
                        count += 1
                        break
    return made


@contextmanager
def weights(follow_up: float, kind: float) -> Iterator[None]:
    saved = pipeline.FOLLOW_UP_WEIGHT, answering.KIND_WEIGHT
    pipeline.FOLLOW_UP_WEIGHT, answering.KIND_WEIGHT = follow_up, kind
    try:
        yield
    finally:
        pipeline.FOLLOW_UP_WEIGHT, answering.KIND_WEIGHT = saved


def ask(service: QAService, talks: list[Conversation], standalone: bool) -> list[TimedAnswer]:
    if standalone:
        questions = [t.standalone for t in talks]
        queries = questions
    else:
        questions = [t.follow_up for t in talks]
        queries = [retrieval_query([Turn("user", t.earlier), Turn("user", t.follow_up)])
                   for t in talks]  # fmt: skip
    out: list[TimedAnswer] = []
    for start in range(0, len(questions), 64):
        out += service.ask_many(questions[start : start + 64], None, queries[start : start + 64])
    return out


def score(talks: list[Conversation], timed: list[TimedAnswer]) -> tuple[int, int, int]:
    """(answer sentence holds a gold answer, answer passage is the gold paragraph, abstained)."""
    hit = gold = abstained = 0
    for talk, result in zip(talks, timed, strict=True):
        answer = result.answer
        if answer.answer_rank is None:
            abstained += 1
            continue
        hit += contains_answer(answer.answer_text or "", talk.answers)
        gold += answer.passages[answer.answer_rank - 1].hit.passage.document_id == talk.paragraph
    return hit, gold, abstained


VARIANTS = {"before (weights 0)": (0.0, 0.0), "answer kinds only": (0.0, answering.KIND_WEIGHT),
            "as served": (pipeline.FOLLOW_UP_WEIGHT, answering.KIND_WEIGHT)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model name (default: the service's)")
    parser.add_argument("--cache-dir", type=Path, help="keep the benchmark indexes here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qa-follow-ups-"))
    settings = Settings(corpus_dir=ROOT / "corpus", index_dir=work / "index",
                        **({"model": args.model} if args.model else {}))  # fmt: skip
    encoder = load_configured_encoder(settings)
    print(f"model {encoder.name}")
    print("| set | conversations | asked | answer sentence hit | answer passage right "
          "| abstained |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for path in SQUAD:
        benchmark = load_squad(path)
        index, _ = benchmark_index(
            benchmark, encoder, make_splitter(settings, encoder), args.cache_dir or work, True
        )
        service = QAService(encoder, index, None, 5)
        for other in (True, False):
            talks = conversations(path, other)
            where = "another" if other else "the same"
            name = f"{path.stem}, earlier question from {where} paragraph"
            rows = [("standalone", ask(service, talks, True))]
            for label, (follow_up, kind) in VARIANTS.items():
                with weights(follow_up, kind):
                    rows.append((f"follow-up, {label}", ask(service, talks, False)))
            for label, timed in rows:
                hit, gold, abstained = score(talks, timed)
                n = len(talks)
                print(f"| {name} | {n} | {label} | {hit / n:.3f} ({hit}) | {gold / n:.3f} | "
                      f"{abstained} |")  # fmt: skip

    service = QAService.from_settings(settings)
    seed = [Conversation(e, f, f, (a,), "") for e, f, a in SEED]
    for label, (follow_up, kind) in VARIANTS.items():
        with weights(follow_up, kind):
            timed = ask(service, seed, False)
        right = [contains_answer(t.answer.answer_text or "", s.answers) if t.answer.answer_rank
                 else False for s, t in zip(seed, timed, strict=True)]  # fmt: skip
        marks = " ".join("✓" if r else "✗" for r in right)
        print(f"seed reports, {label}: {sum(right)} of {len(seed)} ({marks})")


if __name__ == "__main__":
    main()
