"""The service's API on a tiny model, in process: auth and isolation, uploads, job checks, inference rules.

The worker process is off here except where a test trains; tests/test_service_server.py runs the real
server process (kill -9, restart) and tests/test_service_openai.py drives it with the official client."""

import asyncio
import json
import shutil
import time
from dataclasses import replace

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from conftest import copy_task_rows
from tunelab.service import ServiceSettings, create_app
from tunelab.service.engine import Generation, Sampling
from tunelab.service.routes.completions import Reply
from tunelab.service.usecases import resolve_model

K1, K2 = {"Authorization": "Bearer key-one"}, {"Authorization": "Bearer key-two"}


def settings_for(tmp_path, model_dir, **overrides) -> ServiceSettings:
    values = dict(
        data_dir=str(tmp_path / "data"),
        api_keys=["key-one", "key-two"],
        base_models={"tiny": str(model_dir)},
        start_worker=False,
    )
    return ServiceSettings(**{**values, **overrides})


@pytest.fixture
def client(tmp_path, tiny_llama_dir, database):
    """The API on SQLite and on PostgreSQL (each test runs on both)."""
    with TestClient(create_app(settings_for(tmp_path, tiny_llama_dir, database=database))) as c:
        yield c


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def upload(client, text: str, name="train.jsonl", headers=K1):
    return client.post(
        "/v1/files", headers=headers, files={"file": (name, text)}, data={"purpose": "fine-tune"}
    )


def wait_for_job(client, job_id, statuses=("succeeded", "failed", "cancelled"), headers=K1, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=headers).json()
        if job["status"] in statuses:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")


def api_routes(app) -> list[APIRoute]:
    """Every route, those of included routers too (FastAPI wraps them; their paths hold the prefix)."""
    found = []
    for route in app.routes:
        found += route.original_router.routes if hasattr(route, "original_router") else [route]
    return [route for route in found if isinstance(route, APIRoute)]


def test_every_route_but_health_needs_a_key(client):
    assert client.get("/health").status_code == 200
    routes = [r for r in api_routes(client.app) if r.path != "/health"]
    assert len(routes) >= 15
    for route in routes:
        path = route.path.replace("{", "").replace("}", "")  # any value will do for path parameters
        for method in route.methods:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                headers["Origin"] = "http://testserver"  # as a browser on the dashboard sends it
                response = client.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, response.text)
                if path.startswith("/v1"):
                    assert response.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/no-such-route").status_code in (401, 404)


def test_one_key_cannot_see_anothers_files_jobs_or_models(client):
    file_id = upload(client, jsonl(copy_task_rows(12))).json()["id"]
    job = client.post("/v1/fine_tuning/jobs", headers=K1, json={"model": "tiny", "training_file": file_id})
    assert job.status_code == 200, job.text
    job_id = job.json()["id"]
    for path in (
        f"/v1/files/{file_id}",
        f"/v1/files/{file_id}/content",
        f"/v1/fine_tuning/jobs/{job_id}",
        f"/v1/fine_tuning/jobs/{job_id}/events",
        f"/v1/fine_tuning/jobs/{job_id}/checkpoints",
    ):
        assert client.get(path, headers=K1).status_code == 200, path
        other = client.get(path, headers=K2)
        assert other.status_code == 404, path
        assert "exists for this API key" in other.json()["error"]["message"]
    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=K2).status_code == 404
    assert client.delete(f"/v1/files/{file_id}", headers=K2).status_code == 404
    assert client.get("/v1/files", headers=K2).json()["data"] == []
    assert client.get("/v1/fine_tuning/jobs", headers=K2).json()["data"] == []
    # Another key's file cannot be trained on either.
    stolen = client.post("/v1/fine_tuning/jobs", headers=K2, json={"model": "tiny", "training_file": file_id})
    assert stolen.status_code == 400 and stolen.json()["error"]["param"] == "training_file"
    # A fine-tuned model is visible to its owner only.
    service = client.app.state.service
    owner = service.keys["key-one"]
    service.store.add_model("ft:tiny:x::abc", owner, job_id)
    assert "ft:tiny:x::abc" in [m["id"] for m in client.get("/v1/models", headers=K1).json()["data"]]
    assert "ft:tiny:x::abc" not in [m["id"] for m in client.get("/v1/models", headers=K2).json()["data"]]
    assert client.get("/v1/models/ft:tiny:x::abc", headers=K2).status_code == 404
    assert client.delete("/v1/models/ft:tiny:x::abc", headers=K2).status_code == 404
    chat = {"model": "ft:tiny:x::abc", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert client.post("/v1/chat/completions", headers=K2, json=chat).status_code == 404


def test_file_names_never_become_paths(client, tmp_path):
    text = jsonl(copy_task_rows(3))
    response = upload(client, text, name="../../../../tmp/evil.jsonl")
    assert response.status_code == 200
    body = response.json()
    assert body["filename"] == "evil.jsonl"
    files_dir = tmp_path / "data" / "files"
    assert [p.name for p in files_dir.iterdir()] == [f"{body['id']}.jsonl"]
    assert not (tmp_path / "evil.jsonl").exists()
    assert client.get(f"/v1/files/{body['id']}/content", headers=K1).text == text
    # Ids in URLs are looked up, never joined into paths.
    assert client.get("/v1/files/..%2F..%2Ftunelab.db/content", headers=K1).status_code == 404
    assert client.delete(f"/v1/files/{body['id']}", headers=K1).json()["deleted"] is True
    assert list(files_dir.iterdir()) == []


def test_oversize_upload_is_refused_without_keeping_it(tmp_path, tiny_llama_dir):
    settings = settings_for(tmp_path, tiny_llama_dir, max_upload_mb=1 / 1024)  # 1 KiB
    with TestClient(create_app(settings)) as client:
        big = jsonl(copy_task_rows(200))  # ~20 KB: under the header check's slack, caught while streaming
        response = upload(client, big)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "file_too_large"
        huge = "x" * (200 * 1024)  # declared Content-Length alone is enough to refuse this one
        assert upload(client, huge).status_code == 413
        assert upload(client, jsonl(copy_task_rows(3))).status_code == 200  # a small one still fits
        assert len(client.get("/v1/files", headers=K1).json()["data"]) == 1
        assert len(list((tmp_path / "data" / "files").iterdir())) == 1  # no partial upload left behind


def test_upload_needs_fine_tune_purpose(client):
    response = client.post(
        "/v1/files", headers=K1, files={"file": ("a.jsonl", "{}\n")}, data={"purpose": "x"}
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "purpose"
    assert client.get("/v1/files", headers=K1).json()["data"] == []


def create_job(client, text: str, **extra):
    file_id = upload(client, text).json()["id"]
    response = client.post(
        "/v1/fine_tuning/jobs", headers=K1, json={"model": "tiny", "training_file": file_id, **extra}
    )
    assert response.status_code == 200, response.text
    return wait_for_job(client, response.json()["id"], statuses=("queued", "failed"))


def test_nine_examples_fail_with_invalid_n_examples(client):
    job = create_job(client, jsonl(copy_task_rows(9)))
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_n_examples"
    assert job["error"]["param"] == "training_file"
    assert "9 example(s)" in job["error"]["message"] and "at least 10" in job["error"]["message"]


def test_malformed_file_error_names_the_line(client):
    lines = jsonl(copy_task_rows(12)).splitlines()
    lines[2] = '{"messages": [oops'
    lines[6] = json.dumps({"messages": [{"role": "wizard", "content": "x"}]})
    job = create_job(client, "\n".join(lines) + "\n")
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_training_file"
    message = job["error"]["message"]
    assert "first on line 3 (invalid_json)" in message
    assert "line 7: unrecognized_role" in message
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=K1).json()["data"]
    assert any(e["level"] == "error" and "line 3" in e["message"] for e in events)


def test_good_file_is_queued_and_cancellable(client):
    job = create_job(client, jsonl(copy_task_rows(12)), suffix="mine", seed=7, metadata={"team": "a"})
    assert job["status"] == "queued"
    assert job["hyperparameters"] == {
        "n_epochs": "auto",
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
    }
    assert job["seed"] == 7 and job["metadata"] == {"team": "a"} and job["tunelab"]["method"] == "lora"
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=K1).json()
    assert cancelled["status"] == "cancelled"
    again = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=K1)
    assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_job_status"


def test_personal_data_in_the_training_file_is_a_warning_event(client):
    rows = copy_task_rows(12)
    rows[0]["messages"][0]["content"] += " Write to ann@example.com or bob@example.com"
    rows[1]["messages"][-1]["content"] += " Call +1 650-253-0000"
    job = create_job(client, jsonl(rows))
    assert job["status"] == "queued"  # the user decides
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=K1).json()["data"]
    (warning,) = [e for e in events if "personal data" in e["message"]]
    assert warning["level"] == "warn" and warning["data"] == {"pii": {"EMAIL": 2, "PHONE": 1}}
    assert "2 EMAIL" in warning["message"] and "tunelab data clean" in warning["message"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "nope"}, "model"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"tunelab": {"method": "full"}}, "tunelab.method"),
        ({"tunelab": {"lora_r": 0}}, "tunelab.lora_r"),
        ({"tunelab": {"scheduler": "wavy"}}, "tunelab.scheduler"),
        ({"tunelab": {"method": "ia3", "lora_r": 8}}, "tunelab.lora_r"),
        # Upper bounds: each of these was accepted and could hold the single worker for ever.
        ({"tunelab": {"lora_r": 10**6}}, "tunelab.lora_r"),
        ({"tunelab": {"max_length": 10**9}}, "tunelab.max_length"),
        ({"tunelab": {"max_steps": 10**12}}, "tunelab.max_steps"),
        ({"tunelab": {"grad_accum": 10**9}}, "tunelab.grad_accum"),
        ({"tunelab": {"max_minutes": 10**6}}, "tunelab.max_minutes"),
        ({"tunelab": {"dropout": float("nan")}}, "tunelab.dropout"),
        ({"tunelab": {"target_modules": ["q_proj"] * 1000}}, "tunelab.target_modules"),
        ({"tunelab": {"out": "/etc"}}, "tunelab.out"),
        ({"tunelab": {"devices": 0}}, "tunelab.devices"),
        ({"tunelab": {"fsdp": True}}, "tunelab.fsdp"),  # on one device: nothing to shard over
        ({"method": {"type": "reinforcement"}}, "method.reinforcement.grader"),
        ({"method": {"type": "ppo"}}, "method.type"),
    ],
)
def test_bad_job_requests_name_the_field(client, body, param):
    file_id = upload(client, jsonl(copy_task_rows(12))).json()["id"]
    payload = json.dumps({"model": "tiny", "training_file": file_id, **body})  # NaN too, as Python sends it
    headers = {**K1, "Content-Type": "application/json"}
    response = client.post("/v1/fine_tuning/jobs", headers=headers, content=payload)
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["param"] == param
    assert client.get("/v1/fine_tuning/jobs", headers=K1).json()["data"] == []


def chat(client, headers=K1, **body):
    payload = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "say bob"}],
        "temperature": 0,
        **body,
    }
    return client.post("/v1/chat/completions", headers=headers, json=payload)


def test_chat_counts_tokens_and_honours_stop_and_n(client):
    plain = chat(client, max_tokens=12).json()
    text = plain["choices"][0]["message"]["content"]
    assert plain["object"] == "chat.completion" and plain["choices"][0]["finish_reason"] == "length"
    assert plain["usage"]["completion_tokens"] == 12
    assert plain["usage"]["total_tokens"] == plain["usage"]["prompt_tokens"] + 12
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    stopped = chat(client, max_tokens=12, stop=[stop]).json()["choices"][0]
    assert stopped["message"]["content"] == text[: text.index(stop)]
    assert stopped["finish_reason"] == "stop"
    several = chat(client, max_tokens=4, n=3, temperature=1.0, seed=1).json()
    assert [c["index"] for c in several["choices"]] == [0, 1, 2]
    assert several["usage"]["completion_tokens"] == 12
    again = chat(client, max_tokens=4, n=3, temperature=1.0, seed=1).json()
    assert [c["message"] for c in again["choices"]] == [c["message"] for c in several["choices"]]


def test_stream_gives_the_same_text_as_a_plain_answer(client):
    plain = chat(client, max_tokens=10).json()["choices"][0]["message"]["content"]
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "say bob"}],
        "temperature": 0,
        "max_tokens": 10,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", "/v1/chat/completions", headers=K1, json=body) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain
    assert chunks[-1]["usage"]["completion_tokens"] == 10


def test_max_tokens_beyond_the_context_is_a_clear_400(client):
    response = chat(client, max_tokens=100_000)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "max_tokens" and error["code"] == "context_length_exceeded"
    assert "512-token context" in error["message"]


def test_unsupported_options_are_refused_by_name(client):
    response = chat(client, functions=[{"name": "f"}])
    assert response.status_code == 400 and response.json()["error"]["param"] == "functions"


def test_text_completions_and_feedback_become_training_data(client, tmp_path, database):
    from typer.testing import CliRunner

    from tunelab.cli import app

    completion = client.post(
        "/v1/completions",
        headers=K1,
        json={"model": "tiny", "prompt": "hello", "max_tokens": 3, "temperature": 0},
    ).json()
    assert completion["object"] == "text_completion" and completion["usage"]["completion_tokens"] == 3
    answer = chat(client, max_tokens=3).json()
    good = chat(client, max_tokens=3, messages=[{"role": "user", "content": "say paris"}]).json()
    for completion_id, rating, correction in (
        (answer["id"], -1, "bob"),
        (good["id"], 1, None),
        (completion["id"], -1, None),
    ):
        body = {"completion_id": completion_id, "rating": rating, "correction": correction}
        assert client.post("/v1/feedback", headers=K1, json=body).status_code == 200
    assert (
        client.post("/v1/feedback", headers=K2, json={"completion_id": answer["id"], "rating": 1}).status_code
        == 404
    )
    out = tmp_path / "next.jsonl"
    store = ["--database", database] if database else []
    args = ["data", "from-feedback", *store, "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Wrote 2 example(s)" in result.output and "skipped 1" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["messages"][-2:] == [
        {"role": "user", "content": "say bob"},
        {"role": "assistant", "content": "bob"},
    ]
    assert rows[1]["messages"][-1] == {
        "role": "assistant",
        "content": good["choices"][0]["message"]["content"],
    }

    pairs = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(app, [*args[:-1], str(pairs), "--as", "dpo"])
    assert "Wrote 1 preference pair(s)" in result.output and "skipped 2" in result.output, result.output
    [pair] = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert pair["preferred_output"] == [{"role": "assistant", "content": "bob"}]
    assert pair["non_preferred_output"][0]["content"] == answer["choices"][0]["message"]["content"]
    rated = tmp_path / "rated.jsonl"
    result = CliRunner().invoke(app, [*args[:-1], str(rated), "--as", "kto"])
    assert "Wrote 4 rated answer(s)" in result.output and "skipped 0" in result.output, result.output
    labels = [json.loads(line)["label"] for line in rated.read_text().splitlines()]
    assert labels == [False, True, True, False]


def test_a_client_leaving_mid_stream_stops_its_generation(client):
    service = client.app.state.service
    target = resolve_model(service, "tiny", service.keys["key-one"])
    ids = service.engine.tokenizer("tiny")("hello")["input_ids"]
    runs = [(0, ids, Sampling(max_tokens=400, temperature=1.0, seed=0))]
    reply = Reply(service, service.keys["key-one"], target, "chat.completion", [], len(ids))

    async def read_a_little_then_leave():
        stream = reply.stream(runs, include_usage=False)
        chunks = [await anext(stream) for _ in range(3)]  # role, then two pieces of text
        await stream.aclose()  # what the server does when the client disconnects
        return chunks

    chunks = asyncio.run(read_a_little_then_leave())
    assert len(chunks) == 3
    assert all(s.wait_idle(30) for s in service.engine.schedulers)  # the generation let go of its row
    assert chat(client, max_tokens=2).status_code == 200
    assert service.store.get_completion(reply.id, service.keys["key-one"]) is None  # never finished


def test_generation_cancel_stops_early(client):
    service = client.app.state.service
    target = resolve_model(service, "tiny", service.keys["key-one"])
    ids = service.engine.tokenizer("tiny")("hello")["input_ids"]
    generation = Generation(service.engine, target, ids, Sampling(max_tokens=400, temperature=1.0, seed=0))
    pieces = generation.pieces()
    next(pieces)
    generation.cancel()
    list(pieces)
    assert generation.completion_tokens < 400


def test_a_job_whose_loss_turns_nan_fails_and_publishes_nothing(client, monkeypatch):
    import tunelab.training.loop as loop
    from tunelab.service.worker import serve_jobs

    real_step, calls = loop.train_step, []

    def diverging_step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        calls.append(result.loss)
        return replace(result, loss=float("nan")) if len(calls) > 4 else result

    monkeypatch.setattr(loop, "train_step", diverging_step)
    job = create_job(client, jsonl(copy_task_rows(12)), tunelab={"max_steps": 8, "save_every": 2})
    service = client.app.state.service
    serve_jobs(service.data.root, once=True, database=service.settings.database)  # the worker's loop, here
    failed = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=K1).json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "training_diverged"
    assert "step 5" in failed["error"]["message"]
    assert failed["fine_tuned_model"] is None
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", headers=K1).json()["data"] == []
    assert [m["id"] for m in client.get("/v1/models", headers=K1).json()["data"]] == ["tiny"]
    assert not (service.data.run_dir(job["id"]) / "adapter_model.safetensors").exists()
    assert not service.data.checkpoint_dir(job["id"], 2).exists()


def test_cancelling_a_running_job_stops_it_and_publishes_no_model(client):
    import threading

    from tunelab.service.worker import serve_jobs

    long_rows = copy_task_rows(11) + [
        {
            "messages": [
                {"role": "user", "content": "say " + "bob " * 100},
                {"role": "assistant", "content": "bob"},
            ]
        }
    ]
    job = create_job(
        client, jsonl(long_rows), tunelab={"max_steps": 10_000, "save_every": 5, "max_length": 64}
    )
    service = client.app.state.service
    once = {"once": True, "database": service.settings.database}
    worker = threading.Thread(target=serve_jobs, args=(service.data.root,), kwargs=once)
    worker.start()
    deadline = time.monotonic() + 60
    while not client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", headers=K1).json()["data"]:
        assert time.monotonic() < deadline, "no checkpoint within 60 s"
        time.sleep(0.1)
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=K1).json()["status"] == "cancelled"
    worker.join(timeout=60)
    assert not worker.is_alive()  # the worker stopped training and went back to an empty queue
    final = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=K1).json()
    assert final["status"] == "cancelled" and final["fine_tuned_model"] is None
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=K1, params={"limit": 1000}).json()
    assert events["data"][0]["message"] == "Fine-tuning job cancelled"
    assert any(
        e["level"] == "warn" and "1 example(s) are longer than max_length 64" in e["message"]
        for e in events["data"]
    )
    assert max(e["data"]["step"] for e in events["data"] if e["type"] == "metrics") < 10_000
    assert [m["id"] for m in client.get("/v1/models", headers=K1).json()["data"]] == ["tiny"]


def test_a_job_the_worker_keeps_dying_in_is_failed_not_retried_forever(client):
    from tunelab.service.worker import MAX_CRASHES, PAUSED, RESUMING, crashes_at, run_job

    job = create_job(client, jsonl(copy_task_rows(12)))
    service = client.app.state.service
    store = service.store
    store.set_status(job["id"], "running")
    for _ in range(MAX_CRASHES - 1):
        store.add_event(job["id"], RESUMING, data={"from_step": 0})
    store.add_event(job["id"], PAUSED)  # a polite server stop does not count as a crash
    assert crashes_at(store, job["id"], 0) == 0
    for _ in range(MAX_CRASHES):
        store.add_event(job["id"], RESUMING, data={"from_step": 0})
    assert crashes_at(store, job["id"], 5) == 0  # progress since then would reset the count
    run_job(store, service.data, store.get_job(job["id"]))
    failed = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=K1).json()
    assert failed["status"] == "failed" and "died 3 times" in failed["error"]["message"]


def fake_fine_tuned_model(client, tiny_dir, name: str, peft_config) -> str:
    """A job row plus a random PEFT adapter in its run folder, published as model `name` (no training)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    job = create_job(client, jsonl(copy_task_rows(12)))
    service = client.app.state.service
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), peft_config)
    for param in model.parameters():
        if param.requires_grad:  # make the adapter change the answers
            param.data.normal_(0, 0.5)
    model.save_pretrained(service.data.run_dir(job["id"]))
    service.store.add_model(name, service.keys["key-one"], job["id"])
    return name


def test_adapters_share_one_base_in_a_small_lru(tmp_path, tiny_llama_dir):
    from peft import IA3Config, LoraConfig

    settings = settings_for(tmp_path, tiny_llama_dir, max_loaded_adapters=2)
    with TestClient(create_app(settings)) as client:
        lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        names = [fake_fine_tuned_model(client, tiny_llama_dir, f"ft:tiny:o::{i}", lora) for i in range(3)]
        ia3 = fake_fine_tuned_model(
            client,
            tiny_llama_dir,
            "ft:tiny:o::ia3",
            IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
        )
        engine = client.app.state.service.engine

        def answer(model):
            return chat(client, model=model, max_tokens=6).json()["choices"][0]["message"]["content"]

        first = {name: answer(name) for name in names}
        assert len(set(first.values()) | {answer("tiny")}) == 4  # each adapter answers differently
        assert list(engine._adapters) == names[1:]  # the least recently used one was unloaded
        assert {name: answer(name) for name in names} == first  # reloading gives the same answers
        assert answer(ia3) and list(engine._adapters) == [ia3]  # another kind of adapter: room made first
        assert answer(names[0]) == first[names[0]]
        assert client.delete(f"/v1/models/{names[0]}", headers=K1).json()["deleted"]
        assert names[0] not in engine._adapters
        assert len(engine._bases) == 1  # one base model in memory throughout


def test_explicit_auto_hyperparameters_and_strict_types(client):
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    job = create_job(client, jsonl(copy_task_rows(12)), hyperparameters=auto)
    assert job["hyperparameters"] == auto  # picked from the data when the job runs
    file_id = job["training_file"]
    for bad in ({"n_epochs": True}, {"batch_size": "3"}):
        body = {"model": "tiny", "training_file": file_id, "hyperparameters": bad}
        response = client.post("/v1/fine_tuning/jobs", headers=K1, json=body)
        assert response.status_code == 400, bad
        assert response.json()["error"]["param"] == f"hyperparameters.{next(iter(bad))}"


def test_an_empty_file_is_invalid_n_examples(client):
    job = create_job(client, "\n\n")
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_n_examples"


def test_true_is_refused_for_unsupported_options_but_defaults_pass(client):
    assert chat(client, max_tokens=2, echo=True).json()["error"]["param"] == "echo"
    assert chat(client, max_tokens=2, logprobs=False, tools=[]).status_code == 200


def test_one_file_per_upload(client):
    files = [("file", ("a.jsonl", "{}\n")), ("file", ("b.jsonl", "{}\n"))]
    response = client.post("/v1/files", headers=K1, files=files, data={"purpose": "fine-tune"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"
    assert client.get("/v1/files", headers=K1).json()["data"] == []


def test_deleting_a_model_takes_its_checkpoints_and_waits_for_jobs_using_it(tmp_path, tiny_llama_dir):
    from peft import LoraConfig

    with TestClient(create_app(settings_for(tmp_path, tiny_llama_dir))) as client:
        lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
        name = fake_fine_tuned_model(client, tiny_llama_dir, "ft:tiny:o::base", lora)
        service = client.app.state.service
        job_id = service.store.get_model(name, service.keys["key-one"]).job_id
        checkpoint = f"{name}:ckpt-step-2"
        service.store.add_checkpoint(job_id, 2, checkpoint, {"step": 2})
        shutil.copytree(service.data.run_dir(job_id), service.data.checkpoint_dir(job_id, 2))
        assert (
            client.get(f"/v1/models/{checkpoint}", headers=K1).json()["owned_by"] == service.keys["key-one"]
        )
        assert chat(client, model=checkpoint, max_tokens=2).status_code == 200

        child = create_job(client, jsonl(copy_task_rows(12)), model=checkpoint)  # continues the checkpoint
        assert child["status"] == "queued"
        busy = client.delete(f"/v1/models/{name}", headers=K1)
        assert busy.status_code == 409 and child["id"] in busy.json()["error"]["message"]
        client.post(f"/v1/fine_tuning/jobs/{child['id']}/cancel", headers=K1)
        assert client.delete(f"/v1/models/{name}", headers=K1).json()["deleted"]
        for gone in (name, checkpoint):
            assert client.get(f"/v1/models/{gone}", headers=K1).status_code == 404
            assert chat(client, model=gone, max_tokens=2).status_code == 404
        assert not service.data.run_dir(job_id).exists() and not service.data.checkpoints_dir(job_id).exists()


def test_a_client_leaving_a_plain_request_stops_its_generation(client):
    service = client.app.state.service
    target = resolve_model(service, "tiny", service.keys["key-one"])
    ids = service.engine.tokenizer("tiny")("hello")["input_ids"]
    max_tokens = 512 - len(ids)  # all the tiny model's context: far longer than one disconnect check
    runs = [(i, ids, Sampling(max_tokens=max_tokens, temperature=1.0, seed=i)) for i in range(2)]
    reply = Reply(service, service.keys["key-one"], target, "chat.completion", [], len(ids))

    class HungUp:
        async def is_disconnected(self):
            return True

    assert asyncio.run(reply.whole(runs, HungUp())) is None
    assert all(s.wait_idle(30) for s in service.engine.schedulers)
    assert service.store.get_completion(reply.id, service.keys["key-one"]) is None


def test_files_page_with_a_cursor(client):
    ids = [upload(client, jsonl(copy_task_rows(2)), name=f"{i}.jsonl").json()["id"] for i in range(3)]
    first = client.get("/v1/files", headers=K1, params={"limit": 2}).json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = client.get("/v1/files", headers=K1, params={"limit": 2, "after": first["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and not rest["has_more"]
    oldest = client.get("/v1/files", headers=K1, params={"order": "asc", "limit": 1}).json()
    assert oldest["data"][0]["id"] == ids[0]


def test_metrics_in_prometheus_text_count_requests_tokens_batches_and_jobs(tmp_path, tiny_llama_dir):
    from prometheus_client.parser import text_string_to_metric_families

    with TestClient(create_app(settings_for(tmp_path, tiny_llama_dir, metrics_keys=["scrape"]))) as client:
        reply = chat(client, max_tokens=3).json()
        create_job(client, jsonl(copy_task_rows(12)))
        assert client.get("/metrics").status_code == 401
        # It counts every key's jobs: an API key is refused, the operator's metrics key reads it.
        assert client.get("/metrics", headers=K1).json()["error"]["code"] == "operator_only"
        response = client.get("/metrics", headers={"Authorization": "Bearer scrape"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    chat_ok = (("method", "POST"), ("route", "/v1/chat/completions"), ("status", "200"))
    assert samples[("tunelab_requests_total", chat_ok)] == 1
    assert samples[("tunelab_tokens_total", (("kind", "completion"),))] == reply["usage"]["completion_tokens"]
    assert samples[("tunelab_tokens_total", (("kind", "prompt"),))] == reply["usage"]["prompt_tokens"]
    assert samples[("tunelab_batch_rows_count", ())] == 2  # 3 tokens: the prefill's, then 2 decode steps
    assert samples[("tunelab_first_token_seconds_count", ())] == 1
    assert samples[("tunelab_jobs", (("status", "queued"),))] == 1
    assert samples[("tunelab_queued_sequences", ())] == 0
