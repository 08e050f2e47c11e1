"""A method defined here, in one class and registered, with an option of its own, is trainable from the
CLI, a YAML file, the Python API and the service, which serves or refuses it by what it declares and
checks its option's bounds; nothing outside this file names it."""

import json
from dataclasses import dataclass, field

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


@dataclass
class QueryOptions:
    query_rank: int = field(default=2, metadata={"help": "rank of the query update", "bounds": (1, 8)})


class QueryOnlyLoRA(Method):
    """Low-rank updates to the attention queries alone: a PEFT adapter, so the service can switch it on."""

    name = "toy-query-lora"
    default_lr = 1e-2
    summary = "a test's own method"
    servable = True
    options = QueryOptions

    def prepare(self, model, config):
        from peft import LoraConfig

        rank = config.options.query_rank
        lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj"], task_type="CAUSAL_LM")
        return wrap_with_peft(model, lora, config)


def saved_rank(run) -> int:
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["target_modules"] == ["q_proj"]
    return config["r"]


def train_args(model_dir, data, out, *options) -> list[str]:
    args = ["train", "--model", model_dir, "--data", data, "--out", out, "--max-steps", 2, *options]
    return [str(a) for a in args]


@pytest.fixture
def toy():
    method = register(QueryOnlyLoRA())
    yield method
    del REGISTRY[method.name]


def test_a_registered_method_trains_from_the_python_api(toy, tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(16))
    config = TrainConfig(
        model=str(tiny_llama_dir), data=str(data), out=str(tmp_path / "run"), method=toy.name, max_steps=2,
        options={"query_rank": 3},
    )  # fmt: skip
    summary = train(config).summary
    assert summary["method"] == toy.name and summary["steps"] == 2
    assert saved_rank(tmp_path / "run") == 3


def test_a_registered_method_and_its_option_train_from_the_cli_and_from_yaml(toy, tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(16))
    cli = train_args(tiny_llama_dir, data, tmp_path / "cli", "--method", toy.name, "--query-rank", 3)
    result = CliRunner().invoke(app, cli)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["method"] == toy.name
    assert saved_rank(tmp_path / "cli") == 3

    yaml_file = tmp_path / "toy.yaml"
    yaml_file.write_text(f"method: {toy.name}\nquery_rank: 4\n")
    result = CliRunner().invoke(
        app, train_args(tiny_llama_dir, data, tmp_path / "yaml", "--config", yaml_file)
    )
    assert result.exit_code == 0, result.output
    assert saved_rank(tmp_path / "yaml") == 4


def test_its_option_is_in_the_help_and_refused_for_another_method_or_out_of_bounds(toy, tmp_path):
    help_text = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "--query-rank" in help_text and f"{toy.name}: rank of the query update" in help_text
    data = write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(4))
    for options, message in [
        (["--method", "lora", "--query-rank", 3], f"query_rank is an option of {toy.name}, not of lora"),
        (["--method", toy.name, "--query-rank", 9], "query_rank must be between 1 and 8"),
        (["--method", toy.name, "--lora-r", 9], f"lora_r is an option of lora, not of {toy.name}"),
    ]:
        result = CliRunner().invoke(app, train_args("unused", data, tmp_path / "run", *options))
        assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
        assert not (tmp_path / "run").exists()


def test_the_service_serves_a_servable_method_and_refuses_one_that_is_not(
    toy, tiny_llama_dir, tmp_path, monkeypatch
):
    from tunelab.service.worker import serve_jobs

    with TestClient(create_app(settings_for(tmp_path, tiny_llama_dir))) as client:
        options = {"method": toy.name, "query_rank": 3, "max_steps": 2}
        job = create_job(client, jsonl(copy_task_rows(12)), tunelab=options)
        assert job["status"] == "queued" and job["tunelab"]["query_rank"] == 3
        serve_jobs(client.app.state.service.data.root, once=True)  # the worker's loop, in this process
        done = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=K1).json()
        assert done["status"] == "succeeded", done["error"]
        reply = chat(client, model=done["fine_tuned_model"], max_tokens=3)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1

        file_id = client.get("/v1/files", headers=K1).json()["data"][0]["id"]
        for bad in ({"query_rank": 9}, {"query_rank": "3"}, {"query_rank": 3, "method": "lora"}):
            body = {"model": "tiny", "training_file": file_id, "tunelab": {"method": toy.name, **bad}}
            refused = client.post("/v1/fine_tuning/jobs", headers=K1, json=body)
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "tunelab.query_rank"

        monkeypatch.setattr(QueryOnlyLoRA, "servable", False)
        body = {"model": "tiny", "training_file": file_id, "tunelab": {"method": toy.name}}
        refused = client.post("/v1/fine_tuning/jobs", headers=K1, json=body)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "tunelab.method"
