"""OpenAI's `method: reinforcement` jobs and grader endpoints on a tiny model, in process, through the
official `openai` client: the job trains with its grader and reports rewards; python graders only when the
operator allows them, and then sandboxed (an escaping grader gives reward 0, recorded on the job, and the
server goes on); hyperparameters this server cannot honour are refused with why."""

import csv
import io

import openai
import pytest
from fastapi.testclient import TestClient

from test_service_api import settings_for
from test_service_dpo import pair_rows, sdk_file, train_queued_jobs
from tunelab.service import create_app
from tunelab.service.worker import serve_jobs

WORDS = ["alice", "bob", "paris", "london", "tokyo", "great"]
SAYS_THE_WORD = {
    "type": "string_check", "name": "says the word", "input": "{{sample.output_text}}",
    "reference": "{{item.word}}", "operation": "like",
}  # fmt: skip
LENGTH = {
    "type": "python",
    "name": "short",
    "source": "def grade(sample, item):\n    return 1 / (1 + len(sample['output_text']))\n",
}
SECRET = "sk-do-not-leak-7731"
READS_THE_ENVIRONMENT = {
    "type": "python",
    "name": "thief",
    "source": "import os\ndef grade(sample, item):\n    return float(len(os.environ['TUNELAB_API_KEY']))\n",
}


def prompt_rows(n: int) -> list[dict]:
    """OpenAI reinforcement lines: messages, and the field the grader reads as {{item.word}}."""
    words = [WORDS[i % 6] for i in range(n)]
    return [{"messages": [{"role": "user", "content": f"say {word}"}], "word": word} for word in words]


def client_for(tmp_path, model_dir, **settings):
    return TestClient(create_app(settings_for(tmp_path, model_dir, **settings)))


@pytest.fixture
def app_client(tmp_path, tiny_llama_dir):
    with client_for(tmp_path, tiny_llama_dir) as client:
        yield client


@pytest.fixture
def permissive_client(tmp_path, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("TUNELAB_API_KEY", SECRET)
    with client_for(tmp_path, tiny_llama_dir, python_graders=True) as client:
        yield client


def sdk_for(client):
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="key-one", http_client=client, max_retries=0
    )


def reinforcement(grader: dict, **hyperparameters) -> dict:
    values = {"n_epochs": 1, "batch_size": 4, "compute_multiplier": 0.5} | hyperparameters
    return {"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": values}}


def create(sdk, grader: dict, rows=None, **hyperparameters):
    file_id = sdk_file(sdk, rows or prompt_rows(12))
    method = reinforcement(grader, **hyperparameters)
    return sdk.fine_tuning.jobs.create(
        model="tiny", training_file=file_id, validation_file=file_id, method=method,
        extra_body={"tunelab": {"max_completion_tokens": 6}},
    )  # fmt: skip


def test_a_reinforcement_job_trains_with_its_grader_and_reports_rewards(app_client):
    sdk = sdk_for(app_client)
    job = create(sdk, SAYS_THE_WORD, eval_interval=2)
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.name == "says the word"
    train_queued_jobs(app_client)
    job = sdk.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.tunelab["generations"] == 4 and job.tunelab["eval_every"] == 2  # compute_multiplier 0.5 of 8
    events = sdk.fine_tuning.jobs.list_events(job.id, limit=100).data
    steps = [e for e in events if e.type == "metrics" and "train_loss" in e.data]
    assert steps and all("reward" in e.data and "mean reward=" in e.message for e in steps)
    assert [e for e in events if e.type == "metrics" and "val_reward" in e.data]
    results = sdk.files.content(job.result_files[0]).text
    assert {"reward", "val_reward"} <= set(next(csv.reader(io.StringIO(results))))


def test_python_graders_are_off_unless_the_operator_enables_them(app_client):
    sdk = sdk_for(app_client)
    with pytest.raises(openai.BadRequestError) as refused:
        create(sdk, LENGTH)
    assert refused.value.body["param"] == "method.reinforcement.grader"
    assert "--python-graders" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.fine_tuning.alpha.graders.run(grader=LENGTH, model_sample="hi")
    assert "--python-graders" in refused.value.body["message"]


def test_a_python_grader_that_reads_the_keys_gets_nothing_and_the_job_says_why(permissive_client):
    sdk = sdk_for(permissive_client)
    job = create(sdk, READS_THE_ENVIRONMENT)
    serve_jobs(
        permissive_client.app.state.service.data.root, once=True, python_graders=True
    )  # as --python-graders
    job = sdk.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error  # the job goes on: every answer got reward 0
    events = sdk.fine_tuning.jobs.list_events(job.id, limit=200).data
    failures = [e.message for e in events if "the grader failed" in e.message]
    assert failures and "KeyError" in failures[0] and SECRET not in " ".join(e.message for e in events)
    rewards = [e.data["reward"] for e in events if e.type == "metrics" and "reward" in e.data]
    assert rewards and set(rewards) == {0.0}
    assert permissive_client.get("/health").status_code == 200


@pytest.mark.parametrize(
    "hyperparameters, param",
    [
        ({"eval_samples": 3}, "method.reinforcement.hyperparameters.eval_samples"),
        ({"reasoning_effort": "high"}, "method.reinforcement.hyperparameters.reasoning_effort"),
    ],
)
def test_hyperparameters_this_server_cannot_honour_are_refused_with_why(app_client, hyperparameters, param):
    with pytest.raises(openai.BadRequestError) as refused:
        create(sdk_for(app_client), SAYS_THE_WORD, **hyperparameters)
    assert refused.value.body["param"] == param


def test_a_grader_field_that_is_wrong_is_named(app_client):
    bad = SAYS_THE_WORD | {"operation": "equals"}
    with pytest.raises(openai.BadRequestError) as refused:
        create(sdk_for(app_client), bad)
    assert "method.reinforcement.grader.operation" in refused.value.body["message"]


def test_a_pairs_file_for_a_reinforcement_job_fails_naming_both_formats(app_client):
    sdk = sdk_for(app_client)
    job = create(sdk, SAYS_THE_WORD, rows=pair_rows(12))
    train_queued_jobs(app_client)
    job = sdk.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "failed" and job.error.param == "training_file"
    assert "expected prompts to answer" in job.error.message and "preference pairs" in job.error.message


def test_the_grader_endpoints_validate_and_run_through_the_client(permissive_client):
    graders = sdk_for(permissive_client).fine_tuning.alpha.graders
    assert graders.validate(grader=SAYS_THE_WORD).grader.name == "says the word"
    with pytest.raises(openai.BadRequestError) as refused:
        graders.validate(grader=SAYS_THE_WORD | {"operation": "equals"})
    assert refused.value.body["param"] == "grader" and "grader.operation" in refused.value.body["message"]
    ran = graders.run(grader=SAYS_THE_WORD, model_sample="I say paris", item={"word": "paris"})
    assert ran.reward == 1.0 and not ran.metadata.errors.other_error
    multi = {
        "type": "multi", "name": "both", "calculate_output": "0.5 * word + 0.5 * short",
        "graders": {"word": SAYS_THE_WORD, "short": LENGTH},
    }  # fmt: skip
    ran = graders.run(grader=multi, model_sample="paris", item={"word": "paris"})
    assert ran.sub_rewards == {"word": 1.0, "short": pytest.approx(1 / 6)}
    assert ran.reward == pytest.approx(0.5 + 0.5 / 6)
    ran = graders.run(grader=READS_THE_ENVIRONMENT, model_sample="x")
    assert ran.reward == 0.0 and ran.metadata.errors.python_grader_runtime_error
    assert SECRET not in str(ran.model_dump())
    with pytest.raises(openai.NotFoundError):
        judge = {
            "type": "label_model", "name": "j", "model": "ft:tiny:nobody:x:123", "labels": ["a", "b"],
            "passing_labels": ["a"], "input": [{"role": "user", "content": "{{sample.output_text}}"}],
        }  # fmt: skip
        graders.run(grader=judge, model_sample="x")
