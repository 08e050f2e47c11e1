"""An objective defined here, in one class and registered, trains with LoRA and with full fine-tuning;
nothing outside this file names it. And the table of objectives x methods: each pairing trains a model of
one task, or is refused naming both."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import copy_task_rows, write_jsonl
from tunelab.data.tokenize import IGNORE_INDEX
from tunelab.methods import REGISTRY as METHODS
from tunelab.methods import get_method
from tunelab.objectives import REGISTRY, get_objective, register
from tunelab.objectives.distill import Distillation
from tunelab.objectives.sft import SupervisedFineTuning
from tunelab.run_dir import RunDir
from tunelab.training import TrainConfig, train
from tunelab.training.config import ConfigError
from tunelab.training.datasets import check_pairing, objective_for

PREFERENCE = ("dpo", "ipo", "orpo", "simpo", "kto")
REWARD = ("grpo",)  # learns from a grader's rewards (tests/test_grpo.py)


class FirstAnswerToken(SupervisedFineTuning):
    """Chat examples as sft reads them, but only each answer's first token is learned: one target a row."""

    name = "toy-first-token"

    def __init__(self):
        self.counted: list[int] = []  # the targets of every batch the loop asked about

    def loss(self, model, batch, normaliser):
        labels = batch["labels"]
        rows = torch.arange(labels.shape[0])
        first = (labels[:, 1:] != IGNORE_INDEX).int().argmax(dim=1)  # (B,) the position predicting it
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        picked = logits[rows, first].float()  # (B, V)
        return F.cross_entropy(picked, labels[rows, first + 1], reduction="sum") / normaliser

    def count_targets(self, batch):
        self.counted.append(batch["input_ids"].shape[0])
        return self.counted[-1]


@pytest.fixture
def toy():
    objective = register(FirstAnswerToken())
    yield objective
    del REGISTRY[objective.name]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_registered_objective_trains_with_lora_and_full_fine_tuning(toy, method, tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "copy.jsonl", copy_task_rows(16))
    out = tmp_path / "run"
    config = TrainConfig(model=str(tiny_llama_dir), data=[str(data)], val=[str(data)], out=str(out),
                         method=method, objective=toy.name, max_steps=4, batch_size=8, lr=1e-2,
                         warmup=0, scheduler="constant")  # fmt: skip
    summary = train(config).summary
    assert summary["steps"] == 4 and math.isfinite(summary["final_train_loss"])
    # The loop asked this objective (sft would count every answer token): one target per example, in
    # batches of 8 (4 steps, and the val set before training and after each of the 2 epochs).
    assert toy.counted == [8] * (4 + 2 * 3)
    assert summary["best_val_loss"] < summary["baseline_val_loss"]  # the first answer token is learned
    assert RunDir(out).read_config()["objective"] == toy.name
    # Its own loss: no token accuracy is measured for it (that of the next-token loss it replaced).
    assert not [r for r in RunDir(out).read_metrics() if "mean_token_accuracy" in r]


def test_every_objective_pairs_with_the_methods_of_its_task(tiny_llama_dir):
    teacher = torch.nn.Linear(1, 1)  # distillation is only paired here, never run
    objectives = [*REGISTRY.values(), Distillation(get_objective("sft"), teacher)]
    for method in METHODS.values():
        for objective in objectives:
            if objective.task == method.task:
                check_pairing(method, objective)
            else:
                with pytest.raises(ConfigError, match=f"objective {objective.name} .*method {method.name}"):
                    check_pairing(method, objective)
    table = {
        (method, objective.name): objective.task == METHODS[method].task
        for method in ("lora", "full", "head")
        for objective in objectives
    }
    assert table == {
        ("lora", "sft"): True, ("lora", "causal-lm"): True, ("lora", "distill"): True,
        ("lora", "classification"): False,
        ("full", "sft"): True, ("full", "causal-lm"): True, ("full", "distill"): True,
        ("full", "classification"): False,
        ("head", "sft"): False, ("head", "causal-lm"): False, ("head", "distill"): False,
        ("head", "classification"): True,
    } | {
        (method, name): method != "head" for method in ("lora", "full", "head")
        for name in PREFERENCE + REWARD
    }  # fmt: skip


def test_a_run_takes_the_methods_objective_unless_told_and_refuses_a_wrong_pair(tiny_llama_dir, tmp_path):
    assert objective_for(TrainConfig(method="lora"), get_method("lora")).name == "sft"
    assert objective_for(TrainConfig(method="head"), get_method("head")).name == "classification"
    assert objective_for(TrainConfig(objective="causal-lm"), get_method("ia3")).name == "causal-lm"
    with pytest.raises(ConfigError, match="objective classification .*method lora"):
        train(TrainConfig(model=str(tiny_llama_dir), data=["d.jsonl"], out=str(tmp_path / "o"),
                          objective="classification", method="lora"))  # fmt: skip
    with pytest.raises(ConfigError, match="objective: 'rlhf' is not one of causal-lm, classification, dpo, "):
        TrainConfig(objective="rlhf")


def test_classification_batches_carry_one_class_per_row():
    classification = get_objective("classification")
    probe = classification.probe_batch(6, vocab=50)
    assert probe["targets"].tolist() == [0] and classification.count_targets(probe) == 1
    assert (probe["labels"] == IGNORE_INDEX).all()  # the head learns the class, not tokens
    sft_probe = get_objective("sft").probe_batch(6, vocab=50)
    assert "targets" not in sft_probe and get_objective("sft").count_targets(sft_probe) == 5
