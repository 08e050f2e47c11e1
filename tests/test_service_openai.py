"""Acceptance: the official `openai` client drives `tunelab serve` on the embedded model, end to end."""

import json
import time

import openai
import pytest

from conftest import copy_task_rows
from server import ServerProcess

pytestmark = pytest.mark.embedded
BASE = "smollm2-135m-instruct"


def poll(fetch, done, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fetch()
        if done(value):
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out; last: {value}")


def test_openai_client_upload_train_chat_cancel_delete(tmp_path):
    server = ServerProcess(tmp_path / "data", "sk-local-test").start()
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-local-test", max_retries=0)
        rows = "".join(json.dumps(row) + "\n" for row in copy_task_rows(24)).encode()
        file = client.files.create(file=("train.jsonl", rows), purpose="fine-tune")
        assert file.purpose == "fine-tune" and file.bytes == len(rows)
        assert client.files.content(file.id).read() == rows

        job = client.fine_tuning.jobs.create(
            model=BASE,
            training_file=file.id,
            suffix="demo",
            seed=1,
            method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 4}}},
            extra_body={"tunelab": {"max_steps": 4, "save_every": 2}},
        )
        assert job.status == "validating_files"
        job = poll(
            lambda: client.fine_tuning.jobs.retrieve(job.id), lambda j: j.status in ("succeeded", "failed")
        )
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model == f"ft:{BASE}:{job.organization_id}:demo:{job.id.removeprefix('ftjob-')}"
        assert job.trained_tokens > 0 and job.result_files
        # "auto" n_epochs and learning rate were picked from the data when the run started
        hyper = job.hyperparameters
        assert hyper.batch_size == 4 and isinstance(hyper.n_epochs, int) and hyper.n_epochs >= 1
        assert hyper.learning_rate_multiplier == pytest.approx(0.707, abs=5e-3)  # sqrt(4 / 8), lr to 3 digits

        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        assert any("auto hyperparameters from the data" in e.message for e in events)
        metrics = [e for e in events if e.type == "metrics"]
        assert sorted(e.data["step"] for e in metrics) == [1, 2, 3, 4]
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.step_number for c in checkpoints] == [4, 2]
        assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-4"
        assert checkpoints[0].metrics.train_loss > 0

        messages = [{"role": "user", "content": "say paris"}]
        reply = client.chat.completions.create(
            model=job.fine_tuned_model, messages=messages, max_tokens=8, temperature=0
        )
        text = reply.choices[0].message.content
        assert reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 0
        stream = client.chat.completions.create(
            model=job.fine_tuned_model, messages=messages, max_tokens=8, temperature=0, stream=True
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == text
        # A checkpoint answers too.
        client.chat.completions.create(
            model=checkpoints[1].fine_tuned_model_checkpoint, messages=messages, max_tokens=2
        )

        second = client.fine_tuning.jobs.create(model=BASE, training_file=file.id)
        assert client.fine_tuning.jobs.cancel(second.id).status == "cancelled"
        assert client.fine_tuning.jobs.retrieve(second.id).status == "cancelled"
        assert [j.id for j in client.fine_tuning.jobs.list(limit=2).data] == [second.id, job.id]

        assert client.models.delete(job.fine_tuned_model).deleted
        assert job.fine_tuned_model not in [m.id for m in client.models.list().data]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=job.fine_tuned_model, messages=messages, max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        server.stop()
