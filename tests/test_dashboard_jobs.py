"""The dashboard's job pages: the "New job" form (options from the config fields, errors on the form, the
job made as the API makes it, the curl and Python preview), and the job page's progress, buttons and live
part, fed by a real worker; plus a run in a real browser with and without JavaScript (marked `browser`)."""

from __future__ import annotations

import html
import json
import re
import threading

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import copy_task_rows
from pages import browser_or_skip, launch, settings, sign_in, until
from server import serve_in_thread
from tunelab.service.app import create_app
from tunelab.service.worker import serve_jobs

K1 = {"Authorization": "Bearer k1"}
ORIGIN = {"Origin": "http://testserver"}  # the test client's own origin, as a browser sends it
TRAIN_POINTS = re.compile(r'<polyline class="train_loss" points="([^"]*)"')


def training_text() -> str:
    return "".join(json.dumps(row) + "\n" for row in copy_task_rows(12))


@pytest.fixture
def client(tmp_path, tiny_llama_dir):
    with TestClient(create_app(settings(tmp_path, tiny_llama_dir)), headers=ORIGIN) as client:
        yield client


def signed_in(client: TestClient, key: str = "k1") -> TestClient:
    client.post("/login", data={"api_key": key}, follow_redirects=False)
    return client


def upload(client: TestClient) -> str:
    files = {"file": ("train.jsonl", training_text())}
    return client.post("/v1/files", headers=K1, files=files, data={"purpose": "fine-tune"}).json()["id"]


def form_for(file_id: str, **fields) -> dict:
    return {"model": "tiny", "training_file": file_id, "method": "lora", "training": "supervised"} | fields


def start_job(client: TestClient, **fields) -> str:
    response = client.post("/jobs/new", data=form_for(upload(client), **fields), follow_redirects=False)
    assert response.status_code == 303, response.text
    return response.headers["location"].removeprefix("/jobs/")


def api_job(client: TestClient, job_id: str) -> dict:
    return client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=K1).json()


def test_without_a_key_every_page_is_the_login_form(client):
    for method, path in (
        ("get", "/jobs/new"),
        ("post", "/jobs/new"),
        ("get", "/jobs/ftjob-x/live"),
        ("post", "/jobs/ftjob-x/cancel"),
        ("get", "/static/live.js"),
    ):
        response = getattr(client, method)(path)
        assert response.status_code == 401 and 'name="api_key"' in response.text, path


def test_the_form_lists_methods_trainings_and_their_options_with_labels(client):
    signed_in(client)
    upload(client)
    form = client.get("/jobs/new")
    assert form.status_code == 200
    text = form.text
    for method in ("lora", "ia3"):  # the servable methods
        assert f'<option value="{method}"' in text
    assert '<option value="full"' not in text  # not servable from a shared base
    for training in ("supervised", "dpo", "reinforcement"):
        assert f'<option value="{training}"' in text
    assert 'name="grader"' in text and "train.jsonl" in text
    # LoRA's own options: help as the hint, bounds as min/max; TrainConfig's: choices as a select.
    assert re.search(r'lora_r <span class="hint muted">LoRA rank \(1 to 1024\); default 8', text)
    assert re.search(r'name="lora\.lora_r" value="" step="1" min="1" max="1024"', text)
    assert re.search(r'<select name="lora\.dora">\s*<option value="">default</option>', text)
    assert re.search(r'<select name="train\.scheduler">.*<option value="cosine">', text, re.S)
    assert 'name="train.max_steps"' in text and 'name="train.seed"' not in text  # FIXED: the job's own
    assert '<a href="/jobs/new">New job</a>' in text


def test_a_bad_option_is_named_on_the_form_with_400(client):
    signed_in(client)
    file_id = upload(client)
    cases = [
        ({"lora.lora_r": "5000"}, "tunelab.lora_r"),
        ({"lora.lora_r": "many"}, "tunelab.lora_r"),
        ({"train.scheduler": "sideways"}, "tunelab.scheduler"),
        ({"n_epochs": "lots"}, "n_epochs"),
        ({"training": "reinforcement", "grader": "{not json"}, "method.reinforcement.grader"),
        ({"training_file": "file-nope"}, "training_file"),
    ]
    for fields, param in cases:
        response = client.post("/jobs/new", data=form_for(file_id, **fields))
        assert response.status_code == 400, fields
        assert response.headers["content-type"].startswith("text/html")
        alert = re.search(r'<p class="error" role="alert">([^<]*)</p>', response.text).group(1)
        assert param in alert, (fields, alert)
        assert 'value="lots"' in response.text or "n_epochs" not in fields  # the form keeps what was typed
    assert client.get("/v1/fine_tuning/jobs", headers=K1).json()["data"] == []


def test_a_good_form_creates_the_job_the_api_sees(client):
    signed_in(client)
    job_id = start_job(
        client, **{"n_epochs": "2", "lora.lora_r": "4", "lora.dora": "true", "suffix": "mine"},
        **{"train.max_steps": "3", "train.scheduler": "linear"},
    )  # fmt: skip
    job = api_job(client, job_id)
    assert job["status"] == "queued" and job["model"] == "tiny"
    assert job["hyperparameters"]["n_epochs"] == 2
    given = {"method": "lora", "lora_r": 4, "dora": True, "max_steps": 3, "scheduler": "linear"}
    assert {name: job["tunelab"][name] for name in given} == given
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200 and "lora_r=4" in page.text


def test_a_dpo_form_becomes_a_dpo_method(client):
    signed_in(client)
    response = client.post(
        "/jobs/new",
        data=form_for(upload(client), training="dpo", beta="0.2", objective="ipo", action="preview"),
    )
    assert response.status_code == 200, response.text
    text = html.unescape(response.text)
    assert '"type": "dpo"' in text and '"beta": 0.2' in text and '"objective": "ipo"' in text
    assert "--objective ipo --beta 0.2" in text


def test_the_preview_shows_curl_python_and_the_dry_run_without_creating_a_job(client):
    signed_in(client)
    file_id = upload(client)
    response = client.post("/jobs/new", data=form_for(file_id, action="preview", **{"lora.lora_r": "16"}))
    assert response.status_code == 200
    assert "&#34;lora_r&#34;: 16" in response.text  # the JSON body, escaped in the page
    text = html.unescape(response.text)
    assert "curl -s http://testserver/v1/fine_tuning/jobs" in text and '"lora_r": 16' in text
    assert "client.fine_tuning.jobs.create(" in text and f"training_file='{file_id}'" in text
    assert "extra_body={'tunelab': {'method': 'lora', 'lora_r': 16}}" in text
    assert "tunelab train --model tiny --data TRAINING_FILE.jsonl" in text and "--lora-r 16" in text
    assert "--dry-run" in text
    assert client.get("/v1/fine_tuning/jobs", headers=K1).json()["data"] == []


def points(live_html: str) -> int:
    found = TRAIN_POINTS.search(live_html)
    return len(found.group(1).split()) if found else 0


def test_the_live_part_gains_points_as_the_worker_trains(client):
    signed_in(client)
    job_id = start_job(client, **{"train.max_steps": "4", "train.save_every": "2"})
    assert until(lambda: api_job(client, job_id)["status"] == "queued")
    first = client.get(f"/jobs/{job_id}/live")
    assert first.status_code == 200 and 'id="live" data-live=' in first.text and points(first.text) == 0
    assert "<html" not in first.text  # the part alone, for live.js to swap in

    service = client.app.state.service
    worker = threading.Thread(target=serve_jobs, args=(service.data.root,), kwargs={"once": True})
    worker.start()
    seen = [0]

    def ended() -> bool:
        live = client.get(f"/jobs/{job_id}/live").text
        seen.append(points(live))
        return "data-live=" not in live  # an ended job's part asks for no more polls

    until(ended)
    worker.join(timeout=60)
    assert api_job(client, job_id)["status"] == "succeeded"
    assert seen == sorted(seen) and seen[-1] == 4  # points only came, one per step
    page = client.get(f"/jobs/{job_id}").text
    assert 'step <span id="step">4</span> / 4' in page
    checkpoint = re.search(r'href="/playground\?model=([^"]+)">Try in playground', page).group(1)
    playground = client.get(f"/playground?model={checkpoint}").text
    assert re.search(r'<option value="[^"]+:ckpt-step-\d+" selected>', playground)


def test_pause_resume_and_cancel_buttons_change_the_status(client):
    signed_in(client)
    job_id = start_job(client)
    page = client.get(f"/jobs/{job_id}").text
    assert f'action="/jobs/{job_id}/pause"' in page and f'action="/jobs/{job_id}/cancel"' in page
    for action, status in (("pause", "paused"), ("resume", "queued"), ("cancel", "cancelled")):
        response = client.post(f"/jobs/{job_id}/{action}", follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == f"/jobs/{job_id}"
        assert api_job(client, job_id)["status"] == status
    again = client.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 400 and 'role="alert"' in again.text and "already cancelled" in again.text
    assert "data-live=" not in client.get(f"/jobs/{job_id}").text  # ended: nothing left to poll
    assert client.post(f"/jobs/{job_id}/explode").status_code == 404


def test_another_keys_job_is_a_404_page(client):
    signed_in(client)
    job_id = start_job(client)
    client.post("/logout")
    signed_in(client, "k2")
    for method, path in (
        ("get", f"/jobs/{job_id}"),
        ("get", f"/jobs/{job_id}/live"),
        ("post", f"/jobs/{job_id}/cancel"),
        ("post", f"/jobs/{job_id}/pause"),
    ):
        response = getattr(client, method)(path)
        assert response.status_code == 404 and "Not found" in response.text, path
    assert api_job(client, job_id)["status"] == "queued"
    stolen = client.post("/jobs/new", data=form_for(api_job(client, job_id)["training_file"]))
    assert stolen.status_code == 400 and "training_file" in stolen.text


def test_cross_origin_posts_are_refused(client):
    signed_in(client)
    job_id = start_job(client)
    file_id = api_job(client, job_id)["training_file"]
    elsewhere = {"Origin": "http://evil.example"}
    for path, data in ((f"/jobs/{job_id}/cancel", {}), ("/jobs/new", form_for(file_id))):
        response = client.post(path, data=data, headers=elsewhere)
        assert response.status_code == 403 and response.json()["error"]["code"] == "cross_site_request"
    assert api_job(client, job_id)["status"] == "queued"
    assert len(client.get("/v1/fine_tuning/jobs", headers=K1).json()["data"]) == 1


def test_scripts_come_from_this_server_only(client):
    policy = client.get("/").headers["content-security-policy"]
    assert "script-src 'self';" in policy and "'unsafe-inline'" not in policy.split("style-src")[0]
    assert "frame-ancestors 'none'" in policy
    signed_in(client)
    script = client.get("/static/live.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    job_id = start_job(client)
    page = client.get(f"/jobs/{job_id}").text
    assert '<script src="/static/live.js" defer></script>' in page
    assert len(re.findall(r"<script", page)) == 1  # none inline
    assert "<noscript>" in page and f'<a href="/jobs/{job_id}">reload</a>' in page


# In a real browser


@pytest.fixture
def server(tmp_path, tiny_llama_dir):
    app = create_app(settings(tmp_path, tiny_llama_dir))
    with serve_in_thread(app) as url:
        yield url, app


def upload_over_http(url: str) -> str:
    files = {"file": ("train.jsonl", training_text())}
    response = httpx.post(f"{url}/v1/files", headers=K1, files=files, data={"purpose": "fine-tune"})
    return response.json()["id"]


def fill_new_job(page, url: str, file_id: str) -> None:
    page.click("header >> text=New job")
    page.select_option("select[name=training_file]", file_id)
    page.click("summary")  # the training options
    page.fill("input[name='train.max_steps']", "4")


@pytest.mark.browser
def test_a_job_started_from_the_form_draws_its_curve_live(server):
    url, app = server
    chromium, sync_api = browser_or_skip()
    file_id = upload_over_http(url)
    with sync_api.sync_playwright() as p:
        browser = launch(p, chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: "Content Security Policy" in m.text and errors.append(m.text))
        sign_in(page, url)
        fill_new_job(page, url, file_id)
        page.click("button[value=preview]")
        sync_api.expect(page.locator("#preview")).to_contain_text("client.fine_tuning.jobs.create(")
        page.click("button[value=start]")
        sync_api.expect(page.locator("h1")).to_contain_text("ftjob-")
        job_id = page.url.rsplit("/", 1)[1]
        store = app.state.service.store
        until(lambda: store.job_status(job_id) == "queued")
        page.evaluate("window.notReloaded = true")
        worker = threading.Thread(
            target=serve_jobs, args=(app.state.service.data.root,), kwargs={"once": True}
        )
        worker.start()
        # A function, not an expression: Playwright would eval an expression, which the CSP forbids.
        count = """(least) => (document.querySelector('svg.chart polyline.train_loss')
            ?.getAttribute('points') || '').trim().split(/\\s+/).filter(Boolean).length >= least"""
        page.wait_for_function(count, arg=2, timeout=120_000)
        page.wait_for_function(count, arg=4, timeout=120_000)
        sync_api.expect(page.locator(".status")).to_have_text("succeeded", timeout=60_000)
        assert page.evaluate("window.notReloaded") is True  # it changed in place
        worker.join(timeout=60)
        page.screenshot(path="/tmp/dashboard-job-live.png", full_page=True)
        assert not errors, errors  # no CSP refusal or script error
        browser.close()


@pytest.mark.browser
def test_without_javascript_the_form_and_the_job_page_still_work(server):
    url, app = server
    chromium, sync_api = browser_or_skip()
    file_id = upload_over_http(url)
    with sync_api.sync_playwright() as p:
        browser = launch(p, chromium)
        context = browser.new_context(java_script_enabled=False)
        page = context.new_page()
        sign_in(page, url)
        fill_new_job(page, url, file_id)
        page.click("button[value=preview]")
        sync_api.expect(page.locator("#preview")).to_contain_text("curl -s")
        page.click("button[value=start]")
        sync_api.expect(page.locator("h1")).to_contain_text("ftjob-")
        job_id = page.url.rsplit("/", 1)[1]
        until(lambda: app.state.service.store.job_status(job_id) == "queued")
        page.click("main a:text('reload')")  # the noscript hint's link: without a script, nothing polls
        page.click("button.pause")
        sync_api.expect(page.locator(".status")).to_have_text("paused")
        page.click("button.cancel")
        sync_api.expect(page.locator(".status")).to_have_text("cancelled")
        browser.close()
