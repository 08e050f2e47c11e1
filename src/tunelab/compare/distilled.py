"""compare's distilled rows: a student learns, by logit distillation (`tunelab distill --mode logits`), the
model of its teacher, the first row listed before it that tunes a text model (e.g. `lora` in
`--methods zero-shot,lora,prune+distill`).

- `prune+distill`: the teacher (its adapter merged) cut to half its decoder blocks by `tunelab prune`
  (depth, calibrated on the train split), then distilled;
- `distill`: the `--student` model (the teacher's tokenizer) distilled.

Either student trains every weight (`--method full`, lr 1e-4) within the budget of the other rows; the
pruned one also learns the hidden states of the blocks it was cut from (`--hidden-weight 1`), without
which half a model's blocks do not come back on a few hundred steps (README, "Make it smaller").
"""

from __future__ import annotations

import time
from pathlib import Path

from ..compress.distill import DistillConfig, distill, require_same_tokenizer
from ..compress.prune import PruneConfig, prune
from ..errors import UserError
from ..methods import REGISTRY, get_method
from ..models import load_tokenizer

DISTILLED = ("distill", "prune+distill")
STUDENT_LR = 1e-4
KEEP_SHARE = 0.5  # prune+distill keeps half the teacher's decoder blocks
PRUNED_HIDDEN_WEIGHT = 1.0


def teacher_of(methods: list[str], method: str) -> str:
    """The method whose row `method` learns from: the first listed before it that tunes a text model."""
    before = methods[: methods.index(method)]
    tuned = [m for m in before if m in REGISTRY and get_method(m).task == "causal-lm"]
    if not tuned:
        raise UserError(
            f"--methods: {method} needs a teacher, a method that tunes a text model (lora, full, ...) "
            f"listed before it, e.g. --methods lora,{method}"
        )
    teacher = get_method(tuned[0])
    if method == "prune+distill" and not teacher.mergeable:
        raise UserError(
            f"--methods: prune+distill prunes its teacher {teacher.name} with its weights merged, but "
            f"{teacher.not_mergeable}; list lora, ia3 or full before it"
        )
    return teacher.name


def hidden_weight_of(method: str) -> float:
    """Only the pruned student has teacher blocks to match (`distill --hidden-weight`)."""
    return PRUNED_HIDDEN_WEIGHT if method == "prune+distill" else 0.0


def check_distilled(methods: list[str], model: str, student: str | None, log=print) -> None:
    """Fail before anything runs: a distilled row without a teacher, `distill` without a fitting student."""
    for method in DISTILLED:
        if method in methods:
            teacher_of(methods, method)
    if "distill" in methods:
        if not student:
            raise UserError("--methods distill: give the student to distil into with --student MODEL")
        require_same_tokenizer(load_tokenizer(model, log), student, log)


def train_student(
    method: str, options: dict, student: str | None, teacher: Path, run_dir: Path
) -> tuple[Path, dict, float]:
    """The student's run folder, its training summary and the seconds pruning took. `options` are the
    TrainConfig fields every trained row shares; `teacher` is the teacher row's model folder."""
    from ..training import TrainConfig

    prune_s = 0.0
    if method == "prune+distill":
        started, student = time.perf_counter(), str(run_dir / "pruned")
        prune(PruneConfig(model=str(teacher), out=student, data=options["data"][0], keep_share=KEEP_SHARE,
                          overwrite=True))  # fmt: skip
        prune_s = time.perf_counter() - started
    train_config = TrainConfig(**options | {"model": student}, method="full", lr=STUDENT_LR,
                               out=str(run_dir / "model"), overwrite=True)  # fmt: skip
    result = distill(
        train_config, DistillConfig(teacher=str(teacher), hidden_weight=hidden_weight_of(method))
    )
    return run_dir / "model", result.summary, prune_s
