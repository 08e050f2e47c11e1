"""OpenAI's `method: dpo` jobs on a tiny model, in process, through the official `openai` client (its
`http_client` is the app's TestClient): the request, the job object, file kinds and reward metrics."""

import json
import threading

import openai
import pytest
from fastapi.testclient import TestClient

from conftest import copy_task_rows
from test_service_api import K1, jsonl, settings_for, upload, wait_for_job
from tunelab.service import create_app
from tunelab.service.store import JobRow
from tunelab.service.worker import JobHooks, results_csv, serve_jobs

WORDS = ["alice", "bob", "paris", "london", "tokyo", "great"]


def pair_rows(n: int) -> list[dict]:
    """OpenAI's DPO format: repeat the user's word, not the next one."""
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"say {WORDS[i % 6]}"}]},
            "preferred_output": [{"role": "assistant", "content": WORDS[i % 6]}],
            "non_preferred_output": [{"role": "assistant", "content": WORDS[(i + 1) % 6]}],
        }
        for i in range(n)
    ]


def dpo_registered() -> bool:
    from tunelab.objectives import REGISTRY

    return "dpo" in REGISTRY


needs_dpo = pytest.mark.skipif(not dpo_registered(), reason="the dpo objective (branch core) is not merged")


@pytest.fixture
def app_client(tmp_path, tiny_llama_dir):
    with TestClient(create_app(settings_for(tmp_path, tiny_llama_dir))) as c:
        yield c


@pytest.fixture
def sdk(app_client):
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="key-one", http_client=app_client, max_retries=0
    )


def sdk_file(sdk, rows) -> str:
    return sdk.files.create(file=("train.jsonl", jsonl(rows).encode()), purpose="fine-tune").id


def train_queued_jobs(app_client) -> None:
    """The worker in this process until the queue is empty."""
    worker = threading.Thread(
        target=serve_jobs, args=(app_client.app.state.service.data.root,), kwargs={"once": True}
    )
    worker.start()
    worker.join(timeout=300)
    assert not worker.is_alive()


def test_a_reinforcement_job_without_a_grader_is_refused_by_name(sdk):
    file_id = sdk_file(sdk, copy_task_rows(12))
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.fine_tuning.jobs.create(model="tiny", training_file=file_id, method={"type": "reinforcement"})
    assert refused.value.body["param"] == "method.reinforcement.grader"


def test_a_pairs_file_for_a_supervised_job_fails_naming_both_formats(app_client):
    file_id = upload(app_client, jsonl(pair_rows(12))).json()["id"]
    body = {"model": "tiny", "training_file": file_id, "method": {"type": "supervised"}}
    created = app_client.post("/v1/fine_tuning/jobs", headers=K1, json=body).json()
    job = wait_for_job(app_client, created["id"], statuses=("queued", "failed"))
    assert job["status"] == "failed" and job["error"]["param"] == "training_file"
    message = job["error"]["message"]
    assert "expected supervised examples" in message and "found preference pairs (OpenAI DPO" in message


@needs_dpo
def test_a_dpo_job_with_a_supervised_file_fails_at_validation(sdk):
    pairs, supervised = sdk_file(sdk, pair_rows(12)), sdk_file(sdk, copy_task_rows(12))
    for training, validation in ((supervised, None), (pairs, supervised)):
        job = sdk.fine_tuning.jobs.create(
            model="tiny", training_file=training, validation_file=validation, method={"type": "dpo"}
        )
        job = poll_status(sdk, job.id, ("queued", "failed"))
        assert job.status == "failed", job
        expected = "validation_file" if validation else "training_file"
        assert job.error.param == expected and "expected" in job.error.message
        assert "supervised" in job.error.message.split("found", 1)[1], job.error.message


def poll_status(sdk, job_id: str, statuses: tuple):
    return wait_for_job_sdk(lambda: sdk.fine_tuning.jobs.retrieve(job_id), statuses)


def wait_for_job_sdk(fetch, statuses, tries=600):
    import time

    for _ in range(tries):
        job = fetch()
        if job.status in statuses:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job still {job.status}")


@needs_dpo
def test_method_dpo_job_trains_and_reports_its_method_and_reward_metrics(sdk, app_client):
    pairs = sdk_file(sdk, pair_rows(12))
    hyper = {"beta": 0.2, "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": "auto", "new_knob": 1}
    job = sdk.fine_tuning.jobs.create(
        model="tiny",
        training_file=pairs,
        validation_file=sdk_file(sdk, pair_rows(4)),
        method={"type": "dpo", "dpo": {"hyperparameters": hyper}},
        extra_body={"tunelab": {"max_steps": 3}},
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    assert job.tunelab["objective"] == "dpo" and job.tunelab["beta"] == 0.2
    assert poll_status(sdk, job.id, ("queued", "failed")).status == "queued"
    train_queued_jobs(app_client)
    job = sdk.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    resolved = job.method.dpo.hyperparameters
    assert (resolved.n_epochs, resolved.batch_size, resolved.beta) == (1, 4, 0.2)
    assert isinstance(resolved.learning_rate_multiplier, float)  # "auto" resolved by the run
    assert job.hyperparameters.batch_size == 4 and not hasattr(job.hyperparameters, "beta")
    events = sdk.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert any("method.dpo.hyperparameters.new_knob" in e.message for e in events)
    train = [e.data for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert train and all(0 <= d["rewards/accuracies"] <= 1 and "rewards/margins" in d for d in train)
    valid = [e.data for e in events if e.type == "metrics" and "valid_loss" in e.data]
    assert valid and all("val_rewards/accuracies" in d for d in valid)
    results = sdk.files.content(job.result_files[0]).text.splitlines()
    assert "rewards/accuracies" in results[0] and "val_rewards/accuracies" in results[0]


@needs_dpo
def test_a_dpo_job_goes_on_from_an_sft_model(sdk, app_client):
    sft = sdk.fine_tuning.jobs.create(
        model="tiny",
        training_file=sdk_file(sdk, copy_task_rows(12)),
        extra_body={"tunelab": {"max_steps": 2}},
    )
    poll_status(sdk, sft.id, ("queued", "failed"))
    train_queued_jobs(app_client)
    sft = sdk.fine_tuning.jobs.retrieve(sft.id)
    assert sft.status == "succeeded", sft.error
    dpo = sdk.fine_tuning.jobs.create(
        model=sft.fine_tuned_model,
        training_file=sdk_file(sdk, pair_rows(12)),
        method={"type": "dpo"},
        extra_body={"tunelab": {"max_steps": 2}},
    )
    assert dpo.method.dpo.hyperparameters.beta == "auto" and dpo.tunelab["method"] == "lora"
    row = app_client.app.state.service.store.get_job(dpo.id)
    assert row.init_adapter == str(app_client.app.state.service.data.run_dir(sft.id))
    poll_status(sdk, dpo.id, ("queued", "failed"))
    train_queued_jobs(app_client)
    dpo = sdk.fine_tuning.jobs.retrieve(dpo.id)
    assert dpo.status == "succeeded", dpo.error
    reply = sdk.chat.completions.create(
        model=dpo.fine_tuned_model, messages=[{"role": "user", "content": "say bob"}], max_tokens=2
    )
    assert reply.usage.completion_tokens <= 2


def test_a_dpo_objective_outside_the_pair_family_is_refused_by_name(sdk):
    file_id = sdk_file(sdk, pair_rows(12))
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.fine_tuning.jobs.create(
            model="tiny",
            training_file=file_id,
            method={"type": "dpo"},
            extra_body={"tunelab": {"objective": "kto"}},
        )
    assert refused.value.body["param"] == "tunelab.objective" and "orpo" in refused.value.body["message"]


def test_reward_metrics_go_into_events_checkpoints_and_results(app_client, tmp_path):
    """The worker's side alone, on the records a preference run writes (TRL's names)."""
    service = app_client.app.state.service
    file_id = upload(app_client, jsonl(copy_task_rows(12))).json()["id"]
    created = app_client.post(
        "/v1/fine_tuning/jobs", headers=K1, json={"model": "tiny", "training_file": file_id}
    )
    job: JobRow = service.store.get_job(created.json()["id"])
    rewards = {
        "rewards/chosen": 0.3,
        "rewards/rejected": -0.1,
        "rewards/accuracies": 0.75,
        "rewards/margins": 0.4,
    }
    train = {"kind": "train", "step": 1, "loss": 0.6, "lr": 1e-4, "tokens_per_s": 10.0, **rewards}
    evaluation = {"kind": "eval", "step": 1, "val_loss": 0.65, "val_rewards/accuracies": 0.5}
    service.store.add_checkpoint(job.id, 1, "ckpt", {"step": 1})
    hooks = JobHooks(service.store, service.data, job)
    hooks.on_record(train)
    hooks.on_record(evaluation)
    events = [e for e in service.store.list_events(job.id, None, 100) if e.type == "metrics"]
    by_kind = {("valid" if "valid_loss" in e.data else "train"): e for e in events}
    assert (
        by_kind["train"].data["rewards/accuracies"] == 0.75
        and "reward accuracy=0.75" in by_kind["train"].message
    )
    assert by_kind["valid"].data["val_rewards/accuracies"] == 0.5
    assert service.store.list_checkpoints(job.id)[0].metrics["val_rewards/accuracies"] == 0.5
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(train) + "\n" + json.dumps(evaluation) + "\n")
    header, row = results_csv(run).splitlines()
    assert header.split(",")[:4] == ["step", "train_loss", "valid_loss", "rewards/chosen"]
    assert header.endswith("val_rewards/accuracies") and row.endswith(",0.5")


def test_a_dpo_method_splits_into_hyperparameters_objective_and_ignored_keys():
    from tunelab.service.jobs import MethodSpec, training_method
    from tunelab.service.shapes import method_object

    hyper = {"beta": 0.2, "n_epochs": 2, "new_knob": 1}
    spec = MethodSpec.model_validate({"type": "dpo", "dpo": {"hyperparameters": hyper, "other": {}}})
    extension = {"objective": "ipo", "lora_r": 8}
    method = training_method(spec, None, extension, python_graders=False)
    assert method.hyperparameters == {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert method.objective == {"objective": "ipo", "beta": 0.2} and extension == {"lora_r": 8}
    assert method.ignored == ["method.dpo.other", "method.dpo.hyperparameters.new_knob"]
    job = JobRow(
        id="ftjob-1",
        owner="o",
        model="tiny",
        model_root="tiny",
        training_file="file-1",
        validation_file=None,
        hyperparameters=method.hyperparameters,
        options={"method": "lora", "objective": "ipo"},
        base_spec="tiny",
        init_adapter=None,
        suffix=None,
        seed=1,
        metadata=None,
        status="queued",
        created_at=0,
    )
    assert method_object(job) == {
        "type": "dpo",
        "dpo": {"hyperparameters": method.hyperparameters | {"beta": "auto"}},
    }
    supervised = training_method(MethodSpec.model_validate({"type": "supervised"}), None, {}, False)
    assert supervised.objective == {} and supervised.hyperparameters["n_epochs"] == "auto"
