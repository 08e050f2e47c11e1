"""Issue 31's acceptance tests of the dashboard, as a person uses it: the whole loop in a real browser with
the real worker (upload, a LoRA job, its live curve, the model side by side with its base in the
playground, feedback, a dataset made of it and a second job on that); the protections (another key's
pages, forms posted from another origin, users' and models' text shown as text); the pages without
JavaScript; and a label for every field of every page (and axe-core's rules, when axe is at hand).
Browser tests are marked `browser` and skip without chromium or playwright."""

from __future__ import annotations

import os
import re
import threading
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pages import browser_or_skip, jsonl, launch, rows, settings, sign_in, until, watched
from server import serve_in_thread
from tiny import make_model_dir
from tunelab.service.app import create_app
from tunelab.service.settings import owner_of
from tunelab.service.usecases import keep_chat_reply
from tunelab.service.worker import serve_jobs

K1 = {"Authorization": "Bearer k1"}
ORIGIN = {"Origin": "http://testserver"}  # the test client's own origin, as a browser sends it
VIEWPORT = {"width": 1280, "height": 900}
SCRIPT = "<script>alert(1)</script>"
# Points of the job page's train-loss curve. A function, not an expression: Playwright would eval an
# expression, which the pages' CSP forbids.
CURVE_POINTS = """() => (document.querySelector('svg.chart polyline.train_loss')
    ?.getAttribute('points') || '').trim().split(/\\s+/).filter(Boolean).length"""
AT_LEAST = f"(least) => ({CURVE_POINTS})() >= least"
# Records every count the curve shows, from now on, into window.seenPoints (the page is never reloaded,
# or the record is lost: that is checked too).
RECORD_POINTS = f"""() => {{
    const count = {CURVE_POINTS};
    window.seenPoints = [count()];
    new MutationObserver(() => {{
        const n = count();
        if (n !== window.seenPoints.at(-1)) window.seenPoints.push(n);
    }}).observe(document.body, {{ childList: true, subtree: true, attributes: true }});
}}"""


def bad_line_file() -> bytes:
    """Ten examples (a job's least) and line 3 not JSON."""
    good = rows(10)
    return jsonl([*good[:2], "{not json\n", *good[2:]])


# In a real browser


def upload_in_page(page, expect, name: str, content: bytes) -> str:
    """Uploads from the Files page as a person does; the new file's id, once its page opened."""
    page.click("header >> text=Files")
    page.set_input_files(
        "input[type=file]", {"name": name, "mimeType": "application/jsonl", "buffer": content}
    )
    page.click("main button[type=submit]")
    expect(page.locator("h1")).to_contain_text(name)
    return page.url.rsplit("/", 1)[1]


def start_job_in_page(page, expect, file_id: str, max_steps: int = 4) -> str:
    """The New job form: LoRA on the tiny base, `max_steps` steps; the job's id once its page opened."""
    page.click("header >> text=New job")
    page.select_option("select[name=model]", "tiny")
    page.select_option("select[name=training_file]", file_id)
    page.select_option("select[name=method]", "lora")
    page.click("summary")  # the training options
    page.fill("input[name='train.max_steps']", str(max_steps))
    page.click("button[value=start]")
    expect(page.locator("h1")).to_contain_text("ftjob-")
    return page.url.rsplit("/", 1)[1]


def send_in_playground(page, expect, message: str, turns: int) -> None:
    page.fill("textarea[name=message]", message)
    page.click("button[form=chat]")
    expect(page.locator("section.turn")).to_have_count(turns)
    expect(page.locator("section.turn[aria-busy]")).to_have_count(0)  # streamed (with JavaScript): whole


@pytest.fixture(scope="module")
def smol_tiny_dir(tmp_path_factory):
    """A tiny model with the embedded model's tokenizer: llama.cpp's GGUF converter knows real ones only."""
    from tunelab.models import load_tokenizer

    tokenizer = load_tokenizer("default", log=lambda *a: None)
    return make_model_dir(tmp_path_factory.mktemp("smol-tiny"), "llama", tokenizer=tokenizer)


@pytest.fixture
def served_with_worker(tmp_path, smol_tiny_dir):
    """The service with its real worker process, as `tunelab serve` runs it."""
    app = create_app(settings(tmp_path, smol_tiny_dir, start_worker=True))
    with serve_in_thread(app) as url:
        until(lambda: httpx.get(f"{url}/health").json().get("worker"), timeout=60)
        yield url, app


@pytest.mark.browser
def test_the_whole_loop_as_a_person_does_it(served_with_worker, tmp_path):
    """Sign in; a file with a bad line shows its number; a good file; a 4-step LoRA job from the form,
    whose curve gains points without a reload; its model beside the base in the playground; a reply rated
    and the other corrected, five turns, so ten answers; Feedback makes an sft file of them (a job needs
    at least 10 examples); its page; a second job on it, which trains too; that model's export, made in
    the background on the Models page, downloaded as GGUF."""
    url, app = served_with_worker
    service, owner = app.state.service, owner_of("k1")
    chromium, sync_api = browser_or_skip()
    expect = sync_api.expect
    with sync_api.sync_playwright() as p:
        browser = launch(p, chromium)
        page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
        problems = watched(page)

        sign_in(page, url)
        expect(page.locator("main")).to_contain_text("Fine-tuning jobs")

        upload_in_page(page, expect, "bad.jsonl", bad_line_file())
        expect(page.locator("h1 .status")).to_have_text("1 issue(s)")
        issue = page.locator("#validation tbody tr").first
        expect(issue.locator("td").first).to_have_text("3")  # the bad line's number
        expect(issue).to_contain_text("invalid_json")

        train_id = upload_in_page(page, expect, "train.jsonl", jsonl(rows(12)))
        expect(page.locator("h1 .status")).to_have_text("OK")
        expect(page.locator("#validation")).to_contain_text("12 example(s), 12 valid")

        job_id = start_job_in_page(page, expect, train_id)
        expect(page.locator("#live dd.mono").first).to_have_text(train_id)  # its training file
        page.evaluate("() => { window.notReloaded = true; }")
        page.evaluate(RECORD_POINTS)
        # Four steps of the tiny model fit between two of the page's polls (2 s), so another client (the
        # API) pauses the job at its first step: the worker stops at its next one, and the page, without a
        # reload, shows the curve part-way; resumed, it goes on to four points.
        store = app.state.service.store
        until(lambda: store.train_steps(job_id), timeout=120, every_s=0.005)
        paused = httpx.post(f"{url}/v1/fine_tuning/jobs/{job_id}/pause", headers=K1)
        assert paused.status_code == 200, paused.text
        stopped = until(
            lambda: next(
                (e for e in store.list_events(job_id, None, 50) if "paused after step" in e.message), None
            )
        )
        part_way = int(stopped.message.split("paused after step ")[1].split(";")[0])
        assert 1 <= part_way < 4, stopped.message
        page.wait_for_function(f"(n) => ({CURVE_POINTS})() === n", arg=part_way, timeout=30_000)
        expect(page.locator("#live .status")).to_have_text("paused")
        assert httpx.post(f"{url}/v1/fine_tuning/jobs/{job_id}/resume", headers=K1).status_code == 200
        page.wait_for_function(AT_LEAST, arg=4, timeout=120_000)
        expect(page.locator("#live .status")).to_have_text("succeeded", timeout=60_000)
        assert page.evaluate("() => window.notReloaded") is True  # it changed in place
        seen = page.evaluate("() => window.seenPoints")
        assert seen[0] == 0 and part_way in seen and seen[-1] == 4 and seen == sorted(seen), seen
        expect(page.locator("#step")).to_have_text("4")
        page.screenshot(path="/tmp/dashboard-loop-job.png", full_page=True)

        # The finished model, beside its base.
        model = page.locator("#live dd a.mono")
        fine_tuned = model.inner_text()
        assert fine_tuned.startswith("ft:tiny:")
        model.click()
        expect(page.locator("select[name=model]")).to_have_value(fine_tuned)
        page.select_option("select[name=compare]", "tiny")
        page.fill("input[name=max_tokens]", "6")
        for turn in range(1, 6):
            send_in_playground(page, expect, f"repeat the word w{turn}", turn)
            last = page.locator("section.turn").last
            replies = last.locator(".reply-of")
            expect(replies).to_have_count(2)  # side by side
            expect(replies.nth(0).locator("h2")).to_contain_text(fine_tuned)
            expect(replies.nth(1).locator("h2")).to_have_text("Reply from tiny")
            if turn == 1:
                box_a, box_b = replies.nth(0).bounding_box(), replies.nth(1).bounding_box()
                assert box_a["x"] + box_a["width"] <= box_b["x"] and abs(box_a["y"] - box_b["y"]) < 2
            replies.nth(0).get_by_role("button", name="Good answer").click()
            expect(page.get_by_role("status")).to_contain_text("your rating is kept")
            better = page.locator("section.turn").last.locator(".reply-of").nth(1)
            better.get_by_label("Suggest a better answer").fill(f"w{turn}")
            better.get_by_role("button", name="Send the better answer").click()
            expect(page.get_by_role("status")).to_contain_text("your better answer is kept")
            expect(page.locator("section.turn")).to_have_count(turn)  # the conversation stays
        page.screenshot(path="/tmp/dashboard-loop-playground.png", full_page=True)

        page.click("header >> text=Feedback")
        expect(page.locator("main h2").first).to_have_text("10 answer(s)")
        expect(page.locator("#answers tr")).to_have_count(11)  # a header and ten answers
        expect(page.locator("#answers")).to_contain_text("w5")
        page.select_option("#dataset select[name=kind]", "sft")
        page.click("text=Make a dataset from these")
        expect(page.locator("h1")).to_contain_text("feedback.sft.jsonl")
        expect(page.locator("h1 .status")).to_have_text("OK")
        expect(page.locator("#validation")).to_contain_text("10 example(s), 10 valid")
        dataset_id = page.url.rsplit("/", 1)[1]

        second = start_job_in_page(page, expect, dataset_id, max_steps=2)
        assert second != job_id
        expect(page.locator("#live dd.mono").first).to_have_text(dataset_id)
        expect(page.locator("#live .status")).to_have_text("succeeded", timeout=120_000)
        page.click("header >> text=Overview")
        expect(page.locator("main table").first.locator("tbody tr")).to_have_count(2)

        # the second model's GGUF, made in the background on the Models page and downloaded
        second_model = service.store.get_job(second, owner).fine_tuned_model
        page.click("header >> text=Models")
        row = page.locator("tr", has=page.locator(f"td.mono:text-is('{second_model}')"))
        row.get_by_label("Format").select_option("gguf")
        row.get_by_label("Quant").select_option("q8_0")
        row.get_by_role("button", name="Export").click()
        expect(page.locator("tr.export .status")).to_have_text("done", timeout=120_000)
        with page.expect_download() as downloading:
            page.locator("tr.export").get_by_role("link", name="Download").click()
        saved = tmp_path / "second.zip"
        downloading.value.save_as(saved)
        names = zipfile.ZipFile(saved).namelist()
        assert any(name.endswith(".gguf") for name in names), names
        assert not problems, problems
        browser.close()


def test_a_dataset_under_ten_examples_fails_its_job_with_a_clear_message(tmp_path, tiny_llama_dir):
    """The product's rule, as OpenAI's: the form accepts the job, its file check then fails it, and the
    job's page says why (the file, its count and the minimum) where the person lands."""
    with TestClient(create_app(settings(tmp_path, tiny_llama_dir)), headers=ORIGIN) as client:
        client.post("/login", data={"api_key": "k1"})
        page = client.post(
            "/playground", data={"model": "tiny", "max_tokens": "4", "message": "repeat the word w1"}
        ).text
        (completion,) = re.findall(r'name="completion_id" value="([^"]+)"', page)[:1]
        client.post("/playground/feedback", data={"model": "tiny", "completion_id": completion,
                                                   "rating": "-1", "correction": "w1"})  # fmt: skip
        made = client.post("/feedback/dataset", data={"kind": "sft"}, follow_redirects=False)
        file_id = made.headers["location"].removeprefix("/files/")
        form = {"model": "tiny", "training_file": file_id, "method": "lora", "training": "supervised"}
        started = client.post("/jobs/new", data={**form, "action": "start"}, follow_redirects=False)
        assert started.status_code == 303
        job_page = client.get(started.headers["location"]).text  # the file check ran: a background task
        assert '<span class="status status-failed">failed</span>' in job_page
        alert = re.search(r'<p class="error" role="alert">(.*?)</p>', job_page, re.S).group(1)
        assert f"{file_id} has 1 example(s), but must have at least 10" in alert


# Protections


@pytest.fixture
def client(tmp_path, tiny_llama_dir):
    with TestClient(create_app(settings(tmp_path, tiny_llama_dir)), headers=ORIGIN) as client:
        yield client


def k1_job_and_file(client: TestClient) -> tuple[str, str]:
    files = {"file": ("train.jsonl", jsonl(rows(12)))}
    file_id = client.post("/v1/files", headers=K1, files=files, data={"purpose": "fine-tune"}).json()["id"]
    body = {"model": "tiny", "training_file": file_id, "tunelab": {"method": "lora", "max_steps": 2}}
    job_id = client.post("/v1/fine_tuning/jobs", headers=K1, json=body).json()["id"]
    return job_id, file_id


def test_another_keys_job_file_and_model_are_not_found(client):
    job_id, file_id = k1_job_and_file(client)
    store = client.app.state.service.store
    checkpoint = "ft:tiny:k1:x:ckpt-step-2"
    store.add_checkpoint(job_id, 2, checkpoint, {"step": 2})
    client.post("/login", data={"api_key": "k1"})
    assert f'<option value="{checkpoint}" selected>' in client.get(f"/playground?model={checkpoint}").text

    client.post("/logout")
    client.post("/login", data={"api_key": "k2"})
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/live", f"/files/{file_id}"):
        response = client.get(path)
        assert response.status_code == 404 and "Not found" in response.text, path
        assert "train.jsonl" not in response.text
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 404
    assert client.post(f"/files/{file_id}/clean").status_code == 404
    # The playground offers no model of another key, and refuses it as the API does one that never was.
    offered = client.get(f"/playground?model={checkpoint}").text
    assert checkpoint not in offered
    asked = client.post("/playground", data={"model": checkpoint, "message": "hi", "max_tokens": "2"})
    assert asked.status_code == 400 and 'class="reply-of"' not in asked.text
    assert f"No model with id &#39;{checkpoint}&#39; exists for this API key." in asked.text  # as if none
    assert client.get(f"/v1/models/{checkpoint}", headers={"Authorization": "Bearer k2"}).status_code == 404
    assert store.job_status(job_id) != "cancelled"


EVIL_PAGE = """<!doctype html><title>elsewhere</title>
<form id="upload" method="post" action="{url}/files" enctype="multipart/form-data">
  <input type="file" name="file"><input type="hidden" name="purpose" value="fine-tune">
  <button type="submit">Upload</button></form>
<form id="job" method="post" action="{url}/jobs/new">
  <input type="hidden" name="model" value="tiny"><input type="hidden" name="training_file" value="{file_id}">
  <input type="hidden" name="method" value="lora"><input type="hidden" name="action" value="start">
  <button type="submit">Start</button></form>"""


@pytest.mark.browser
def test_a_form_posted_from_another_origin_is_refused(tmp_path, tiny_llama_dir):
    """A page of another port of the same host (same site: the SameSite=Strict cookie goes along) posts
    the dashboard's forms; both are refused with 403 and nothing is stored."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    chromium, sync_api = browser_or_skip()
    app = create_app(settings(tmp_path, tiny_llama_dir))
    with serve_in_thread(app) as url:
        files = {"file": ("train.jsonl", jsonl(rows(12)))}
        file_id = httpx.post(
            f"{url}/v1/files", headers=K1, files=files, data={"purpose": "fine-tune"}
        ).json()["id"]
        evil = Starlette(
            routes=[Route("/", lambda _: HTMLResponse(EVIL_PAGE.format(url=url, file_id=file_id)))]
        )
        with serve_in_thread(evil) as elsewhere, sync_api.sync_playwright() as p:
            assert elsewhere.rsplit(":", 1)[1] != url.rsplit(":", 1)[1]
            browser = launch(p, chromium)
            page = browser.new_page()
            sign_in(page, url)
            for form in ("upload", "job"):
                page.goto(elsewhere + "/")
                if form == "upload":
                    page.set_input_files(
                        "#upload input[type=file]",
                        {"name": "x.jsonl", "mimeType": "application/jsonl", "buffer": jsonl(rows(12))},
                    )
                with page.expect_response(
                    lambda r: r.url.startswith(url) and r.request.method == "POST"
                ) as answer:
                    page.click(f"#{form} button")
                response = answer.value
                assert response.status == 403, form  # signed in (401 otherwise), but from elsewhere
                assert response.request.headers.get("origin") == elsewhere
                assert "cross_site_request" in page.content()
            page.goto(url + "/")  # the dashboard itself still works, with the same cookie
            expect = sync_api.expect
            expect(page.locator("main")).to_contain_text("Fine-tuning jobs")
            browser.close()
    owner = owner_of("k1")
    assert [f.id for f in app.state.service.store.list_files(owner)] == [file_id]
    assert app.state.service.store.list_jobs(owner, None, 10) == []


@pytest.mark.browser
def test_scripts_in_names_and_answers_are_shown_as_text(tmp_path, tiny_llama_dir):
    """A file name, a stored model answer, a user's message and a correction holding markup are shown as
    that text, run nothing (no dialog) and add no element."""
    chromium, sync_api = browser_or_skip()
    expect = sync_api.expect
    app = create_app(settings(tmp_path, tiny_llama_dir))
    names = ["<script>alert(1).jsonl", "<img src=x onerror=alert(1)>.jsonl"]  # a name keeps no "/"
    with serve_in_thread(app) as url, sync_api.sync_playwright() as p:
        said = [{"role": "user", "content": "hi"}]
        answer = keep_chat_reply(app.state.service, owner_of("k1"), "tiny", said, SCRIPT)
        browser = launch(p, chromium)
        page = browser.new_page(viewport=VIEWPORT)
        problems = watched(page)
        sign_in(page, url)
        ids = [upload_in_page(page, expect, name, jsonl(rows(12))) for name in names]
        expect(page.locator("h1")).to_contain_text(names[1])
        page.click("header >> text=Files")
        for name, file_id in zip(names, ids, strict=True):
            expect(page.locator(f"a[href='/files/{file_id}']")).to_have_text(name)
        page.click("header >> text=New job")
        expect(page.locator("select[name=training_file] option").first).to_contain_text(names[1])

        # The stored answer, carried into the playground's conversation as its turn (as the forms carry it).
        page.click("header >> text=Playground")
        page.evaluate(
            """(id) => { const turn = document.createElement('input');
                turn.type = 'hidden'; turn.name = 'turn'; turn.value = id;
                document.querySelector('#chat').append(turn); }""",
            answer,
        )
        page.fill("input[name=max_tokens]", "2")
        send_in_playground(page, expect, f"and you? {SCRIPT}", 2)
        expect(page.locator("section.turn").first.locator("pre.reply").last).to_have_text(SCRIPT)
        expect(page.locator("section.turn").last.locator("pre.user")).to_have_text(f"and you? {SCRIPT}")
        first = page.locator("section.turn").first.locator(".reply-of")
        first.get_by_label("Suggest a better answer").fill(f"better {SCRIPT}")
        first.get_by_role("button", name="Send the better answer").click()
        expect(page.get_by_role("status")).to_contain_text("your better answer is kept")

        page.click("header >> text=Feedback")
        expect(page.locator("#answers td pre.reply").first).to_have_text(SCRIPT)  # the model's answer
        expect(page.locator("#answers td pre.reply").nth(1)).to_have_text(f"better {SCRIPT}")
        assert page.locator("main script, main img").count() == 0  # no element came of the text
        page.screenshot(path="/tmp/dashboard-loop-xss.png", full_page=True)
        assert not problems, problems
        browser.close()


# Without JavaScript


@pytest.mark.browser
def test_without_javascript_upload_job_and_playground_work(tmp_path, tiny_llama_dir):
    """Forms post and redirect; the job page's live part falls back to the reload link, which shows the
    worker's steps."""
    chromium, sync_api = browser_or_skip()
    expect = sync_api.expect
    app = create_app(settings(tmp_path, tiny_llama_dir))
    with serve_in_thread(app) as url, sync_api.sync_playwright() as p:
        browser = launch(p, chromium)
        context = browser.new_context(java_script_enabled=False, viewport=VIEWPORT)
        page = context.new_page()
        sign_in(page, url)
        file_id = upload_in_page(page, expect, "train.jsonl", jsonl(rows(12)))  # the plain form's post
        expect(page.locator("h1 .status")).to_have_text("OK")

        job_id = start_job_in_page(page, expect, file_id)
        service = app.state.service
        until(lambda: service.store.job_status(job_id) == "queued")
        reload = page.locator("main a:text('reload')")
        expect(reload).to_be_visible()  # the noscript hint: nothing polls
        worker = threading.Thread(target=serve_jobs, args=(service.data.root,), kwargs={"once": True})
        worker.start()
        until(lambda: service.store.job_status(job_id) == "succeeded")
        worker.join(timeout=60)
        reload.click()
        expect(page.locator("#live .status")).to_have_text("succeeded")
        expect(page.locator("#step")).to_have_text("4")
        points = page.locator("svg.chart polyline.train_loss").get_attribute("points").split()
        assert len(points) == 4
        expect(page.locator("main a:text('reload')")).to_have_count(0)  # ended: no hint

        page.click("#live dd a.mono")  # its model, in the playground
        page.select_option("select[name=compare]", "tiny")
        page.fill("input[name=max_tokens]", "4")
        send_in_playground(page, expect, "repeat the word w1", 1)
        expect(page.locator(".reply-of")).to_have_count(2)
        page.locator(".reply-of").nth(0).get_by_role("button", name="Good answer").click()
        expect(page.get_by_role("status")).to_contain_text("your rating is kept")
        send_in_playground(page, expect, "and w2", 2)
        browser.close()


# Labels


class Fields(HTMLParser):
    """The page's form fields a person fills (not hidden ones, not buttons), and those of them with no
    accessible name: not inside a <label>, no <label for=> their id, no aria-label or aria-labelledby."""

    def __init__(self):
        super().__init__()
        self.depth, self.fields, self.label_for, self.ids = 0, [], set(), set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "label":
            self.depth += 1
            if attrs.get("for"):
                self.label_for.add(attrs["for"])
        elif tag in ("input", "select", "textarea") and attrs.get("type") not in (
            "hidden", "submit", "button", "reset", "image"
        ):  # fmt: skip
            named = bool(attrs.get("aria-label", "").strip() or attrs.get("aria-labelledby"))
            self.fields.append((attrs.get("name"), attrs.get("id"), self.depth > 0 or named))

    def handle_endtag(self, tag):
        if tag == "label":
            self.depth -= 1

    def unlabelled(self) -> list:
        return [name for name, id_, named in self.fields if not named and id_ not in self.label_for]


def every_page(client: TestClient) -> dict[str, str]:
    """Every dashboard page of a key with a file, a job, a conversation of two models and feedback."""
    client.post("/login", data={"api_key": "k1"})
    job_id, file_id = k1_job_and_file(client)
    chat = {"model": "tiny", "compare": "tiny", "max_tokens": "2", "message": "hi"}
    playground = client.post("/playground", data=chat).text
    completion = re.search(r'name="completion_id" value="([^"]+)"', playground).group(1)
    rated = client.post("/playground/feedback", data={"completion_id": completion, "rating": "1"})
    assert rated.status_code == 200
    pages = {
        "overview": "/",
        "files": "/files",
        "file": f"/files/{file_id}",
        "new job": "/jobs/new",
        "job": f"/jobs/{job_id}",
        "playground": "/playground",
        "feedback": "/feedback",
    }
    shown = {name: client.get(path) for name, path in pages.items()}
    assert all(response.status_code == 200 for response in shown.values()), shown
    return {name: response.text for name, response in shown.items()} | {"a conversation": playground}


def test_every_field_of_every_page_has_a_label(client):
    client.cookies.clear()
    login = client.get("/").text
    pages = every_page(client) | {"login": login}
    counted = 0
    for name, html in pages.items():
        fields = Fields()
        fields.feed(html)
        assert fields.unlabelled() == [], name
        assert fields.label_for <= fields.ids, name  # each <label for> names a field there
        counted += len(fields.fields)
    assert counted > 50  # the new job form alone has dozens


def axe_or_skip() -> str:
    """axe-core's axe.min.js, from $TUNELAB_AXE_JS (e.g. `npm install axe-core` then
    node_modules/axe-core/axe.min.js) or a system-wide install; the test skips without it."""
    candidates = [os.environ.get("TUNELAB_AXE_JS", ""), "/usr/lib/node_modules/axe-core/axe.min.js",
                  "/usr/share/nodejs/axe-core/axe.min.js"]  # fmt: skip
    found = next((path for path in candidates if path and Path(path).is_file()), None)
    if found is None:
        pytest.skip("no axe-core (set TUNELAB_AXE_JS to its axe.min.js)")
    return Path(found).read_text()


@pytest.mark.browser
def test_axe_finds_no_unlabelled_field_on_any_page(tmp_path, tiny_llama_dir):
    """axe-core's form-field rules (label, select-name, aria-input-field-name...) on every page, in
    Chromium. axe is injected past the pages' CSP (only this test's context bypasses it)."""
    chromium, sync_api = browser_or_skip()
    axe = axe_or_skip()
    app = create_app(settings(tmp_path, tiny_llama_dir))
    rules = [
        *("label", "select-name", "aria-input-field-name", "label-title-only", "form-field-multiple-labels"),
        *("button-name", "input-button-name", "svg-img-alt", "duplicate-id", "duplicate-id-aria"),
    ]
    with serve_in_thread(app) as url, sync_api.sync_playwright() as p:
        files = {"file": ("train.jsonl", jsonl(rows(12)))}
        file_id = httpx.post(
            f"{url}/v1/files", headers=K1, files=files, data={"purpose": "fine-tune"}
        ).json()["id"]
        body = {"model": "tiny", "training_file": file_id, "tunelab": {"method": "lora", "max_steps": 2}}
        job_id = httpx.post(f"{url}/v1/fine_tuning/jobs", headers=K1, json=body).json()["id"]
        browser = launch(p, chromium)
        context = browser.new_context(bypass_csp=True, viewport=VIEWPORT)
        page = context.new_page()
        sign_in(page, url)

        def check(where: str) -> None:
            page.add_script_tag(content=axe)
            result = page.evaluate(
                "(rules) => axe.run(document, {runOnly: {type: 'rule', values: rules}})", rules
            )
            violations = [(v["id"], [n["html"] for n in v["nodes"]]) for v in result["violations"]]
            assert violations == [], (where, violations)
            assert result["passes"], where

        # A conversation of two models, with the replies' feedback forms; one reply rated, for Feedback.
        page.goto(url + "/playground")
        page.select_option("select[name=compare]", "tiny")
        page.fill("input[name=max_tokens]", "2")
        send_in_playground(page, sync_api.expect, "hi", 1)
        check("a conversation")
        page.locator(".reply-of").first.get_by_role("button", name="Good answer").click()
        sync_api.expect(page.get_by_role("status")).to_contain_text("your rating is kept")
        paths = [
            "/",
            "/files",
            f"/files/{file_id}",
            "/jobs/new",
            f"/jobs/{job_id}",
            "/playground",
            "/feedback",
        ]
        for path in paths:
            page.goto(url + path)
            check(path)
        sync_api.expect(page.locator("#answers tr")).to_have_count(2)
        browser.close()
