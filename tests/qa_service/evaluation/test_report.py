"""report.html: the question table, escaping, inline code, plot layout, and (in Debian's chromium)
sorting by a column heading. Reports are built directly, without a model."""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page as BrowserPage
from playwright.sync_api import expect, sync_playwright
from rich.console import Console

from qa_service.evaluation import report as report_module
from qa_service.evaluation.report import (
    count_ticks,
    label_step,
    per_question_rows,
    print_report,
    render_html,
    report_dict,
    score_histogram,
    write_outputs,
)
from qa_service.evaluation.runner import EvalReport, QuestionResult, summary_by_language

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = Path(os.environ.get("QA_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"]  # fmt: skip
HOSTILE = '<script>alert("x")</script> & <b>bold</b> `not code`'
# Attributes through which a page loads something.
RESOURCE_ATTRIBUTES = {"src", "href", "srcset", "action", "poster", "data", "xlink:href"}


class Page(HTMLParser):
    """What the tests look at: every start tag, the question table's headings and cell texts (and
    cell attributes), and the text of every <code>."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.headings: list[str] = []
        self.rows: list[list[str]] = []
        self.cell_attrs: list[list[dict[str, str | None]]] = []
        self.codes: list[str] = []
        self._table = False
        self._cell: list[str] | None = None
        self._code: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "table" and attributes.get("id") == "questions":
            self._table = True
        elif self._table and tag == "tr" and self.headings:
            self.rows.append([])
            self.cell_attrs.append([])
        elif self._table and tag in ("td", "th"):
            self._cell = []
            if tag == "td":
                self.cell_attrs[-1].append(attributes)
        elif tag == "code":
            self._code = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = False
        elif tag in ("td", "th") and self._cell is not None:
            text, self._cell = "".join(self._cell), None
            (self.rows[-1] if tag == "td" else self.headings).append(text)
        elif tag == "code" and self._code is not None:
            self.codes.append("".join(self._code))
            self._code = None

    def handle_data(self, data: str) -> None:
        for sink in (self._cell, self._code):
            if sink is not None:
                sink.append(data)

    def column(self, heading: str) -> list[str]:
        n = self.headings.index(heading)
        return [row[n] for row in self.rows]

    def count(self, tag: str) -> int:
        return sum(t == tag for t, _ in self.tags)


def result(
    qid: str,
    rank: int | None,
    score: float | None = 0.5,
    *,
    question: str = "What?",
    answer: str | None = "An answer.",
    unanswerable: bool = False,
    abstained: bool = False,
    language: str | None = None,
) -> QuestionResult:
    return QuestionResult(
        id=qid, question=question, retrieved=["p1", "p2"], scores=[0.9, 0.8],
        relevant=0 if unanswerable else 1, first_relevant_rank=rank, top_score=score,
        unanswerable=unanswerable, abstained=abstained, answer=answer, answer_hit=None,
        took_ms=1.0, metrics={} if unanswerable else {"accuracy@1": float(rank == 1)},
        language=language,
    )  # fmt: skip


def make_report(results: list[QuestionResult], **fields: Any) -> EvalReport:
    top_scores: dict[str, list[float]] = {"answerable": [], "unanswerable": []}
    for r in results:
        if r.top_score is not None:
            top_scores["unanswerable" if r.unanswerable else "answerable"].append(r.top_score)
    defaults: dict[str, Any] = {
        "dataset": "set", "kind": "question-set", "settings": {"mode": "hybrid", "min_score": 0.3},
        "counts": {"questions": len(results)}, "metrics": {"accuracy@1": 0.5},
        "latency": {"p50_ms": 1.0}, "top_scores": top_scores, "per_question": results,
        "by_language": summary_by_language(results),
    }  # fmt: skip
    return EvalReport(**(defaults | fields))


def page_of(report: EvalReport) -> str:
    return render_html(report_dict(report), per_question_rows(report))


SMALL = [
    result("q1", 1, 0.71, question=HOSTILE, answer="It is <b>here</b>. " + "Long " * 60),
    result("q2", None, 0.42, answer=None, abstained=True),  # answerable, abstained: wrong
    result("q3", 12, 0.55, question="Why " * 80 + '"quoted" <tag>'),
    result("u1", None, 0.21, unanswerable=True, abstained=True, answer=None),
    result("u2", None, 0.64, unanswerable=True),  # answered an unanswerable one: wrong
]


def test_the_table_has_a_row_per_question_with_escaped_text() -> None:
    page = Page(page_of(make_report(SMALL)))
    assert page.headings == [
        "id", "question", "first relevant rank", "top score", "abstained", "unanswerable",
        "answer",
    ]  # fmt: skip
    assert page.column("id") == ["q1", "q2", "q3", "u1", "u2"]
    # The hostile question is text: the page has one script (its own) and no <b>.
    assert page.column("question")[0] == HOSTILE
    assert page.count("script") == 1 and page.count("b") == 0
    assert page.column("first relevant rank") == ["1", "—", "12", "—", "—"]
    assert page.column("top score") == ["0.710", "0.420", "0.550", "0.210", "0.640"]
    assert page.column("abstained") == ["no", "yes", "no", "yes", "no"]
    assert page.column("unanswerable") == ["no", "no", "no", "yes", "yes"]
    # Wrong decisions are marked: abstained on q2 (answerable), answered u2 (unanswerable).
    abstained = page.headings.index("abstained")
    marked = [row[abstained].get("class") == "x" for row in page.cell_attrs]
    assert marked == [False, True, False, False, True]
    answers = page.column("answer")
    assert answers[0].startswith("It is <b>here</b>. Long") and answers[0].endswith("…")
    assert len(answers[0]) <= 100 and answers[1] == "—"
    # A long question is shortened in the cell and whole in its tooltip.
    question = page.headings.index("question")
    cell = page.column("question")[2]
    assert cell.endswith("…") and len(cell) <= 160
    assert page.cell_attrs[2][question]["title"] == SMALL[2].question.strip()


def test_optional_columns_follow_the_data() -> None:
    plain = Page(page_of(make_report([result("a", 1), result("b", 2)])))
    assert "language" not in plain.headings and "unanswerable" not in plain.headings
    tagged = [result("a-sq", 1, language="sq"), result("a-mk", None, language="mk")]
    page = Page(page_of(make_report(tagged)))
    assert page.headings[:2] == ["id", "language"]
    assert page.column("language") == ["sq", "mk"]
    # Without per-question rows (a saved report.json alone) there is no table, and no script.
    bare = Page(render_html(report_dict(make_report(tagged))))
    assert not bare.headings and bare.count("script") == 0


def test_backticks_become_code_after_escaping() -> None:
    notes = ["raise `--top-k` for exact <recall>", "q9: `a<b` and `c`"]
    text = page_of(make_report(SMALL, notes=notes))
    page = Page(text)
    assert page.codes[:4] == ["question_batch", "--top-k", "a<b", "c"]  # the latency note first
    assert "for exact &lt;recall&gt;" in text and "`" not in text.split("<h2>Questions")[0]
    # Questions are data, not Markdown: their backticks stay.
    assert "`not code`" in page.column("question")[0]


def test_nothing_is_loaded_from_elsewhere() -> None:
    text = page_of(make_report(SMALL, notes=["see `x`"]))
    page = Page(text)
    assert not [(t, a) for t, a in page.tags if RESOURCE_ATTRIBUTES & set(a)]
    assert "http://" not in text and "https://" not in text
    assert "url(" not in text and "@import" not in text


def test_thousands_of_questions_keep_the_page_small() -> None:
    question = "Which of the following statements about the causes of the event is supported? "
    results = [
        result(f"{i:024x}", None if i % 9 == 0 else i % 40 + 1, (i % 97) / 97,
               question=question * 2, answer="A sentence that answers it. " * 10)
        for i in range(4000)
    ]  # fmt: skip
    text = page_of(make_report(results))
    page = Page(text)
    assert len(page.rows) == 4000 and all(len(row) == 6 for row in page.rows)
    assert page.column("id")[-1] == f"{3999:024x}"
    # Each row stays within a few hundred bytes however long its question and answer.
    assert len(text.encode()) < 4000 * 420 + 30_000


def test_past_the_cap_the_table_says_where_the_rest_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_module, "MAX_TABLE_ROWS", 30)
    text = page_of(make_report([result(f"q{i}", 1) for i in range(45)]))
    assert len(Page(text).rows) == 30
    assert "The first 30 of 45 questions" in text and "per_question.jsonl" in text


def test_write_outputs_puts_the_table_in_report_html(tmp_path: Path) -> None:
    write_outputs(make_report(SMALL), tmp_path)
    page = Page((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert page.column("id") == [r.id for r in SMALL]


@pytest.mark.parametrize("peak", [0, 1, 3, 7, 22, 48, 99, 998, 4676, 123_456])
def test_count_ticks_are_few_round_and_cover_the_peak(peak: int) -> None:
    ticks = count_ticks(peak)
    assert 2 <= len(ticks) <= 6 and ticks[0] == 0 and ticks[-1] >= peak
    step = ticks[1]
    assert all(b - a == step for a, b in itertools.pairwise(ticks))
    assert str(step).strip("0") in ("1", "2", "5")


SVG_TEXT = re.compile(r'<text x="([\d.]+)" y="([\d.]+)" font-size="(\d+)"[^>]*>([^<]*)</text>')


def x_labels(svg: str, base: float) -> list[tuple[float, str]]:
    """The x tick labels: texts on the baseline just below the plot."""
    return [(float(x), t) for x, y, _, t in SVG_TEXT.findall(svg) if float(y) == base + 17]


@pytest.mark.parametrize("scores", [[0.1, 0.5, 0.9], [-0.33, 0.2, 0.97], [-0.97, 0.4]])
def test_histogram_labels_do_not_collide_and_include_zero(scores: list[float]) -> None:
    edges, series = score_histogram({"answerable": scores, "unanswerable": [0.2]})
    assert edges[0] <= min(scores) and edges[-1] == pytest.approx(1.0)
    assert [sum(c) for c in series.values()] == [len(scores), 1]
    labels = [f"{e:.2f}" for e in edges]
    slot = (report_module._WIDTH - report_module._LEFT - report_module._RIGHT) / (len(edges) - 1)
    step = label_step(labels, slot)
    widest = max(len(label) for label in labels) * report_module._TICK_FONT * 0.62
    assert step * slot >= widest + 10
    svg = report_module._score_chart({"top_scores": {"answerable": scores}, "settings": {}})
    shown = x_labels(svg, report_module._TOP + report_module._PLOT_H)
    assert "0.00" in [t for _, t in shown] and "1.00" in [t for _, t in shown]
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(shown)]
    assert min(gaps) >= widest


def test_plots_have_titles_legends_and_the_threshold() -> None:
    page = page_of(make_report(SMALL))
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 2
    score, rank = svgs
    assert ">Best-passage score per question: answerable vs unanswerable<" in score
    assert ">answerable (3)<" in score and ">unanswerable (2)<" in score
    assert ">min_score 0.3: abstains below<" in score and "stroke-dasharray" in score
    assert ">Rank of the first relevant result<" in rank and ">judged questions (3)<" in rank
    assert ">questions<" in score and ">questions<" in rank  # the y axis titles


CURVE = {
    "score": "top_support",
    "curve": [
        {"threshold": 0.2, "answered": 1.0, "wrong": 0.4},
        {"threshold": 0.5, "answered": 0.75, "wrong": 0.25},
        {"threshold": 0.7, "answered": 0.25, "wrong": 0.0},
    ],
    "operating_point": {"answered": 0.75, "wrong": 0.25},
}


def test_the_answer_curve_marks_the_service_decisions() -> None:
    rows = [replace(SMALL[0], exact=1.0, f1=1.0, confidence=0.875), *SMALL[1:]]
    page = page_of(make_report(rows, answerability=CURVE))
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 3
    curve = svgs[2]
    assert ">Answered vs wrong answers, over thresholds<" in curve
    assert ">thresholds on top support<" in curve
    assert ">the service&#x27;s decisions: answered 0.750, wrong 0.250<" in curve
    assert curve.count("<circle") == 3 + 2  # a dot per threshold, the decisions and their key
    # x: answered share across the plot; y: up to 0.5, the first top above the highest point.
    assert ">0.50<" in curve and ">1.0<" in curve
    assert "best passage&#x27;s support (no reader ran)" in page
    table = Page(page)
    assert table.column("confidence") == ["0.875", "—", "—", "—", "—"]
    assert table.column("F1")[:2] == ["1.000", "—"]
    # Without unanswerable questions there is no answerability section.
    assert "Answerability" not in page_of(make_report(rows[:1]))
    console = Console(file=io.StringIO(), width=200)
    print_report(report_dict(make_report(rows, answerability=CURVE)), console)
    printed = console.file.getvalue()  # type: ignore[attr-defined]
    assert "Answerability is judged on the best passage's support (no reader ran)." in printed


# --- in the browser ---------------------------------------------------------------------------

RANKS = [3, None, 1, 12, 2, None, 1, 3, 57, 2]


@pytest.fixture
def report_page(tmp_path: Path) -> Path:
    results = [
        result(f"q{i + 1}", rank, 0.3 + 0.05 * i, language=("sq", "mk")[i % 2],
               question=f"Question {i + 1} about <topic> number {i + 1}?")
        for i, rank in enumerate(RANKS)
    ]  # fmt: skip
    results += [
        result("u1", None, 0.18, unanswerable=True, abstained=True, answer=None, language="sq"),
        result("u2", None, 0.47, unanswerable=True, language="mk"),
    ]
    write_outputs(make_report(results, answerability=CURVE), tmp_path)
    return tmp_path / "report.html"


@pytest.fixture
def browser_page() -> Iterator[BrowserPage]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's chromium is not installed: scripts/test.sh installs it with apt")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        yield page
        browser.close()


# Pairs of an SVG's texts whose rendered boxes overlap (by more than half a pixel).
OVERLAPS = """(svg) => {
  const boxes = Array.from(svg.querySelectorAll("text"),
                           (t) => [t.textContent, t.getBoundingClientRect()]);
  const apart = (p, q) => p.right - 0.5 <= q.left || q.right - 0.5 <= p.left
                          || p.bottom - 0.5 <= q.top || q.bottom - 0.5 <= p.top;
  const hits = [];
  boxes.forEach(([a, p], i) => boxes.slice(i + 1).forEach(([b, q]) => {
    if (!apart(p, q)) hits.push(a + " / " + b);
  }));
  return hits;
}"""


@pytest.mark.slow
def test_sorting_by_a_heading_in_chromium(report_page: Path, browser_page: BrowserPage) -> None:
    page = browser_page
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(report_page.as_uri())
    heading = page.locator("#questions th", has_text="first relevant rank")
    ids = page.locator("#questions tbody td:first-child")
    expect(ids).to_have_count(12)
    asked = ids.all_text_contents()
    ranks = dict(zip(asked, [*RANKS, None, None], strict=True))

    def expected(descending: bool) -> list[str]:
        # Ranked questions by rank (ties in the order asked), then those without one.
        ranked = [q for q in asked if ranks[q] is not None]
        ranked.sort(key=lambda q: ranks[q] or 0, reverse=descending)  # stable both ways
        return ranked + [q for q in asked if ranks[q] is None]

    heading.click()
    expect(heading).to_have_attribute("aria-sort", "ascending")
    assert ids.all_text_contents() == expected(descending=False)
    heading.click()
    expect(heading).to_have_attribute("aria-sort", "descending")
    assert ids.all_text_contents() == expected(descending=True)

    # The plots' texts (titles, legends, ticks, axis titles, counts) do not touch one another.
    for svg in page.locator("svg").all():
        assert svg.evaluate(OVERLAPS) == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "report.png", full_page=True)
    assert not errors, f"script errors on the page: {errors}"
