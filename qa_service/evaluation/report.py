"""Evaluation reports: terminal table, JSON, per-question lines, a self-contained HTML page, and a
side-by-side comparison of two saved reports.

Everything renders from the JSON form, so a saved `report.json` can be shown or compared later
without rerunning anything.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict
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
    "answer_hit_rate", "abstention_rate", "abstention_precision", "abstention_recall",
)  # fmt: skip
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


def write_outputs(report: EvalReport, folder: Path) -> list[Path]:
    """report.json, per_question.jsonl and report.html in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    data = report_dict(report)
    paths = [folder / REPORT_JSON, folder / PER_QUESTION, folder / REPORT_HTML]
    paths[0].write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with paths[1].open("w", encoding="utf-8") as f:
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
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    paths[2].write_text(render_html(data), encoding="utf-8")
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


def _bars_svg(title: str, labels: list[str], series: dict[str, list[float]], y_label: str) -> str:
    """A grouped bar chart as inline SVG; `series` maps a legend name to one value per label."""
    width, height, left, bottom, top = 720, 260, 48, 40, 28
    plot_w, plot_h = width - left - 12, height - bottom - top
    peak = max((v for values in series.values() for v in values), default=0.0) or 1.0
    group = plot_w / max(len(labels), 1)
    bar = group * 0.8 / max(len(series), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="16" font-size="14" font-weight="bold">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#444"/>',
        f'<text x="4" y="{top + 10}" font-size="11">{html.escape(y_label)}</text>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="10" text-anchor="end">{peak:g}</text>',
    ]
    for s, (name, values) in enumerate(series.items()):
        color = _COLORS[s % len(_COLORS)]
        for i, value in enumerate(values):
            h = plot_h * value / peak
            x = left + i * group + group * 0.1 + s * bar
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{color}"><title>{html.escape(name)} '
                f"{html.escape(labels[i])}: {value:g}</title></rect>"
            )
        parts.append(
            f'<rect x="{width - 170}" y="{8 + 14 * s}" width="10" height="10" fill="{color}"/>'
            f'<text x="{width - 155}" y="{17 + 14 * s}" font-size="11">{html.escape(name)} '
            f"({sum(values):g})</text>"
        )
    step = max(1, math.ceil(len(labels) / 12))
    for i, label in enumerate(labels):
        if i % step == 0:
            x = left + i * group + group / 2
            parts.append(
                f'<text x="{x:.1f}" y="{top + plot_h + 14}" font-size="10" '
                f'text-anchor="middle">{html.escape(label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def score_histogram(
    top_scores: dict[str, list[float]], bins: int = 20
) -> tuple[list[str], dict[str, list[float]]]:
    """Counts of best-passage scores per bin of width 1/bins over [low, 1]."""
    values = [v for vs in top_scores.values() for v in vs]
    low = min(0.0, math.floor(min(values, default=0.0) * bins) / bins)
    edges = [low + i / bins for i in range(round((1 - low) * bins) + 1)]
    labels = [f"{e:.2f}" for e in edges[:-1]]
    series = {}
    for name, scores in top_scores.items():
        counts = [0.0] * len(labels)
        for v in scores:
            counts[min(max(int((v - low) * bins), 0), len(labels) - 1)] += 1
        if scores:
            series[name] = counts
    return labels, series


def rank_distribution(ranks: list[int | None]) -> tuple[list[str], dict[str, list[float]]]:
    labels = [*(str(i) for i in range(1, 11)), "11–100", "none"]
    counts = [0.0] * len(labels)
    for rank in ranks:
        counts[-1 if rank is None else (rank - 1 if rank <= 10 else 10)] += 1
    return labels, {"questions": counts}


def render_html(data: dict[str, Any]) -> str:
    """One HTML file with no external resources: summary tables and two SVG plots."""
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
    notes = "".join(f"<li>{esc(n)}</li>" for n in data.get("notes", []))
    languages = ""
    if data.get("by_language"):
        head = "".join(f"<th>{esc(h)}</th>" for h in _LANGUAGE_HEADINGS)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
            for row in language_rows(data)
        )
        languages = f"<h2>Per language</h2><table><tr>{head}</tr>{body}</table>"
    hist_labels, hist = score_histogram(data.get("top_scores", {}))
    rank_labels, ranks = rank_distribution(data.get("first_relevant_ranks", []))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>qa eval: {esc(str(data.get("dataset")))}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}
table{{border-collapse:collapse;margin:1em 0}}td{{border:1px solid #ccc;padding:2px 8px}}
td:nth-child(2){{text-align:right;font-variant-numeric:tabular-nums}}</style></head><body>
<h1>qa eval: {esc(str(data.get("dataset")))} ({esc(str(data.get("kind")))})</h1>
<h2>Metrics</h2><table>{rows}</table>
{languages}
<p>{esc(_LATENCY_NOTE)}</p>
{f"<ul>{notes}</ul>" if notes else ""}
<h2>Best-passage score</h2>
{_bars_svg("Top score per question", hist_labels, hist, "questions")}
<h2>Rank of the first relevant result</h2>
{_bars_svg("Rank of first relevant", rank_labels, ranks, "questions")}
<h2>Settings</h2><table>{settings}</table>
</body></html>
"""
