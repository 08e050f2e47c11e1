"""`tunelab distill`: a student (any model with the teacher's tokenizer, e.g. one `tunelab prune` cut from
the teacher) learns what a teacher does.

- logits (Hinton et al., 2015): the student trains with the `distill` objective (objectives/distill.py:
  cross-entropy mixed with the KL to the teacher's logits, and with `hidden_weight` its hidden states), on
  the data of the run's own objective, through the one training loop with any method that takes it.
- sequence (Kim and Rush, 2016): the teacher answers the prompts of `--data` (batched greedy generation),
  and the student is tuned on those answers by an ordinary run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from ..data import load_examples
from ..data.mixture import parse_data_spec
from ..errors import UserError
from ..inference import load_for_inference
from ..inference.generation import generate, prompt_messages, require_generative
from ..methods import get_method
from ..models import load_tokenizer
from ..models.blocks import decoder_blocks
from ..objectives.distill import Distillation
from ..run_dir import RunDir
from ..training import TrainConfig
from ..training.datasets import objective_for
from ..training.loop import TrainResult, check_out_dir, train
from .config import DistillConfig


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
        on = objective_for(train_config, get_method(train_config.method))
        blocks = teacher_blocks_of(train_config.model, teacher) if config.hidden_weight else None
        objective = Distillation(on, teacher, config.temperature, config.alpha, config.hidden_weight, blocks)
        result = train(replace(train_config, objective=on.name), console, objective=objective)
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
