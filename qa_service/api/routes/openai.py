"""The OpenAI chat-completions protocol over the conversation pipeline of `/v1/chat`.

Frontends people already run (Open WebUI, LibreChat, any OpenAI client library) speak this
protocol. The assistant's reply is the extractive answer sentence with a numbered citation of the
passage it comes from; the structured citations ride in a top-level `citations` field, which
OpenAI clients ignore. Errors on these routes, and only here, take OpenAI's error shape, because
that is what those clients parse.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Literal, Self
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from qa_service.api.deps import ServiceDep
from qa_service.api.errors import RETRY_AFTER_SECONDS, STATUS_FOR
from qa_service.api.metrics import record_answers
from qa_service.api.schemas import (
    MAX_ASSISTANT_CHARS,
    MAX_MESSAGES,
    MAX_QUESTION_CHARS,
    MAX_TOP_K,
    AskResponse,
    OpenAIError,
    PassageOut,
    Text,
)
from qa_service.errors import QAError
from qa_service.query.conversation import Turn, retrieval_query
from qa_service.query.pipeline import AskOptions

# The one model this service offers: the collection, answered extractively.
MODEL_ID = "qa"
OWNED_BY = "qa-service"
CREATED = int(time.time())
ABSTENTION = "The documents do not answer this question."
MAX_ERROR_CHARS = 300


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    headers: dict[str, str] = {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    elif status == 503:
        headers["Retry-After"] = RETRY_AFTER_SECONDS
    body = OpenAIError.of(status, message, param, code)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _status(exc: QAError) -> int:
    return next((STATUS_FOR[cls] for cls in type(exc).__mro__ if cls in STATUS_FOR), 400)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    """The first error only, as OpenAI reports one; its message never quotes the input."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if param:
        message = f"{param}: {message}"
    return openai_error(400, message[:MAX_ERROR_CHARS], param=param, code="invalid_value")


class OpenAIRoute(APIRoute):
    """A route whose errors (invalid body, key, model; service not ready) are OpenAI's error
    object: the app's own handlers answer `{"detail": …}`, which OpenAI clients cannot read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _validation_error(exc)
            except QAError as exc:
                status = _status(exc)
                code = {401: "invalid_api_key", 403: "forbidden", 503: "unavailable"}.get(status)
                return openai_error(status, str(exc)[:MAX_ERROR_CHARS], code=code)
            except HTTPException as exc:
                return openai_error(exc.status_code, str(exc.detail)[:MAX_ERROR_CHARS])

        return handle


router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)


# Requests. Unknown fields (temperature, max_tokens, user, tools …) are accepted and ignored, as
# a server without a generative model has nothing to do with them.


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="System and developer messages are accepted and ignored."
    )
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "model": MODEL_ID,
                    "messages": [
                        {"role": "user", "content": "Where was the Second Country Workshop held?"},
                        {"role": "assistant", "content": "It was held in Bjelasnica, BiH."},
                        {"role": "user", "content": "How many people attended it?"},
                    ],
                }
            ]
        },
    )

    model: str = Field(description=f"The id `GET /v1/models` lists: `{MODEL_ID}`.")
    messages: list[ChatMessage] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description="The whole conversation, oldest first; the last user message is the question.",
    )
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    top_k: int | None = Field(
        None, ge=1, le=MAX_TOP_K, description="Passages to search (not an OpenAI parameter)."
    )

    @model_validator(mode="after")
    def _a_conversation_ending_in_a_question(self) -> Self:
        turns = self.turns()
        for index, turn in enumerate(turns):
            limit = MAX_QUESTION_CHARS if turn.role == "user" else MAX_ASSISTANT_CHARS
            if len(turn.content) > limit:
                raise ValueError(f"a {turn.role} message holds at most {limit} characters")
            if turn.role == "user" and not turn.content.strip():
                raise ValueError(f"user message {index} must contain non-whitespace characters")
        if not turns or turns[-1].role != "user":
            raise ValueError("the last user or assistant message must come from the user")
        return self

    def turns(self) -> list[Turn]:
        """The user and assistant turns; system and developer messages are not searched."""
        return [Turn(m.role, m.text()) for m in self.messages if m.role in ("user", "assistant")]


# Responses.


class Citation(BaseModel):
    index: int = Field(description="The number `[n]` that cites it in the content.")
    document_id: str
    title: str | None
    source: str | None
    start: int = Field(description="The passage's offset in the document's text.")
    end: int = Field(description="`document.text[start:end]` is the passage.")
    page: int | None
    answer_start: int | None = Field(
        None, description="Offset of the answer sentence in the document's text."
    )
    answer_end: int | None = None
    url: str | None = Field(description="The document view with the passage highlighted.")
    text: str = Field(description="The passage's text.")


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    refusal: str | None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop"]
    logprobs: None


class Usage(BaseModel):
    """Word counts (whitespace-separated), not model tokens: no generative model runs."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    citations: list[Citation] = Field(
        description="The passage(s) the answer comes from; empty when the service abstains."
    )
    answerable: bool
    query: str = Field(description="What was searched (as `query` of `/v1/chat`).")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


def _markdown_text(text: str) -> str:
    return re.sub(r"([\\\[\]])", r"\\\1", text)


def document_url(base_url: str, document_id: str, start: int, end: int) -> str:
    return f"{base_url.rstrip('/')}/document?" + urlencode(
        {"id": document_id, "start": start, "end": end}
    )


def answer_citations(
    response: AskResponse, base_url: str | None
) -> tuple[str | None, list[Citation]]:
    """The answer sentence and the citation of the one passage it comes from; (None, []) when
    the service abstains."""
    if not response.answerable or not response.passages:
        return None, []
    rank = response.answer.passage_rank if response.answer else response.passages[0].rank
    passage = next((p for p in response.passages if p.rank == rank), response.passages[0])
    text = response.answer.sentence.text if response.answer else _highlighted(passage)
    answer_start = answer_end = None
    if response.answer:
        answer_start, answer_end = response.answer.sentence.start, response.answer.sentence.end
    url = (
        document_url(base_url, passage.document_id, passage.start, passage.end)
        if base_url
        else None
    )
    citation = Citation(
        index=1, document_id=passage.document_id, title=passage.title, source=passage.source,
        start=passage.start, end=passage.end, page=passage.page, answer_start=answer_start,
        answer_end=answer_end, url=url, text=passage.text,
    )  # fmt: skip
    return text, [citation]


def _highlighted(passage: PassageOut) -> str:
    h = passage.highlight
    return passage.text[h.start : h.end] if h else passage.text


def citation_line(citation: Citation) -> str:
    title = _markdown_text(citation.title or citation.document_id)
    where = f"characters {citation.start}–{citation.end}"
    if citation.page is not None:
        where += f", page {citation.page}"
    link = f"[{title}]({citation.url})" if citation.url else title
    return f"[{citation.index}] {link} ({citation.document_id}, {where})"


def answer_content(answer: str | None, citations: list[Citation]) -> str:
    """The reply a person reads: the answer with its numbered citations, or the abstention."""
    if answer is None:
        return ABSTENTION
    marks = "".join(f" [{c.index}]" for c in citations)
    return f"{answer}{marks}\n\n" + "\n".join(citation_line(c) for c in citations)


def _words(text: str) -> int:
    return len(text.split())


NOT_FOUND = {"model": OpenAIError, "description": "No such model."}
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIError, "description": "Invalid request (the first error)."},
    401: {"model": OpenAIError, "description": "A key is needed (QA_READ_API_KEYS)."},
    404: NOT_FOUND,
    413: {"model": OpenAIError, "description": "Request body over QA_MAX_BODY_BYTES."},
    429: {"model": OpenAIError, "description": "Over QA_RATE_LIMIT for this client."},
    # Documented so that FastAPI does not list its own 422, which these routes never send.
    422: {"model": OpenAIError, "description": "Not sent: invalid requests are 400."},
    503: {"model": OpenAIError, "description": "Model or index still loading, or busy."},
}
CHUNK_EVENT = {"type": "object", "required": ["data"],
               "properties": {"data": {"type": "string"}}}  # fmt: skip
STREAM_DESCRIPTION = (
    "With `stream: true`: Server-Sent Events, each `data:` a `chat.completion.chunk` (the first "
    'with the role, then the content, then one with `finish_reason: "stop"` and `citations`), '
    "then `data: [DONE]`."
)


def _unknown_model(model: str) -> JSONResponse:
    return openai_error(
        404, f"The model `{model[:100]}` does not exist; this service offers `{MODEL_ID}`.",
        param="model", code="model_not_found",
    )  # fmt: skip


@router.get("/models", responses={401: RESPONSES[401]})
async def list_models() -> ModelList:
    """The one model: the collection, answered extractively with citations."""
    return ModelList(object="list", data=[_model_card()])


@router.get(
    "/models/{model}", response_model=ModelCard, responses={401: RESPONSES[401], 404: NOT_FOUND}
)
async def retrieve_model(model: str) -> ModelCard | JSONResponse:
    if model != MODEL_ID:
        return _unknown_model(model)
    return _model_card()


def _model_card() -> ModelCard:
    return ModelCard(id=MODEL_ID, object="model", created=CREATED, owned_by=OWNED_BY)


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={
        **RESPONSES,
        200: {"content": {"text/event-stream": {"itemSchema": CHUNK_EVENT}},
              "description": STREAM_DESCRIPTION},
    },
)  # fmt: skip
async def chat_completions(
    body: ChatCompletionRequest, request: Request, service: ServiceDep
) -> ChatCompletion | JSONResponse | StreamingResponse:
    """OpenAI-compatible chat completion: the answer sentence with the citation of its passage.

    Follow-ups are searched as `/v1/chat` searches them; system messages are ignored.
    """
    if body.model != MODEL_ID:
        return _unknown_model(body.model)
    turns = body.turns()
    question = turns[-1].content
    query = retrieval_query(turns)
    timed = await run_in_threadpool(service.ask, question, AskOptions(top_k=body.top_k), query)
    record_answers(request, "/v1/chat/completions", [timed.answer.answerable], question)
    response = AskResponse.from_answer(timed.answer, timed.documents, timed.took_ms)
    answer, citations = answer_citations(response, str(request.base_url))
    content = answer_content(answer, citations)
    prompt_words = sum(_words(t.content) for t in turns)
    usage = Usage(
        prompt_tokens=prompt_words,
        completion_tokens=_words(content),
        total_tokens=prompt_words + _words(content),
    )
    completion = ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}", object="chat.completion", created=int(time.time()),
        model=MODEL_ID, usage=usage, citations=citations, answerable=response.answerable,
        query=query,
        choices=[Choice(index=0, finish_reason="stop", logprobs=None,
                        message=AssistantMessage(role="assistant", content=content, refusal=None))],
    )  # fmt: skip
    if body.stream:
        # Computed before the first chunk, so an error is always a plain response, never a
        # broken stream.
        usage_chunk = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(
            _chunks(completion, usage_chunk),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return completion


def _chunk(completion: ChatCompletion, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    chunk = {"id": completion.id, "object": "chat.completion.chunk",
             "created": completion.created, "model": completion.model, "choices": choices,
             **extra}  # fmt: skip
    return b"data: " + _dumps(chunk) + b"\n\n"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _chunks(completion: ChatCompletion, include_usage: bool) -> Iterator[bytes]:
    """The content line by line, then the stop chunk with the citations, then [DONE]."""

    def choice(delta: dict[str, str], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]

    content = completion.choices[0].message.content
    yield _chunk(completion, choice({"role": "assistant", "content": ""}))
    for line in content.splitlines(keepends=True):
        yield _chunk(completion, choice({"content": line}))
    citations = [c.model_dump() for c in completion.citations]
    yield _chunk(
        completion, choice({}, "stop"), citations=citations,
        answerable=completion.answerable, query=completion.query,
    )  # fmt: skip
    if include_usage:
        yield _chunk(completion, [], usage=completion.usage.model_dump())
    yield b"data: [DONE]\n\n"
