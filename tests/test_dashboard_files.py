"""The dashboard's Files pages: upload by a plain form post, validation with line numbers, the data report
(lengths, duplicates, personal data, leakage, groups), `clean` making a new file, another key's file a
404, cross-site posts refused, every input labelled; plus the upload in a real browser (marked
`browser`)."""

from __future__ import annotations

import dataclasses
import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from pages import browser_or_skip, jsonl, launch, rows
from server import serve_in_thread
from test_dashboard import ORIGIN, login, settings
from tunelab.service.app import create_app
from tunelab.service.settings import owner_of

NASTY = "<script>alert(1).jsonl"  # a name keeps no "/": only its last path component is kept


def bad_line_file() -> bytes:
    """12 good examples with line 5 not JSON."""
    good = rows(12)
    return jsonl([*good[:4], "{not json\n", *good[4:]])


@pytest.fixture
def client(tmp_path, tiny_llama_dir):
    with TestClient(create_app(settings(tmp_path, tiny_llama_dir)), headers=ORIGIN) as client:
        yield client


def upload(client: TestClient, content: bytes, name: str = "train.jsonl", **kwargs):
    files = {"file": (name, content, "application/jsonl")}
    return client.post("/files", files=files, data={"purpose": "fine-tune"}, follow_redirects=False, **kwargs)


def uploaded(client: TestClient, content: bytes, name: str = "train.jsonl") -> str:
    """The new file's page address."""
    response = upload(client, content, name)
    assert response.status_code == 303, response.text
    assert re.fullmatch(r"/files/file-[0-9a-f]+", response.headers["location"])
    return response.headers["location"]


def test_files_pages_want_a_key(client):
    for method, path in [
        ("get", "/files"),
        ("post", "/files"),
        ("get", "/files/file-x"),
        ("post", "/files/file-x/clean"),
    ]:
        response = getattr(client, method)(path)
        assert response.status_code == 401 and 'name="api_key"' in response.text


def test_a_bad_line_is_shown_with_its_number(client):
    login(client, "k1")
    page = client.get(uploaded(client, bad_line_file()))
    assert page.status_code == 200
    row = re.search(r'<tr><td class="num">5</td><td><code>invalid_json</code>.*?</tr>', page.text)
    assert row, page.text
    assert "1 issue(s)" in page.text and "13 example(s), 12 valid" in page.text
    assert "the report needs every record to load" in page.text and "line 5" in page.text
    stored = client.app.state.service.store.list_files(owner_of("k1"))
    assert [(f.filename, f.purpose, f.bytes) for f in stored] == [
        ("train.jsonl", "fine-tune", len(bad_line_file()))
    ]


def test_a_good_file_is_ok_with_its_counts_and_report(client):
    client.app.state.service.engine.base("tiny")  # loaded: its tokenizer counts tokens
    login(client, "k1")
    content = jsonl([*rows(11), {"messages": [{"role": "user", "content": "mail me at ann@example.com"},
                                               {"role": "assistant", "content": "ok"}]}])  # fmt: skip
    page = client.get(uploaded(client, content)).text
    assert "<strong>OK</strong>" in page and "12 example(s), 12 valid (chat)" in page
    assert "Tokens with tiny's chat template" in page
    assert re.search(r"<dt>Duplicates</dt><dd>0</dd>", page)
    assert re.search(r"<dt>Personal data found</dt><dd>EMAIL 1 ", page)
    assert "<dt>Tokens</dt><dd>mean" in page and "<h3>Lengths</h3>" in page

    listing = client.get("/files").text
    assert "train.jsonl" in listing and re.search(r'<a href="/files/file-[0-9a-f]+">train.jsonl</a>', listing)


def test_leakage_against_another_file_and_groups(client):
    login(client, "k1")
    train = uploaded(client, jsonl(rows(12)))
    val = uploaded(client, jsonl([*rows(2), *rows(3, start=100)]), "val.jsonl")
    val_id = val.rsplit("/", 1)[1]
    form = client.get(train).text
    assert f'<option value="{val_id}">val.jsonl ({val_id})</option>' in form

    groups = "words: {low: [w1, w2, w3], high: [w10, w11]}"
    page = client.get(train, params={"against": val_id, "groups": groups}).text
    assert "Against val.jsonl: 2 exact and 0 near copies" in page and "among its 5 examples" in page
    assert re.search(r"<tr><td>low</td><td class=\"num\">3</td>", page)
    assert re.search(r"<tr><td>high</td><td class=\"num\">2</td>", page)

    bad = client.get(train, params={"groups": "words: [w1]"}).text
    assert "needs at least two groups" in bad
    assert client.get(train, params={"against": "file-nope"}).status_code == 404


def test_clean_makes_a_new_file_with_what_it_dropped(client):
    login(client, "k1")
    mail = {"messages": [{"role": "user", "content": "write to bob@example.org"},
                         {"role": "assistant", "content": "done so"}]}  # fmt: skip
    dirty = [*rows(10), rows(1)[0], mail, "{not json\n"]
    source = uploaded(client, jsonl(dirty), "dirty.jsonl")
    cleaned = client.post(source + "/clean", follow_redirects=False)
    assert cleaned.status_code == 303 and cleaned.headers["location"] != source
    page = client.get(cleaned.headers["location"]).text
    assert "Kept 11 of 13 examples" in page and f'<a href="{source}">dirty.jsonl</a>' in page
    assert "<td>dropped</td><td>duplicate</td>" in page and "<td>dropped</td><td>invalid</td>" in page
    assert "<td>personal data masked</td><td>EMAIL</td>" in page
    assert "<strong>OK</strong>" in page  # what is left validates

    listing = client.get("/files").text
    assert "dirty.jsonl" in listing and "dirty.clean.jsonl" in listing
    service = client.app.state.service
    new_id = cleaned.headers["location"].rsplit("/", 1)[1]
    assert (service.data.file(new_id).stat().st_mode & 0o777) == 0o600
    assert [p.name for p in service.data.files.iterdir() if p.name.startswith(".upload-")] == []
    assert "bob@example.org" not in service.data.file(new_id).read_text()

    client.delete(f"/v1/files/{new_id}")  # the summary goes with the file
    assert not service.data.clean_summary(new_id).exists()


def test_upload_errors_are_shown_on_the_page(client, tmp_path, tiny_llama_dir):
    login(client, "k1")
    for content, name, expected in [
        (b"", "", "choose a file to upload"),
        ('{"messages": "caf\u00e9"}\n'.encode("latin-1"), "latin.jsonl", "line 1: not UTF-8 text"),
        ("\n".join(["{}"] * 3).encode("utf-16"), "wide.jsonl", "UTF-16"),
    ]:
        response = upload(client, content, name)
        assert response.status_code == 400, name
        assert response.headers["content-type"].startswith("text/html")
        assert 'role="alert"' in response.text and expected in response.text
    assert client.app.state.service.store.list_files(owner_of("k1")) == []
    assert [p.name for p in client.app.state.service.data.files.iterdir()] == []

    small = dataclasses.replace(settings(tmp_path / "small", tiny_llama_dir), max_upload_mb=0.0001)
    with TestClient(create_app(small), headers=ORIGIN) as little:
        login(little, "k1")
        too_big = upload(little, jsonl(rows(12)))
        assert too_big.status_code == 400 and "upload limit" in too_big.text and "<form" in too_big.text


def test_another_keys_file_is_not_found_and_names_are_text(client):
    login(client, "k1")
    page = uploaded(client, jsonl(rows(12)), NASTY)
    escaped = "&lt;script&gt;alert(1).jsonl"
    for text in (client.get("/files").text, client.get(page).text):
        assert NASTY not in text and escaped in text

    client.post("/logout")
    login(client, "k2")
    assert client.get(page).status_code == 404 and "Not found" in client.get(page).text
    assert client.post(page + "/clean").status_code == 404
    assert client.get(page, params={"against": page.rsplit("/", 1)[1]}).status_code == 404
    assert NASTY not in client.get("/files").text and escaped not in client.get("/files").text


def test_cross_site_posts_are_refused(client):
    login(client, "k1")
    page = uploaded(client, jsonl(rows(12)))
    for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        assert upload(client, jsonl(rows(12)), headers=headers).status_code == 403
        assert client.post(page + "/clean", headers=headers).status_code == 403
    assert len(client.app.state.service.store.list_files(owner_of("k1"))) == 1


class Controls(HTMLParser):
    """Form controls a person fills, and those of them outside any <label>."""

    def __init__(self):
        super().__init__()
        self.depth, self.controls, self.unlabelled = 0, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "label":
            self.depth += 1
        elif tag in ("input", "select", "textarea") and attrs.get("type") not in ("hidden", "submit"):
            self.controls.append(attrs.get("name"))
            if not self.depth:
                self.unlabelled.append(attrs.get("name"))

    def handle_endtag(self, tag):
        if tag == "label":
            self.depth -= 1


def test_every_input_has_a_label(client):
    login(client, "k1")
    page = uploaded(client, jsonl(rows(12)))
    uploaded(client, jsonl(rows(12, start=50)), "other.jsonl")
    for text in (client.get("/files").text, client.get(page).text):
        controls = Controls()
        controls.feed(text)
        assert controls.controls and controls.unlabelled == []
    assert "<script" not in client.get(page).text  # pages that work without JavaScript


# In a real browser


@pytest.fixture
def server(tmp_path, tiny_llama_dir):
    with serve_in_thread(create_app(settings(tmp_path, tiny_llama_dir))) as url:
        yield url


@pytest.mark.browser
def test_upload_in_a_browser(server, tmp_path):
    chromium, sync_api = browser_or_skip()
    data = tmp_path / "train.jsonl"
    data.write_bytes(bad_line_file())
    with sync_api.sync_playwright() as p:
        browser = launch(p, chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        expect = sync_api.expect

        page.goto(server + "/files")
        page.fill("input[name=api_key]", "k1")
        page.click("button[type=submit]")
        page.click("header >> text=Files")
        page.set_input_files("input[type=file]", str(data))
        page.click("main button[type=submit]")
        expect(page.locator("h1")).to_contain_text("train.jsonl")
        issue = page.locator("#validation tbody tr").first
        expect(issue).to_contain_text("5")
        expect(issue).to_contain_text("invalid_json")
        page.screenshot(path="/tmp/dashboard-file.png", full_page=True)

        page.click("text=Clean it")
        expect(page.locator("#cleaned")).to_contain_text("Kept 12 of 13 examples")
        page.click("header >> text=Files")
        expect(page.locator("table")).to_contain_text("train.clean.jsonl")
        browser.close()


def test_the_upload_script_is_ours_and_only_named_scripts_are_served(client):
    assert client.get("/static/upload.js").status_code == 401
    login(client, "k1")
    assert '<script src="/static/upload.js" defer></script>' in client.get("/files").text
    script = client.get("/static/upload.js")
    assert script.status_code == 200 and "XMLHttpRequest" in script.text
    for name in ("nope.js", "..%2Fapp.py", "%2E%2E%2Fstatic%2Flive.js"):
        assert client.get(f"/static/{name}").status_code == 404, name
