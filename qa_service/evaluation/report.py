"""Evaluation reports: terminal table, JSON, per-question lines, a self-contained HTML page, and a
side-by-side comparison of two saved reports.

Everything renders from the JSON form, so a saved `report.json` can be shown or compared later
without rerunning anything.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qa_service.evaluation.datasets import EvaluationDataError
from qa_service.evaluation.metrics import METRIC_NAMES
from qa_service.evaluation.runner import EvalReport

REPORT_JSON = "report.json"
PER_QUESTION = "per_question.jsonl"
REPORT_HTML = "report.html"

_EXTRA_METRICS = (
    "answer_hit_rate", "span_hit_rate", "exact", "f1", "HasAns_exact", "HasAns_f1",
    "NoAns_exact", "abstention_rate", "abstention_precision", "abstention_recall",
    "answered_answerable", "answerability_auroc",
)  # fmt: skip
# How `answerability.score` is named in reports.
SCORE_NAMES = {
    "confidence": "the reader's confidence",
    "top_support": "the best passage's support (no reader ran)",
}
_LATENCY = ("p50_ms", "p95_ms", "questions_per_second")
_LATENCY_NOTE = (
    "Latency is each question's share of its batch's time (questions are asked in batches of "
    "`question_batch`; --batch-size 1 times each on its own)."
)


def report_dict(report: EvalReport) -> dict[str, Any]:
    """The report without per-question rows, with the rank-of-first-relevant distribution."""
    data = asdict(report)
    data.pop("per_question")
    data["first_relevant_ranks"] = [r.first_relevant_rank for r in report.per_question if r.metrics]
    data["latency_note"] = _LATENCY_NOTE
    return data


def per_question_rows(report: EvalReport) -> list[dict[str, Any]]:
    """The lines of per_question.jsonl; report.html's question table is drawn from the same."""
    rows = []
    for r in report.per_question:
        row = {
            "id": r.id,
            "retrieved": r.retrieved,
            "scores": r.scores,
            "first_relevant_rank": r.first_relevant_rank,
            "relevant": r.relevant,
            "question": r.question,
            "top_score": r.top_score,
            "unanswerable": r.unanswerable,
            "abstained": r.abstained,
            "answer": r.answer,
            "answer_hit": r.answer_hit,
            "took_ms": round(r.took_ms, 3),
            "metrics": r.metrics,
        }
        if r.language is not None:
            row["language"] = r.language
        for key in ("sentence", "confidence", "exact", "f1"):
            if (value := getattr(r, key)) is not None:
                row[key] = value
        rows.append(row)
    return rows


def write_outputs(report: EvalReport, folder: Path) -> list[Path]:
    """report.json, per_question.jsonl and report.html in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    data = report_dict(report)
    rows = per_question_rows(report)
    paths = [folder / REPORT_JSON, folder / PER_QUESTION, folder / REPORT_HTML]
    paths[0].write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with paths[1].open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    paths[2].write_text(render_html(data, rows), encoding="utf-8")
    return paths


def load_report(path: Path) -> dict[str, Any]:
    """A saved report.json (or the folder holding one)."""
    if path.is_dir():
        path = path / REPORT_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvaluationDataError(f"cannot read report {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise EvaluationDataError(f"{path} is not a `qa eval` report (no `metrics`)")
    return data


def _ordered(names: Any) -> list[str]:
    known = [*METRIC_NAMES, *_EXTRA_METRICS]
    return [n for n in known if n in names] + sorted(n for n in names if n not in known)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return "–" if value is None else str(value)


def _settings_line(data: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in data.get("settings", {}).items())


# Per-language columns: (heading, metric) and abstentions as "abstained/of".
_LANGUAGE_METRICS = (
    ("acc@1", "accuracy@1"), ("acc@5", "accuracy@5"), ("mrr@10", "mrr@10"),
    ("answer hit", "answer_hit_rate"),
)  # fmt: skip


def language_rows(data: dict[str, Any]) -> list[list[str]]:
    """One row per language of a report's `by_language`: language, questions, the metrics of
    `_LANGUAGE_METRICS`, answerable abstained, unanswerable abstained."""
    rows = []
    for language, s in data.get("by_language", {}).items():
        answerable = int(s["questions"] - s["unanswerable"])
        rows.append(
            [
                language,
                str(int(s["questions"])),
                *(_fmt(s.get(name)) for _, name in _LANGUAGE_METRICS),
                f"{int(s['answerable_abstained'])}/{answerable}",
                f"{int(s['unanswerable_abstained'])}/{int(s['unanswerable'])}",
            ]
        )
    return rows


_LANGUAGE_HEADINGS = (
    "language", "questions", *(h for h, _ in _LANGUAGE_METRICS), "abst. answerable",
    "abst. unanswerable",
)  # fmt: skip


def print_report(data: dict[str, Any], console: Console) -> None:
    counts = data.get("counts", {})
    console.print(
        f"[bold]{escape(str(data.get('dataset')))}[/] ({data.get('kind')}): "
        f"{counts.get('judged', 0)} judged of {counts.get('questions', 0)} questions, "
        f"{counts.get('documents', 0)} documents, {counts.get('passages', 0)} passages"
    )
    console.print(f"[dim]{escape(_settings_line(data))}[/]")
    table = Table(show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in _ordered(data["metrics"]):
        table.add_row(name, _fmt(data["metrics"][name]))
    for name in _LATENCY:
        if name in data.get("latency", {}):
            table.add_row(f"latency {name}", _fmt(data["latency"][name]))
    console.print(table)
    if data.get("by_language"):
        languages = Table(show_header=True, header_style="bold")
        for n, heading in enumerate(_LANGUAGE_HEADINGS):
            languages.add_column(heading, justify="left" if n == 0 else "right")
        for row in language_rows(data):
            languages.add_row(*(escape(cell) for cell in row))
        console.print(languages)
    console.print(f"[dim]{_LATENCY_NOTE}[/]")
    score = (data.get("answerability") or {}).get("score")
    if score is not None:
        console.print(
            f"[dim]Answerability is judged on {escape(SCORE_NAMES.get(score, score))}.[/]"
        )
    for note in data.get("notes", []):
        console.print(f"[yellow]note:[/] {escape(note)}")


def compare_dict(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Metrics and latency of both reports with B − A, and the settings that differ."""
    rows: dict[str, dict[str, float | None]] = {}
    for section in ("metrics", "latency"):
        sa, sb = a.get(section, {}), b.get(section, {})
        names = _ordered(set(sa) | set(sb)) if section == "metrics" else [
            n for n in _LATENCY if n in sa or n in sb
        ]  # fmt: skip
        for name in names:
            va, vb = sa.get(name), sb.get(name)
            diff = vb - va if isinstance(va, int | float) and isinstance(vb, int | float) else None
            rows[name if section == "metrics" else f"latency {name}"] = {
                "a": va, "b": vb, "diff": diff,
            }  # fmt: skip
    settings_a, settings_b = a.get("settings", {}), b.get("settings", {})
    differing = {
        k: {"a": settings_a.get(k), "b": settings_b.get(k)}
        for k in sorted(set(settings_a) | set(settings_b))
        if settings_a.get(k) != settings_b.get(k)
    }
    return {
        "a": {"dataset": a.get("dataset"), "questions": a.get("counts", {}).get("questions")},
        "b": {"dataset": b.get("dataset"), "questions": b.get("counts", {}).get("questions")},
        "rows": rows,
        "settings_differ": differing,
    }


def print_comparison(comparison: dict[str, Any], console: Console, names: tuple[str, str]) -> None:
    a, b = comparison["a"], comparison["b"]
    if a["dataset"] != b["dataset"] or a["questions"] != b["questions"]:
        console.print(
            "[yellow]warning:[/] the reports are of different data "
            f"({escape(str(a['dataset']))}: {a['questions']} questions vs "
            f"{escape(str(b['dataset']))}: {b['questions']} questions)"
        )
    table = Table(show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column(f"A {escape(names[0])}", justify="right")
    table.add_column(f"B {escape(names[1])}", justify="right")
    table.add_column("B − A", justify="right")
    for name, row in comparison["rows"].items():
        diff = row["diff"]
        shown = "–" if diff is None else f"{diff:+.4f}"
        if diff and not name.startswith("latency"):
            shown = f"[{'green' if diff > 0 else 'red'}]{shown}[/]"
        table.add_row(name, _fmt(row["a"]), _fmt(row["b"]), shown)
    console.print(table)
    for key, values in comparison["settings_differ"].items():
        console.print(f"[dim]{escape(key)}: A={values['a']!r}  B={values['b']!r}[/]")


# --- HTML -----------------------------------------------------------------------------------

_COLORS = ("#3b6fb6", "#d9822b")
_MARKER_COLOR = "#b03030"
# Chart geometry in px. The title and the legend have rows of their own above the plot, tick
# labels and the axis title below it, y tick labels and the rotated y title to its left: no
# text can land on another, whatever the data.
_WIDTH, _LEFT, _RIGHT, _TOP, _PLOT_H, _BOTTOM = 720, 70, 24, 66, 190, 52
_TICK_FONT, _LEGEND_FONT, _VALUE_FONT = 11, 12, 10
# Every n-th x label is shown, n the first of these that leaves room for the widest label.
_LABEL_STEPS = (1, 2, 4, 5, 10, 20, 25, 50, 100)


def _text_width(text: str, size: float) -> float:
    """Rendered width, over-estimated (sans-serif digits are about 0.56 em), so that labels
    spaced by it never touch."""
    return len(text) * size * 0.62


def count_ticks(peak: float, most: int = 6) -> list[int]:
    """Y ticks for counts: 0 to at least `peak` in whole steps of 1, 2 or 5 × 10^k, at most
    `most` of them, so the axis reads at a glance whatever the number of questions."""
    scale = 1
    while True:
        for m in (1, 2, 5):
            step = m * scale
            n = max(math.ceil(peak / step), 1)
            if n + 1 <= most:
                return [i * step for i in range(n + 1)]
        scale *= 10


def label_step(labels: Sequence[str], slot: float) -> int:
    """Show every n-th of `labels`, spaced `slot` px apart, so that none overlap."""
    need = max((_text_width(label, _TICK_FONT) for label in labels), default=0.0) + 10
    return next((n for n in _LABEL_STEPS if n * slot >= need), math.ceil(need / slot))


def _bar_chart(
    title: str,
    x_title: str,
    labels: Sequence[str],
    series: dict[str, list[float]],
    *,
    edges: bool = False,
    first_label: int = 0,
    marker: tuple[float, str] | None = None,
) -> str:
    """A grouped bar chart of counts as inline SVG.

    `series` maps a legend name to one value per bar group. `labels` name the groups or, with
    `edges`, the boundaries between them (a histogram's bin edges, one more than the bins);
    every n-th is shown, counted from `first_label`. `marker` draws a dashed vertical line at a
    position in group units and names it in the legend.
    """
    esc = html.escape
    groups = len(labels) - 1 if edges else len(labels)
    ticks = count_ticks(max((v for values in series.values() for v in values), default=0.0))
    # Room for the widest y tick label right of the rotated y title (which ends near x = 26).
    left = max(_LEFT, round(34 + _text_width(f"{ticks[-1]:,}", _TICK_FONT)))
    plot_w = _WIDTH - left - _RIGHT
    base, height = _TOP + _PLOT_H, _TOP + _PLOT_H + _BOTTOM
    slot = plot_w / max(groups, 1)
    scale = _PLOT_H / ticks[-1]
    parts = [
        f'<svg width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}" role="img" '
        f'aria-label="{esc(title)}">',
        f'<text x="{left}" y="20" font-size="15" font-weight="bold">{esc(title)}</text>',
        f'<text transform="translate(16 {_TOP + _PLOT_H / 2:.0f}) rotate(-90)" font-size="12" '
        'text-anchor="middle">questions</text>',
    ]
    for tick in ticks:
        y = base - tick * scale
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
            f'stroke="{"#444" if tick == 0 else "#e3e3e3"}"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="{_TICK_FONT}" '
            f'text-anchor="end">{tick:,}</text>'
        )
    bar = slot * 0.8 / max(len(series), 1)
    for s, (name, values) in enumerate(series.items()):
        color = _COLORS[s % len(_COLORS)]
        for i, value in enumerate(values):
            if not value:
                continue
            x, h = left + i * slot + slot * 0.1 + s * bar, value * scale
            where = f"{labels[i]}–{labels[i + 1]}" if edges else labels[i]
            parts.append(
                f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{color}"><title>{esc(name)}, {esc(where)}: {value:,.0f}</title></rect>'
            )
            shown = f"{value:,.0f}"
            if len(series) == 1 and _text_width(shown, _VALUE_FONT) <= bar:
                parts.append(
                    f'<text x="{x + bar / 2:.1f}" y="{base - h - 4:.1f}" '
                    f'font-size="{_VALUE_FONT}" text-anchor="middle" fill="#333">{shown}</text>'
                )
    step = label_step(labels, slot)
    for i, label in enumerate(labels):
        if (i - first_label) % step:
            continue
        x = left + i * slot + (0 if edges else slot / 2)
        parts.append(
            f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="#444"/>'
            f'<text x="{x:.1f}" y="{base + 17}" font-size="{_TICK_FONT}" '
            f'text-anchor="middle">{esc(label)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{base + 42}" font-size="12" '
        f'text-anchor="middle">{esc(x_title)}</text>'
    )
    x = float(left)
    legend_y = 44
    for s, (name, values) in enumerate(series.items()):
        text = f"{name} ({sum(values):,.0f})"
        parts.append(
            f'<rect x="{x:.0f}" y="{legend_y - 10}" width="11" height="11" '
            f'fill="{_COLORS[s % len(_COLORS)]}"/><text x="{x + 16:.0f}" y="{legend_y}" '
            f'font-size="{_LEGEND_FONT}">{esc(text)}</text>'
        )
        x += 16 + _text_width(text, _LEGEND_FONT) + 14
    if marker is not None and 0 <= marker[0] <= groups:
        at = left + marker[0] * slot
        parts.append(
            f'<line x1="{at:.1f}" y1="{_TOP - 4}" x2="{at:.1f}" y2="{base}" '
            f'stroke="{_MARKER_COLOR}" stroke-width="1.5" stroke-dasharray="5 3"/>'
            + _legend_line(x, legend_y, _MARKER_COLOR, "1.5", marker[1], dashed=True)
        )
    if not series:
        parts.append(
            f'<text x="{left + plot_w / 2:.0f}" y="{_TOP + _PLOT_H / 2:.0f}" font-size="12" '
            'text-anchor="middle" fill="#666">no questions to show</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def score_histogram(
    top_scores: dict[str, list[float]], bins: int = 20
) -> tuple[list[float], dict[str, list[float]]]:
    """Bin edges, 1/bins apart from 0 (or below, for negative scores) to 1, and each series'
    count of best-passage scores per bin (scores past either end count in the end bins)."""
    values = [v for vs in top_scores.values() for v in vs]
    low = min(0.0, math.floor(min(values, default=0.0) * bins) / bins)
    edges = [low + i / bins for i in range(round((1 - low) * bins) + 1)]
    series = {}
    for name, scores in top_scores.items():
        counts = [0.0] * (len(edges) - 1)
        for v in scores:
            counts[min(max(int((v - low) * bins), 0), len(counts) - 1)] += 1
        if scores:
            series[name] = counts
    return edges, series


def rank_distribution(ranks: list[int | None]) -> tuple[list[str], dict[str, list[float]]]:
    labels = [*(str(i) for i in range(1, 11)), "11–100", "none"]
    counts = [0.0] * len(labels)
    for rank in ranks:
        counts[-1 if rank is None else (rank - 1 if rank <= 10 else 10)] += 1
    return labels, {"judged questions": counts}


def _score_chart(data: dict[str, Any]) -> str:
    """The best-score histogram, with the abstention threshold: the service abstains when a
    question's best passage scores below `min_score`."""
    edges, series = score_histogram(data.get("top_scores", {}))
    bins = len(edges) - 1
    per_bin = bins / (edges[-1] - edges[0])
    threshold = data.get("settings", {}).get("min_score")
    marker = None
    if isinstance(threshold, int | float):
        marker = ((threshold - edges[0]) * per_bin, f"min_score {threshold:g}: abstains below")
    title = "Best-passage score per question"
    if len(series) > 1:
        title += ": answerable vs unanswerable"
    return _bar_chart(
        title,
        "best passage's score (what abstention compares with min_score)",
        [f"{e:.2f}" for e in edges],
        series,
        edges=True,
        first_label=round(-edges[0] * per_bin),
        marker=marker,
    )


# The y axis of the answer curve ends at the first of these above its highest point.
_SHARE_TOPS = (0.1, 0.2, 0.5, 1.0)
_CURVE_H = 240


def _curve_chart(answerability: dict[str, Any]) -> str:
    """The answered/wrong curve as an inline SVG line chart: one point per threshold of the
    answerability score, and the service's own decisions marked on the same axes."""
    esc = html.escape
    curve = answerability.get("curve", [])
    point = answerability.get("operating_point") or {}
    score = str(answerability.get("score", "score")).replace("_", " ")
    title = "Answered vs wrong answers, over thresholds"
    peak = max([p["wrong"] for p in curve] + [point.get("wrong") or 0.0])
    top = next((t for t in _SHARE_TOPS if peak <= t), 1.0)
    left, plot_w = _LEFT, _WIDTH - _LEFT - _RIGHT
    base, height = _TOP + _CURVE_H, _TOP + _CURVE_H + _BOTTOM

    def xy(answered: float, wrong: float) -> tuple[float, float]:
        return left + answered * plot_w, base - min(wrong / top, 1.0) * _CURVE_H

    parts = [
        f'<svg width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}" role="img" '
        f'aria-label="{esc(title)}" id="answer-curve">',
        f'<text x="{left}" y="20" font-size="15" font-weight="bold">{esc(title)}</text>',
        f'<text transform="translate(16 {_TOP + _CURVE_H / 2:.0f}) rotate(-90)" font-size="12" '
        'text-anchor="middle">wrong: share of answered</text>',
    ]
    for i in range(6):
        share = top * i / 5
        y = base - _CURVE_H * i / 5
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
            f'stroke="{"#444" if i == 0 else "#e3e3e3"}"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="{_TICK_FONT}" '
            f'text-anchor="end">{share:.2f}</text>'
        )
        x = left + plot_w * i / 5
        parts.append(
            f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="#444"/>'
            f'<text x="{x:.1f}" y="{base + 17}" font-size="{_TICK_FONT}" '
            f'text-anchor="middle">{i / 5:.1f}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{base + 42}" font-size="12" '
        'text-anchor="middle">answered: share of answerable questions</text>'
    )
    ordered = sorted(curve, key=lambda p: (p["answered"], -p["threshold"]))
    if ordered:
        line = " ".join("{:.1f},{:.1f}".format(*xy(p["answered"], p["wrong"])) for p in ordered)
        parts.append(
            f'<polyline points="{line}" fill="none" stroke="{_COLORS[0]}" stroke-width="2"/>'
        )
        for p in ordered:
            x, y = xy(p["answered"], p["wrong"])
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{_COLORS[0]}"><title>'
                f"{esc(score)} ≥ {p['threshold']:.4f}: answered {p['answered']:.3f}, "
                f"wrong {p['wrong']:.3f}</title></circle>"
            )
    else:
        parts.append(
            f'<text x="{left + plot_w / 2:.0f}" y="{_TOP + _CURVE_H / 2:.0f}" font-size="12" '
            'text-anchor="middle" fill="#666">no question has a score</text>'
        )
    legend_y, x = 44, float(left)
    text = f"thresholds on {score}"
    parts.append(_legend_line(x, legend_y, _COLORS[0], "2", text))
    x += 24 + _text_width(text, _LEGEND_FONT) + 14
    if point.get("wrong") is not None:
        text = (
            f"the service's decisions: answered {point['answered']:.3f}, wrong {point['wrong']:.3f}"
        )
        cx, cy = xy(point["answered"], point["wrong"])
        parts.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{_MARKER_COLOR}" '
            f'class="operating-point"><title>{esc(text)}</title></circle>'
            f'<circle cx="{x + 6:.0f}" cy="{legend_y - 4}" r="5" fill="{_MARKER_COLOR}"/>'
            f'<text x="{x + 16:.0f}" y="{legend_y}" font-size="{_LEGEND_FONT}">{esc(text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _legend_line(x: float, y: int, color: str, width: str, text: str, dashed: bool = False) -> str:
    """A legend entry for a line: its stroke, then its label."""
    dash = ' stroke-dasharray="5 3"' if dashed else ""
    return (
        f'<line x1="{x:.0f}" y1="{y - 4}" x2="{x + 18:.0f}" y2="{y - 4}" '
        f'stroke="{color}" stroke-width="{width}"{dash}/>'
        f'<text x="{x + 24:.0f}" y="{y}" font-size="{_LEGEND_FONT}">{html.escape(text)}</text>'
    )


def _answerability_section(data: dict[str, Any]) -> str:
    """Which score judged answerability and, with answer scores, the curve over its thresholds."""
    answerability = data.get("answerability") or {}
    if not answerability:
        return ""
    score = str(answerability.get("score"))
    said = (
        f"<p>Answerability (<code>answerability_auroc</code> and the curve) is judged on "
        f"{html.escape(SCORE_NAMES.get(score, score))}.</p>"
    )
    if "curve" not in answerability:
        return f"<h2>Answerability</h2>{said}"
    return (
        f"<h2>Answerability</h2>{said}"
        "<p>Each point: had the service answered every question scoring at least a threshold "
        "and abstained on the rest, the share of answerable questions answered (x) and the "
        "share of answered questions answered wrongly (y: unanswerable, or an answer with F1 "
        "0). Below the service's own threshold, questions it abstained on count as answered "
        "with no answer, so wrongly. The red dot is what the service decided.</p>"
        f"{_curve_chart(answerability)}"
    )


def _rank_chart(data: dict[str, Any]) -> str:
    labels, series = rank_distribution(data.get("first_relevant_ranks", []))
    return _bar_chart(
        "Rank of the first relevant result",
        "rank (none: no relevant result retrieved)",
        labels,
        series,
    )


_CODE = re.compile(r"`([^`\n]+)`")


def inline_html(text: str) -> str:
    """Escaped text with Markdown's inline code (the only Markdown notes use) as <code>."""
    return _CODE.sub(r"<code>\1</code>", html.escape(text))


# Question and answer cells are cut to these many characters, so that SQuAD's 5,696 questions
# make a page of about 2 MB; per_question.jsonl keeps the full texts.
_QUESTION_CHARS, _ANSWER_CHARS = 160, 100
# Past this many questions the table shows the first ones and says so.
MAX_TABLE_ROWS = 10_000
_NONE = "—"  # the sort script puts cells holding only this last
# Sorts the question table when a column heading is clicked (again: reversed). Numbers compare
# as numbers, text with numeric runs in order (q2 before q10); empty cells stay last both ways,
# ties keep the order asked.
_SORT_SCRIPT = """(() => {
  const table = document.getElementById("questions");
  const rows = Array.from(table.tBodies[0].rows);
  const collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
  const keys = new Map();
  table.tHead.addEventListener("click", (event) => {
    const th = event.target.closest("th");
    if (!th) return;
    const column = th.cellIndex;
    const numeric = th.dataset.type === "number";
    const direction = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    for (const cell of th.parentElement.cells) cell.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
    if (!keys.has(column)) {
      keys.set(column, rows.map((row) => {
        const text = row.cells[column].textContent.trim();
        if (text === "" || text === "\u2014") return null;
        return numeric ? Number(text) : text;
      }));
    }
    const key = keys.get(column);
    const order = rows.map((_, i) => i).sort((a, b) => {
      const x = key[a], y = key[b];
      if (x === null || y === null) return x === y ? a - b : x === null ? 1 : -1;
      const c = numeric ? x - y : collator.compare(x, y);
      return c ? direction * c : a - b;
    });
    const sorted = document.createDocumentFragment();
    for (const i of order) sorted.append(rows[i]);
    table.tBodies[0].append(sorted);
  });
})();"""


def _shorten(text: str, limit: int) -> tuple[str, bool]:
    """Whitespace collapsed and, past `limit` characters, cut at a word with an ellipsis; True
    when cut."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text, False
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip() + "…", True


def _question_cell(row: dict[str, Any]) -> str:
    short, cut = _shorten(str(row.get("question") or ""), _QUESTION_CHARS)
    if not cut:
        return f"<td>{html.escape(short)}</td>"
    full = " ".join(str(row.get("question")).split())
    return f'<td title="{html.escape(full)}">{html.escape(short)}</td>'


def _abstained_cell(row: dict[str, Any]) -> str:
    """yes / no, marked when the decision was wrong, so misses stand out in a long table."""
    abstained, unanswerable = bool(row.get("abstained")), bool(row.get("unanswerable"))
    if abstained == unanswerable:
        return f"<td>{'yes' if abstained else 'no'}</td>"
    wrong = "abstained on an answerable question" if abstained else "answered an unanswerable one"
    return f'<td class=x title="{wrong}">{"yes" if abstained else "no"}</td>'


def _score_cell(key: str) -> Callable[[dict[str, Any]], str]:
    """A cell showing a row's `key` to three decimals."""
    return lambda row: _number_cell(row.get(key), 3)


def _text_cell(value: Any, limit: int = 0) -> str:
    if value is None:
        return f"<td>{_NONE}</td>"
    return f"<td>{html.escape(_shorten(str(value), limit)[0] if limit else str(value))}</td>"


def _number_cell(value: Any, digits: int = 0) -> str:
    if value is None:
        return f"<td>{_NONE}</td>"
    return f"<td>{value:.{digits}f}</td>" if digits else f"<td>{int(value)}</td>"


@dataclass(frozen=True)
class _Column:
    heading: str
    meaning: str  # the heading's tooltip
    cell: Callable[[dict[str, Any]], str]  # a per_question.jsonl row's whole, escaped <td>
    numeric: bool = False
    # Width in characters; None: shares what is left. Fixed widths let the browser lay out (and
    # re-sort) thousands of rows without measuring every cell.
    chars: int | None = None


def _columns(rows: Sequence[dict[str, Any]]) -> list[_Column]:
    """The table's columns; language and unanswerable only when some question has them."""

    def widest(key: str, least: int) -> int:
        return max(least, min(30, max((len(str(r.get(key))) for r in rows), default=0)))

    columns = [
        _Column("id", "the question's id", lambda r: _text_cell(r.get("id")), chars=widest("id", 5))
    ]
    if any(r.get("language") is not None for r in rows):
        columns.append(
            _Column(
                "language",
                "the question's language",
                lambda r: _text_cell(r.get("language")),
                chars=widest("language", 10),
            )
        )
    columns += [
        _Column("question", "shortened; per_question.jsonl has it in full", _question_cell),
        _Column(
            "first relevant rank",
            f"rank of the first relevant result; {_NONE}: none was retrieved",
            lambda r: _number_cell(r.get("first_relevant_rank")),
            numeric=True,
            chars=10,
        ),
        _Column(
            "top score",
            "the best passage's score, which abstention compares with min_score",
            lambda r: _number_cell(r.get("top_score"), 3),
            numeric=True,
            chars=11,
        ),
        _Column("abstained", "marked where it was the wrong decision", _abstained_cell, chars=11),
    ]
    if any(r.get("unanswerable") for r in rows):
        columns.append(
            _Column(
                "unanswerable",
                "the question set marks it unanswerable",
                lambda r: f"<td>{'yes' if r.get('unanswerable') else 'no'}</td>",
                chars=14,
            )
        )
    for key, heading, meaning in (
        ("confidence", "confidence", "the reader's probability that the answer passage answers"),
        ("exact", "EM", "exact match with a gold answer, as the official SQuAD script"),
        ("f1", "F1", "word-overlap F1 with the best gold answer, as the official SQuAD script"),
    ):
        if any(r.get(key) is not None for r in rows):
            columns.append(
                _Column(
                    heading,
                    meaning,
                    _score_cell(key),
                    numeric=True,
                    chars=max(len(heading) + 3, 7),
                )
            )
    columns.append(
        _Column(
            "answer",
            f"the answer (a reader's span, else the answer sentence), shortened; {_NONE}: none",
            lambda r: _text_cell(r.get("answer"), _ANSWER_CHARS),
        )
    )
    return columns


def _question_table(rows: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The per-question table and the CSS that sizes its columns and aligns the numbers."""
    columns = _columns(rows)
    head = "".join(
        f'<th{" data-type=number" if c.numeric else ""} title="{html.escape(c.meaning)}">'
        f'<button type="button">{html.escape(c.heading)}</button></th>'
        for c in columns
    )
    body = "".join(
        "<tr>" + "".join(c.cell(r) for c in columns) + "</tr>" for r in rows[:MAX_TABLE_ROWS]
    )
    shown = f"{len(rows):,} questions"
    if len(rows) > MAX_TABLE_ROWS:
        shown = f"The first {MAX_TABLE_ROWS:,} of {len(rows):,} questions"
    table = (
        f"<p>{shown}, in the order asked. Click a column heading to sort by it, again to "
        f"reverse; empty cells ({_NONE}) sort last. Questions and answers are shortened: "
        "<code>per_question.jsonl</code> has every question in full, with its retrieved ids and "
        "scores.</p>"
        f'<div class="scroll"><table id="questions"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )
    css = [
        ",".join(f"#questions td:nth-child({n})" for n, c in enumerate(columns, 1) if c.numeric)
        + "{text-align:right;font-variant-numeric:tabular-nums}",
        *(
            f"#questions th:nth-child({n}){{width:calc({c.chars}ch + 16px)}}"
            for n, c in enumerate(columns, 1)
            if c.chars is not None
        ),
    ]
    return table, "\n".join(css)


_CSS = """body{font-family:sans-serif;margin:2em;max-width:76em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px}
th{background:#f3f3f3;text-align:left}
table.kv td:nth-child(2){text-align:right;font-variant-numeric:tabular-nums}
code{background:#f0f0f0;padding:0 .2em;border-radius:3px}
svg{display:block;max-width:100%;height:auto;margin:1em 0 2em;font-family:sans-serif}
.scroll{max-height:80vh;overflow:auto;border:1px solid #ccc}
#questions{margin:0;font-size:.9em;table-layout:fixed;width:100%}
#questions td{vertical-align:top;overflow-wrap:anywhere}
#questions th{position:sticky;top:0;border-top:0}
#questions th button{font:inherit;font-weight:bold;border:0;background:none;padding:0;
cursor:pointer;text-align:left;color:inherit}
#questions th[aria-sort=ascending] button::after{content:" \\25B2"}
#questions th[aria-sort=descending] button::after{content:" \\25BC"}
#questions td.x{color:#b03030;font-weight:bold}"""


def render_html(data: dict[str, Any], per_question: Sequence[dict[str, Any]] | None = None) -> str:
    """One HTML file with no external resources, readable when opened from disk or mailed:
    summary tables, two SVG plots and, given per_question.jsonl's rows, a sortable table of the
    questions."""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(n)}</td><td>{_fmt(data['metrics'][n])}</td></tr>"
        for n in _ordered(data["metrics"])
    )
    rows += "".join(
        f"<tr><td>latency {esc(n)}</td><td>{_fmt(v)}</td></tr>"
        for n, v in data.get("latency", {}).items()
    )
    settings = "".join(
        f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>"
        for k, v in {**data.get("settings", {}), **data.get("counts", {})}.items()
    )
    notes = "".join(f"<li>{inline_html(str(n))}</li>" for n in data.get("notes", []))
    languages = ""
    if data.get("by_language"):
        head = "".join(f"<th>{esc(h)}</th>" for h in _LANGUAGE_HEADINGS)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
            for row in language_rows(data)
        )
        languages = f"<h2>Per language</h2><table><tr>{head}</tr>{body}</table>"
    questions, question_css, script = "", "", ""
    if per_question is not None:
        table, question_css = _question_table(per_question)
        questions = f"<h2>Questions</h2>{table}"
        script = f"<script>{_SORT_SCRIPT}</script>"
    dataset = esc(str(data.get("dataset")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>qa eval: {dataset}</title>
<style>{_CSS}
{question_css}</style></head><body>
<h1>qa eval: {dataset} ({esc(str(data.get("kind")))})</h1>
<h2>Metrics</h2><table class="kv">{rows}</table>
{languages}
<p>{inline_html(_LATENCY_NOTE)}</p>
{f"<ul>{notes}</ul>" if notes else ""}
<h2>Distributions</h2>
{_score_chart(data)}
{_rank_chart(data)}
{_answerability_section(data)}
{questions}
<h2>Settings</h2><table class="kv">{settings}</table>
{script}
</body></html>
"""
