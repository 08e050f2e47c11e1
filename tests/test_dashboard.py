"""The dashboard: login by cookie, pages that show only the key's own jobs and files (escaped), the loss
curves from metrics events, and the playground; plus one run in a real browser (marked `browser`)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from pages import browser_or_skip, launch, settings
from server import serve_in_thread
from tunelab.service.app import create_app
from tunelab.service.deps import COOKIE
from tunelab.service.pages import chart, thin
from tunelab.service.settings import owner_of
from tunelab.service.store import JobRow, now

JOB = "ftjob-dashboardtest000001"
NASTY = "<script>alert(1)</script>.jsonl"


def seed(store) -> None:
    store.add_file("file-train1", owner_of("k1"), "train.jsonl", "fine-tune", 1234)
    add_job(store, JOB, "running")


def add_job(store, job_id: str, status: str) -> None:
    """A job of k1 with a falling train loss and two validation points, as the worker records them."""
    owner = owner_of("k1")
    store.add_job(
        JobRow(
            id=job_id,
            owner=owner,
            model="tiny",
            model_root="tiny",
            training_file="file-train1",
            validation_file=None,
            hyperparameters={"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0},
            options={"method": "lora"},
            base_spec="tiny",
            init_adapter=None,
            suffix=None,
            seed=42,
            metadata=None,
            status=status,
            created_at=now(),
        )
    )
    store.add_event(job_id, "Fine-tuning job started")
    for step in range(1, 11):
        data = {"step": step, "train_loss": 3.0 - 0.2 * step}
        store.add_event(
            job_id,
            f"Step {step}/10: training loss={data['train_loss']:.2f}",
            type="metrics",
            data=data,
            step=step,
        )
        if step % 5 == 0:
            store.add_event(
                job_id,
                f"Step {step}: validation loss",
                type="metrics",
                data={"step": step, "valid_loss": 2.5 - 0.1 * step},
                step=step,
            )


ORIGIN = {"Origin": "http://testserver"}  # the test client's own origin, as a browser sends it


@pytest.fixture
def client(tmp_path, tiny_llama_dir):
    with TestClient(create_app(settings(tmp_path, tiny_llama_dir)), headers=ORIGIN) as client:
        seed(client.app.state.service.store)
        yield client


def login(client: TestClient, key: str):
    return client.post("/login", data={"api_key": key}, follow_redirects=False)


def test_pages_without_a_key_answer_401_with_the_login_form(client):
    for method, path in [
        ("get", "/"),
        ("get", f"/jobs/{JOB}"),
        ("get", "/playground"),
        ("post", "/playground"),
        ("post", "/playground/feedback"),
        ("post", "/logout"),
        ("post", "/login"),
    ]:
        response = getattr(client, method)(path)
        assert response.status_code == 401, path
        assert response.headers["content-type"].startswith("text/html")
        assert re.search(r'<form[^>]*action="/login"', response.text)
        assert 'name="api_key"' in response.text
        assert JOB not in response.text
    client.cookies.set(COOKIE, "wrong")
    assert client.get("/").status_code == 401


def test_login_sets_an_http_only_cookie_and_shows_the_overview(client):
    bad = login(client, "nope")
    assert bad.status_code == 401 and "not known" in bad.text
    assert COOKIE not in client.cookies

    good = login(client, "k1")
    assert good.status_code == 303 and good.headers["location"] == "/"
    cookie = good.headers["set-cookie"]
    session = client.cookies[COOKIE]
    assert session != "k1" and len(session) >= 32  # a session id, never the key itself
    assert client.app.state.service.store.session_owner(session) == owner_of("k1")
    assert cookie.startswith(f"{COOKIE}={session}") and "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower() and "Path=/" in cookie and "secure" not in cookie.lower()

    page = client.get("/")
    assert page.status_code == 200
    assert JOB in page.text and "train.jsonl" in page.text and "tiny" in page.text
    assert page.text.count("<svg") == 1  # one job, one sparkline
    assert "polyline" in page.text

    out = client.post("/logout", follow_redirects=False)
    assert out.status_code == 303 and COOKIE not in client.cookies
    assert client.get("/").status_code == 401


def test_bearer_header_works_too(client):
    page = client.get("/", headers={"Authorization": "Bearer k1"})
    assert page.status_code == 200 and JOB in page.text


def test_user_text_is_escaped(client):
    service = client.app.state.service
    service.store.add_file("file-nasty", owner_of("k1"), NASTY, "fine-tune", 10)
    service.store.add_event(JOB, "<b>bold</b> claim")
    login(client, "k1")
    assert NASTY not in client.get("/").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.jsonl" in client.get("/").text
    job = client.get(f"/jobs/{JOB}").text
    assert "<b>bold</b>" not in job and "&lt;b&gt;bold&lt;/b&gt; claim" in job


def test_another_key_sees_none_of_it(client):
    login(client, "k2")
    page = client.get("/")
    assert page.status_code == 200 and JOB not in page.text and "train.jsonl" not in page.text
    missing = client.get(f"/jobs/{JOB}")
    assert missing.status_code == 404 and "Not found" in missing.text


def test_job_page_shows_curves_checkpoints_events_and_error(client):
    store = client.app.state.service.store
    store.add_checkpoint(JOB, 5, "ft:tiny:org:x:ckpt-step-5", {"step": 5, "train_loss": 2.0})
    add_job(store, "ftjob-failed00000000000001", "failed")
    store.set_status(
        "ftjob-failed00000000000001",
        "failed",
        error={"code": "invalid_training_file", "message": "line 3 is not JSON"},
    )
    login(client, "k1")

    assert "<dt>Worker</dt>" not in client.get(f"/jobs/{JOB}").text  # no worker has claimed it
    assert store.claim_job("gpu0@host-b", stale_before=0).id == JOB
    page = client.get(f"/jobs/{JOB}").text
    assert "<dt>Worker</dt>" in page and re.search(r"gpu0@host-b</span>, last heard \d+ s ago", page)
    assert page.count("<polyline") == 2  # train and valid
    assert "train loss" in page and "valid loss" in page and ">step<" in page and ">loss<" in page
    assert "ft:tiny:org:x:ckpt-step-5" in page
    assert "n_epochs=3" in page
    newest_first = [m for m in ("Step 10/10", "Step 1/10:", "Fine-tuning job started") if m in page]
    assert newest_first == ["Step 10/10", "Step 1/10:", "Fine-tuning job started"]
    assert [page.index(m) for m in newest_first] == sorted(page.index(m) for m in newest_first)

    failed = client.get("/jobs/ftjob-failed00000000000001").text
    assert "line 3 is not JSON" in failed and "invalid_training_file" in failed


def test_playground_replies_and_shows_errors_on_the_page(client):
    login(client, "k1")
    form = client.get("/playground?model=tiny").text
    assert '<option value="tiny" selected>' in form

    reply = client.post("/playground", data={"model": "tiny", "message": "say alice", "max_tokens": "8"})
    assert reply.status_code == 200
    assert 'class="reply-of"' in reply.text and "finish reason" in reply.text
    assert "say alice" in reply.text  # the message stays in the form

    too_long = client.post("/playground", data={"model": "tiny", "message": "hi", "max_tokens": "100000"})
    assert too_long.status_code == 400 and 'role="alert"' in too_long.text
    assert "at most" in too_long.text and 'class="reply-of"' not in too_long.text

    bad = client.post("/playground", data={"model": "tiny", "message": "hi", "temperature": "hot"})
    assert bad.status_code == 400 and "temperature" in bad.text

    other = client.post("/playground", data={"model": "ft:nope", "message": "hi"})
    assert other.status_code == 400 and "ft:nope" in other.text


def test_curves_thin_long_runs_and_draw_a_single_step():
    long = [(step, 1.0 / step) for step in range(1, 1001)]
    kept = thin(long, 200)
    assert len(kept) <= 200 and kept[0] == long[0] and kept[-1] == long[-1]
    one = chart({"train_loss": [(7, 2.5)]}, 120, 28, (2, 3, 4, 3))
    assert one.lines[0]["points"].count(",") == 1
    x, y = one.lines[0]["last"]
    assert one.left <= x <= one.right and one.top <= y <= one.bottom
    assert chart({}, 120, 28, (2, 3, 4, 3)) is None


# In a real browser


@pytest.fixture
def server(tmp_path, tiny_llama_dir):
    app = create_app(settings(tmp_path, tiny_llama_dir))
    with serve_in_thread(app) as url:
        seed(app.state.service.store)
        yield url


@pytest.mark.browser
def test_in_a_browser(server):
    chromium, sync_api = browser_or_skip()
    with sync_api.sync_playwright() as p:
        browser = launch(p, chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        expect = sync_api.expect

        response = page.goto(server + "/")
        assert response.status == 401
        page.fill("input[name=api_key]", "k1")
        page.click("button[type=submit]")
        expect(page.locator("table").first).to_contain_text(JOB)
        expect(page.locator("svg.spark polyline").first).to_be_visible()
        page.screenshot(path="/tmp/dashboard.png", full_page=True)

        page.click(f"a[href='/jobs/{JOB}']")
        expect(page.locator("h1")).to_contain_text(JOB)
        expect(page.locator("svg.chart polyline")).to_have_count(2)
        page.screenshot(path="/tmp/dashboard-job.png", full_page=True)

        page.click("header >> text=Playground")
        page.select_option("select[name=model]", "tiny")
        page.fill("textarea[name=message]", "say alice")
        page.fill("input[name=max_tokens]", "8")
        page.click("main button[type=submit]")
        expect(page.locator(".reply-of")).to_contain_text("finish reason")
        page.screenshot(path="/tmp/dashboard-playground.png", full_page=True)

        page.click("header >> text=Log out")
        expect(page.locator("input[name=api_key]")).to_be_visible()
        browser.close()


def test_a_dpo_job_page_shows_its_reward_accuracy_curves(client):
    store = client.app.state.service.store
    add_job(store, "ftjob-dpo000000000000000001", "running")
    for step, accuracy in ((1, 0.5), (2, 0.75)):
        data = {"step": step, "train_loss": 0.69, "rewards/accuracies": accuracy, "rewards/margins": 0.1}
        store.add_event("ftjob-dpo000000000000000001", "train", type="metrics", data=data, step=step)
    data = {"step": 2, "valid_loss": 0.6, "val_rewards/accuracies": 1.0}
    store.add_event("ftjob-dpo000000000000000001", "eval", type="metrics", data=data, step=2)
    login(client, "k1")
    page = client.get("/jobs/ftjob-dpo000000000000000001").text
    assert "<h2>Rewards</h2>" in page and ">reward<" in page
    assert 'class="rewards_accuracies"' in page and 'class="val_rewards_accuracies"' in page
    assert "valid reward accuracy" in page
    assert "<h2>Rewards</h2>" not in client.get(f"/jobs/{JOB}").text  # a supervised job has none
    assert "<h2>Token accuracy</h2>" not in page  # a preference job measures none


def test_a_supervised_job_page_shows_its_token_accuracy_curves(client):
    store = client.app.state.service.store
    for step, accuracy in ((1, 0.25), (2, 0.5)):
        data = {"step": step, "train_loss": 1.0, "train_mean_token_accuracy": accuracy}
        store.add_event(JOB, "train", type="metrics", data=data, step=step)
    data = {"step": 2, "valid_loss": 1.1, "valid_mean_token_accuracy": 0.4}
    store.add_event(JOB, "eval", type="metrics", data=data, step=2)
    login(client, "k1")
    page = client.get(f"/jobs/{JOB}").text
    assert "<h2>Token accuracy</h2>" in page and ">accuracy<" in page
    assert 'class="train_mean_token_accuracy"' in page and 'class="valid_mean_token_accuracy"' in page
    assert "valid token accuracy" in page


def test_a_reinforcement_job_page_shows_its_mean_reward_curves(client):
    store = client.app.state.service.store
    add_job(store, "ftjob-rft000000000000000001", "running")
    for step, reward in ((1, 0.2), (2, 0.4)):
        data = {"step": step, "train_loss": 0.0, "reward": reward, "rewards/fields": reward}
        store.add_event("ftjob-rft000000000000000001", "train", type="metrics", data=data, step=step)
    data = {"step": 2, "valid_loss": -0.5, "val_reward": 0.5}
    store.add_event("ftjob-rft000000000000000001", "eval", type="metrics", data=data, step=2)
    login(client, "k1")
    page = client.get("/jobs/ftjob-rft000000000000000001").text
    assert 'class="reward"' in page and 'class="val_reward"' in page and "valid mean reward" in page


def test_playground_thumbs_and_a_better_answer_become_feedback(client):
    login(client, "k1")
    reply = client.post("/playground", data={"model": "tiny", "message": "say alice", "max_tokens": "4"}).text
    assert 'action="/playground/feedback"' in reply and 'name="correction"' in reply
    completion_id = re.search(r'name="completion_id" value="([^"]+)"', reply).group(1)
    store = client.app.state.service.store
    assert store.get_completion(completion_id, owner_of("k1")).prompt == [
        {"role": "user", "content": "say alice"}
    ]

    thumbs = client.post("/playground/feedback", data={"completion_id": completion_id, "rating": "1"})
    assert thumbs.status_code == 200 and "your rating is kept" in thumbs.text
    better = {"completion_id": completion_id, "rating": "-1", "correction": "alice"}
    assert "better answer is kept" in client.post("/playground/feedback", data=better).text
    kept = [(f.rating, f.correction, f.response) for f in store.feedback_with_completions()]
    assert [(rating, correction) for rating, correction, _ in kept] == [(1, None), (-1, "alice")]
    assert kept[0][2] in reply  # the answer rated is the one shown

    unknown = client.post("/playground/feedback", data={"completion_id": "chatcmpl-nope", "rating": "1"})
    assert unknown.status_code == 400 and 'role="alert"' in unknown.text
    bad = client.post("/playground/feedback", data={"completion_id": completion_id, "rating": "5"})
    assert bad.status_code == 400 and "rating" in bad.text
