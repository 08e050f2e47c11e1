"""GRPO on a tiny model: the grouped sampler answers as greedy `generate` does, advantages are
group-relative, a reward for one token drives that token's probability up, the rewards reach
metrics.jsonl, a resumed run ends where an uninterrupted one does, and without a grader it is refused."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_jsonl
from test_preference_training import StopAt
from tunelab.inference.generation import load_for_inference
from tunelab.inference.rollout import sample_groups
from tunelab.objectives import get_objective
from tunelab.objectives.grpo import Grades, Rollout, group_advantages, prompt_ids
from tunelab.run_dir import RunDir
from tunelab.training import TrainConfig, train
from tunelab.training.config import ConfigError
from tunelab.training.loop import Trainer

WORDS = ["alice", "bob", "paris", "london", "tokyo", "great", "bad", "film"]


def prompt_rows(n: int) -> list[dict]:
    """OpenAI reinforcement fine-tuning lines: messages, and a field of the line's own for the grader."""
    words = [WORDS[i % 8] for i in range(n)]
    return [{"messages": [{"role": "user", "content": f"say {word}"}], "word": word} for word in words]


def says_you(texts: list[str], items: list[dict]) -> Grades:
    """Reward for each time the answer says "you" (a token the tiny model starts "say alice" with at
    about 9%)."""
    rewards = [text.count("you") / 4 for text in texts]
    return Grades(rewards, {"you": rewards}, [None] * len(texts))


def grpo(grade=says_you):
    return get_objective("grpo").with_rollout(Rollout(sample_groups, grade), ("you",))


def config(model, data, out, **overrides) -> TrainConfig:
    values = dict(model=str(model), data=[str(data)], out=str(out), objective="grpo", max_steps=6,
                  batch_size=4, generations=4, max_completion_tokens=8, lr=5e-3, warmup=0,
                  scheduler="constant", seed=3)  # fmt: skip
    return TrainConfig(**(values | overrides))


@pytest.fixture
def prompts(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(8))


def test_the_grouped_sampler_answers_as_greedy_generate_does(tiny_llama_dir):
    model, tokenizer = load_for_inference(str(tiny_llama_dir))
    texts = ("say alice", "the quick brown fox jumps")
    prompts = [prompt_ids(tokenizer, [{"role": "user", "content": text}]) for text in texts]
    answers = sample_groups(model, prompts, 3, 10, temperature=0.0, stop_ids={tokenizer.eos_token_id})
    for k, prompt in enumerate(prompts):
        expected = model.generate(
            torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )[0, len(prompt) :].tolist()  # fmt: skip
        assert answers[3 * k : 3 * k + 3] == [expected] * 3  # each prompt read once, its 3 rows alike


def test_sampled_answers_differ_within_a_group_and_stop_at_the_stop_token(tiny_llama_dir):
    model, tokenizer = load_for_inference(str(tiny_llama_dir))
    torch.manual_seed(0)
    prompt = prompt_ids(tokenizer, [{"role": "user", "content": "say alice"}])
    answers = sample_groups(model, [prompt], 6, 12, temperature=1.0, stop_ids={tokenizer.eos_token_id})
    assert len({tuple(answer) for answer in answers}) > 1
    for answer in answers:
        assert tokenizer.eos_token_id not in answer[:-1] and len(answer) <= 12


def test_advantages_are_the_reward_less_its_groups_mean_over_its_groups_deviation():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5, 0.5], dtype=torch.float64)
    advantages, stds = group_advantages(rewards, 3)
    std = (1 / 3) ** 0.5  # unbiased: the deviations 2/3, -1/3, -1/3 squared sum to 2/3, over n - 1 = 2
    expected = [(2 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), 0, 0, 0]
    assert advantages.tolist() == pytest.approx(expected)
    assert stds.tolist() == pytest.approx([std] * 3 + [0] * 3)


def test_an_answer_the_grader_failed_on_is_left_out_of_its_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    failed = torch.tensor([False, False, True, True])  # the last two: the grader could not grade them
    advantages, _ = group_advantages(rewards, 4, failed)
    expected = 0.5**0.5  # the deviation of 1 and 0 alone
    assert advantages.tolist() == pytest.approx([0.5 / (expected + 1e-4), -0.5 / (expected + 1e-4), 0, 0])


def you_probability(model_dir, adapter, tokenizer) -> float:
    """The probability that the model answers "say alice" starting with " you"."""
    model, _ = load_for_inference(str(model_dir), adapter and str(adapter))
    prompt = prompt_ids(tokenizer, [{"role": "user", "content": "say alice"}])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
    you = tokenizer(" you", add_special_tokens=False)["input_ids"]
    assert len(you) == 1
    return float(torch.softmax(logits.float(), -1)[you[0]])


def test_a_reward_for_one_token_drives_its_probability_up(tiny_llama_dir, tmp_path):
    alice = write_jsonl(tmp_path / "alice.jsonl", [prompt_rows(1)[0]] * 8)
    out = tmp_path / "run"
    summary = train(config(tiny_llama_dir, alice, out, max_steps=12), objective=grpo()).summary
    _, tokenizer = load_for_inference(str(tiny_llama_dir))
    before = you_probability(tiny_llama_dir, None, tokenizer)
    after = you_probability(tiny_llama_dir, out, tokenizer)
    assert after > 2 * before, (before, after)
    steps = [json.loads(line) for line in RunDir(out).metrics.read_text().splitlines()]
    steps = [record for record in steps if record["kind"] == "train"]
    for name in ("reward", "reward_std", "rewards/you", "completions/mean_length", "clip_ratio"):
        assert name in steps[0]
    assert steps[-1]["reward"] > steps[0]["reward"]
    assert RunDir(out).read_config()["objective"] == "grpo" and summary["steps"] == 12


def test_validation_answers_greedily_and_keeps_the_best_reward(tiny_llama_dir, prompts, tmp_path):
    out = tmp_path / "run"
    run = config(tiny_llama_dir, prompts, out, val=[str(prompts)], eval_every=3)
    summary = train(run, objective=grpo()).summary
    evals = [json.loads(line) for line in RunDir(out).metrics.read_text().splitlines()]
    evals = [record for record in evals if record["kind"] == "eval"]
    assert evals[0]["baseline"] and len(evals) == 3  # before training, after steps 3 and 6
    for record in evals:
        assert record["val_loss"] == pytest.approx(-record["val_reward"])
    assert summary["best_val_loss"] == min(record["val_loss"] for record in evals[1:])


def test_a_grpo_run_resumed_from_a_checkpoint_ends_where_an_uninterrupted_one_does(
    tiny_llama_dir, prompts, tmp_path
):
    whole = tmp_path / "whole"
    train(config(tiny_llama_dir, prompts, whole), objective=grpo())
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(tiny_llama_dir, prompts, cut, save_every=3), hooks=StopAt(4), objective=grpo()).fit()
    Trainer(config(tiny_llama_dir, prompts, cut, save_every=3, resume=True), objective=grpo()).fit()
    a, b = load_file(RunDir(whole).adapter_weights), load_file(RunDir(cut).adapter_weights)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_beta_adds_the_kl_to_the_start_and_logs_it(tiny_llama_dir, prompts, tmp_path):
    out = tmp_path / "run"
    train(config(tiny_llama_dir, prompts, out, beta=0.04, max_steps=3), objective=grpo())
    steps = [json.loads(line) for line in RunDir(out).metrics.read_text().splitlines()]
    kl = [record["kl"] for record in steps if record["kind"] == "train"]
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[-1] > 0  # the start is the reference


def test_grpo_without_a_grader_is_refused_by_name(tiny_llama_dir, prompts, tmp_path):
    with pytest.raises(ConfigError, match="--grader"):
        train(config(tiny_llama_dir, prompts, tmp_path / "run"))


def test_the_cli_trains_grpo_with_a_grader_file_and_refuses_a_grader_elsewhere(
    tiny_llama_dir, prompts, tmp_path
):
    from typer.testing import CliRunner

    from tunelab.cli import app

    grader = tmp_path / "grader.json"
    says = {"type": "string_check", "name": "says", "operation": "like"}
    grader.write_text(json.dumps(says | {"input": "{{sample.output_text}}", "reference": "{{item.word}}"}))
    common = ["--model", tiny_llama_dir, "--data", prompts, "--grader", grader, "--max-steps", 2]
    out = tmp_path / "run"
    done = CliRunner().invoke(
        app, [str(a) for a in ["train", *common, "--objective", "grpo", "--generations", 2,
                               "--max-completion-tokens", 4, "--out", out]],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert RunDir(out).read_config()["grader"] == str(grader)
    refused = CliRunner().invoke(app, [str(a) for a in ["train", *common, "--out", tmp_path / "sft"]])
    assert refused.exit_code == 1 and "only grpo learns from a grader" in refused.output


@pytest.mark.parametrize("method, options", [("prompt-tuning", {}), ("full", {"beta": 0.04})])
def test_a_method_grpo_cannot_train_is_refused_before_any_step(
    tiny_llama_dir, prompts, tmp_path, method, options
):
    with pytest.raises(ConfigError, match="prompt and prefix tuning|PEFT's adapters"):
        Trainer(config(tiny_llama_dir, prompts, tmp_path / "run", method=method, **options), objective=grpo())


def test_grpo_trains_under_a_memory_budget(tiny_llama_dir, prompts, tmp_path):
    summary = train(config(tiny_llama_dir, prompts, tmp_path / "run", max_steps=2, memory_budget="2GiB"),
                    objective=grpo()).summary  # fmt: skip
    assert summary["steps"] == 2
