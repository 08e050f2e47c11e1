"""TRL's side of the preference parity test: each objective's loss and gradients on one batch, by TRL.

Run with the Python of TRL's own environment (`make parity-trl` builds it; TRL is never a tunelab dependency):

    .venv-trl/bin/python tests/trl_side/preference_losses.py MODEL_DIR CASES.json OUT_DIR

MODEL_DIR holds `reference/` (the frozen start) and `policy/` (the model being trained, moved away from the
start so that rewards are not all zero). CASES.json holds token ids, not text, so that both sides score
exactly the same tokens:
`pairs` [{prompt_ids, chosen_ids, rejected_ids}], `unpaired` [{prompt_ids, completion_ids, label}] (answers
end with the end-of-sequence token, prompts start with the tokenizer's BOS, as TRL's tokenisation leaves
them) and `cases` [{name, objective, options}], options named as tunelab's TrainConfig fields. For each case
the models are loaded afresh in float64, its trainer built as TRL's users build it, the batch made by the
trainer's own collator from those ids, and the loss is the trainer's `compute_loss` on it; OUT_DIR/<name>
.safetensors gets `loss`, `grad.<parameter>` for every parameter, and `metric.<name>` for what the trainer
logs under the names tunelab logs too.

Which TRL trainer computes each objective (TRL 1.16):
- dpo: DPOTrainer, loss_type "sigmoid". TRL 1.16's sigmoid loss ignores `label_smoothing` (only its
  robust, EXO and AOT losses read it), so the conservative DPO of label smoothing,
  -(1-e) logsig(bd) - e logsig(-bd), is taken from DPOTrainer as a weighted sum of its own losses:
  with robust's flip rate r, robust = ((1-r)(-logsig(bd)) - r(-logsig(-bd))) / (1-2r), so
  (1+2e) sigmoid - 2e robust at r = 1/4 is exactly that loss (and its gradient).
- ipo: DPOTrainer, loss_type "ipo" (log-ratios averaged over each answer's tokens).
- orpo: ORPOTrainer (trl.experimental.orpo).
- simpo: CPOTrainer (trl.experimental.cpo), loss_type "simpo", cpo_alpha 0 (no NLL term).
- kto: KTOTrainer, loss_type "kto", the KL term from the batch's rotated completions.

One numerical change, none to a definition: DPO's and KTO's fused LM head (trl/kernels/chunked_logprob.py)
takes its log-softmax in float32 whatever the model's dtype, which leaves TRL's gradients some 1e-6 from
float64's; for a float64 comparison it is swapped for the float64 log-softmax it computes in tiles
(`ExactLogProbs`).
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import trl.trainer.utils
from datasets import Dataset
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROBUST_FLIP_RATE = 0.25  # any rate in (0, 1/2) works; with 1/4 the weights are 1+2e and -2e
LOGGED = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
    "kl",
)


class ExactLogProbs:
    """TRL's `ChunkedLogProbFunction.apply` in the model's dtype, in one piece, with autograd's backward:
    per token, the target's log-prob, the entropy, the log of the summed squared probabilities, the mean
    logit and whether the target is the first argmax, each only when `outputs` names it, as the kernel."""

    @staticmethod
    def apply(
        hidden,
        weight,
        bias,
        targets,
        temperature,
        chunk_size,
        softcap=None,
        logit_scale=1.0,
        outputs=("log_probs",),
    ):
        logits = torch.nn.functional.linear(hidden, weight, bias) * logit_scale  # (N, V)
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        logits = logits / temperature
        log_p = logits.log_softmax(-1)
        computed = {
            "log_probs": log_p.gather(-1, targets[:, None])[:, 0],
            "entropy": -(log_p.exp() * log_p).sum(-1),
            "log_sum_sq_probs": torch.logsumexp(2 * log_p, -1),
            "mean_logits": logits.mean(-1),
            "is_top1": logits.argmax(-1) == targets,
        }
        wanted = set(outputs) | {"log_probs"}
        return tuple(computed[name] if name in wanted else None for name in computed)


def common_args(scratch: str, batch: int) -> dict:
    return dict(
        output_dir=scratch,
        per_device_train_batch_size=batch,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to=[],
        save_strategy="no",
        seed=0,
        max_length=None,
    )


def dpo_trainer(model, reference, tokenizer, objective: str, options: dict, batch: int, scratch: str):
    from trl import DPOConfig, DPOTrainer

    smoothing = options.get("label_smoothing", 0.0)
    if objective == "ipo":
        losses = dict(loss_type=["ipo"])
    elif smoothing:
        losses = dict(
            loss_type=["sigmoid", "robust"],
            loss_weights=[1 + 2 * smoothing, -2 * smoothing],
            label_smoothing=ROBUST_FLIP_RATE,
        )
    else:
        losses = dict(loss_type=["sigmoid"])
    args = DPOConfig(beta=options["beta"], **losses, **common_args(scratch, batch))
    return DPOTrainer(
        model=model, ref_model=reference, args=args, train_dataset=text_pairs(), processing_class=tokenizer
    )


def orpo_trainer(model, reference, tokenizer, objective: str, options: dict, batch: int, scratch: str):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(beta=options["beta"], **common_args(scratch, batch) | {"max_length": 512})
    return ORPOTrainer(model=model, args=args, train_dataset=text_pairs(), processing_class=tokenizer)


def simpo_trainer(model, reference, tokenizer, objective: str, options: dict, batch: int, scratch: str):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    args = CPOConfig(
        beta=options["beta"],
        loss_type="simpo",
        cpo_alpha=0.0,
        simpo_gamma=options["simpo_gamma"],
        label_smoothing=options.get("label_smoothing", 0.0),
        **common_args(scratch, batch) | {"max_length": 512},
    )
    return CPOTrainer(model=model, args=args, train_dataset=text_pairs(), processing_class=tokenizer)


def kto_trainer(model, reference, tokenizer, objective: str, options: dict, batch: int, scratch: str):
    from trl import KTOConfig, KTOTrainer

    args = KTOConfig(
        beta=options["beta"],
        desirable_weight=options["desirable_weight"],
        undesirable_weight=options["undesirable_weight"],
        **common_args(scratch, batch),
    )
    dataset = Dataset.from_list(
        [
            {"prompt": "a", "completion": "b", "label": True},
            {"prompt": "b", "completion": "a", "label": False},
        ]
    )
    return KTOTrainer(
        model=model, ref_model=reference, args=args, train_dataset=dataset, processing_class=tokenizer
    )


REFERENCED = ("dpo", "ipo", "kto")  # the others are reference-free
TRAINERS = {
    "dpo": dpo_trainer,
    "ipo": dpo_trainer,
    "orpo": orpo_trainer,
    "simpo": simpo_trainer,
    "kto": kto_trainer,
}


def text_pairs() -> Dataset:
    """The trainers want a dataset to be built; the batch scored is made from the cases' ids instead."""
    return Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])


def reference_free_rows(pair: dict) -> dict:
    """One pair as ORPO's and CPO's `tokenize_row` leaves it for a prompt that starts with BOS and answers
    that end with EOS: each side the whole sequence, its labels -100 on the prompt."""
    prompt = pair["prompt_ids"]
    row = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        answer = pair[f"{side}_ids"]
        row[f"{side}_input_ids"] = prompt + answer
        row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
        row[f"{side}_labels"] = [-100] * len(prompt) + answer
    return row


def kto_rows(examples: list[dict]) -> list[dict]:
    """The unpaired examples with their KL completions as KTOTrainer builds them for one batch: the
    completions rotated by one, (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1})."""
    completions = [example["completion_ids"] for example in examples]
    rotated = completions[-1:] + completions[:-1]
    return [
        {
            "prompt_ids": example["prompt_ids"],
            "completion_ids": example["completion_ids"],
            "KL_completion_ids": kl,
            "label": example["label"],
        }
        for example, kl in zip(examples, rotated, strict=True)
    ]


def batch_rows(objective: str, cases: dict) -> list[dict]:
    if objective == "kto":
        return kto_rows(cases["unpaired"])
    if objective in ("orpo", "simpo"):
        return [reference_free_rows(pair) for pair in cases["pairs"]]
    return [
        {key: pair[key] for key in ("prompt_ids", "chosen_ids", "rejected_ids")} for pair in cases["pairs"]
    ]


def logged_metrics(trainer) -> dict[str, float]:
    """What the step logged, under TRL's names: DPO and KTO keep lists in `_metrics`, ORPO and CPO in
    `_stored_metrics`."""
    store = getattr(trainer, "_metrics", None) or getattr(trainer, "_stored_metrics", {})
    values = store.get("train", {})
    return {name: float(values[name][-1]) for name in LOGGED if values.get(name)}


def load(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64)


def run_case(model_dir: Path, cases: dict, case: dict, out: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "policy")
    objective = case["objective"]
    reference = load(model_dir / "reference") if objective in REFERENCED else None
    rows = batch_rows(objective, cases)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = TRAINERS[objective](
            load(model_dir / "policy"), reference, tokenizer, objective, case["options"], len(rows), scratch
        )
        trainer.model.train()
        batch = trainer.data_collator(rows)
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
    tensors = loss_and_gradients(loss, trainer.model)
    for name, value in logged_metrics(trainer).items():
        tensors[f"metric.{name}"] = torch.tensor([value], dtype=torch.float64)
    save_file(tensors, out / f"{case['name']}.safetensors")


def loss_and_gradients(loss: torch.Tensor, model) -> dict[str, torch.Tensor]:
    """What a case saves: `loss` and `grad.<parameter>` for every parameter, in float64."""
    tensors = {"loss": loss.detach().reshape(1).double()}
    for name, parameter in model.named_parameters():
        tensors[f"grad.{name}"] = parameter.grad.detach().double().contiguous()
    return tensors


def run_cases(run_case) -> None:
    """`run_case(model_dir, cases, case, out)` for each case of the command line's CASES.json, with TRL's
    LM head in float64."""
    model_dir, cases_path, out = map(Path, sys.argv[1:4])
    cases = json.loads(cases_path.read_text())
    warnings.simplefilter("ignore")  # the experimental trainers warn that they are experimental
    trl.trainer.utils._ChunkedLogProbFunction = ExactLogProbs
    torch.manual_seed(0)
    for case in cases["cases"]:
        run_case(model_dir, cases, case, out)


if __name__ == "__main__":
    run_cases(run_case)
