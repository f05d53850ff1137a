/* Chat page: sends the conversation to POST /v1/chat and shows each answer with numbered
   citations and the passages they point to. Server text only ever enters the page as text
   nodes (textContent), never as markup. */
(() => {
  "use strict";

  const TOP_K = 5;
  const MAX_HISTORY = 20; // messages sent per request (the API accepts up to 50)
  const MAX_ANSWER_CHARS = 8000; // the API's limit for an assistant message
  const ABSTAINED_CONTENT = "No confident answer.";
  const NETWORK_MESSAGE = "Could not reach the question service. Check your connection and try again.";

  const form = document.getElementById("ask-form");
  const input = document.getElementById("question");
  const sendButton = document.getElementById("send");
  const resetButton = document.getElementById("reset");
  const log = document.getElementById("messages");
  const statusLine = document.getElementById("status");
  const intro = document.getElementById("intro");

  let history = []; // finished turns, {role, content}
  let controller = null; // the running request, aborted by "New conversation"
  let replyCount = 0; // keeps passage element ids unique across replies

  /** An error whose message is meant for the reader. */
  class ChatError extends Error {}
  /** The browser cannot read a streamed response: ask again without streaming. */
  class StreamUnsupported extends Error {}

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  /** The server counts offsets in code points, JS strings in UTF-16 units; they differ only
      after a character beyond U+FFFF (emoji, some symbols), so most texts skip the walk. */
  function utf16Index(text, codePoints) {
    if (!/[\uD800-\uDFFF]/.test(text)) return codePoints;
    let index = 0;
    for (let i = 0; i < codePoints && index < text.length; i++) {
      index += text.codePointAt(index) > 0xffff ? 2 : 1;
    }
    return index;
  }


  /** Document view of the cited sentence, or of the whole passage when none is highlighted. */
  function documentHref(p) {
    const [start, end] = p.highlight
      ? [p.start + p.highlight.start, p.start + p.highlight.end]
      : [p.start, p.end];
    return `/document?id=${encodeURIComponent(p.document_id)}&start=${start}&end=${end}`;
  }

  /** The source as an external link when it is a web address, else as plain text. */
  function sourceNode(source) {
    let url = null;
    try {
      url = new URL(source);
    } catch {
      // a file name or other label
    }
    if (!url || !["http:", "https:"].includes(url.protocol)) return el("span", "source", `Source: ${source}`);
    const link = el("a", "source", `Original source (${url.hostname})`);
    link.href = source;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    link.append(el("span", "visually-hidden", ", opens in a new tab"));
    return link;
  }

  function passageItem(p, replyId) {
    const item = el("li", "passage");
    item.id = `${replyId}-p${p.rank}`;
    item.dataset.rank = p.rank;
    item.tabIndex = -1; // citations move focus here

    const summary = el("summary");
    const meta = [p.page != null ? `page ${p.page}` : null, `score ${Number(p.score).toFixed(2)}`];
    summary.append(
      el("span", "passage-rank", `[${p.rank}]`),
      el("span", "passage-title", p.title || p.document_id),
      el("span", "passage-meta", meta.filter(Boolean).join(" · ")),
    );

    // Runs of blank lines (common in converted PDFs) are shown as one blank line.
    const tidy = (s) => s.replace(/\n[ \t]*\n(?:[ \t]*\n)+/g, "\n\n");
    const text = el("p", "passage-text");
    const h = p.highlight;
    if (h && h.end > h.start) {
      const a = utf16Index(p.text, h.start);
      const b = utf16Index(p.text, h.end);
      text.append(
        tidy(p.text.slice(0, a).trimStart()),
        el("mark", null, p.text.slice(a, b)),
        tidy(p.text.slice(b).trimEnd()),
      );
    } else {
      text.textContent = tidy(p.text.trim());
    }
    const links = el("p", "passage-links");
    const open = el("a", "source-link", "Open in document");
    open.href = documentHref(p);
    links.append(open);
    if (p.source) links.append(sourceNode(p.source));

    const body = el("div", "passage-body");
    body.append(text, links);
    const details = el("details");
    details.append(summary, body);
    item.append(details);
    return item;
  }

  /** One "[n]" link per passage. */
  function citations(passages, replyId) {
    return passages.flatMap((p) => {
      const link = el("a", "citation", `[${p.rank}]`);
      link.href = `#${replyId}-p${p.rank}`;
      link.dataset.rank = p.rank;
      link.title = `Show passage ${p.rank}: ${p.title || p.document_id}`;
      return [" ", link];
    });
  }

  /** The answer's sentence with the answer itself in bold (offsets are code points). */
  function answerNodes(answer) {
    const sentence = answer.sentence;
    if (!sentence || answer.start < sentence.start || answer.end > sentence.end) return [answer.text];
    const text = sentence.text;
    const a = utf16Index(text, answer.start - sentence.start);
    const b = utf16Index(text, answer.end - sentence.start);
    if (a === 0 && b === text.length) return [text];
    return [text.slice(0, a), el("strong", null, text.slice(a, b)), text.slice(b)];
  }

  const normalise = (s) => (s || "").trim().replace(/\s+/g, " ").toLowerCase();

  /** The reply box of one question, filled in as stream events arrive or all at once. */
  function createReply(question) {
    const replyId = `reply-${++replyCount}`;
    const box = el("div", "message assistant");
    box.id = replyId;
    box.setAttribute("aria-busy", "true");
    const pending = el("p", "pending", "Searching the documents");
    const list = el("ol", "passages");
    list.setAttribute("aria-label", "Passages found");
    box.append(pending, list);
    log.append(box);

    const passages = new Map(); // rank -> passage
    let queryShown = false;
    let answered = false;

    return {
      box,
      query(query) {
        queryShown = true;
        if (query && normalise(query) !== normalise(question)) {
          box.prepend(el("p", "query", `Searched for: ${query}`));
        }
      },
      passage(p) {
        if (passages.has(p.rank)) return;
        passages.set(p.rank, p);
        list.append(passageItem(p, replyId)); // the server sends them in rank order
      },
      answer({ answerable, answer }) {
        answered = true;
        const all = [...passages.values()];
        let nodes;
        if (answerable && answer) {
          // Cited: the passage that holds the answer, and only it.
          const p = el("p", "answer");
          p.append(...answerNodes(answer));
          p.append(...citations(all.filter((x) => x.rank === answer.passage_rank), replyId));
          nodes = [p];
        } else {
          const text = all.length
            ? "No passage in the documents answers this confidently. " +
              "The nearest passages are shown below for reference."
            : "No passage in the documents answers this.";
          nodes = [el("p", "abstained", text)];
          if (all.length) {
            const refs = el("p", "citations", "Nearest passages:");
            refs.append(...citations(all, replyId));
            nodes.push(refs);
          }
        }
        list.before(...nodes);
        pending.remove();
      },
      /** The final response: fill in whatever the stream did not deliver. */
      done(result) {
        if (!queryShown) this.query(result.query);
        (result.passages || []).forEach((p) => this.passage(p));
        if (!answered) this.answer(result);
        box.removeAttribute("aria-busy");
      },
    };
  }

  async function errorMessage(response) {
    let detail = null;
    try {
      detail = (await response.json()).detail;
    } catch {
      // not JSON: fall through to a message built from the status
    }
    // FastAPI's own validation errors carry a list of {msg} objects instead of a string.
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg || String(d)).join("; ");
    if (response.status === 503) {
      const wait = Number.parseInt(response.headers.get("Retry-After"), 10) || 5;
      return `The service is still loading the documents. Please try again in ${wait} seconds.` +
        (detail ? ` (${detail})` : "");
    }
    return detail || `The service could not answer (HTTP ${response.status}).`;
  }

  async function postChat(messages, stream, signal) {
    let response;
    try {
      response = await fetch("/v1/chat", {
        method: "POST",
        headers: {
          "Content-Type": "application/json",
          Accept: stream ? "text/event-stream" : "application/json",
        },
        body: JSON.stringify({ messages, top_k: TOP_K, stream }),
        signal,
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ChatError(NETWORK_MESSAGE);
    }
    if (!response.ok) throw new ChatError(await errorMessage(response));
    return response;
  }

  /** Server-Sent Events from a fetch body: yields {event, data} per blank-line-ended block. */
  async function* readEvents(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let event = "message";
    let data = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
        let match;
        while ((match = /\r\n|\r|\n/.exec(buffer))) {
          // A lone "\r" at the end may be the first half of a "\r\n" still in transit.
          if (!done && match[0] === "\r" && match.index === buffer.length - 1) break;
          const line = buffer.slice(0, match.index);
          buffer = buffer.slice(match.index + match[0].length);
          if (line === "") {
            if (data.length) yield { event, data: data.join("\n") };
            event = "message";
            data = [];
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
            if (field === "event") event = val;
            else if (field === "data") data.push(val);
          }
        }
        if (done) {
          if (data.length) yield { event, data: data.join("\n") };
          return;
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  async function streamAnswer(messages, reply, signal) {
    const response = await postChat(messages, true, signal);
    if (!(response.headers.get("Content-Type") || "").includes("text/event-stream")) {
      const result = await response.json(); // the server answered without streaming
      reply.done(result);
      return result;
    }
    if (!response.body || typeof response.body.getReader !== "function") throw new StreamUnsupported();
    let received = false;
    let answer = null;
    try {
      for await (const { event, data } of readEvents(response.body)) {
        received = true;
        const payload = JSON.parse(data);
        if (event === "query") reply.query(payload.query);
        else if (event === "passage") reply.passage(payload);
        else if (event === "answer") reply.answer((answer = payload));
        else if (event === "done") {
          reply.done(payload);
          return payload;
        } else if (event === "error") throw new ChatError(payload.detail || "The service could not answer.");
      }
    } catch (err) {
      // A read that fails before anything arrived: this browser or a proxy cannot stream.
      if (!received && err instanceof TypeError) throw new StreamUnsupported();
      throw err;
    }
    if (!answer) throw new ChatError("The answer was cut off. Please ask again.");
    reply.done({ passages: [], ...answer });
    return answer;
  }

  async function fetchAnswer(messages, reply, signal) {
    const canStream = typeof TextDecoder === "function" && typeof ReadableStream === "function";
    if (canStream) {
      try {
        return await streamAnswer(messages, reply, signal);
      } catch (err) {
        if (!(err instanceof StreamUnsupported)) throw err;
      }
    }
    const response = await postChat(messages, false, signal);
    const result = await response.json();
    reply.done(result);
    return result;
  }

  /** The last messages that fit the cap, starting with a user message. */
  function capHistory(messages) {
    const kept = messages.slice(-MAX_HISTORY);
    while (kept.length > 1 && kept[0].role !== "user") kept.shift();
    return kept;
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    form.setAttribute("aria-busy", String(busy));
  }

  async function ask(question) {
    const messages = capHistory([...history, { role: "user", content: question }]);
    intro.hidden = true;
    const turn = el("div", "message user", question);
    log.append(turn);
    const reply = createReply(question);
    turn.scrollIntoView({ block: "start" });

    const current = new AbortController();
    controller = current;
    setBusy(true);
    try {
      const result = await fetchAnswer(messages, reply, current.signal);
      const content = result.answerable && result.answer ? result.answer.sentence.text : ABSTAINED_CONTENT;
      history = [...messages, { role: "assistant", content: content.slice(0, MAX_ANSWER_CHARS) }];
    } catch (err) {
      if (err.name === "AbortError") return;
      const text = err instanceof ChatError
        ? err.message
        : "Something went wrong while reading the answer. Please ask again.";
      const box = el("div", "error", text);
      box.setAttribute("role", "alert");
      reply.box.replaceWith(box);
    } finally {
      if (controller === current) {
        controller = null;
        setBusy(false);
      }
    }
  }

  async function showStatus() {
    let retryIn = 5000;
    try {
      const response = await fetch("/readyz", { headers: { Accept: "application/json" } });
      const data = await response.json();
      if (data.ready) {
        const count = (n, word) => `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;
        statusLine.textContent = `${count(data.documents, "document")} · ${count(data.passages, "passage")}`;
        return;
      }
      statusLine.textContent = "The service is loading the documents…";
    } catch {
      statusLine.textContent = "The service cannot be reached right now.";
      retryIn = 15000;
    }
    setTimeout(showStatus, retryIn);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const question = input.value.trim();
    if (!question || controller) return;
    input.value = "";
    ask(question);
  });

  input.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter keeps the newline; never while an input method is composing.
    if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
    event.preventDefault();
    if (typeof form.requestSubmit === "function") form.requestSubmit();
    else sendButton.click();
  });

  // Citation [n] opens passage n of the same reply and moves focus to it.
  log.addEventListener("click", (event) => {
    const link = event.target.closest("a.citation");
    if (!link) return;
    event.preventDefault();
    const item = link.closest(".message").querySelector(`li.passage[data-rank="${link.dataset.rank}"]`);
    if (!item) return;
    item.querySelector("details").open = true;
    item.scrollIntoView({ block: "nearest" });
    item.focus({ preventScroll: true });
  });

  resetButton.addEventListener("click", () => {
    if (controller) controller.abort();
    controller = null;
    setBusy(false);
    history = [];
    log.replaceChildren();
    intro.hidden = false;
    input.value = "";
    input.focus();
  });

  showStatus();
})();
