"""TRL's side of the GRPO parity test: the loss and gradients of GRPOTrainer on fixed answers and rewards.

Run with the Python of TRL's own environment (`make parity-trl` builds it; TRL is never a tunelab dependency):

    .venv-trl/bin/python tests/trl_side/grpo_loss.py MODEL_DIR CASES.json OUT_DIR

MODEL_DIR holds `reference/` (the start) and `policy/` (the model being trained). CASES.json holds
`groups` [{prompt_ids, completions: [ids...], rewards: [...]}] (every prompt the same length, so that no
row is left-padded: TRL scores left-padded prompts without position ids, tunelab from position 0) and
`cases` [{name, options}], options named as tunelab's TrainConfig fields (beta, epsilon,
sampling_temperature: TRL scores the answers at the temperature it sampled them at). For each case a
GRPOTrainer is built as TRL's users build it (default loss_type "dapo", scale_rewards "group"), the
advantages are computed from the rewards by TRL's formula, and the loss is the trainer's `_compute_loss`
on the batch that `_generate_and_score_completions` would hand it (one iteration per sample: no old
log-probs). OUT_DIR/<name>.safetensors gets `loss` and `grad.<parameter>` for every parameter.

As in preference_losses.py, TRL's fused LM head takes its log-softmax in float32; for a float64
comparison it is swapped for the same computation in float64 (`ExactLogProbs`).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import nanstd

sys.path.insert(0, str(Path(__file__).parent))
from preference_losses import loss_and_gradients, run_cases  # noqa: E402


def load(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64)


def batch(groups: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """The prompts (one row per answer) and the answers right-padded, each masked after its EOS."""
    prompts = [group["prompt_ids"] for group in groups for _ in group["completions"]]
    answers = [answer for group in groups for answer in group["completions"]]
    width = max(len(answer) for answer in answers)
    completion_ids = torch.full((len(answers), width), pad_id)
    completion_mask = torch.zeros(len(answers), width, dtype=torch.long)
    for row, answer in enumerate(answers):
        completion_ids[row, : len(answer)] = torch.tensor(answer)
        completion_mask[row, : len(answer)] = 1
    prompt_ids = torch.tensor(prompts)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones_like(prompt_ids),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "num_items_in_batch": completion_mask.sum(),
    }


def advantages(groups: list[dict]) -> torch.Tensor:
    """TRL 1.16's `_generate_and_score_completions` with scale_rewards "group", one reward function."""
    n = len(groups[0]["completions"])
    rewards = torch.tensor([r for group in groups for r in group["rewards"]], dtype=torch.float64)
    mean = torch.nanmean(rewards.view(-1, n), dim=1).repeat_interleave(n, dim=0)
    std = nanstd(rewards.view(-1, n), dim=1).repeat_interleave(n, dim=0)
    return (rewards - mean) / (std + 1e-4)


def run_case(model_dir: Path, cases: dict, case: dict, out: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "policy")
    groups = cases["groups"]
    rows = sum(len(group["completions"]) for group in groups)
    options = case["options"]
    with tempfile.TemporaryDirectory() as scratch:
        args = GRPOConfig(
            output_dir=scratch, per_device_train_batch_size=rows,
            num_generations=len(groups[0]["completions"]),
            beta=options["beta"], epsilon=options["epsilon"],
            temperature=options.get("sampling_temperature", 1.0), max_completion_length=16, use_cpu=True,
            bf16=False, fp16=False, report_to=[], save_strategy="no", seed=0,
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=load(model_dir / "policy"), reward_funcs=lambda completions, **_: [0.0] * len(completions),
            args=args, train_dataset=Dataset.from_list([{"prompt": "a"}]), processing_class=tokenizer,
        )  # fmt: skip
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which is not run here
        inputs = batch(groups, tokenizer.pad_token_id)
        inputs["advantages"] = advantages(groups)
        if options["beta"]:
            ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
            mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            # TRL made its reference from the policy's path (and patched its head): give it the start's
            trainer.ref_model.load_state_dict(load(model_dir / "reference").state_dict())
            with torch.no_grad():
                inputs["ref_per_token_logps"], _, _ = trainer._get_per_token_logps_and_entropies(
                    trainer.ref_model, ids, mask, inputs["completion_ids"].shape[1]
                )
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
    save_file(loss_and_gradients(loss, trainer.model), out / f"{case['name']}.safetensors")


if __name__ == "__main__":
    run_cases(run_case)
