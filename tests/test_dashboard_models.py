"""The dashboard's Models page (the key's models with their jobs, exports made in the background with their
state, delete after a confirmation) and Reports page (the key's report.html files, served sandboxed, never
a file outside its folder); plus an export in a real browser (marked `browser`)."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pages import browser_or_skip, launch, settings, until
from server import serve_in_thread
from test_dashboard import JOB, ORIGIN, add_job, login
from test_dashboard_playground import Fields
from tunelab.report_page import html_page
from tunelab.service.app import create_app
from tunelab.service.exports import EXPORT_LOCK
from tunelab.service.settings import owner_of

K1 = {"Authorization": "Bearer k1"}
MODEL = f"ft:tiny:{owner_of('k1')}:mine:dashboardtest"
PROMPT_JOB, PROMPT_MODEL = "ftjob-prompttuned00000001", f"ft:tiny:{owner_of('k1')}:prompt:x"


def publish(app, tiny_dir) -> None:
    """k1's fine-tuned MODEL (a random LoRA in its job's run folder, no training) and PROMPT_MODEL, a
    prompt-tuning adapter, which no model format holds: its export fails."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    service = app.state.service
    for job_id in (JOB, PROMPT_JOB):
        add_job(service.store, job_id, "succeeded")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), lora).save_pretrained(
        service.data.run_dir(JOB)
    )
    prompt_run = service.data.run_dir(PROMPT_JOB)
    prompt_run.mkdir(parents=True)
    (prompt_run / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    service.store.add_model(MODEL, owner_of("k1"), JOB)
    service.store.add_model(PROMPT_MODEL, owner_of("k1"), PROMPT_JOB)


@pytest.fixture
def client(tmp_path, tiny_llama_dir):
    with TestClient(create_app(settings(tmp_path, tiny_llama_dir)), headers=ORIGIN) as client:
        client.app.state.service.store.add_file("file-train1", owner_of("k1"), "t.jsonl", "fine-tune", 1)
        publish(client.app, tiny_llama_dir)
        yield client


def exports(client: TestClient) -> dict[tuple[str, str, str], tuple[str, str]]:
    """The live part's exports: (model, format, quant) -> (state, download link or message)."""
    rows = re.findall(
        r'<tr class="export">\s*<td class="mono">([^<]+)</td>\s*<td>([^<]+)</td>\s*<td>([^<]+)</td>\s*'
        r'<td><span class="status[^"]*">([^<]+)</span></td>\s*<td>(?:<a href="([^"]+)"|<span[^>]*>([^<]*))?',
        client.get("/models/live").text,
    )
    found = {}
    for model, format, quant, state, link, message in rows:
        found[model, format, quant] = (state, (link or message).replace("&amp;", "&"))
    return found


def export_path(model: str) -> str:
    return f"/models/{model}/export"


def test_the_page_lists_the_keys_models_with_their_jobs(client):
    login(client, "k1")
    page = client.get("/models")
    assert page.status_code == 200
    text = page.text
    assert '<a href="/models">Models</a>' in text and '<a href="/reports">Reports</a>' in text
    for model in ("tiny", MODEL, PROMPT_MODEL):
        assert f'<td class="mono">{model}</td>' in text
    assert f'<a class="mono" href="/jobs/{JOB}">{JOB}</a>' in text
    assert 'href="/playground?model=ft%3Atiny%3A' in text and 'href="/playground?model=tiny"' in text
    assert text.count(">Delete</button>") == 2  # the fine-tuned ones; a base is the server's
    assert '<option value="gguf-lora">' in text and '<option value="q4_k_m">' in text
    assert 'id="live">' in text  # no export under way: nothing to poll
    assert '<script src="/static/live.js" defer></script>' in text and text.count("<script") == 1


def test_an_export_returns_at_once_and_reaches_done_with_a_download(client):
    login(client, "k1")
    with EXPORT_LOCK:  # another export is running: this one must wait, and its post must not
        started = client.post(export_path(MODEL), data={"format": "hf"}, follow_redirects=False)
        assert started.status_code == 303 and started.headers["location"] == "/models#exports"
        assert exports(client)[MODEL, "hf", "f32"] == ("pending", "")
        live = client.get("/models/live").text
        assert 'data-live="/models/live"' in live and "<html" not in live
        assert '<a href="/models#exports">reload</a>' in client.get("/models").text  # the noscript hint
    state, link = until(lambda: (s := exports(client)[MODEL, "hf", "f32"])[0] == "done" and s)
    assert "data-live" not in client.get("/models/live").text  # all done: polling stops
    assert link == f"/v1/models/{MODEL.replace(':', '%3A')}/export?format=hf&quant=f32"
    download = client.get(link)
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(download.content))
    assert {"model.safetensors", "config.json"} <= set(archive.namelist())
    assert json.loads(archive.read("export.json"))["format"] == "hf"
    assert client.get(link, headers=K1).content == download.content  # the API's export: the same, kept


def test_a_failing_export_shows_its_message(client):
    login(client, "k1")
    bad = client.post(export_path(MODEL), data={"format": "hf", "quant": "q8_0"})  # checked before it starts
    assert bad.status_code == 400 and "quant q8_0: for hf choose one of f32, f16, bf16" in bad.text
    assert client.post(export_path(PROMPT_MODEL), data={"format": "gguf"}).status_code == 200
    state, message = until(lambda: (s := exports(client)[PROMPT_MODEL, "gguf", "f16"])[0] == "failed" and s)
    assert f"{PROMPT_MODEL}: a prompt-tuning run cannot be exported" in message
    assert str(client.app.state.service.data.root) not in client.get("/models").text  # no server path


def test_delete_asks_first_then_deletes_as_the_api_does(client):
    login(client, "k1")
    exported = client.app.state.service.data.exports_dir(JOB, MODEL) / "hf-f32.zip"
    exported.parent.mkdir(parents=True)
    exported.write_bytes(b"made earlier, by the API")
    assert exports(client)[MODEL, "hf", "f32"][0] == "done"  # an archive on disk is done

    asked = client.post(f"/models/{MODEL}/delete")
    assert asked.status_code == 200 and "Delete this model?" in asked.text
    assert '<input type="hidden" name="confirm" value="yes">' in asked.text
    assert client.get(f"/v1/models/{MODEL}", headers=K1).status_code == 200  # not yet
    done = client.post(f"/models/{MODEL}/delete", data={"confirm": "yes"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/models"
    assert client.get(f"/v1/models/{MODEL}", headers=K1).status_code == 404
    assert MODEL not in client.get("/models").text and not exported.exists()
    assert client.post(f"/models/{MODEL}/delete").status_code == 404  # gone

    assert client.post("/models/tiny/delete").status_code == 404  # no fine-tuned model of that name
    base = client.post("/models/tiny/delete", data={"confirm": "yes"})
    assert base.status_code == 400 and "is a base model of this server" in base.text


def test_another_keys_model_is_a_404_page(client):
    login(client, "k2")
    assert MODEL not in client.get("/models").text
    for path, data in (
        (export_path(MODEL), {"format": "hf"}),
        (f"/models/{MODEL}/delete", {}),
        (f"/models/{MODEL}/delete", {"confirm": "yes"}),
    ):
        response = client.post(path, data=data)
        assert response.status_code == 404 and "Not found" in response.text, (path, data)
    assert client.get(f"/v1/models/{MODEL}", headers=K1).status_code == 200
    assert exports(client) == {}


def test_cross_origin_posts_are_refused(client):
    login(client, "k1")
    elsewhere = {"Origin": "http://evil.example"}
    posts = [(export_path(MODEL), {"format": "hf"}), (f"/models/{MODEL}/delete", {"confirm": "yes"})]
    for path, data in posts:
        response = client.post(path, data=data, headers=elsewhere)
        assert response.status_code == 403 and response.json()["error"]["code"] == "cross_site_request"
    assert client.get(f"/v1/models/{MODEL}", headers=K1).status_code == 200 and exports(client) == {}


def test_pages_without_a_key_answer_401(client):
    for method, path in (("get", "/models"), ("get", "/models/live"), ("post", export_path(MODEL)),
                         ("post", f"/models/{MODEL}/delete"), ("get", "/reports"),
                         ("get", "/reports/a/report.html")):  # fmt: skip
        response = getattr(client, method)(path)
        assert response.status_code == 401 and 'name="api_key"' in response.text, path


def write_report(folder: Path, title: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.html").write_text(html_page(title, "<table><tr><td>0.75</td></tr></table>"))
    return folder / "report.html"


def test_reports_lists_and_serves_the_keys_own_reports_only(client):
    data = client.app.state.service.data
    mine, theirs = data.reports(owner_of("k1")), data.reports(owner_of("k2"))
    write_report(mine / "compare-1", "tunelab compare")
    write_report(mine / "sweeps" / "lr", "tunelab sweep")
    (mine / "notes.html").write_text("<p>not a report</p>")
    secret = write_report(theirs / "private", "tunelab compress-report")
    (mine / "leak").mkdir()
    (mine / "leak" / "report.html").symlink_to(secret)  # a link out of the key's folder
    login(client, "k1")

    listing = client.get("/reports").text
    assert 'href="/reports/compare-1/report.html"' in listing and "tunelab compare" in listing
    assert 'href="/reports/sweeps/lr/report.html"' in listing and "tunelab sweep" in listing
    assert "leak/" not in listing and "notes.html" not in listing and "tunelab compress-report" not in listing
    shown = client.get("/reports/compare-1/report.html")
    assert shown.status_code == 200 and shown.headers["content-type"].startswith("text/html")
    assert "sandbox" in shown.headers.get_list("content-security-policy")  # besides the dashboard's own
    assert "<td>0.75</td>" in shown.text
    for path in (
        f"/reports/..%2F{owner_of('k2')}%2Fprivate%2Freport.html",
        f"/reports/%2E%2E/%2E%2E/reports/{owner_of('k2')}/private/report.html",
        "/reports/%2F" + str(secret).lstrip("/"),
        "/reports/leak/report.html",
        "/reports/notes.html",
        "/reports/nothing/report.html",
    ):
        response = client.get(path)
        assert response.status_code == 404 and "Not found" in response.text, path
        assert "tunelab compress-report" not in response.text, path
    client.post("/logout")
    login(client, "k2")
    assert "compare-1" not in client.get("/reports").text
    assert client.get("/reports/compare-1/report.html").status_code == 404
    assert client.get("/reports/private/report.html").status_code == 200  # k2's own


def test_every_input_has_a_label(client):
    login(client, "k1")
    pages = [client.get("/models").text, client.post(f"/models/{MODEL}/delete").text]
    for html in pages:
        fields = Fields()
        fields.feed(html)
        assert fields.unlabelled() == []
    models = Fields()
    models.feed(pages[0])
    assert {"format", "quant"} <= {name for name, _, _ in models.fields}


# In a real browser


@pytest.fixture
def server(tmp_path, tiny_llama_dir):
    app = create_app(settings(tmp_path, tiny_llama_dir))
    with serve_in_thread(app) as url:
        publish(app, tiny_llama_dir)
        yield url


@pytest.mark.browser
def test_an_export_reaches_done_without_reloading_then_downloads(server, tmp_path):
    chromium, sync_api = browser_or_skip()
    with sync_api.sync_playwright() as p:
        browser = launch(p, chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda m: "Content Security Policy" in m.text and errors.append(m.text))
        page.goto(server + "/")
        page.fill("input[name=api_key]", "k1")
        page.click("button[type=submit]")
        page.click("header >> text=Models")
        row = page.locator("tr", has=page.locator(f"td.mono:text-is('{MODEL}')"))
        row.get_by_label("Format").select_option("hf")
        row.get_by_label("Quant").select_option("f16")
        with EXPORT_LOCK:  # held, so that the page surely shows the export before it is done
            row.get_by_role("button", name="Export").click()
            sync_api.expect(page.locator("tr.export .status")).to_have_text("pending")
            page.evaluate("window.notReloaded = true")
        sync_api.expect(page.locator("tr.export .status")).to_have_text("done", timeout=120_000)
        # A function, not an expression: Playwright would eval an expression, which the CSP forbids.
        page.wait_for_function("() => !document.querySelector('#live[data-live]')")
        assert page.evaluate("window.notReloaded") is True  # it changed in place
        with page.expect_download() as downloading:
            page.locator("tr.export").get_by_role("link", name="Download").click()
        saved = tmp_path / "export.zip"
        downloading.value.save_as(saved)
        assert downloading.value.suggested_filename == f"{MODEL.replace(':', '_')}-hf-f16.zip"
        assert "model.safetensors" in zipfile.ZipFile(saved).namelist()
        page.screenshot(path="/tmp/dashboard-models-export.png", full_page=True)
        assert not errors, errors  # no CSP refusal or script error
        browser.close()
