"""The dashboard's playground (a multi-turn conversation with a system prompt, two models side by side,
feedback on every reply) and Feedback page (filters, "make a dataset from these"); plus one run in a real
browser (marked `browser`)."""

from __future__ import annotations

import json
import re
import time
from html.parser import HTMLParser

import httpx
import pytest
from fastapi.testclient import TestClient

from pages import browser_or_skip, launch, sign_in, until, watched
from server import serve_in_thread
from test_dashboard import JOB, ORIGIN, login, seed
from test_dashboard_loop import send_in_playground
from tunelab.service.app import create_app
from tunelab.service.engine import Generation
from tunelab.service.settings import ServiceSettings, owner_of

CHECKPOINT = "ft:tiny:org:x:ckpt-step-4"


def settings(tmp_path, tiny_llama_dir) -> ServiceSettings:
    return ServiceSettings(
        data_dir=str(tmp_path / "data"),
        api_keys=["k1", "k2"],
        base_models={"tiny": str(tiny_llama_dir), "tiny-b": str(tiny_llama_dir)},
        start_worker=False,
    )


@pytest.fixture
def client(tmp_path, tiny_llama_dir):
    with TestClient(create_app(settings(tmp_path, tiny_llama_dir)), headers=ORIGIN) as client:
        seed(client.app.state.service.store)
        client.app.state.service.store.add_checkpoint(JOB, 4, CHECKPOINT, {"step": 4})
        yield client


def turns(html: str) -> list[str]:
    """The conversation the page carries in its forms: each turn's completion ids."""
    return list(dict.fromkeys(re.findall(r'name="turn" value="([^"]+)"', html)))


def send(client: TestClient, message: str, html: str = "", **fields) -> str:
    data = {"model": "tiny", "max_tokens": "4", "message": message, "turn": turns(html), **fields}
    response = client.post("/playground", data=data)
    assert response.status_code == 200, response.text
    return response.text


def prompt_of(client: TestClient, completion_id: str, key: str = "k1"):
    return client.app.state.service.store.get_completion(completion_id, owner_of(key))


def test_two_turns_keep_the_history(client):
    login(client, "k1")
    first = send(client, "say alice", system="Answer in one word.")
    second = send(client, "and bob?", first, system="Answer in one word.")
    (one,), (two,) = (ids.split() for ids in turns(second))
    reply = prompt_of(client, one).response
    assert prompt_of(client, two).prompt == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "say alice"},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "and bob?"},
    ]
    assert second.index("say alice") < second.index("and bob?")  # the whole conversation, in order
    assert second.count('class="reply-of"') == 2 and "finish reason" in second
    assert '<textarea name="message" form="chat" required></textarea>' in second  # sent: cleared
    assert "Answer in one word." in second  # the system prompt stays


def test_two_models_side_by_side_answer_every_turn(client):
    login(client, "k1")
    page = client.get(f"/playground?model={CHECKPOINT}&compare=tiny-b").text
    assert f'<option value="{CHECKPOINT}" selected>' in page  # a checkpoint: usable, though not listed
    assert re.search(r'name="compare">.*<option value="tiny-b" selected>', page, re.S)
    assert "ft:nope" not in client.get("/playground?model=ft:nope").text  # not the key's: not offered

    first = send(client, "say alice", compare="tiny-b")
    assert first.count('class="reply-of"') == 2
    assert "Reply from <span" in first and ">tiny-b</span>" in first
    second = send(client, "again", first, compare="tiny-b")
    a, b = turns(second)[1].split()
    assert prompt_of(client, a).model == "tiny" and prompt_of(client, b).model == "tiny-b"
    first_a, first_b = (prompt_of(client, i).response for i in turns(second)[0].split())
    assert prompt_of(client, a).prompt[1]["content"] == first_a  # each model sees its own replies
    assert prompt_of(client, b).prompt[1]["content"] == first_b


def test_a_turn_fails_whole_and_the_draft_stays(client):
    login(client, "k1")
    response = client.post(
        "/playground", data={"model": "tiny", "compare": "ft:nope", "message": "hello there"}
    )
    assert response.status_code == 400 and "ft:nope" in response.text and 'role="alert"' in response.text
    assert 'class="reply-of"' not in response.text and "hello there" in response.text
    assert not turns(response.text)


def rate_and_correct(client: TestClient) -> tuple[str, str, str]:
    """Two models answer; the first reply is rated good, the second corrected. Their ids and the page."""
    page = send(client, "say alice", compare="tiny-b")
    a, b = turns(page)[0].split()
    state = {"model": "tiny", "compare": "tiny-b", "turn": turns(page)}
    rated = client.post("/playground/feedback", data={**state, "completion_id": a, "rating": "1"})
    assert rated.status_code == 200 and "your rating is kept" in rated.text
    assert rated.text.count('class="reply-of"') == 2  # the conversation is still there
    better = {**state, "completion_id": b, "rating": "-1", "correction": "Alice <3"}
    corrected = client.post("/playground/feedback", data=better)
    assert corrected.status_code == 200 and "better answer is kept" in corrected.text
    return a, b, corrected.text


def test_rated_and_corrected_replies_are_on_the_feedback_page(client):
    login(client, "k1")
    a, b, _ = rate_and_correct(client)
    store = client.app.state.service.store
    kept = {
        f.completion_id: (f.rating, f.correction) for f in store.feedback_with_completions(owner_of("k1"))
    }
    assert kept == {a: (1, None), b: (-1, "Alice <3")}

    page = client.get("/feedback").text
    assert "2 answer(s)" in page and "say alice" in page
    assert "Alice &lt;3" in page and "Alice <3" not in page  # the user's text, escaped
    assert page.index('<td class="mono">tiny-b</td>') < page.index(
        '<td class="mono">tiny</td>'
    )  # newest first

    def shown(query: str) -> list[str]:
        text = client.get(f"/feedback?{query}").text
        return [model for model in ("tiny", "tiny-b") if f'<td class="mono">{model}</td>' in text]

    assert shown("rating=1") == ["tiny"] and shown("rating=-1") == ["tiny-b"] and shown("rating=0") == []
    assert shown("corrected=yes") == ["tiny-b"] and shown("corrected=no") == ["tiny"]
    assert shown("model=tiny-b") == ["tiny-b"] and shown("") == ["tiny", "tiny-b"]
    assert '<option value="yes" selected>' in client.get("/feedback?corrected=yes").text


def test_make_a_dataset_from_the_filtered_answers(client):
    login(client, "k1")
    a, b, _ = rate_and_correct(client)
    made = client.post("/feedback/dataset", data={"kind": "sft"}, follow_redirects=False)
    assert made.status_code == 303
    file_id = made.headers["location"].removeprefix("/files/")
    service = client.app.state.service
    row = service.store.get_file(file_id, owner_of("k1"))
    assert row.purpose == "fine-tune" and row.filename == "feedback.sft.jsonl"
    lines = [json.loads(line) for line in service.data.file(file_id).read_text().splitlines()]
    say_alice = {"role": "user", "content": "say alice"}
    good = {"role": "assistant", "content": prompt_of(client, a).response}
    assert lines == [
        {"messages": [say_alice, good]},
        {"messages": [say_alice, {"role": "assistant", "content": "Alice <3"}]},
    ]
    assert client.get(made.headers["location"]).status_code == 200  # its page, ready for a job

    corrected = client.post(
        "/feedback/dataset", data={"kind": "sft", "corrected": "yes"}, follow_redirects=False
    )
    corrected_id = corrected.headers["location"].removeprefix("/files/")
    assert service.data.file(corrected_id).read_text().splitlines() == [json.dumps(lines[1])]

    dpo = client.post("/feedback/dataset", data={"kind": "dpo", "model": "tiny-b"}, follow_redirects=False)
    pair = json.loads(service.data.file(dpo.headers["location"].removeprefix("/files/")).read_text())
    assert pair["preferred_output"] == [{"role": "assistant", "content": "Alice <3"}]

    none = client.post("/feedback/dataset", data={"kind": "sft", "rating": "0"})
    assert none.status_code == 400 and "none of these answers" in none.text
    bad = client.post("/feedback/dataset", data={"kind": "ppo"})
    assert bad.status_code == 400 and "ppo" in bad.text


def test_another_key_sees_and_uses_none_of_it(client):
    login(client, "k1")
    a, b, page = rate_and_correct(client)
    login(client, "k2")
    feedback = client.get("/feedback").text
    assert "0 answer(s)" in feedback and "say alice" not in feedback and "Alice" not in feedback
    assert client.post("/feedback/dataset", data={"kind": "sft"}).status_code == 400

    borrowed = client.post("/playground", data={"model": "tiny", "message": "hi", "turn": [a]})
    assert borrowed.status_code == 400 and "say alice" not in borrowed.text and a in borrowed.text
    assert prompt_of(client, a).response not in borrowed.text
    rating = client.post("/playground/feedback", data={"completion_id": b, "rating": "1"})
    assert rating.status_code == 400 and 'role="alert"' in rating.text
    shown = client.get("/playground").text
    assert not turns(shown)
    assert len(client.app.state.service.store.feedback_with_completions(owner_of("k2"))) == 0


def test_cross_origin_posts_are_refused(client):
    login(client, "k1")
    evil = {"Origin": "https://evil.example"}
    for path, data in [
        ("/playground", {"model": "tiny", "message": "hi"}),
        ("/playground/feedback", {"completion_id": "x", "rating": "1"}),
        ("/feedback/dataset", {"kind": "sft"}),
    ]:
        assert client.post(path, data=data, headers=evil).status_code == 403, path
    assert client.app.state.service.store.feedback_with_completions() == []


def test_pages_without_a_key_answer_401(client):
    for method, path in [("get", "/feedback"), ("post", "/feedback/dataset")]:
        response = getattr(client, method)(path)
        assert response.status_code == 401 and 'name="api_key"' in response.text


# Streamed (the page's script)


def events(body: str) -> list[tuple[str, dict]]:
    """A text/event-stream body's events, as (name, data)."""
    found = re.findall(r"^event: (.*)\ndata: (.*)\n\n", body, re.M)
    return [(name, json.loads(data)) for name, data in found]


def kept(client: TestClient) -> int:
    """How many completions the server keeps, of every key."""
    return client.app.state.service.store.one("SELECT COUNT(*) AS n FROM completions")["n"]


def stream(client: TestClient, message: str, html: str = "", **fields):
    data = {"model": "tiny", "max_tokens": "6", "message": message, "turn": turns(html), **fields}
    return client.post("/playground/stream", data=data)


def test_a_streamed_turn_comes_piece_by_piece_then_is_kept(client):
    """Each model's pieces, then each kept reply (its text the pieces'), then the page the plain post
    would show; a second turn goes on from the first, as the plain post's does."""
    login(client, "k1")
    first = stream(client, "say alice", compare="tiny-b")
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/event-stream")
    sent = events(first.text)
    names = [name for name, _ in sent]
    assert names[-3:] == ["reply", "reply", "page"] and set(names[:-3]) == {"piece"}
    replies = [data for name, data in sent if name == "reply"]
    assert [reply["model"] for reply in replies] == [0, 1]
    for column, model in enumerate(("tiny", "tiny-b")):
        pieces = [data["text"] for name, data in sent if name == "piece" and data["model"] == column]
        assert len(pieces) > 1 and all(pieces)  # token by token
        reply = replies[column]
        assert reply["text"] == "".join(pieces) and reply["finish_reason"] in ("stop", "length")
        assert 0 < reply["completion_tokens"] <= 6
        kept = prompt_of(client, reply["id"])
        assert kept.model == model and kept.response == reply["text"]
        assert kept.prompt == [{"role": "user", "content": "say alice"}]
    page = sent[-1][1]["html"]
    assert turns(page) == [f"{replies[0]['id']} {replies[1]['id']}"]
    assert page.count('class="reply-of"') == 2 and "finish reason" in page and "Good answer" in page
    assert '<textarea name="message" form="chat" required></textarea>' in page  # sent: cleared

    second = events(stream(client, "and bob?", page, compare="tiny-b").text)
    (_, shown), reply = second[-1], second[-3][1]
    assert len(turns(shown["html"])) == 2
    assert prompt_of(client, reply["id"]).prompt[1:] == [
        {"role": "assistant", "content": replies[0]["text"]},
        {"role": "user", "content": "and bob?"},
    ]
    assert client.app.state.service.quotas._running == {}  # the slots are back


def failing(monkeypatch) -> None:
    """Every model fails after its first piece, as one whose engine breaks mid-reply."""
    pieces = Generation.pieces

    def first_then_fail(self):
        yield next(pieces(self))
        raise RuntimeError("the engine broke")

    monkeypatch.setattr(Generation, "pieces", first_then_fail)


def test_a_failure_while_streaming_is_an_error_event_and_nothing_is_kept(client, monkeypatch):
    login(client, "k1")
    failing(monkeypatch)
    sent = events(stream(client, "say alice", compare="tiny-b").text)
    assert [name for name, _ in sent][-1] == "error" and "reply" not in [name for name, _ in sent]
    assert "request id" in sent[-1][1]["message"] and "the engine broke" not in sent[-1][1]["message"]
    assert kept(client) == 0 and client.app.state.service.quotas._running == {}


@pytest.mark.parametrize(
    "message, fields, says",
    [
        ("hello there", {"max_tokens": "many"}, "max_tokens"),
        (" ", {}, "write a message"),
        ("hello there", {"compare": "ft:nope"}, "ft:nope"),
        ("hello there", {"turn": ["chatcmpl-nope"]}, "chatcmpl-nope"),
    ],
)
def test_a_bad_form_is_the_plain_pages_error_before_any_streaming(client, message, fields, says):
    login(client, "k1")
    response = stream(client, message, **fields)
    assert response.status_code == 400 and response.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in response.text and says in response.text
    assert not turns(response.text) and f">{message}</textarea>" in response.text  # the draft stays
    assert kept(client) == 0
    assert client.app.state.service.quotas._running == {}


def test_a_stream_is_within_the_keys_generation_quota(client):
    login(client, "k1")
    service = client.app.state.service
    taken = service.quotas.take_generation(owner_of("k1"), service.settings.max_generations_per_key)
    busy = stream(client, "hello there")
    assert busy.status_code == 429 and "Retry-After" in busy.headers and 'role="alert"' in busy.text
    taken()
    assert stream(client, "hello there").status_code == 200


def test_a_stream_is_the_keys_own(client):
    login(client, "k1")
    replies = [data for name, data in events(stream(client, "say alice").text) if name == "reply"]
    login(client, "k2")
    borrowed = stream(client, "hi", turn=[replies[0]["id"]])
    assert borrowed.status_code == 400 and "say alice" not in borrowed.text
    assert replies[0]["text"] not in borrowed.text
    assert stream(client, "hi", model=CHECKPOINT).status_code == 400  # k1's checkpoint, not k2's
    evil = client.post(
        "/playground/stream",
        data={"model": "tiny", "message": "hi"},
        headers={"Origin": "https://evil.example"},
    )
    assert evil.status_code == 403
    client.cookies.clear()
    signed_out = stream(client, "hi")
    assert signed_out.status_code == 401 and 'name="api_key"' in signed_out.text
    assert kept(client) == 1  # k1's only


class Fields(HTMLParser):
    """The page's form fields (but hidden ones) that no <label> names: wrapped in one or `for` its id."""

    def __init__(self):
        super().__init__()
        self.depth, self.fields, self.labelled = 0, [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "label":
            self.depth += 1
            self.labelled.add(attrs.get("for"))
        elif tag in ("input", "select", "textarea") and attrs.get("type") != "hidden":
            self.fields.append((attrs.get("name"), attrs.get("id"), self.depth > 0))

    def handle_endtag(self, tag):
        self.depth -= tag == "label"

    def unlabelled(self) -> list:
        return [name for name, id_, inside in self.fields if not inside and id_ not in self.labelled]


def test_every_input_has_a_label(client):
    login(client, "k1")
    rate_and_correct(client)
    pages = [send(client, "hi", compare="tiny-b"), client.get("/feedback").text]
    for html in pages:
        fields = Fields()
        fields.feed(html)
        assert fields.fields and fields.unlabelled() == []


# In a real browser


@pytest.fixture
def served(tmp_path, tiny_llama_dir):
    app = create_app(settings(tmp_path, tiny_llama_dir))
    with serve_in_thread(app) as url:
        seed(app.state.service.store)
        yield url, app


@pytest.fixture
def server(served):
    return served[0]


@pytest.fixture
def slow_tokens(monkeypatch):
    """Tokens 50 ms apart, as a bigger model's come (the tiny one's all come at once): a reader sees them
    arrive one by one, and a reply of 100 takes seconds."""
    token = Generation._token

    def slowly(self, *args):
        time.sleep(0.05)
        token(self, *args)

    monkeypatch.setattr(Generation, "_token", slowly)


def test_a_client_that_goes_away_stops_the_generation(served, slow_tokens, monkeypatch):
    url, app = served
    started: list[Generation] = []
    init = Generation.__init__
    monkeypatch.setattr(Generation, "__init__", lambda self, *a: (started.append(self), init(self, *a))[1])
    with httpx.Client(base_url=url, headers={"Origin": url}, timeout=30) as http:
        http.post("/login", data={"api_key": "k1"})
        chat = {"model": "tiny", "compare": "tiny-b", "max_tokens": "100", "message": "say alice"}
        with http.stream("POST", "/playground/stream", data=chat) as response:
            assert response.status_code == 200
            next(line for line in response.iter_lines() if line == "event: piece")
    # gone after its first piece: both generations stop, nothing is kept and the slots are back
    until(lambda: app.state.service.quotas._running == {}, timeout=10)
    time.sleep(0.5)  # any token still on its way
    assert len(started) == 2 and all(g.completion_tokens < 20 for g in started), started
    assert app.state.service.store.one("SELECT COUNT(*) AS n FROM completions")["n"] == 0


@pytest.mark.browser
def test_playground_to_a_dataset_in_a_browser(server):
    chromium, sync_api = browser_or_skip()
    with sync_api.sync_playwright() as p:
        browser = launch(p, chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        expect = sync_api.expect

        page.goto(server + "/")
        page.fill("input[name=api_key]", "k1")
        page.click("button[type=submit]")
        page.click("header >> text=Playground")
        page.select_option("select[name=model]", "tiny")
        page.select_option("select[name=compare]", "tiny-b")
        page.fill("textarea[name=system]", "Answer in one word.")
        page.fill("input[name=max_tokens]", "6")
        page.fill("textarea[name=message]", "say alice")
        page.click("button[form=chat]")
        replies = page.locator(".reply-of")
        expect(replies).to_have_count(2)
        expect(replies.nth(1)).to_contain_text("tiny-b")
        page.screenshot(path="/tmp/dashboard-playground-compare.png", full_page=True)

        replies.nth(0).get_by_role("button", name="Good answer").click()
        expect(page.get_by_role("status")).to_contain_text("your rating is kept")
        page.locator(".reply-of").nth(1).get_by_label("Suggest a better answer").fill("Alice.")
        page.locator(".reply-of").nth(1).get_by_role("button", name="Send the better answer").click()
        expect(page.get_by_role("status")).to_contain_text("better answer is kept")
        expect(page.locator(".reply-of")).to_have_count(2)  # the conversation stays

        page.click("header >> text=Feedback")
        expect(page.locator("#answers tr")).to_have_count(3)  # a header and two answers
        page.select_option("select[name=corrected]", "yes")
        page.click("#filters button[type=submit]")
        expect(page.locator("#answers tr")).to_have_count(2)
        expect(page.locator("#answers")).to_contain_text("Alice.")
        page.screenshot(path="/tmp/dashboard-feedback.png", full_page=True)
        page.click("text=Make a dataset from these")
        expect(page.locator("h1")).to_contain_text("feedback.sft.jsonl")
        browser.close()


# Records the pending turn's reply lengths (one list per change, a number per model) into
# window.seenLengths. A function: Playwright would eval an expression string, which the CSP forbids.
RECORD_LENGTHS = """() => {
    window.seenLengths = [];
    new MutationObserver(() => {
        const replies = document.querySelectorAll('section.turn[aria-busy] .reply-of pre.reply');
        const now = [...replies].map((reply) => reply.textContent.length);
        const last = window.seenLengths.at(-1) || [];
        if (now.length && now.some((n, i) => n !== last[i])) window.seenLengths.push(now);
    }).observe(document.body, { childList: true, subtree: true, characterData: true });
}"""


@pytest.mark.browser
def test_replies_stream_side_by_side_in_a_browser(served, slow_tokens, monkeypatch):
    """Both models' replies grow together as they are generated; then the conversation is the server's,
    feedback forms and all, and the next message streams too. A form refused before streaming, and a
    model failing while streaming, show the page's error with the message kept."""
    url, _ = served
    chromium, sync_api = browser_or_skip()
    expect = sync_api.expect
    with sync_api.sync_playwright() as p:
        browser = launch(p, chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems = watched(page)
        sign_in(page, url)
        page.goto(url + "/playground")
        page.select_option("select[name=compare]", "tiny-b")
        page.fill("input[name=max_tokens]", "8")
        page.evaluate(RECORD_LENGTHS)
        page.fill("textarea[name=message]", "say alice")
        page.click("button[form=chat]")
        replies = page.locator("section.turn .reply-of")
        expect(replies.nth(1).get_by_role("button", name="Good answer")).to_be_visible()
        expect(replies).to_have_count(2)
        final = [len(replies.nth(i).locator("pre.reply").text_content()) for i in range(2)]
        seen = page.evaluate("() => window.seenLengths")
        assert all(final) and len({a for a, _ in seen if a}) > 1 and len({b for _, b in seen if b}) > 1, seen
        assert any(0 < a < final[0] and 0 < b < final[1] for a, b in seen), (seen, final)  # at once
        expect(page.locator("textarea[name=message]")).to_have_value("")  # sent: cleared

        replies.nth(0).get_by_role("button", name="Good answer").click()
        expect(page.get_by_role("status")).to_contain_text("your rating is kept")
        send_in_playground(page, expect, "and bob?", 2)  # streamed too: the script is still listening
        expect(page.locator("section.turn").last.locator("form.rate")).to_have_count(2)

        page.fill("input[name=max_tokens]", "100000")
        page.fill("textarea[name=message]", "too long")
        page.click("button[form=chat]")
        expect(page.get_by_role("alert")).to_contain_text("max_tokens")
        expect(page.locator("textarea[name=message]")).to_have_value("too long")
        expect(page.locator("section.turn")).to_have_count(2)

        page.fill("input[name=max_tokens]", "8")
        failing(monkeypatch)
        page.click("button[form=chat]")
        expect(page.get_by_role("alert")).to_contain_text("request id")
        expect(page.locator("section.turn")).to_have_count(2)  # the failed turn is not shown
        expect(page.locator("textarea[name=message]")).to_have_value("too long")
        assert not problems, problems
        browser.close()
