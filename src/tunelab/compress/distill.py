"""`tunelab distill`: a student (any model with the teacher's tokenizer, e.g. one `tunelab prune` cut from
the teacher) learns what a teacher does.

- logits (Hinton et al., 2015): on the labelled positions, the student's loss is
  (1 - alpha) * cross-entropy + alpha * T^2 * KL(teacher || student) at temperature T, the teacher's logits
  computed on the fly in the same batch. It runs through the one training loop with any text method: the
  method's class is extended with this loss (`with_distillation`) and nothing else changes. The val loss
  stays the method's own cross-entropy, so it compares with runs that were not distilled.
  With `hidden_weight`, each student block's output also learns the teacher's at the block it was cut
  from (its index in the pruned student's `kept_layers`), on every real token, as Minitron and TinyBERT
  do: the error is the fraction of the teacher's variance left unexplained, channel by channel. One label
  token per example is too little signal to rebuild what the dropped blocks computed (on SST-2 a student
  cut to half the blocks learned to say "positive" to everything); every position's hidden state is not.
- sequence (Kim and Rush, 2016): the teacher answers the prompts of `--data` (batched greedy generation),
  and the student is tuned on those answers by an ordinary run.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import load_examples
from ..data.mixture import parse_data_spec
from ..data.tokenize import IGNORE_INDEX
from ..errors import UserError
from ..inference import load_for_inference
from ..inference.generate import generate, prompt_messages, require_generative
from ..methods import Method, get_method
from ..models import load_tokenizer
from ..models.blocks import capture, decoder_blocks
from ..ops import labelled_logits
from ..run_dir import RunDir
from ..training import TrainConfig
from ..training.loop import TrainResult, check_out_dir, train
from .config import DistillConfig


def kd_loss(student_logits, teacher_logits, mask, temperature: float) -> torch.Tensor:
    """Sum over the positions in `mask` of T^2 * KL(softmax(teacher/T) || softmax(student/T)).

    Its gradient with respect to the student's logits at a position is T * (softmax(s/T) - softmax(t/T)):
    the T^2 keeps it on the scale of the cross-entropy's gradient whatever the temperature."""
    student = F.log_softmax(student_logits.float()[mask] / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float()[mask] / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="sum") * temperature**2


def hidden_state_loss(student_states, teacher_states, mask) -> torch.Tensor:
    """Mean over (student block, teacher block) pairs and hidden channels of the fraction of the teacher's
    variance over the real tokens in `mask` that the student leaves unexplained: 0 when they are equal, 1
    for a student that outputs the teacher's mean. Per channel, since a few channels of Llama-like models
    hold values 100x the rest (on the first token): as one sum they would be all the loss measures."""
    real = mask.bool()
    total = 0.0
    for student, teacher in zip(student_states, teacher_states, strict=True):
        student, teacher = student.float()[real], teacher.float()[real]  # (N, H)
        variance = teacher.var(0, correction=0)
        variance = variance.clamp_min(1e-3 * float(variance.mean()) + 1e-12)
        total = total + ((student - teacher).pow(2).mean(0) / variance).mean()
    return total / len(student_states)


@contextmanager
def block_outputs(model, indices: list[int]):
    """Collects the outputs of decoder blocks `indices`, in that order, during the forward passes inside."""
    blocks = decoder_blocks(model, "--hidden-weight")
    collected = []
    with capture([blocks[i] for i in indices], outputs=True) as seen:
        yield collected
    collected.extend(seen.outputs[j] for j in range(len(indices)) if j in seen.outputs)


class KDLoss:
    """Mixed into a method's class: its training loss becomes the distillation mix (see the module doc)."""

    teacher = None
    temperature = 2.0
    alpha = 0.5
    hidden_weight = 0.0
    teacher_blocks: list[int] = []  # the teacher block each student block learns from (hidden_weight)

    def loss(self, model, batch: dict, normaliser) -> torch.Tensor:
        if not model.training:  # the val loss: the method's own, comparable with other runs
            return super().loss(model, batch, normaliser)
        matched = self.teacher_blocks if self.hidden_weight else []
        with block_outputs(model, list(range(len(matched)))) as student_states:
            logits, targets = labelled_logits(model, batch)
        if self.teacher.device != logits.device:
            self.teacher.to(logits.device)
        with torch.no_grad(), block_outputs(self.teacher, matched) as teacher_states:
            teacher_logits, _ = labelled_logits(self.teacher, batch)
        if teacher_logits.shape != logits.shape:
            raise UserError(
                f"distill: teacher and student disagree on the vocabulary ({teacher_logits.shape[-1]} vs "
                f"{logits.shape[-1]} logits); the student needs the teacher's tokenizer"
            )
        mask = targets != IGNORE_INDEX
        ce = F.cross_entropy(logits.float()[mask], targets[mask], reduction="sum")
        kd = kd_loss(logits, teacher_logits, mask, self.temperature)
        loss = (1 - self.alpha) * ce + self.alpha * kd
        if self.hidden_weight:  # weighted per labelled token, like the two terms above
            if student_states[0].shape != teacher_states[0].shape:
                raise UserError(
                    f"--hidden-weight: the student's hidden states {tuple(student_states[0].shape)} do not "
                    f"match the teacher's {tuple(teacher_states[0].shape)} (another width, or a soft prompt)"
                )
            hidden = hidden_state_loss(student_states, teacher_states, batch["attention_mask"])
            loss = loss + self.hidden_weight * int(mask.sum()) * hidden
        return loss / normaliser


def with_distillation(
    method: Method, teacher, temperature: float, alpha: float, hidden_weight: float = 0.0,
    teacher_blocks: list[int] | None = None,
) -> Method:  # fmt: skip
    """The same method (what trains, how it is saved) with the distillation loss. `teacher_blocks`: for
    each student block, the teacher block whose output it learns (hidden_weight > 0)."""
    if method.task != "causal-lm":
        raise UserError(f"--method {method.name}: distillation needs a method that learns next tokens")
    if hidden_weight and not teacher_blocks:
        raise UserError("distill: a hidden-state weight needs the teacher block of each student block")
    distilled = type(f"Distilled{type(method).__name__}", (KDLoss, type(method)), {})()
    distilled.teacher = teacher.eval().requires_grad_(False)
    distilled.temperature, distilled.alpha = temperature, alpha
    distilled.hidden_weight, distilled.teacher_blocks = hidden_weight, teacher_blocks or []
    return distilled


def teacher_blocks_of(student: str, teacher) -> list[int]:
    """For each block of `student` (a model folder), the teacher block it came from: the `kept_layers` of a
    student that `tunelab prune` cut from the teacher, else the same index (a student as deep)."""
    from transformers import AutoConfig

    if not (Path(student) / "config.json").is_file():
        raise UserError(f"--hidden-weight: the student {student} must be a model folder (e.g. from prune)")
    config = AutoConfig.from_pretrained(student)
    record = RunDir(student).compression
    kept = json.loads(record.read_text()).get("kept_layers") if record.is_file() else None
    depth = len(decoder_blocks(teacher, "--hidden-weight"))
    kept = kept if kept is not None else list(range(depth))
    if len(kept) != config.num_hidden_layers or max(kept) >= depth:
        raise UserError(
            f"--hidden-weight: the student {student} is not a `tunelab prune` cut of the teacher and not as "
            f"deep as it ({depth} blocks): there is no block to match each of its blocks with"
        )
    if config.hidden_size != teacher.config.hidden_size:
        raise UserError(
            f"--hidden-weight: the student's hidden size {config.hidden_size} is not the teacher's "
            f"{teacher.config.hidden_size}"
        )
    return kept


def distill(train_config: TrainConfig, config: DistillConfig, console=None) -> TrainResult:
    """Train `train_config.model` (the student) to imitate the teacher; writes an ordinary run folder."""
    log = console.print if console else print
    require_generative(config.teacher, config.teacher_adapter, "distill --teacher")
    teacher, tokenizer = load_for_inference(config.teacher, config.teacher_adapter)
    require_same_tokenizer(tokenizer, train_config.model, log)
    out = Path(train_config.out)
    if config.mode == "logits":
        blocks = teacher_blocks_of(train_config.model, teacher) if config.hidden_weight else None
        method = with_distillation(
            get_method(train_config.method), teacher, config.temperature, config.alpha, config.hidden_weight,
            blocks,
        )  # fmt: skip
        result = train(train_config, console, method=method)
    else:
        check_out_dir(out, train_config)  # before the teacher spends minutes answering
        answers = RunDir(out).teacher_answers
        if not (train_config.resume and answers.is_file()):
            out.mkdir(parents=True, exist_ok=True)
            count = teacher_answers(teacher, tokenizer, train_config.data, answers, config)
            log(f"The teacher answered {count} prompts: {answers}")
        del teacher
        result = train(replace(train_config, data=[str(answers)], overwrite=False), console)
    # The run's own config names the student and its data; this says which teacher and how.
    RunDir(out).compression.write_text(json.dumps({"distill": asdict(config)}, indent=2) + "\n")
    return result


def require_same_tokenizer(teacher_tokenizer, student: str, log=print) -> None:
    if teacher_tokenizer.get_vocab() != load_tokenizer(student, log).get_vocab():
        raise UserError(f"distill: the student {student} has another tokenizer than the teacher")


def teacher_answers(teacher, tokenizer, data: list[str], out: Path, config: DistillConfig) -> int:
    """Write one chat example per prompt of `data`, the teacher's greedy answer as its assistant turn."""
    prompts = [
        prompt_messages(example.messages)
        for spec in data
        for example in load_examples(parse_data_spec(spec).path, for_training=False)
    ]
    replies = generate(
        teacher, tokenizer, prompts, max_new_tokens=config.max_new_tokens,
        batch_size=config.generate_batch_size,
    )  # fmt: skip
    rows = [
        {"messages": [*prompt, {"role": "assistant", "content": reply}]}
        for prompt, reply in zip(prompts, replies, strict=True)
        if reply
    ]
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)
