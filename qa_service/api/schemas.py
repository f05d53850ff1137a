"""Request and response models: the JSON contract of the HTTP API (and of `qa ask --json`)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import date
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from qa_service.corpus.documents import Document, DocumentHead
from qa_service.models import Mode
from qa_service.query.answering import Answer
from qa_service.query.conversation import Role, Turn
from qa_service.query.pipeline import AskOptions
from qa_service.query.retrieval import Filters

MAX_QUESTION_CHARS = 2000
MAX_TOP_K = 50
MAX_BATCH = 256
MAX_MESSAGES = 50
# Assistant turns echo answers back, which may be longer than a question.
MAX_ASSISTANT_CHARS = 8000


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("question must contain non-whitespace characters")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")
INVALID_TEXT = "holds an invalid character (an unpaired UTF-16 surrogate)"


def _valid_text(value: Any) -> Any:
    """JSON's escapes can spell half a UTF-16 pair (`"\\ud800"`), which no model, file or
    response can encode; it is refused by name before any other check (pydantic's length check
    would call it "unable to parse raw data as a unicode string")."""
    if isinstance(value, str) and not value.isascii() and _SURROGATE.search(value):
        raise PydanticCustomError("unpaired_surrogate", f"the text {INVALID_TEXT}")
    return value


def _valid_json(value: dict[str, Any]) -> None:
    """`_valid_text` for every key and string of a JSON object, and finite numbers only. Walked
    with a stack of iterators, not recursion: it may be nested as deeply as the parser allows."""
    path: list[Any] = []  # the keys from `value` to the container being walked

    def refuse(kind: str, template: str, *last: Any) -> PydanticCustomError:
        where = "metadata" + "".join(f"[{key!r}]" for key in (*path, *last))
        return PydanticCustomError(kind, template, {"where": where})

    stack: list[Iterator[tuple[Any, Any]]] = [iter(value.items())]
    while stack:
        for key, item in stack[-1]:
            if isinstance(key, str) and _SURROGATE.search(key):
                raise refuse("unpaired_surrogate", "a key at {where} " + INVALID_TEXT)
            if isinstance(item, str) and _SURROGATE.search(item):
                raise refuse("unpaired_surrogate", "the text at {where} " + INVALID_TEXT, key)
            if isinstance(item, float) and not math.isfinite(item):
                raise refuse("finite_number", "{where} should be a finite number", key)
            if isinstance(item, dict | list):
                stack.append(iter(item.items() if isinstance(item, dict) else enumerate(item)))
                path.append(key)
                break
        else:
            stack.pop()
            if path:
                path.pop()


def _valid_metadata(value: dict[str, Any]) -> dict[str, Any]:
    _valid_json(value)
    return value


def _valid_scalar(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    return _valid_text(value)


Text = Annotated[str, BeforeValidator(_valid_text)]
# Checked before the union, so that a bad value is one error at its key, not one per member.
FilterValue = Annotated[str | int | float | bool, BeforeValidator(_valid_scalar)]

Question = Annotated[
    str,
    Field(min_length=1, max_length=MAX_QUESTION_CHARS, description="A natural-language question."),
    BeforeValidator(_valid_text),
    AfterValidator(_not_blank),
]


class FiltersIn(BaseModel):
    """Restrict the search before ranking: top_k results all come from the allowed documents."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [{"metadata": {"publisher": "UNODC"}, "date_from": "2020-01-01"}]
        },
    )

    document_ids: list[Text] | None = Field(None, max_length=10_000)
    metadata: dict[Text, FilterValue] = Field(
        default_factory=dict, description="Metadata fields that must equal these values."
    )
    date_from: date | None = Field(None, description="Documents dated on or after (ISO date).")
    date_to: date | None = Field(None, description="Documents dated on or before (ISO date).")

    def to_filters(self) -> Filters:
        return Filters(
            document_ids=frozenset(self.document_ids) if self.document_ids is not None else None,
            metadata=tuple(sorted(self.metadata.items())),
            date_from=self.date_from.isoformat() if self.date_from else None,
            date_to=self.date_to.isoformat() if self.date_to else None,
        )


class RetrievalOptions(BaseModel):
    """Options every question endpoint accepts."""

    # JSON parsers read NaN, Infinity and 1e400 (inf): no option may be one.
    model_config = ConfigDict(allow_inf_nan=False)

    top_k: int | None = Field(
        None, ge=1, le=MAX_TOP_K, description="Passages to return (default from settings: 5)."
    )
    min_score: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Abstain when the best passage scores below this (default: calibrated "
        "per model and mode).",
    )
    mode: Mode | None = Field(
        None, description="dense, lexical (BM25) or hybrid (default from settings: hybrid)."
    )
    filters: FiltersIn | None = None
    diversity: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="0 ranks by score alone; above 0, results are picked by maximal marginal "
        "relevance, trading score for difference from the passages already picked (0.3 is a "
        "mild setting), so near-duplicate passages give way to other evidence.",
    )

    def options(self) -> AskOptions:
        filters = self.filters.to_filters() if self.filters else None
        return AskOptions(self.top_k, self.min_score, self.mode, filters, self.diversity)


class AskRequest(RetrievalOptions):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"question": "What is GRETA?", "top_k": 5}],
        },
    )

    question: Question


class BatchRequest(RetrievalOptions):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"questions": ["What is GRETA?"], "top_k": 3}]},
    )

    questions: list[Question] = Field(min_length=1, max_length=MAX_BATCH)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    content: Text = Field(min_length=1, max_length=MAX_ASSISTANT_CHARS)

    @model_validator(mode="after")
    def _user_message_is_a_question(self) -> Self:
        if self.role == "user":
            if len(self.content) > MAX_QUESTION_CHARS:
                raise ValueError(f"a user message holds at most {MAX_QUESTION_CHARS} characters")
            _not_blank(self.content)
        return self


class ChatRequest(RetrievalOptions):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "messages": [
                        {"role": "user", "content": "Where was the Second Country Workshop held?"},
                        {"role": "assistant", "content": "It was held in Bjelasnica, BiH."},
                        {"role": "user", "content": "How many people attended it?"},
                    ],
                    "top_k": 5,
                }
            ]
        },
    )

    messages: list[Message] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description="The conversation so far, oldest first; the last message is the question.",
    )
    stream: bool = Field(
        False,
        description="Answer as Server-Sent Events (also chosen by `Accept: text/event-stream`).",
    )

    @model_validator(mode="after")
    def _ends_with_a_question(self) -> Self:
        if self.messages[-1].role != "user":
            raise ValueError("the last message must come from the user: it is the question")
        return self

    def turns(self) -> list[Turn]:
        return [Turn(m.role, m.content) for m in self.messages]


class Span(BaseModel):
    start: int
    end: int


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class SentenceOut(BaseModel):
    text: str
    start: int = Field(
        description="Offset in the document's text: `document.text[start:end] == text`."
    )
    end: int


class AnswerOut(BaseModel):
    text: str = Field(
        description="The answer, verbatim: the reader's span where it read the passage, "
        "otherwise the sentence that best answers."
    )
    start: int = Field(
        description="Offset of the answer in the text of document `document_id`, in Unicode "
        "code points: `document.text[start:end] == text`."
    )
    end: int
    document_id: str
    passage_rank: int = Field(description="Rank of the passage that holds the answer.")
    sentence: SentenceOut = Field(
        description="The sentence (or run of sentences) around the answer: its passage's highlight."
    )
    confidence: float | None = Field(
        description="The reader's probability that the passage answers the question; null "
        "where the reader did not read it (reader off, or a question in another language "
        "than the documents')."
    )


class PassageOut(BaseModel):
    rank: int
    score: float = Field(
        description="The mode's score: cosine similarity (dense), share of the best attainable "
        "BM25 score (lexical, 0..1), or their weighted sum (hybrid)."
    )
    dense_score: float | None = Field(
        description="Cosine similarity of the question with the passage or its best sentence, "
        "whichever is higher; null in lexical mode."
    )
    lexical_score: float | None = Field(description="Normalised BM25 score, when computed.")
    text: str
    document_id: str
    title: str | None
    source: str | None
    chunk_id: str
    start: int = Field(
        description="Offset of the passage in the document's text, in Unicode code points (as "
        "Python indexes strings; JavaScript counts UTF-16 units, which differ after U+FFFF)."
    )
    end: int = Field(description="`document.text[start:end] == text`.")
    page: int | None = Field(description="1-based page for paged formats (PDF), else null.")
    highlight: Span | None = Field(
        description="Span inside `text` of the sentence that best answers the question."
    )
    reader_score: float | None = Field(
        None,
        description="The reader's probability that this passage answers the question; null "
        "where it was not read.",
    )


class AskResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "question": "What was the objective of the Regional Expert Group Meeting?",
                    "answerable": True,
                    "answer": {
                        "text": "The objective of the meeting was to provide participants with "
                        "a better …",
                        "start": 2491,
                        "end": 2741,
                        "document_id": "002_1e161a6a470d0d70",
                        "passage_rank": 1,
                        "sentence": {
                            "text": "The objective of the meeting was to provide participants "
                            "with a better …",
                            "start": 2491,
                            "end": 2741,
                        },
                        "confidence": None,
                    },
                    "passages": [],
                    "took_ms": 14.2,
                }
            ]
        }
    )

    question: str
    answerable: bool = Field(description="False when nothing relevant enough was found.")
    answer: AnswerOut | None
    passages: list[PassageOut] = Field(
        description="Best passages, best first; still returned when the service abstains."
    )
    took_ms: float

    @classmethod
    def from_answer(
        cls, answer: Answer, documents: Mapping[str, DocumentHead], took_ms: float
    ) -> Self:
        passages = []
        for ranked in answer.passages:
            p = ranked.hit.passage
            document = documents[p.document_id]
            highlight = ranked.highlight
            passages.append(
                PassageOut(
                    rank=ranked.rank,
                    score=round(ranked.hit.score, 6),
                    dense_score=_round(ranked.hit.dense_score),
                    lexical_score=_round(ranked.hit.lexical_score),
                    text=p.text,
                    document_id=p.document_id,
                    title=document.title,
                    source=document.source,
                    chunk_id=p.id,
                    start=p.start,
                    end=p.end,
                    page=p.page,
                    highlight=Span(start=highlight.start, end=highlight.end) if highlight else None,
                    reader_score=_round(ranked.reading.probability) if ranked.reading else None,
                )
            )
        return cls(
            question=answer.question,
            answerable=answer.answerable,
            answer=_answer_out(answer),
            passages=passages,
            took_ms=round(took_ms, 3),
        )


def _answer_out(answer: Answer) -> AnswerOut | None:
    if answer.answer_rank is None:
        return None
    ranked = answer.passages[answer.answer_rank - 1]
    passage, sentence = ranked.hit.passage, ranked.highlight
    if sentence is None:
        return None
    start, end = answer.span or (sentence.start, sentence.end)
    # Offsets inside the passage, whose text is the document's from its start to its end.
    text, at = passage.text, passage.start
    return AnswerOut(
        text=text[start:end], start=at + start, end=at + end, document_id=passage.document_id,
        passage_rank=ranked.rank,
        sentence=SentenceOut(text=text[sentence.start : sentence.end], start=at + sentence.start,
                             end=at + sentence.end),
        confidence=_round(answer.confidence),
    )  # fmt: skip


class ChatResponse(AskResponse):
    query: str = Field(
        description="What was searched: the question, preceded by the earlier ones it refers "
        "back to when it is a follow-up."
    )


class QueryEvent(BaseModel):
    """The first event of a streamed chat response."""

    query: str


class AnswerEvent(BaseModel):
    """The event of a streamed chat response that follows the passages."""

    answerable: bool
    answer: AnswerOut | None


class DocumentSummary(BaseModel):
    id: str
    title: str | None
    source: str | None
    passages: int


class DocumentList(BaseModel):
    total: int = Field(description="Documents in the collection; `documents`: the page asked for.")
    documents: list[DocumentSummary]


class DocumentOut(BaseModel):
    id: str
    title: str | None
    source: str | None
    text: str = Field(description="The text that passage offsets point into.")
    metadata: dict[str, Any]
    page_starts: list[int] = Field(
        description="Offset in `text` where each page starts (paged formats only)."
    )
    sentences: list[tuple[int, int]] = Field(
        description="The `[start, end]` offsets in `text` of its sentences, in order (a sentence "
        "longer than the model's input is given in parts). Every passage and answer sentence is "
        "a run of them: its `start` is a sentence's start and its `end` a sentence's end."
    )

    @classmethod
    def from_document(cls, document: Document, sentences: Sequence[tuple[int, int]]) -> Self:
        return cls(
            id=document.id,
            title=document.title,
            source=document.source,
            text=document.text,
            metadata=document.metadata,
            page_starts=list(document.page_starts),
            sentences=sentences,
        )


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    documents: int = 0
    passages: int = 0
    model: str | None = None
    reader: str | None = Field(
        None, description="The reader model and its version; null when the reader is off."
    )
    index_problem: str | None = Field(
        None,
        description="Set when another process made current an index this server cannot serve "
        "(another model or other settings): it still answers from the index it has, and "
        "refuses writes until restarted.",
    )


class ErrorResponse(BaseModel):
    detail: str


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """OpenAI's error object, which its client libraries turn into typed exceptions: the error
    body of the OpenAI-compatible routes (`routes/openai.py`), refusals before routing included."""

    error: OpenAIErrorBody

    @classmethod
    def of(
        cls, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> OpenAIError:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return cls(error=OpenAIErrorBody(message=message, type=kind, param=param, code=code))


class BatchResponse(BaseModel):
    results: list[AskResponse] = Field(description="One /v1/ask response per question, in order.")


class DocumentIn(BaseModel):
    """A document sent as JSON to `POST /v1/documents` or `PUT /v1/documents/{id}`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "field-notes-2024",
                    "title": "Field notes, spring 2024",
                    "text": "The shelter in Tirana opened a second house in March 2024.",
                    "metadata": {"publisher": "NGO", "date": "2024-04-02"},
                }
            ]
        },
    )

    id: str | None = Field(
        None,
        max_length=128,
        description="Letters, digits, '.', '_', '-' in segments joined by '/'; generated "
        "when absent (POST), must equal the path's id when given (PUT).",
    )
    title: Text | None = Field(None, max_length=1000)
    source: Text | None = Field(None, max_length=2000)
    text: Text = Field(description="The document's text: what citations will point into.")
    metadata: Annotated[dict[str, Any], AfterValidator(_valid_metadata)] = Field(
        default_factory=dict, description="Fields shown with citations and used by filters."
    )
