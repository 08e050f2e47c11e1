"""Pausing and resuming a job through the official `openai` client: the run stops at a checkpoint of the
step it was paused at, waits, and ends with the weights (and the metrics, under OpenAI's names) an
uninterrupted job gives."""

import itertools

import openai
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from conftest import copy_task_rows
from test_service_api import jsonl, settings_for
from tunelab.run_dir import RunDir
from tunelab.service import create_app
from tunelab.service.worker import JobHooks, serve_jobs

OPTIONS = {"tunelab": {"max_steps": 6, "max_length": 64, "save_every": 3, "train_on_inputs": True}, "seed": 7}
# A high learning rate, and the chat template's tokens learned too: within 6 steps the tiny model
# predicts some tokens (its token accuracy is above 0).
METHOD = {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 50}}}


@pytest.fixture
def app_client(tmp_path, tiny_llama_dir):
    with TestClient(create_app(settings_for(tmp_path, tiny_llama_dir))) as client:
        yield client


def sdk_for(client):
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="key-one", http_client=client, max_retries=0
    )


def new_job(sdk, file_id: str, validation_file: str | None = None):
    job = sdk.fine_tuning.jobs.create(model="tiny", training_file=file_id, seed=OPTIONS["seed"],
                                      validation_file=validation_file, method=METHOD,
                                      extra_body={"tunelab": OPTIONS["tunelab"]})  # fmt: skip
    while (job := sdk.fine_tuning.jobs.retrieve(job.id)).status == "validating_files":
        pass
    return job


def adapter(app_client, job_id: str) -> dict:
    return load_file(RunDir(app_client.app.state.service.data.run_dir(job_id)).adapter_weights)


def openai_metrics(sdk, job_id: str) -> tuple[list[dict], list[dict], dict]:
    """A job's train and valid metrics events' data (timings aside), oldest first, and its one end-of-job
    event's, checked for OpenAI's names and an accuracy's range; and its checkpoints' metrics as the SDK
    types them."""
    events = sdk.fine_tuning.jobs.list_events(job_id, limit=100).data[::-1]
    metrics = [
        {k: v for k, v in e.data.items() if k != "tokens_per_s"} for e in events if e.type == "metrics"
    ]
    train = [d for d in metrics if "train_loss" in d]
    valid = [d for d in metrics if "valid_loss" in d and d["step"] > 0]  # not the baseline, before training
    (full,) = [d for d in metrics if "full_valid_loss" in d]
    assert train and valid and all(0 <= d["train_mean_token_accuracy"] <= 1 for d in train)
    assert all(0 <= d["valid_mean_token_accuracy"] <= 1 for d in valid)
    assert not [d for d in metrics if {"mean_token_accuracy", "val_mean_token_accuracy"} & d.keys()]
    # Every eval scores the whole validation file; the model is the best eval's weights (the last here).
    assert full["full_valid_loss"] == min(d["valid_loss"] for d in valid) == valid[-1]["valid_loss"]
    assert full["full_valid_mean_token_accuracy"] == valid[-1]["valid_mean_token_accuracy"]
    assert full["step"] == valid[-1]["step"] == OPTIONS["tunelab"]["max_steps"]
    last = sdk.fine_tuning.jobs.checkpoints.list(job_id).data[0].metrics
    assert last.step == full["step"] and last.full_valid_loss == full["full_valid_loss"]
    assert last.full_valid_mean_token_accuracy == full["full_valid_mean_token_accuracy"]
    assert last.valid_loss == last.full_valid_loss and last.train_loss == train[-1]["train_loss"]
    for accuracy in (last.train_mean_token_accuracy, last.valid_mean_token_accuracy):
        assert accuracy is not None and 0 <= accuracy <= 1
    return train, valid, full


def test_a_paused_job_resumes_to_the_weights_of_an_uninterrupted_one(app_client, monkeypatch):
    import tunelab.service.store as store_module

    sdk, root = sdk_for(app_client), app_client.app.state.service.data.root
    file_id = sdk.files.create(file=("t.jsonl", jsonl(copy_task_rows(16)).encode()), purpose="fine-tune").id
    val_id = sdk.files.create(file=("v.jsonl", jsonl(copy_task_rows(6)).encode()), purpose="fine-tune").id
    whole = new_job(sdk, file_id, val_id)
    serve_jobs(root, once=True)
    assert sdk.fine_tuning.jobs.retrieve(whole.id).status == "succeeded"
    train, valid, full = openai_metrics(sdk, whole.id)
    assert train[-1]["train_mean_token_accuracy"] > 0 and valid[-1]["valid_mean_token_accuracy"] > 0

    paused = new_job(sdk, file_id, val_id)
    on_step = JobHooks.on_step
    clock = itertools.count(1_000)  # a second passes at each event, so the steps have a pace

    def pause_at_step_3(self, step):  # the user pauses while step 3 trains
        if step == 3:
            running = sdk.fine_tuning.jobs.retrieve(paused.id)
            assert running.status == "running" and running.estimated_finish > next(clock)
            assert sdk.fine_tuning.jobs.pause(paused.id).status == "paused"
        on_step(self, step)

    monkeypatch.setattr(store_module, "now", lambda: next(clock))
    monkeypatch.setattr(JobHooks, "on_step", pause_at_step_3)
    serve_jobs(root, once=True)  # returns: a paused job is not picked up
    job = sdk.fine_tuning.jobs.retrieve(paused.id)
    assert job.status == "paused" and job.fine_tuned_model is None
    assert [c.step_number for c in sdk.fine_tuning.jobs.checkpoints.list(paused.id).data] == [3]
    with pytest.raises(openai.BadRequestError):
        sdk.fine_tuning.jobs.pause(paused.id)  # already paused

    monkeypatch.setattr(JobHooks, "on_step", on_step)
    assert sdk.fine_tuning.jobs.resume(paused.id).status == "queued"
    serve_jobs(root, once=True)
    job = sdk.fine_tuning.jobs.retrieve(paused.id)
    assert job.status == "succeeded" and job.fine_tuned_model
    messages = [e.message for e in sdk.fine_tuning.jobs.list_events(paused.id, limit=100).data]
    assert "Fine-tuning job paused after step 3; resume continues from there" in messages
    assert "Fine-tuning job continues from step 3" in messages
    assert openai_metrics(sdk, paused.id) == (train, valid, full)  # resumed exactly, reported once each
    a, b = adapter(app_client, whole.id), adapter(app_client, paused.id)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_only_queued_or_running_jobs_pause_and_only_paused_ones_resume(app_client):
    sdk = sdk_for(app_client)
    file_id = sdk.files.create(file=("t.jsonl", jsonl(copy_task_rows(12)).encode()), purpose="fine-tune").id
    job = new_job(sdk, file_id)
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.fine_tuning.jobs.resume(job.id)
    assert "only paused jobs" in refused.value.body["message"]
    assert sdk.fine_tuning.jobs.pause(job.id).status == "paused"  # a queued job waits, paused
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # and can still be cancelled
    with pytest.raises(openai.BadRequestError):
        sdk.fine_tuning.jobs.pause(job.id)


def test_a_running_job_estimates_its_finish_from_its_pace(app_client, monkeypatch):
    import tunelab.service.store as store_module

    sdk, store = sdk_for(app_client), app_client.app.state.service.store
    file_id = sdk.files.create(file=("t.jsonl", jsonl(copy_task_rows(12)).encode()), purpose="fine-tune").id
    job = new_job(sdk, file_id)
    store.set_status(job.id, "running")  # as the worker marks it
    assert sdk.fine_tuning.jobs.retrieve(job.id).estimated_finish is None
    for step, at in ((2, 1_000), (6, 1_040)):  # 4 steps in 40 s: 10 s a step, 4 of 10 steps left
        monkeypatch.setattr(store_module, "now", lambda at=at: at)
        store.add_event(
            job.id, "step", type="metrics", data={"step": step, "total_steps": 10, "train_loss": 1.0}
        )
    assert sdk.fine_tuning.jobs.retrieve(job.id).estimated_finish == 1_080
