"""Knowledge distillation from a teacher's logits (Hinton et al., 2015), and optionally its hidden states.

On the labelled positions the student's loss is (1 - alpha) * cross-entropy + alpha * T^2 *
KL(teacher || student) at temperature T, the teacher's logits computed on the fly in the same batch. The
data, its batches and the targets are those of the objective it distils on (`sft` or `causal-lm`), and the
val loss stays that objective's own cross-entropy, so it compares with runs that were not distilled.

With `hidden_weight`, each student block's output also learns the teacher's at the block it was cut from
(its index in a pruned student's `kept_layers`), on every real token, as Minitron and TinyBERT do: the
error is the fraction of the teacher's variance left unexplained, channel by channel. One label token per
example is too little signal to rebuild what the dropped blocks computed (on SST-2 a student cut to half
the blocks learned to say "positive" to everything); every position's hidden state is not.

It needs a teacher model, so it is not in the registry: `tunelab distill` (compress/distill.py) builds it
and hands it to the training loop.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..data.tokenize import IGNORE_INDEX
from ..errors import UserError
from ..models.blocks import capture, decoder_blocks
from ..ops import labelled_logits
from .base import Objective


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


class Distillation(Objective):
    """`on`'s data and targets, with the distillation loss while training (see the module doc)."""

    name = "distill"

    def __init__(
        self, on: Objective, teacher, temperature: float = 2.0, alpha: float = 0.5,
        hidden_weight: float = 0.0, teacher_blocks: list[int] | None = None,
    ):  # fmt: skip
        """`teacher_blocks`: for each student block, the teacher block whose output it learns
        (hidden_weight > 0)."""
        if hidden_weight and not teacher_blocks:
            raise UserError("distill: a hidden-state weight needs the teacher block of each student block")
        self.on = on
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        self.hidden_weight, self.teacher_blocks = hidden_weight, teacher_blocks or []

    def read(self, path, config):
        return self.on.read(path, config)

    def settle(self, config, records):
        return self.on.settle(config, records)

    def encode(self, records, tokenizer, config):
        return self.on.encode(records, tokenizer, config)

    def collate(self, items, pad_id):
        return self.on.collate(items, pad_id)

    def count_targets(self, batch):
        return self.on.count_targets(batch)

    def probe_batch(self, length, vocab):
        return self.on.probe_batch(length, vocab)

    def loss(self, model, batch, normaliser):
        if not model.training:  # the val loss: the objective's own, comparable with other runs
            return self.on.loss(model, batch, normaliser)
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
