/* Document view: the whole text of one document with the cited span [start, end) marked, when
   the span is a citation: a run of the document's whole sentences, as every passage and answer
   sentence is. Server text only ever enters the page as text nodes. */
(() => {
  "use strict";

  const params = new URLSearchParams(window.location.search);
  const id = params.get("id");
  const heading = document.getElementById("document-title");
  const meta = document.getElementById("document-meta");
  const loading = document.getElementById("document-loading");
  const body = document.getElementById("document-text");
  // The collection's name, which the server renders into the page (no inline script).
  const siteName = document.querySelector('meta[name="application-name"]')?.content || "Documents";

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  /** The server counts offsets in code points, JS strings in UTF-16 units; they differ only
      after a character beyond U+FFFF (emoji, some symbols), so most texts skip the walk. */
  const hasAstral = (text) => /[\uD800-\uDFFF]/.test(text);
  function utf16Index(text, codePoints) {
    if (!hasAstral(text)) return codePoints;
    let index = 0;
    for (let i = 0; i < codePoints && index < text.length; i++) {
      index += text.codePointAt(index) > 0xffff ? 2 : 1;
    }
    return index;
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

  /** A visible message above the text: a notice (role status) or an error (role alert). */
  function say(kind, text) {
    loading.remove();
    const node = el(kind === "error" ? "div" : "p", kind, text);
    node.setAttribute("role", kind === "error" ? "alert" : "status");
    body.before(node);
  }

  /** The cited span from the query string, or a reason why there is none. A link can name any
      span, so only one that starts where a sentence starts and ends where one ends is shown as
      a cited passage. */
  function citedSpan(sentences) {
    const [start, end] = [params.get("start"), params.get("end")];
    if (start === null && end === null) {
      return { reason: "This link does not point at a passage, so nothing is highlighted." };
    }
    const numbers = /^\d+$/.test(start ?? "") && /^\d+$/.test(end ?? "");
    const [a, b] = [Number(start), Number(end)];
    const cited = numbers && a < b &&
      sentences.some(([s]) => s === a) && sentences.some(([, e]) => e === b);
    if (!cited) {
      return {
        reason: "The span this link points at is not a passage of this document, so nothing is " +
          "highlighted. The whole document is shown.",
      };
    }
    return { start: a, end: b };
  }

  function formatDate(value) {
    const date = /^\d{4}-\d{2}-\d{2}$/.test(value) ? new Date(`${value}T00:00:00Z`) : null;
    if (!date || Number.isNaN(date.getTime())) return String(value);
    const format = { year: "numeric", month: "long", day: "numeric", timeZone: "UTC" };
    return date.toLocaleDateString(undefined, format);
  }

  function render(doc) {
    loading.remove(); // before scrolling, so the layout no longer shifts
    const title = doc.title || doc.id;
    heading.textContent = title;
    document.title = `${title} · ${siteName}`;

    const text = doc.text || "";
    const span = citedSpan(doc.sentences || []);
    const m = doc.metadata || {};
    const items = [];
    if (doc.source) items.push(sourceNode(doc.source));
    if (m.publisher) items.push(el("span", null, String(m.publisher)));
    if (m.author) items.push(el("span", null, `By ${m.author}`));
    if (m.date) items.push(el("span", null, formatDate(m.date)));
    if (span.reason === undefined) {
      const pages = doc.page_starts || [];
      if (pages.length) {
        const page = pages.filter((s) => s <= span.start).length;
        items.push(el("span", null, `Cited passage on page ${page}`));
      }
      const jump = el("a", null, "Go to the cited passage");
      jump.href = "#cited";
      items.push(jump);
    }
    meta.replaceChildren(...items);

    if (span.reason !== undefined) {
      say("notice", span.reason);
      body.textContent = text;
      return;
    }
    const a = utf16Index(text, span.start);
    const b = utf16Index(text, span.end);
    const mark = el("mark", null, text.slice(a, b));
    mark.id = "cited";
    mark.tabIndex = -1;
    body.replaceChildren(text.slice(0, a), mark, text.slice(b));
    mark.scrollIntoView({ block: "center" });
    mark.focus({ preventScroll: true });
  }

  async function load() {
    if (!id) {
      heading.textContent = "No document chosen";
      say("error", "This link does not name a document. Open documents from the links under an answer.");
      return;
    }
    let response;
    try {
      response = await fetch(`/v1/documents/${encodeURIComponent(id)}`, {
        headers: { Accept: "application/json" },
      });
    } catch {
      say("error", "Could not reach the question service. Check your connection and reload the page.");
      return;
    }
    if (response.ok) {
      render(await response.json());
      return;
    }
    if (response.status === 404) {
      heading.textContent = "Document not found";
      say("error", `No document with id “${id}”.`);
    } else if (response.status === 503) {
      say("error", "The service is still loading the documents. Please reload this page in a few seconds.");
    } else {
      let detail = null;
      try {
        detail = (await response.json()).detail;
      } catch {
        // not JSON: use the status below
      }
      const fallback = `The document could not be loaded (HTTP ${response.status}).`;
      say("error", typeof detail === "string" ? detail : fallback);
    }
  }

  load().catch(() => say("error", "The document could not be shown. Please reload the page."));
})();
