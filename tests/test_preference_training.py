"""The preference objectives in the training loop, on a tiny model: they train with the weight-training
methods, the reference is the frozen start (computed once, kept in the run folder, read again on resume),
DPO follows its formula as beta goes to 0, the reward metrics reach metrics.jsonl, and a file of the wrong
kind is refused before any model is loaded, naming the format expected and found."""

import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_jsonl
from tunelab.data.errors import DataError
from tunelab.models import load_model
from tunelab.objectives import get_objective
from tunelab.objectives.dpo import DirectPreference
from tunelab.objectives.preference import EncodedPair
from tunelab.run_dir import RunDir
from tunelab.training import TrainConfig, train
from tunelab.training.config import ConfigError
from tunelab.training.loop import Trainer, TrainHooks

CPU = torch.device("cpu")
WORDS = ["alice", "bob", "paris", "london", "tokyo", "great", "bad", "film"]


def pair_rows(n: int) -> list[dict]:
    """Say the word asked for (preferred), not the next one (non-preferred), as OpenAI DPO lines."""
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"say {WORDS[i % 8]}"}]},
            "preferred_output": [{"role": "assistant", "content": WORDS[i % 8]}],
            "non_preferred_output": [{"role": "assistant", "content": WORDS[(i + 1) % 8]}],
        }
        for i in range(n)
    ]


def rated_rows(n: int) -> list[dict]:
    """KTO's unpaired shape: the right word rated good, a wrong one bad, alternately."""
    return [
        {"prompt": f"say {WORDS[i % 8]}", "completion": WORDS[(i + i % 2) % 8], "label": i % 2 == 0}
        for i in range(n)
    ]


@pytest.fixture
def pairs(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", pair_rows(16))


def config(model, data, out, **overrides) -> TrainConfig:
    values = dict(model=str(model), data=[str(data)], out=str(out), method="lora", objective="dpo",
                  max_steps=6, batch_size=4, lr=2e-2, warmup=0, scheduler="constant", seed=0)  # fmt: skip
    return TrainConfig.from_sources(**values | overrides)


@pytest.mark.parametrize(
    "objective, method",
    [("dpo", "lora"), ("ipo", "ia3"), ("orpo", "lora"), ("simpo", "full"), ("kto", "lora"), ("dpo", "full")],
)
def test_each_preference_objective_trains_and_logs_its_rewards(objective, method, tiny_llama_dir, tmp_path):
    rows = rated_rows(16) if objective == "kto" else pair_rows(16)
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "run"
    summary = train(
        config(tiny_llama_dir, data, out, objective=objective, method=method, val=[str(data)])
    ).summary
    assert summary["steps"] == 6 and math.isfinite(summary["final_train_loss"])
    records = RunDir(out).read_metrics()
    steps = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    # (a KTO batch may hold only good or only bad answers: then only one side's rewards)
    assert all("rewards/chosen" in r or "rewards/rejected" in r for r in steps)
    assert any("rewards/margins" in r for r in steps)
    assert all("val_rewards/chosen" in r for r in evals)
    assert (objective == "kto") == ("kl" in steps[0])
    assert (objective != "kto") == ("rewards/accuracies" in steps[0])
    assert (objective in ("dpo", "ipo", "kto")) == RunDir(out).reference_logps.exists()
    assert "val_rewards/chosen" in summary
    if objective in ("dpo", "ipo"):  # against the start the rewards are exactly 0 before training
        assert evals[0]["baseline"] and evals[0]["val_rewards/chosen"] == 0.0
        assert evals[-1]["val_rewards/margins"] > 0  # and the right word is learned
    if objective == "dpo":
        assert evals[-1]["val_rewards/accuracies"] > 0.5


def test_the_reference_is_the_frozen_start_not_the_adapter_being_trained(tiny_llama_dir, pairs, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(config(tiny_llama_dir, pairs, out))
    start = {key: value.clone() for key, value in load_file(RunDir(out).reference_logps).items()}
    trainer.fit()  # the adapter moves (the loss falls), the reference must not
    items = trainer.train_items
    assert [item.reference for item in items] == [tuple(row) for row in start["train"].tolist()]
    base, tokenizer = load_model(str(tiny_llama_dir))

    def score(model):
        return get_objective("dpo").prepare_reference(
            model, items, tokenizer.pad_token_id, 4, CPU, trainer.precision
        )

    scored = score(base)
    assert torch.allclose(scored, start["train"], atol=1e-5)  # the base model, as the adapter disabled
    trained = score(trainer.unwrapped)
    assert (trained - scored).abs().max() > 1e-2  # and the trained model's own scores did move


def test_dpo_as_beta_goes_to_zero_follows_the_first_order_formula(tiny_llama_dir, tiny_tokenizer):
    """-log sigmoid(beta d) = log 2 - beta d / 2 + O(beta^2): the loss tends to log 2 and its gradient to
    -beta/2 times the gradient of d, the log-ratio difference (the reference's terms are constants)."""
    from transformers import AutoModelForCausalLM

    from tunelab.data.tokenize import IGNORE_INDEX, EncodedExample

    def row(answer):
        return EncodedExample([1, 40, 41, *answer], [IGNORE_INDEX] * 3 + answer)

    items = [
        EncodedPair(row([50, 2]), row([60, 61, 2]), (-1.0, -2.5)),
        EncodedPair(row([70, 2]), row([80, 2]), (-3.0, -0.5)),
    ]
    beta = 1e-6
    objective = get_objective("dpo").configure(TrainConfig(objective="dpo", beta=beta))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float64)
    batch = objective.collate(items, tiny_tokenizer.pad_token_id)
    loss, _ = objective.loss_with_stats(model, batch, 2)
    loss.backward()
    dpo_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    from tunelab.objectives.preference import answer_logps

    sums, _ = answer_logps(model, batch)
    chosen, rejected = sums.chunk(2)
    reference = batch["reference"]
    d = (chosen - reference[:, 0]) - (rejected - reference[:, 1])
    assert loss.item() == pytest.approx(math.log(2) - beta * d.mean().item() / 2, abs=1e-10)  # beta^2 d^2 / 8
    (-beta / 2 * d.mean()).backward()
    for dpo, formula in zip(dpo_grads, (p.grad for p in model.parameters()), strict=True):
        assert (dpo - formula).abs().max() <= 1e-5 * formula.abs().max()  # relative error about beta d


class StopAt(TrainHooks):
    """Stops the run at a step, as a kill would (the checkpoint before it is on disk)."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, step: int) -> None:
        if step == self.step:
            raise KeyboardInterrupt


def test_a_dpo_run_resumed_from_a_checkpoint_ends_where_an_uninterrupted_one_does(
    tiny_llama_dir, pairs, tmp_path, monkeypatch
):
    options = dict(max_steps=8, save_every=4, dropout=0.1)
    straight = train(config(tiny_llama_dir, pairs, tmp_path / "straight", **options))
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_llama_dir, pairs, tmp_path / "cut", **options), hooks=StopAt(6))

    def rescore(*args):
        raise AssertionError("a resumed run reads the start's log-probs it saved; it does not score again")

    monkeypatch.setattr(DirectPreference, "prepare_reference", rescore)
    resumed = train(config(tiny_llama_dir, pairs, tmp_path / "cut", resume=True, **options))
    a = load_file(RunDir(tmp_path / "straight").adapter_weights)
    b = load_file(RunDir(tmp_path / "cut").adapter_weights)
    assert max((a[key] - b[key]).abs().max().item() for key in a) <= 1e-6
    assert resumed.summary["final_train_loss"] == pytest.approx(
        straight.summary["final_train_loss"], abs=1e-6
    )


def test_resuming_on_other_data_is_refused(tiny_llama_dir, pairs, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_llama_dir, pairs, tmp_path / "cut", save_every=2), hooks=StopAt(3))
    swapped = [
        {
            **row,
            "preferred_output": row["non_preferred_output"],
            "non_preferred_output": row["preferred_output"],
        }
        for row in pair_rows(16)
    ]
    other = write_jsonl(tmp_path / "other.jsonl", swapped)  # as many pairs, other answers
    with pytest.raises(ConfigError, match="holds the start's log-probs of other examples"):
        train(config(tiny_llama_dir, other, tmp_path / "cut", save_every=2, resume=True))


def test_dropout_is_off_while_a_preference_objective_trains(tiny_llama_dir, pairs, tmp_path):
    trainer = Trainer(config(tiny_llama_dir, pairs, tmp_path / "run", dropout=0.1))
    dropouts = [m for m in trainer.unwrapped.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0 for m in dropouts)


def test_the_two_answers_of_a_pair_keep_the_same_prompt_when_cut(tiny_tokenizer):
    """Cut to max_length, both rows lose the same start of the prompt (the longer answer's cut)."""
    from tunelab.data.preference import PreferencePair
    from tunelab.objectives.preference import encode_pair

    prompt = [{"role": "user", "content": " ".join(WORDS * 6)}]
    pair = PreferencePair(prompt, {"role": "assistant", "content": " ".join(WORDS * 3)},
                          {"role": "assistant", "content": "bob"})  # fmt: skip
    item = encode_pair(pair, tiny_tokenizer, max_length=80)
    assert item.truncated and len(item.chosen.input_ids) == 80 and len(item.rejected.input_ids) < 80

    def prompt_of(row):
        return row.input_ids[: next(i for i, label in enumerate(row.labels) if label != -100)]

    assert prompt_of(item.chosen) == prompt_of(item.rejected)


def test_a_file_of_the_wrong_kind_names_the_format_expected_and_found(tiny_llama_dir, pairs, tmp_path):
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}],
    )
    with pytest.raises(DataError, match=r"expected preference pairs .* found supervised examples"):
        train(config(tiny_llama_dir, chat, tmp_path / "a"))
    with pytest.raises(DataError, match=r"expected supervised examples .* found preference pairs"):
        train(config(tiny_llama_dir, pairs, tmp_path / "b", objective="sft"))
    with pytest.raises(DataError, match=r"expected unpaired preference data .* found preference pairs"):
        train(config(tiny_llama_dir, pairs, tmp_path / "c", objective="kto"))


def test_an_objectives_option_given_to_another_is_refused_by_name():
    with pytest.raises(ConfigError, match="simpo_gamma is an option of simpo, not of dpo"):
        TrainConfig(objective="dpo", simpo_gamma=1.0)
    with pytest.raises(ConfigError, match="beta is an option of dpo, .*, not of sft"):
        TrainConfig(beta=0.2)
    assert get_objective("simpo").configure(TrainConfig(objective="simpo")).beta == 2.0
    assert get_objective("dpo").configure(TrainConfig(objective="dpo", beta=0.3)).beta == 0.3
