/* Embeddable question widget. On any page:
     <script src="https://qa.example.org/widget.js" data-api="https://qa.example.org" defer></script>
   Optional data-title names the panel (by default, the service's own page title). Everything is built inside one shadow root, so the host
   page's CSS and the widget's own never mix; server text enters only as text nodes. */
(() => {
  "use strict";

  // Read now: document.currentScript is only set while this file first runs.
  const script = document.currentScript || document.querySelector('script[src*="widget.js"]');
  if (window.QAWidget || document.getElementById("qa-widget")) return; // loaded twice

  const TOP_K = 3;
  const MAX_HISTORY = 20;
  const MAX_ANSWER_CHARS = 8000;
  const EXCERPT_CHARS = 200;
  const NETWORK_MESSAGE = "Could not reach the question service.";
  const SERVICE_TITLE = "Ask the documents"; // replaced by the service's QA_PAGE_TITLE when served
  const title = (script && script.dataset.title) || SERVICE_TITLE;
  const api = apiBase();

  const CSS = `
    :host { all: initial !important; }
    * { box-sizing: border-box; }
    [hidden] { display: none !important; }
    .qa-root { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", Arial, sans-serif; color: #1c1e21; }
    button { font: inherit; cursor: pointer; }
    :focus-visible { outline: 3px solid #c2410c; outline-offset: 2px; }
    .qa-launcher { position: fixed; right: 20px; bottom: 20px; z-index: 2147483000; width: 56px; height: 56px;
      border-radius: 50%; border: 0; background: #1f4e8c; color: #fff; box-shadow: 0 2px 10px rgba(0,0,0,.3);
      display: grid; place-items: center; }
    .qa-launcher svg { width: 28px; height: 28px; fill: currentColor; }
    .qa-panel { position: fixed; right: 20px; bottom: 88px; z-index: 2147483000; width: 380px; max-width: calc(100vw - 24px);
      height: 540px; max-height: calc(100vh - 110px); display: flex; flex-direction: column; background: #fff;
      border: 1px solid #c8ccd1; border-radius: 10px; box-shadow: 0 6px 24px rgba(0,0,0,.25); overflow: hidden; }
    .qa-header { display: flex; align-items: center; gap: 8px; padding: 10px 12px; background: #1f4e8c; color: #fff; }
    .qa-title { flex: 1; margin: 0; font-size: 16px; font-weight: 600; }
    .qa-close { border: 0; background: transparent; color: #fff; font-size: 24px; line-height: 1; width: 40px; height: 40px; border-radius: 6px; }
    .qa-log { position: relative; flex: 1; overflow-y: auto; padding: 12px; display: flex; flex-direction: column; gap: 10px; background: #f7f7f5; overflow-wrap: anywhere; }
    .qa-intro { margin: 0; color: #555b63; font-size: 14px; }
    .qa-msg { border-radius: 8px; padding: 8px 10px; }
    .qa-user { align-self: flex-end; max-width: 85%; background: #e8eef7; white-space: pre-wrap; }
    .qa-bot { background: #fff; border: 1px solid #d5d8dc; }
    .qa-bot p { margin: 0 0 6px; }
    .qa-abstained { font-style: italic; }
    .qa-pending { color: #555b63; border: 1px dashed #c8ccd1; }
    a { color: #1f4e8c; }
    .qa-citation { font-weight: 600; text-decoration: none; white-space: nowrap; }
    .qa-passages { list-style: none; margin: 6px 0 0; padding: 0; display: flex; flex-direction: column; gap: 6px; font-size: 13px; }
    .qa-passage { border-top: 1px solid #e3e5e8; padding-top: 6px; }
    .qa-passage p { margin: 2px 0 0; color: #3c4148; }
    .qa-error { background: #fdecea; color: #8a1c12; border-radius: 8px; padding: 8px 10px; }
    .qa-form { display: flex; gap: 8px; padding: 10px; border-top: 1px solid #d5d8dc; background: #fff; }
    .qa-input { flex: 1; font: inherit; color: inherit; min-height: 44px; max-height: 120px; resize: vertical; padding: 8px;
      border: 1px solid #555b63; border-radius: 6px; background: #fff; }
    .qa-send { border: 0; border-radius: 6px; background: #1f4e8c; color: #fff; padding: 0 14px; min-height: 44px; }
    .qa-send:disabled { opacity: .55; cursor: not-allowed; }
    .qa-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
    @media (max-width: 480px) {
      .qa-panel { right: 8px; left: 8px; width: auto; max-width: none; bottom: 84px; height: calc(100vh - 100px); }
    }`;

  let history = [];
  let busy = false;

  /** data-api if given (a path prefix is kept), else the origin the script came from. */
  function apiBase() {
    try {
      const given = script && script.dataset.api;
      if (given) return new URL(given, window.location.href).href.replace(/\/+$/, "");
      return new URL(script.src, window.location.href).origin;
    } catch {
      return window.location.origin;
    }
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  // ---- the widget's DOM ----
  const host = el("div");
  host.id = "qa-widget";
  const root = host.attachShadow({ mode: "open" });
  // A constructed sheet still applies where the host page's CSP forbids inline <style>.
  try {
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    root.adoptedStyleSheets = [sheet];
  } catch {
    root.append(el("style", null, CSS));
  }

  const wrapper = el("div", "qa-root");
  const launcher = el("button", "qa-launcher");
  launcher.type = "button";
  launcher.setAttribute("aria-label", "Ask a question");
  launcher.setAttribute("aria-expanded", "false");
  launcher.setAttribute("aria-controls", "qa-panel");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", "M4 3h16a2 2 0 0 1 2 2v11a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zm7 11v2h2v-2h-2zm1-9a3.5 3.5 0 0 0-3.5 3.5h2A1.5 1.5 0 1 1 12 10a1 1 0 0 0-1 1v2h2v-1.2A3.5 3.5 0 0 0 12 5z");
  svg.append(path);
  launcher.append(svg);

  const panel = el("div", "qa-panel");
  panel.id = "qa-panel";
  panel.hidden = true;
  panel.setAttribute("role", "dialog");
  panel.setAttribute("aria-label", title);
  const header = el("div", "qa-header");
  const closeButton = el("button", "qa-close", "×");
  closeButton.type = "button";
  closeButton.setAttribute("aria-label", "Close");
  header.append(el("h2", "qa-title", title), closeButton);
  const log = el("div", "qa-log");
  log.setAttribute("role", "log");
  log.setAttribute("aria-live", "polite");
  const intro = "Ask about the documents. Answers are quoted from them, with links to the passages.";
  log.append(el("p", "qa-intro", intro));
  const form = el("form", "qa-form");
  const label = el("label", "qa-hidden", "Your question");
  label.htmlFor = "qa-input";
  const input = el("textarea", "qa-input");
  input.id = "qa-input";
  input.rows = 2;
  input.maxLength = 2000;
  input.placeholder = "Type your question";
  const sendButton = el("button", "qa-send", "Ask");
  sendButton.type = "submit";
  form.append(label, input, sendButton);
  panel.append(header, log, form);
  wrapper.append(panel, launcher);
  root.append(wrapper);

  // ---- behaviour ----
  function open() {
    panel.hidden = false;
    launcher.setAttribute("aria-expanded", "true");
    input.focus();
  }

  function close(returnFocus = true) {
    panel.hidden = true;
    launcher.setAttribute("aria-expanded", "false");
    if (returnFocus) launcher.focus();
  }

  function documentUrl(p) {
    const [start, end] = p.highlight
      ? [p.start + p.highlight.start, p.start + p.highlight.end]
      : [p.start, p.end];
    return `${api}/document?id=${encodeURIComponent(p.document_id)}&start=${start}&end=${end}`;
  }

  function newTabLink(className, text, href, hint) {
    const link = el("a", className, text);
    link.href = href;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    link.title = hint;
    return link;
  }

  function renderReply(result) {
    const box = el("div", "qa-msg qa-bot");
    const passages = result.passages || [];
    if (result.answerable && result.answer) {
      const found = result.answer;
      const answer = el("p", "qa-answer");
      // The answer's sentence, the answer itself in bold (offsets count code points).
      const sentence = Array.from(found.sentence.text);
      const a = found.start - found.sentence.start;
      const b = found.end - found.sentence.start;
      if (a > 0 || b < sentence.length) {
        answer.append(
          sentence.slice(0, a).join(""),
          el("strong", null, sentence.slice(a, b).join("")),
          sentence.slice(b).join(""),
        );
      } else {
        answer.textContent = found.sentence.text;
      }
      // Cited: the passage that holds the answer, and only it.
      for (const p of passages.filter((x) => x.rank === found.passage_rank)) {
        const hint = `Passage ${p.rank} in its document (new tab)`;
        answer.append(" ", newTabLink("qa-citation", `[${p.rank}]`, documentUrl(p), hint));
      }
      box.append(answer);
    } else {
      box.append(el("p", "qa-abstained", passages.length
        ? "No passage in the documents answers this confidently. The nearest passages are shown for reference."
        : "No passage in the documents answers this."));
    }
    const list = el("ul", "qa-passages");
    for (const p of passages.slice(0, 3)) {
      const chars = Array.from(p.text);
      const excerpt = chars.length > EXCERPT_CHARS
        ? `${chars.slice(0, EXCERPT_CHARS).join("").replace(/\s+\S*$/, "")}…`
        : p.text;
      const item = el("li", "qa-passage");
      const name = `[${p.rank}] ${p.title || p.document_id}`;
      item.append(
        newTabLink("qa-source", name, documentUrl(p), "Open in the document (new tab)"),
        el("p", null, excerpt),
      );
      list.append(item);
    }
    if (passages.length) box.append(list);
    return box;
  }

  async function errorMessage(response) {
    let detail = null;
    try {
      detail = (await response.json()).detail;
    } catch {
      // not JSON: use the status below
    }
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg || String(d)).join("; ");
    if (response.status === 503) {
      return "The question service is still starting. Please try again in a few seconds.";
    }
    return detail || `The question service could not answer (HTTP ${response.status}).`;
  }

  async function ask(question) {
    const messages = [...history, { role: "user", content: question }].slice(-MAX_HISTORY);
    while (messages.length > 1 && messages[0].role !== "user") messages.shift();
    const turn = el("div", "qa-msg qa-user", question);
    log.append(turn);
    const pending = el("div", "qa-msg qa-pending", "Searching the documents…");
    log.append(pending);
    log.scrollTop = log.scrollHeight;
    busy = true;
    sendButton.disabled = true;
    try {
      let response;
      try {
        response = await fetch(`${api}/v1/chat`, {
          method: "POST",
          mode: "cors",
          credentials: "omit",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ messages, top_k: TOP_K, stream: false }),
        });
      } catch {
        throw new Error(NETWORK_MESSAGE); // also what a CORS refusal looks like from here
      }
      if (!response.ok) throw new Error(await errorMessage(response));
      const result = await response.json().catch(() => {
        throw new Error("The answer could not be read.");
      });
      pending.replaceWith(renderReply(result));
      const content = result.answerable && result.answer ? result.answer.text : "No confident answer.";
      history = [...messages, { role: "assistant", content: content.slice(0, MAX_ANSWER_CHARS) }];
    } catch (err) {
      const box = el("div", "qa-error", err.message);
      box.setAttribute("role", "alert");
      pending.replaceWith(box);
    } finally {
      busy = false;
      sendButton.disabled = false;
      log.scrollTop = turn.offsetTop - 8; // the question at the top, its reply below
    }
  }

  launcher.addEventListener("click", () => (panel.hidden ? open() : close()));
  closeButton.addEventListener("click", () => close());
  wrapper.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !panel.hidden) {
      event.stopPropagation();
      close();
    }
  });
  input.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
    event.preventDefault();
    form.requestSubmit();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const question = input.value.trim();
    if (!question || busy) return;
    input.value = "";
    ask(question);
  });

  const attach = () => document.body.append(host);
  if (document.body) attach();
  else document.addEventListener("DOMContentLoaded", attach);

  window.QAWidget = Object.freeze({ open, close: () => close(false) });
})();
