"""The New job form's "Estimate": the job's dry run (`tunelab train --dry-run-json`, whose JSON is checked
here too) in a child process, its figures live on the form; one per key at a time, a timeout, errors on
the form, and another key sees none of it."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import fields
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import copy_task_rows, write_jsonl
from pages import until
from test_dashboard_jobs import K1, ORIGIN, form_for, settings, signed_in, upload
from tunelab.cli import app
from tunelab.service import estimates
from tunelab.service.app import create_app
from tunelab.service.paths import DataDir
from tunelab.service.settings import owner_of
from tunelab.training.memory import Prediction

PEAK = re.compile(r'<dd id="peak">([0-9.]+) MiB</dd>')
ALERT = re.compile(r'<p class="error" role="alert">([^<]*)</p>')


def test_the_dry_run_writes_its_figures_as_json(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", copy_task_rows(12))
    figures = tmp_path / "figures.json"
    flags = ["--model", str(tiny_llama_dir), "--data", str(data), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, ["train", *flags, "--max-steps", "4", "--dry-run-json", str(figures)])
    assert result.exit_code == 0, result.output
    written = json.loads(figures.read_text())
    assert list(written) == [f.name for f in fields(Prediction)]
    numbers = {name: value for name, value in written.items() if name != "largest_micro_batch"}
    assert all(isinstance(v, int | float) for v in numbers.values() if v is not None), written
    assert written["predicted_peak_mb"] > written["fixed_mb"] > 0 and written["total_steps"] == 4
    assert written["predicted_s_per_step"] > 0 and written["predicted_total_s"] > 0
    assert not (tmp_path / "run").exists()  # a dry run writes nothing else


@pytest.fixture
def client(tmp_path, tiny_llama_dir):
    with TestClient(create_app(settings(tmp_path, tiny_llama_dir)), headers=ORIGIN) as client:
        yield client


def estimate(client: TestClient, file_id: str, **fields):
    return client.post("/jobs/new", data=form_for(file_id, action="estimate", **fields))


def live(client: TestClient) -> str:
    return client.get("/jobs/new/estimate").text


def settled(client: TestClient, timeout: float = 120.0) -> str:
    """The estimate's live part once it asks for no more polls: done or failed."""

    def ended() -> str | None:
        text = live(client)
        return None if "data-live" in text else text

    return until(ended, timeout)


def test_an_estimate_runs_in_the_background_and_shows_its_figures_to_its_key_only(client):
    signed_in(client)
    file_id = upload(client)
    started = estimate(client, file_id, **{"lora.lora_r": "4", "train.max_steps": "3"})
    assert started.status_code == 200
    assert 'data-live="/jobs/new/estimate"' in started.text and "/static/live.js" in started.text
    assert 'href="/jobs/new?estimate=1#estimate"' in started.text  # the reload link without JavaScript
    assert 'name="lora.lora_r" value="4"' in started.text  # the form keeps its values
    done = settled(client, timeout=300)
    assert "<html" not in done and "status-done" in done, done
    assert float(PEAK.search(done).group(1)) > 0
    assert re.search(r'<dd id="step-time">[0-9.e-]+ s</dd>', done)
    assert re.search(r'<dd id="total-time">[0-9.e-]+ (s|min) for 3 steps</dd>', done)
    reloaded = client.get("/jobs/new?estimate=1")  # the figures with the form they were made for
    assert PEAK.search(reloaded.text) and 'name="lora.lora_r" value="4"' in reloaded.text
    assert client.get("/v1/fine_tuning/jobs", headers=K1).json()["data"] == []  # no job was made

    signed_in(client, "k2")
    assert 'id="estimate"' not in live(client)
    assert 'id="estimate"' not in client.get("/jobs/new?estimate=1").text
    stolen = estimate(client, file_id)  # k1's file is no file of k2's
    assert stolen.status_code == 400 and "training_file" in ALERT.search(stolen.text).group(1)


def test_one_estimate_at_a_time_and_a_slow_one_fails_at_its_timeout(client, monkeypatch):
    signed_in(client)
    file_id = upload(client)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    monkeypatch.setattr(estimates, "dry_run_command", lambda config, figures: sleeper)
    client.app.state.service.estimates.timeout_s = 3
    assert estimate(client, file_id).status_code == 200
    refused = estimate(client, file_id)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == str(estimates.RETRY_S)
    assert "already running" in ALERT.search(refused.text).group(1)
    assert 'data-live="/jobs/new/estimate"' in refused.text  # the running one is still shown
    failed = settled(client)
    assert "took over 3 s and was stopped" in ALERT.search(failed).group(1)
    assert estimate(client, file_id).status_code == 200  # ended: the key may ask again


def test_a_bad_option_or_file_shows_on_the_form(client):
    signed_in(client)
    response = estimate(client, upload(client), **{"lora.lora_r": "5000"})
    assert response.status_code == 400 and "tunelab.lora_r" in ALERT.search(response.text).group(1)
    assert 'id="estimate"' not in response.text and 'value="5000"' in response.text
    few = "".join(json.dumps(row) + "\n" for row in copy_task_rows(3))
    files = {"file": ("few.jsonl", few)}
    few_id = client.post("/v1/files", headers=K1, files=files, data={"purpose": "fine-tune"}).json()["id"]
    assert estimate(client, few_id).status_code == 200  # the file is checked in the background
    failed = settled(client)
    assert "must have at least 10" in ALERT.search(failed).group(1) and "Traceback" not in failed


def test_a_cross_origin_estimate_is_refused(client):
    signed_in(client)
    data = form_for(upload(client), action="estimate")
    response = client.post("/jobs/new", data=data, headers={"Origin": "http://evil.example"})
    assert response.status_code == 403 and client.app.state.service.estimates.get(owner_of("k1")) is None


def test_a_failed_dry_run_says_why_without_the_servers_paths(tmp_path):
    data = DataDir(tmp_path / "data")
    job = SimpleNamespace(training_file="file-a", validation_file=None)
    stderr = f"some warning\nerror: {data.file('file-a')} line 3: not\nJSON\n"
    assert estimates.dry_run_error(stderr, data, job) == "file-a line 3: not JSON"
    traceback = "Traceback (most recent call last):\n  ...\nRuntimeError: a bug\n"
    assert estimates.dry_run_error(traceback, data, job) == "the dry run failed; the server's log says why"
