// The playground's replies shown as they are generated. A send posts the form's fields to its
// `data-stream` route (/playground/stream), which answers server-sent events: each model's text pieces
// go into a turn shown below the conversation, side by side; when all replies are whole, the page the plain
// post would show (the `page` event) replaces this one's main, so the conversation, its feedback forms and
// the fields they carry are the server's own. A form the server refuses before streaming comes back as that
// page, with its message; a failure while streaming shows as the page's error. Without JavaScript the form
// posts as it is; served by tunelab itself, as the CSP allows scripts from this server only.
"use strict";

// The events of a fetch's text/event-stream body, as [name, data]; each data is one line of JSON.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const name = block.match(/^event: (.*)$/m);
      const data = block.match(/^data: (.*)$/m);
      if (name && data) yield [name[1], JSON.parse(data[1])];
    }
  }
}

function element(tag, className, text) {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text !== undefined) made.textContent = text; // the users' and models' text, never markup
  return made;
}

// Where the template puts a new turn, and an error: after the conversation.
function afterConversation(node) {
  const turns = document.querySelectorAll("main > section.turn");
  const last = turns.length ? turns[turns.length - 1] : document.querySelector("#chat").closest("section");
  last.after(node);
}

// The turn being answered, as the template shows one but with no feedback forms yet.
function pendingTurn(fields) {
  const turn = element("section", "turn");
  turn.setAttribute("aria-busy", "true");
  const replies = element("div", "replies");
  turn.append(element("p", "muted", "You"), element("pre", "reply user", fields.get("message")), replies);
  for (const model of [fields.get("model"), fields.get("compare")].filter(Boolean)) {
    const heading = element("h2", "", "Reply from ");
    heading.append(element("span", "mono", model));
    const reply = element("div", "reply-of");
    reply.append(heading, element("pre", "reply"));
    replies.append(reply);
  }
  return turn;
}

function setSending(sending) {
  for (const button of document.querySelectorAll("button[form=chat]")) button.disabled = sending;
}

function showMain(html) {
  const fresh = new DOMParser().parseFromString(html, "text/html");
  document.querySelector("main").replaceWith(fresh.querySelector("main"));
}

// As the plain post's page shows it: the turn unanswered, the message kept in its field.
function failed(turn, message) {
  turn.remove();
  for (const shown of document.querySelectorAll("main .error")) shown.closest("section").remove();
  const section = element("section");
  const error = element("p", "error", message);
  error.setAttribute("role", "alert");
  section.append(error);
  afterConversation(section);
  setSending(false);
}

async function send(form) {
  const fields = new FormData(form);
  for (const shown of document.querySelectorAll("main .notice, main .error")) shown.closest("section").remove();
  const turn = pendingTurn(fields);
  afterConversation(turn);
  setSending(true);
  let response;
  try {
    response = await fetch(form.dataset.stream, { method: "POST", body: fields, credentials: "same-origin" });
  } catch {
    form.submit(); // no connection for the script's request: try the plain post
    return;
  }
  if (!(response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
    // refused before streaming (or signed out): the server's page, as after the plain post
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    document.body.replaceWith(page.body);
    return;
  }
  const replies = turn.querySelectorAll(".reply-of pre.reply");
  try {
    for await (const [name, data] of events(response)) {
      if (name === "piece") replies[data.model].append(data.text);
      else if (name === "page") return showMain(data.html);
      else if (name === "error") return failed(turn, data.message);
    }
  } catch {
    // the connection dropped: below
  }
  failed(turn, "The connection to the server ended before the reply was whole; send the message again.");
}

// On the document, not the form: the form is replaced with the server's after every turn.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.dataset.stream) return;
  event.preventDefault();
  send(form);
});
