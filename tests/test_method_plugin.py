"""A method defined here, in one class and registered, is trainable from the CLI and the Python API, and
the service serves or refuses it by what it declares; nothing outside this file names it."""

import json

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import copy_task_rows, write_jsonl
from test_service_api import K1, chat, create_job, jsonl, settings_for
from tunelab.cli import app
from tunelab.methods import REGISTRY, Method, register
from tunelab.methods.base import wrap_with_peft
from tunelab.service import create_app
from tunelab.training import TrainConfig, train


class QueryOnlyLoRA(Method):
    """Rank-2 LoRA on the attention queries alone: a PEFT adapter, so the service can switch it on."""

    name = "toy-query-lora"
    default_lr = 1e-2
    summary = "a test's own method"
    servable = True

    def prepare(self, model, config):
        from peft import LoraConfig

        lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM")
        return wrap_with_peft(model, lora, config)


@pytest.fixture
def toy():
    method = register(QueryOnlyLoRA())
    yield method
    del REGISTRY[method.name]


def test_a_registered_method_trains_from_the_python_api(toy, tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(16))
    config = TrainConfig(
        model=str(tiny_llama_dir), data=str(data), out=str(tmp_path / "run"), method=toy.name, max_steps=2
    )
    summary = train(config).summary
    assert summary["method"] == toy.name and summary["steps"] == 2
    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["target_modules"] == ["q_proj"]


def test_a_registered_method_trains_from_the_cli(toy, tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(16))
    args = ["train", "--model", tiny_llama_dir, "--data", data, "--out", tmp_path / "run"]
    result = CliRunner().invoke(app, [str(a) for a in [*args, "--method", toy.name, "--max-steps", 2]])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["method"] == toy.name


def test_the_service_serves_a_servable_method_and_refuses_one_that_is_not(
    toy, tiny_llama_dir, tmp_path, monkeypatch
):
    from tunelab.service.worker import serve_jobs

    with TestClient(create_app(settings_for(tmp_path, tiny_llama_dir))) as client:
        job = create_job(client, jsonl(copy_task_rows(12)), tunelab={"method": toy.name, "max_steps": 2})
        assert job["status"] == "queued" and job["tunelab"]["method"] == toy.name
        serve_jobs(client.app.state.service.data.root, once=True)  # the worker's loop, in this process
        done = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=K1).json()
        assert done["status"] == "succeeded", done["error"]
        reply = chat(client, model=done["fine_tuned_model"], max_tokens=3)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1

        monkeypatch.setattr(QueryOnlyLoRA, "servable", False)
        file_id = client.get("/v1/files", headers=K1).json()["data"][0]["id"]
        body = {"model": "tiny", "training_file": file_id, "tunelab": {"method": toy.name}}
        refused = client.post("/v1/fine_tuning/jobs", headers=K1, json=body)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "tunelab.method"
