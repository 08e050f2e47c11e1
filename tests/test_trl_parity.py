"""Parity with TRL: DPO, IPO, ORPO, SimPO and KTO losses and gradients equal TRL's on the same batch.

TRL lives in its own environment (`make parity-trl` builds `.venv-trl` and runs this file; TRL is never a
tunelab dependency; `$TUNELAB_TRL_PYTHON` names another interpreter). Its side, tests/trl_side/
preference_losses.py, runs TRL 1.16's own trainers on a batch built by their own collators from the token
ids below and saves each case's loss, every parameter's gradient and the step's logged metrics; this side
computes the same with tunelab's objectives on the same ids and compares, in float64, within 1e-5.

The model is a tiny random Llama trained in full (every parameter, no dropout), so that both sides
differentiate the same parameters from the same values; its reference is the saved start and the policy a
perturbed copy, so that rewards, accuracies and margins are not trivially zero.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tiny import make_model_dir

REPO = Path(__file__).resolve().parents[1]
TRL_PYTHON = Path(os.environ.get("TUNELAB_TRL_PYTHON", REPO / ".venv-trl" / "bin" / "python"))
TRL_SIDE = Path(__file__).parent / "trl_side" / "preference_losses.py"
TOLERANCE = 1e-5

pytestmark = pytest.mark.skipif(
    not TRL_PYTHON.exists(),
    reason=f"TRL's environment is missing ({TRL_PYTHON}): `make parity-trl` builds it (or set "
    "$TUNELAB_TRL_PYTHON)",
)

# Token ids of the tiny tokenizer (1 is its BOS, 2 its EOS and pad): prompts of different lengths, answers
# that end with EOS, so that padding and the answers' masks are exercised on both sides.
BOS, EOS = 1, 2
PAIRS = [
    {"prompt_ids": [BOS, 50, 60, 70], "chosen_ids": [80, 90, EOS], "rejected_ids": [100, EOS]},
    {"prompt_ids": [BOS, 55, 65], "chosen_ids": [85, EOS], "rejected_ids": [105, 115, 125, EOS]},
    {"prompt_ids": [BOS, 57, 67, 77, 87, 97], "chosen_ids": [88, 99, 111, EOS], "rejected_ids": [101, EOS]},
]
UNPAIRED = [
    {"prompt_ids": [BOS, 50, 60, 70], "completion_ids": [80, 90, EOS], "label": True},
    {"prompt_ids": [BOS, 55, 65], "completion_ids": [105, 115, 125, EOS], "label": False},
    {"prompt_ids": [BOS, 57, 67, 77], "completion_ids": [88, EOS], "label": True},
    {"prompt_ids": [BOS, 59], "completion_ids": [101, 102, EOS], "label": False},
]
# name -> (objective, its options as TrainConfig fields)
CASES = {
    "dpo": ("dpo", {"beta": 0.1}),
    "dpo-label-smoothing": ("dpo", {"beta": 0.1, "label_smoothing": 0.2}),
    "dpo-beta-0.5": ("dpo", {"beta": 0.5}),
    "ipo": ("ipo", {"beta": 0.1}),
    "orpo": ("orpo", {"beta": 0.1}),
    "simpo": ("simpo", {"beta": 2.0, "simpo_gamma": 0.5}),
    "simpo-label-smoothing": ("simpo", {"beta": 2.0, "simpo_gamma": 0.3, "label_smoothing": 0.1}),
    "kto": ("kto", {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}),
    "kto-weighted": ("kto", {"beta": 0.1, "desirable_weight": 1.33, "undesirable_weight": 0.8}),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """`reference/`: a tiny random Llama; `policy/`: the same moved by noise (seeded: the KL term of KTO
    comes out positive, so it is exercised rather than clamped to 0)."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("parity")
    reference = make_model_dir(folder / "reference", "llama")
    model = AutoModelForCausalLM.from_pretrained(reference)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(folder / "policy")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / "policy" / name).write_bytes((reference / name).read_bytes())
    return folder


@pytest.fixture(scope="module")
def trl_results(models, tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    """Every case computed by TRL in one subprocess: case name -> {loss, grad.<parameter>, metric.<name>}."""
    from safetensors.torch import load_file

    out = tmp_path_factory.mktemp("trl-out")
    cases = [{"name": name, "objective": objective, "options": options}
             for name, (objective, options) in CASES.items()]  # fmt: skip
    spec = out / "cases.json"
    spec.write_text(json.dumps({"pairs": PAIRS, "unpaired": UNPAIRED, "cases": cases}))
    quiet = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([str(TRL_PYTHON), str(TRL_SIDE), str(models), str(spec), str(out)],
                          capture_output=True, text=True, env=os.environ | quiet)  # fmt: skip
    assert done.returncode == 0, f"TRL's side failed:\n{done.stderr[-4000:]}"
    return {name: load_file(out / f"{name}.safetensors") for name in CASES}


def load(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64)


def answer_item(prompt: list[int], answer: list[int]):
    from tunelab.data.tokenize import IGNORE_INDEX, EncodedExample

    return EncodedExample(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer)


def tunelab_side(
    objective_name: str, options: dict, models: Path
) -> tuple[torch.Tensor, dict, torch.nn.Module]:
    """(loss, logged means, policy model with its gradients) for the batch, by tunelab's objective: the
    start's log-probs by its `prepare_reference` on the reference model, the loss by `loss_with_stats` on
    the policy, normalised by the batch's targets as the training loop does."""
    from tunelab.objectives import get_objective
    from tunelab.objectives.kto import EncodedRated
    from tunelab.objectives.preference import EncodedPair
    from tunelab.training import TrainConfig

    config = TrainConfig(model="unused", data="unused", method="full", objective=objective_name, **options)
    objective = get_objective(objective_name).configure(config)
    if objective_name == "kto":
        items = [
            EncodedRated(
                answer_item(e["prompt_ids"], e["completion_ids"]),
                answer_item(e["prompt_ids"], UNPAIRED[i - 1]["completion_ids"]),  # rotated, as TRL's
                e["label"],
            )
            for i, e in enumerate(UNPAIRED)
        ]
    else:
        items = [
            EncodedPair(*(answer_item(p["prompt_ids"], p[f"{side}_ids"]) for side in ("chosen", "rejected")))
            for p in PAIRS
        ]
    cpu = torch.device("cpu")
    if objective.uses_reference:
        reference = objective.prepare_reference(load(models / "reference"), items, EOS, 8, cpu, "fp32")
        objective.attach_reference(items, reference)
    policy = load(models / "policy")
    policy.train()
    batch = objective.collate(items, EOS)
    loss, stats = objective.loss_with_stats(policy, batch, objective.count_targets(batch))
    loss.backward()
    return loss.detach(), objective.means(stats), policy


def assert_loss_and_gradients_equal(loss: torch.Tensor, policy, expected: dict) -> None:
    """tunelab's loss and every parameter's gradient within TOLERANCE of TRL's (`expected`)."""
    assert abs(loss.item() - expected["loss"].item()) <= TOLERANCE, (loss.item(), expected["loss"].item())
    worst = max(
        ((parameter.grad - expected[f"grad.{name}"]).abs().max().item(), name)
        for name, parameter in policy.named_parameters()
    )
    assert worst[0] <= TOLERANCE, f"gradient of {worst[1]} differs from TRL's by {worst[0]:.2e}"
    # Every parameter has a gradient that is not all zero, so the comparison is not vacuous.
    assert all(expected[f"grad.{name}"].abs().max() > 0 for name, _ in policy.named_parameters())


@pytest.mark.parametrize("case", CASES)
def test_loss_and_gradients_equal_trls(case, models, trl_results):
    objective, options = CASES[case]
    expected = trl_results[case]
    loss, logged, policy = tunelab_side(objective, options, models)
    assert_loss_and_gradients_equal(loss, policy, expected)
    trl_logged = {key.removeprefix("metric.") for key in expected if key.startswith("metric.")}
    assert trl_logged and trl_logged <= set(logged), f"tunelab logs none of {trl_logged - set(logged)}"
    for name in trl_logged:
        assert abs(logged[name] - expected[f"metric.{name}"].item()) <= TOLERANCE, (name, logged[name])
