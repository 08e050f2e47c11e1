"""Parity with TRL: GRPO's loss and gradients equal GRPOTrainer's on the same answers and rewards (float64,
within 1e-5), without and with the KL term. TRL runs in its own environment (tests/trl_side/grpo_loss.py;
see test_trl_parity.py, whose models this file shares)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_trl_parity import EOS, TRL_PYTHON, assert_loss_and_gradients_equal, load, models, pytestmark  # noqa: F401
from tunelab.data.tokenize import IGNORE_INDEX
from tunelab.objectives import get_objective
from tunelab.objectives.grpo import AnswerRow, group_advantages
from tunelab.ops import token_logps
from tunelab.training import TrainConfig

TRL_SIDE = Path(__file__).parent / "trl_side" / "grpo_loss.py"
BOS = 1
# Two prompts of one length (TRL scores left-padded prompts without position ids), three answers each:
# of different lengths, one cut off before its EOS, rewards that differ within each group.
GROUPS = [
    {"prompt_ids": [BOS, 50, 60, 70], "completions": [[80, 90, EOS], [100, EOS], [110, 120, 130, 140]],
     "rewards": [1.0, 0.0, 0.5]},
    {"prompt_ids": [BOS, 55, 65, 75], "completions": [[85, EOS], [105, 115, EOS], [125, 135, 145, EOS]],
     "rewards": [0.2, 0.9, 0.2]},
]  # fmt: skip
CASES = {
    "grpo": {"beta": 0.0, "epsilon": 0.2},
    "grpo-kl": {"beta": 0.04, "epsilon": 0.2},
    "grpo-kl-wide-clip": {"beta": 0.3, "epsilon": 0.28},
    "grpo-kl-temperature": {"beta": 0.04, "epsilon": 0.2, "sampling_temperature": 0.7},
}


@pytest.fixture(scope="module")
def trl_results(models, tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:  # noqa: F811
    out = tmp_path_factory.mktemp("trl-grpo")
    spec = out / "cases.json"
    spec.write_text(
        json.dumps({"groups": GROUPS, "cases": [{"name": n, "options": o} for n, o in CASES.items()]})
    )
    quiet = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([str(TRL_PYTHON), str(TRL_SIDE), str(models), str(spec), str(out)],
                          capture_output=True, text=True, env=os.environ | quiet)  # fmt: skip
    assert done.returncode == 0, f"TRL's side failed:\n{done.stderr[-4000:]}"
    return {name: load_file(out / f"{name}.safetensors") for name in CASES}


def tunelab_side(options: dict, models: Path):  # noqa: F811
    """(loss, policy with its gradients) by tunelab's grpo objective on the same rows."""
    n = len(GROUPS[0]["completions"])
    config = TrainConfig(model="unused", data="unused", method="full", objective="grpo", **options)
    objective = get_objective("grpo").with_rollout(rollout=object()).configure(config)
    rewards = torch.tensor([r for group in GROUPS for r in group["rewards"]], dtype=torch.float64)
    advantages, stds = group_advantages(rewards, n)
    answers = [(group["prompt_ids"], answer) for group in GROUPS for answer in group["completions"]]
    rows = [
        AnswerRow(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer, advantage=float(advantage))
        for (prompt, answer), advantage in zip(answers, advantages, strict=True)
    ]
    batch = objective.collate_rows(rows, EOS)
    if objective.beta:
        labels = batch["labels"][:, 1:]
        wanted, targets = labels != IGNORE_INDEX, labels.clamp_min(0)
        with torch.no_grad():
            reference = load(models / "reference")
            batch["reference_logps"] = token_logps(
                reference, batch, wanted, targets, objective.sampling_temperature
            )
    policy = load(models / "policy")
    policy.train()
    loss, _ = objective.loss_with_stats(policy, batch, objective.count_targets(batch))
    loss.backward()
    return loss.detach(), policy


@pytest.mark.parametrize("case", CASES)
def test_grpo_loss_and_gradients_equal_trls(case, models, trl_results):  # noqa: F811
    expected = trl_results[case]
    loss, policy = tunelab_side(CASES[case], models)
    assert_loss_and_gradients_equal(loss, policy, expected)
